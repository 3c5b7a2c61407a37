"""The real client behind proxies: which forwarding headers are believed,
and which entry of them is the client (``fastws.protocol.proxy``)."""

from __future__ import annotations

import pytest

from fastws import Config
from fastws.protocol.http import Headers
from fastws.protocol.proxy import TrustedProxies, forwarded_client, parse_forwarded

pytestmark = pytest.mark.timeout(10)

LOCAL = TrustedProxies(["127.0.0.1", "::1"])


def client(pairs: list[tuple[str, str]], peer: str | None = "127.0.0.1", trusted: TrustedProxies = LOCAL) -> tuple[str, int, str | None] | None:
    found = forwarded_client(Headers(pairs), peer, trusted)
    return None if found is None else (found.host, found.port, found.proto)


@pytest.mark.parametrize(
    "pairs, expected",
    [
        ([("X-Forwarded-For", "203.0.113.7")], ("203.0.113.7", 0, None)),
        ([("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "https")], ("203.0.113.7", 0, "wss")),
        ([("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "http")], ("203.0.113.7", 0, "ws")),
        ([("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "wss")], ("203.0.113.7", 0, "wss")),
        ([("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "gopher")], ("203.0.113.7", 0, None)),
        # The client wrote a fake address itself; the proxy appended the real one.
        ([("X-Forwarded-For", "6.6.6.6, 203.0.113.7")], ("203.0.113.7", 0, None)),
        # Two header lines are one list.
        ([("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "203.0.113.7")], ("203.0.113.7", 0, None)),
        # Trusted proxies on the right are skipped.
        ([("X-Forwarded-For", "203.0.113.7, 127.0.0.1, ::1")], ("203.0.113.7", 0, None)),
        # Every entry trusted: the leftmost.
        ([("X-Forwarded-For", "::1, 127.0.0.1")], ("::1", 0, None)),
        # Ports some proxies add.
        ([("X-Forwarded-For", "203.0.113.7:5555")], ("203.0.113.7", 5555, None)),
        ([("X-Forwarded-For", "[2001:db8::7]:5555")], ("2001:db8::7", 5555, None)),
        ([("X-Forwarded-For", "2001:db8::7")], ("2001:db8::7", 0, None)),
        # Only the scheme forwarded: the peer is the client.
        ([("X-Forwarded-Proto", "https")], ("127.0.0.1", 0, "wss")),
        # Scheme per hop when the lists match.
        ([("X-Forwarded-For", "203.0.113.7, 127.0.0.1"), ("X-Forwarded-Proto", "https, http")], ("203.0.113.7", 0, "wss")),
        # RFC 7239 Forwarded.
        ([("Forwarded", "for=192.0.2.60;proto=https;by=203.0.113.43")], ("192.0.2.60", 0, "wss")),
        ([("Forwarded", 'for="[2001:db8:cafe::17]:4711"')], ("2001:db8:cafe::17", 4711, None)),
        ([("Forwarded", "for=6.6.6.6, for=192.0.2.60;proto=http")], ("192.0.2.60", 0, "ws")),
        ([("Forwarded", 'For="192.0.2.60:80"; Proto=HTTPS')], ("192.0.2.60", 80, "wss")),
        ([("Forwarded", "for=unknown")], ("unknown", 0, None)),
        # X-Forwarded-For (what nginx sets) wins over a Forwarded header
        # the client may have sent itself through such a proxy.
        ([("X-Forwarded-For", "192.0.2.60"), ("Forwarded", "for=6.6.6.6;proto=https")], ("192.0.2.60", 0, None)),
        # No forwarding header.
        ([("Host", "example.com")], None),
    ],
)
def test_client_from_a_trusted_proxy(pairs: list[tuple[str, str]], expected: tuple[str, int, str | None] | None) -> None:
    assert client(pairs) == expected


def test_headers_from_an_untrusted_peer_are_ignored() -> None:
    pairs = [("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "https"), ("Forwarded", "for=1.1.1.1")]
    assert client(pairs, peer="198.51.100.1") is None
    assert client(pairs, peer=None) is None  # a Unix socket peer, "unix" not listed


def test_networks_star_unix_and_mapped_addresses() -> None:
    nets = TrustedProxies(["10.0.0.0/8", "fd00::/8"])
    assert nets.trusts("10.200.3.4") and nets.trusts("fd12::1")
    assert not nets.trusts("11.0.0.1") and not nets.trusts("127.0.0.1")
    assert nets.trusts("::ffff:10.1.2.3")  # an IPv4 peer on a dual-stack socket
    assert not nets.trusts("not an address") and not nets.trusts(None)
    assert TrustedProxies(["*"]).trusts("8.8.8.8") and TrustedProxies(["*"]).trusts(None)
    assert TrustedProxies(["unix"]).trusts("") and not TrustedProxies(["unix"]).trusts("127.0.0.1")
    # Behind trusted networks, the chain is walked past them.
    pairs = [("X-Forwarded-For", "203.0.113.7, 10.1.1.1, 10.2.2.2")]
    assert client(pairs, peer="10.3.3.3", trusted=nets) == ("203.0.113.7", 0, None)


def test_forwarded_quoted_strings_keep_separators() -> None:
    hops = parse_forwarded(['for="_gazonk;x,y";proto=https, for=192.0.2.1'])
    assert [(h.host, h.proto) for h in hops] == [("_gazonk;x,y", "https"), ("192.0.2.1", None)]


@pytest.mark.parametrize("bad", ["localhost", "10.0.0.0/33", "1.2.3", ""])
def test_bad_forwarded_allow_ips_are_refused_by_name(bad: str) -> None:
    with pytest.raises(ValueError, match="forwarded_allow_ips"):
        Config(forwarded_allow_ips=("127.0.0.1", bad))


def test_config_limits_are_checked() -> None:
    for name in ("limit_concurrency", "limit_per_ip"):
        with pytest.raises(ValueError, match=name):
            Config(**{name: 0})
    with pytest.raises(TypeError, match="forwarded_allow_ips"):
        Config(forwarded_allow_ips="127.0.0.1")  # type: ignore[arg-type]
    assert Config(forwarded_allow_ips=["*"]).forwarded_allow_ips == ("*",)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "pairs",
    [
        [("X-Forwarded-For", ",,, ,")],
        [("Forwarded", ';;;,,"for=')],
        [("Forwarded", 'for="unterminated')],
        [("X-Forwarded-For", "\xff garbage:99999")],
        [("X-Forwarded-For", "x" * 8000)],
    ],
    ids=["empty-entries", "separators", "open-quote", "binary", "long"],
)
def test_garbage_from_a_trusted_proxy_never_raises(pairs: list[tuple[str, str]]) -> None:
    # The proxy is trusted, so what it wrote is taken as written, but
    # nothing it writes can raise or give a port outside 0-65535.
    found = client(pairs)
    assert found is None or (isinstance(found[0], str) and 0 <= found[1] <= 65535)
