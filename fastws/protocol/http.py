"""HTTP pieces of the opening handshake: headers, request, response, checks.

Owns the HTTP vocabulary of the protocol layer: :class:`Headers`,
:class:`Request`, :class:`Response`, the RFC 6455 section 4.2.1 checks of an
upgrade request, and the standard answers (errors, 426). It runs once per
connection, so it is plain Python; the hashing lives in the codec.
"""

from __future__ import annotations

import http
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..codec import handshake as _handshake
from ..exceptions import InvalidHandshake, InvalidHeader, InvalidHeaderValue, InvalidUpgrade

__all__ = [
    "Headers",
    "MultipleValuesError",
    "Request",
    "Response",
    "check_request",
    "error_response",
    "format_address",
    "make_response",
    "parse_tokens",
    "upgrade_required",
]


class Headers:
    """Case-insensitive multi-map of HTTP headers that keeps every occurrence.

    ``headers["X"]`` returns the only value of ``X`` and raises ``KeyError`` if
    it is missing (or, like ``websockets``, ``MultipleValuesError`` — a
    ``KeyError`` — if it is repeated); ``get_all`` returns every value.
    """

    __slots__ = ("_items", "_index")

    def __init__(self, items: "Mapping[str, str] | list[tuple[str, str]] | None" = None) -> None:
        self._items: list[tuple[str, str]] = []
        self._index: dict[str, list[str]] = {}
        if items is not None:
            pairs = items.items() if isinstance(items, Mapping) else items
            for name, value in pairs:
                self[name] = value

    def __setitem__(self, name: str, value: str) -> None:
        """Add a header; earlier values of the same name are kept."""
        self._items.append((name, value))
        self._index.setdefault(name.lower(), []).append(value)

    def __getitem__(self, name: str) -> str:
        values = self._index[name.lower()]
        if len(values) > 1:
            raise MultipleValuesError(name)
        return values[0]

    def __delitem__(self, name: str) -> None:
        key = name.lower()
        del self._index[key]
        self._items = [(n, v) for n, v in self._items if n.lower() != key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._items)

    def get(self, name: str, default: str | None = None) -> str | None:
        """The only value of ``name``, or ``default`` if it is missing."""
        try:
            return self[name]
        except KeyError:
            return default

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order (empty list if missing)."""
        return list(self._index.get(name.lower(), ()))

    def raw_items(self) -> list[tuple[str, str]]:
        """Every ``(name, value)`` pair in the order received."""
        return list(self._items)

    def items(self) -> list[tuple[str, str]]:
        return self.raw_items()

    def update(self, other: "Headers | Mapping[str, str] | list[tuple[str, str]]") -> None:
        pairs = other.raw_items() if isinstance(other, Headers) else (
            other.items() if isinstance(other, Mapping) else other
        )
        for name, value in pairs:
            self[name] = value

    def serialize(self) -> bytes:
        """The header lines as sent on the wire, each ending with CRLF."""
        return "".join(f"{n}: {v}\r\n" for n, v in self._items).encode("latin-1")

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class MultipleValuesError(KeyError):
    """A header that must appear once appeared several times."""


def parse_tokens(values: list[str]) -> list[str]:
    """Lower-cased comma-separated tokens of every occurrence of a header.

    ``Connection: keep-alive, Upgrade`` and a second ``Connection: x`` give
    ``["keep-alive", "upgrade", "x"]`` (RFC 9110 section 5.3: repeated list
    headers are one list).
    """
    tokens = []
    for value in values:
        for part in value.split(","):
            token = part.strip().lower()
            if token:
                tokens.append(token)
    return tokens


@dataclass(slots=True)
class Request:
    """The opening handshake request: ``path`` (with query) and ``headers``."""

    path: str
    headers: Headers
    method: str = "GET"
    http_version: str = "1.1"


@dataclass(slots=True)
class Response:
    """An HTTP response: a 101 accepting the upgrade, or an HTTP answer."""

    status_code: int
    reason_phrase: str = ""
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    def __post_init__(self) -> None:
        if not self.reason_phrase:
            try:
                self.reason_phrase = http.HTTPStatus(self.status_code).phrase
            except ValueError:
                self.reason_phrase = "Unknown"

    @property
    def status(self) -> int:
        """Alias of ``status_code``."""
        return self.status_code

    @classmethod
    def parse_head(cls, head: bytes) -> "Response":
        """A response from its status line and header block (no body)."""
        lines = head.decode("latin-1").split("\r\n")
        _, status, reason = (lines[0].split(" ", 2) + [""])[:3]
        headers = Headers()
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip()] = value.strip()
        return cls(int(status), reason, headers)

    def serialize(self) -> bytes:
        """The response as bytes on the wire."""
        head = f"HTTP/1.1 {self.status_code} {self.reason_phrase}\r\n".encode("latin-1")
        return head + self.headers.serialize() + b"\r\n" + self.body


def make_response(
    status: int,
    text: str | bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    headers: "list[tuple[str, str]] | None" = None,
) -> Response:
    """An HTTP response with a body that closes the connection after it.

    The ``Server`` header is added when the response is sent, from the
    server's ``server_header`` option.
    """
    body = text.encode("utf-8") if isinstance(text, str) else text
    h = Headers()
    h["Content-Type"] = content_type
    h["Content-Length"] = str(len(body))
    h["Connection"] = "close"
    for name, value in headers or ():
        h[name] = value
    return Response(status, headers=h, body=body)


def check_request(request: Request) -> tuple[bytes, bool]:
    """Check an upgrade request against RFC 6455 section 4.2.1.

    Returns ``(accept_key, is_upgrade)``. ``is_upgrade`` is False for a plain
    HTTP request (no ``Upgrade: websocket``), which the caller answers over
    HTTP instead. Raises :class:`InvalidHandshake` (with the HTTP status to
    answer) for an upgrade request that is malformed.
    """
    headers = request.headers
    upgrade = parse_tokens(headers.get_all("Upgrade"))
    if "websocket" not in upgrade:
        return b"", False
    if request.method != "GET":
        raise InvalidHandshake(
            f"WebSocket handshake must use GET, not {request.method} (RFC 6455 section 4.2.1)",
            405,
        )
    if request.http_version != "1.1":
        raise InvalidHandshake(
            f"WebSocket handshake needs HTTP/1.1, not HTTP/{request.http_version} "
            "(RFC 6455 section 4.2.1)"
        )
    hosts = headers.get_all("Host")
    if len(hosts) != 1:
        raise InvalidHeader(
            "missing Host header" if not hosts else "repeated Host header"
        )
    if "upgrade" not in parse_tokens(headers.get_all("Connection")):
        raise InvalidUpgrade(
            "Connection header must contain 'upgrade' (RFC 6455 section 4.2.1)"
        )
    keys = headers.get_all("Sec-WebSocket-Key")
    if len(keys) != 1:
        raise InvalidHeader(
            "missing Sec-WebSocket-Key header" if not keys else "repeated Sec-WebSocket-Key header"
        )
    key = keys[0].strip()
    if not _handshake.is_valid_key(key):
        raise InvalidHeaderValue(
            "Sec-WebSocket-Key must be 16 bytes in base64 (RFC 6455 section 4.2.1)"
        )
    versions = headers.get_all("Sec-WebSocket-Version")
    if len(versions) != 1:
        raise InvalidHeader(
            "missing Sec-WebSocket-Version header"
            if not versions
            else "repeated Sec-WebSocket-Version header"
        )
    if versions[0].strip() != "13":
        raise InvalidHeaderValue(
            f"unsupported Sec-WebSocket-Version {versions[0].strip()!r}; this server speaks 13",
            426,
        )
    return _handshake.accept_key(key), True


def error_response(exc: InvalidHandshake) -> Response:
    """The HTTP answer to a rejected handshake: status and a one-line reason."""
    extra = []
    if exc.status == 426:
        extra = [("Sec-WebSocket-Version", "13")]
    return make_response(exc.status, f"Failed to open a WebSocket connection: {exc}.\n", headers=extra)


def upgrade_required(request: Request) -> Response:
    """The answer to a plain HTTP request on a WebSocket-only path."""
    return make_response(
        426,
        "426 Upgrade Required: this is a WebSocket server; connect with a WebSocket client.\n",
        headers=[("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")],
    )


def format_address(address: Any) -> str:
    """``host:port`` (``[host]:port`` for IPv6) of a socket address, for logs."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = address[0]
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address) if address else "-"
