"""The real client behind a reverse proxy: ``X-Forwarded-For``,
``X-Forwarded-Proto`` and RFC 7239 ``Forwarded``, trusted only from listed
proxies (uvicorn's ``--proxy-headers`` and ``--forwarded-allow-ips``).

Sans-I/O: headers and the peer's address in, the client's address and
scheme out. Read once per handshake, never per message.

How the client is found: the proxies append the address they received the
request from, so the list reads client, proxy 1, proxy 2, ... and the
connection's own peer is the last proxy. Walking the list from the right,
the first address that is not a trusted proxy is the client (an address
further left could have been written by that client itself). If every
entry is trusted, the leftmost is the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

from ..config import proxy_entry
from .http import Headers

__all__ = ["Forwarded", "TrustedProxies", "forwarded_client"]



class TrustedProxies:
    """The proxies whose forwarding headers are believed.

    Entries are IP addresses (``127.0.0.1``, ``::1``), networks
    (``10.0.0.0/8``), ``*`` for every peer, or ``unix`` for peers on a
    Unix socket. A bad entry raises ``ValueError`` naming it.
    """

    def __init__(self, entries: Iterable[str]) -> None:
        self.everyone = False
        self.unix = False
        self.addresses: set[Any] = set()
        self.networks: list[Any] = []
        for text in entries:
            entry = proxy_entry(text)
            if entry == "*":
                self.everyone = True
            elif entry == "unix":
                self.unix = True
            elif not isinstance(entry, str) and entry.num_addresses == 1:
                self.addresses.add(entry.network_address)
            elif not isinstance(entry, str):
                self.networks.append(entry)

    def trusts(self, host: Any) -> bool:
        """Whether ``host`` (an address string, or None / "" for a Unix
        socket peer) is a trusted proxy."""
        if self.everyone:
            return True
        if not host:
            return self.unix
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address in self.addresses or any(address in net for net in self.networks)


class Forwarded:
    """One hop of the forwarding chain: who sent it, over which scheme."""

    __slots__ = ("host", "port", "proto")

    def __init__(self, host: str, port: int = 0, proto: str | None = None) -> None:
        self.host = host
        self.port = port
        self.proto = proto

    def __repr__(self) -> str:
        return f"Forwarded({self.host!r}, {self.port}, {self.proto!r})"


def _split_host_port(value: str) -> tuple[str, int]:
    """``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``, ``[::1]``, ``::1``."""
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    else:
        host, port = value, ""
    number = int(port) if port.isdigit() and len(port) <= 5 else 0
    return host, number if number <= 65535 else 0


def _split_quoted(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside quoted strings (RFC 7230 quoted-string);
    the parts keep their quotes."""
    parts, start, quoted, escaped = [], 0, False, False
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == sep and not quoted:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
        out, escaped = [], False
        for char in value:
            if escaped or char != "\\":
                out.append(char)
                escaped = False
            else:
                escaped = True
        return "".join(out)
    return value


def parse_forwarded(values: Sequence[str]) -> list[Forwarded]:
    """The hops of RFC 7239 ``Forwarded`` header values, in order. An
    element without ``for=`` counts as an unknown hop."""
    hops = []
    for value in values:
        for element in _split_quoted(value, ","):
            if not element.strip():
                continue
            host, port, proto = "unknown", 0, None
            for pair in _split_quoted(element, ";"):
                name, sep, raw = pair.partition("=")
                if not sep:
                    continue
                name = name.strip().lower()
                text = _unquote(raw)
                if name == "for":
                    host, port = _split_host_port(text)
                elif name == "proto":
                    proto = text.lower()
            hops.append(Forwarded(host, port, proto))
    return hops


def parse_x_forwarded(for_values: Sequence[str], proto_values: Sequence[str]) -> list[Forwarded]:
    """The hops of ``X-Forwarded-For`` (and ``X-Forwarded-Proto``, matched
    hop by hop when it lists as many entries, else its first entry for all)."""
    hosts = [entry.strip() for value in for_values for entry in value.split(",") if entry.strip()]
    protos = [entry.strip().lower() for value in proto_values for entry in value.split(",") if entry.strip()]
    hops = []
    for i, entry in enumerate(hosts):
        host, port = _split_host_port(entry)
        proto = protos[i] if len(protos) == len(hosts) else (protos[0] if protos else None)
        hops.append(Forwarded(host, port, proto))
    if not hosts and protos:
        # Only the scheme is forwarded: the client is the peer itself.
        hops.append(Forwarded("", 0, protos[0]))
    return hops


_SCHEMES = {"http": "ws", "ws": "ws", "https": "wss", "wss": "wss"}


def forwarded_client(headers: Headers, peer_host: Any, trusted: TrustedProxies) -> Forwarded | None:
    """The client a trusted proxy forwarded, or None (not from a trusted
    proxy, or no forwarding header). ``X-Forwarded-For`` (what nginx and
    most proxies set) wins over ``Forwarded``, which is read only without
    it: a proxy that sets one header passes the other through from the
    client untouched, so the one it sets must be the one read (nginx:
    clear ``Forwarded``; a proxy that sets ``Forwarded``: clear
    ``X-Forwarded-For``; docs/deployment.md). The returned ``proto`` is
    ``"ws"`` / ``"wss"``, or None when none was forwarded."""
    if not trusted.trusts(peer_host):
        return None
    x_for = headers.get_all("X-Forwarded-For")
    forwarded = headers.get_all("Forwarded")
    if x_for or not forwarded:
        hops = parse_x_forwarded(x_for, headers.get_all("X-Forwarded-Proto"))
    else:
        hops = parse_forwarded(forwarded)
    if not hops:
        return None
    client = hops[0]
    for hop in reversed(hops):
        if not trusted.trusts(hop.host):
            client = hop
            break
    scheme = _SCHEMES.get(client.proto or "")
    return Forwarded(client.host or (peer_host or ""), client.port, scheme)
