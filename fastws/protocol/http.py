"""HTTP pieces of the opening handshake: headers, request, response, checks.

Owns the HTTP vocabulary of the protocol layer: :class:`Headers`,
:class:`Request`, :class:`Response`, the RFC 6455 section 4.2.1 checks of an
upgrade request, and the standard answers (errors, 426). It runs once per
connection, so it is plain Python; the hashing lives in the codec.
"""

from __future__ import annotations

import http
import re
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Union

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


HeadersLike = Union["Headers", Mapping[str, str], Iterable[tuple[str, str]]]

# RFC 9110 section 5.5: field-value characters; CR, LF and NUL would let a
# value smuggle another header or end the head.
_UNSAFE_VALUE = re.compile(r"[\x00\r\n]")


class Headers(MutableMapping[str, str]):
    """Case-insensitive multi-map of HTTP headers that keeps every occurrence.

    Behaves like ``websockets.datastructures.Headers``:

    - ``headers[name]`` is the only value of ``name``; ``KeyError`` if it is
      missing, :class:`MultipleValuesError` if it is repeated;
    - ``headers[name] = value`` *adds* a value (earlier ones are kept);
      ``del headers[name]`` removes every value;
    - ``len``, iteration, ``keys()``, ``items()``, ``dict(headers)`` see
      each distinct name once, lower-cased; ``get_all(name)`` and
      ``raw_items()`` give every value with the names as received;
    - ``copy()``, ``update()``, ``pop``, ``setdefault``, ``clear``,
      ``popitem`` and ``==`` work as for a mapping.

    Values are ``str`` holding ISO-8859-1 text, as read from the wire; a value
    with CR, LF or NUL is refused (``ValueError``).
    """

    __slots__ = ("_dict", "_list_", "_packed")

    def __init__(self, *args: HeadersLike, **kwargs: str) -> None:
        #: lower-cased name -> values; None until a lookup needs it.
        self._dict: dict[str, list[str]] | None = {}
        #: the (name, value) pairs in order; None while packed (see compact).
        self._list_: list[tuple[str, str]] | None = []
        self._packed: str | None = None
        self.update(*args, **kwargs)

    @property
    def _list(self) -> list[tuple[str, str]]:
        pairs = self._list_
        if pairs is None:
            # Unpack "name: value\r\n" lines: names are tokens (no colon)
            # and values hold no CR or LF, so this gives back the pairs.
            pairs = []
            for line in (self._packed or "").split("\r\n")[:-1]:
                name, _, value = line.partition(": ")
                pairs.append((name, value))
            self._list_ = pairs
            self._packed = None
        return pairs

    @_list.setter
    def _list(self, pairs: list[tuple[str, str]]) -> None:
        self._list_ = pairs
        self._packed = None

    @classmethod
    def _from_wire(cls, pairs: list[tuple[str, str]]) -> "Headers":
        """Headers as parsed from a request (httptools has checked them)."""
        headers = cls()
        headers._dict = None  # indexed on the first lookup
        headers._list = pairs
        return headers

    def _index(self) -> dict[str, list[str]]:
        index = self._dict
        if index is None:
            index = {}
            for name, value in self._list:
                index.setdefault(name.lower(), []).append(value)
            self._dict = index
        return index

    def compact(self) -> None:
        """Keep the headers as one string until they are used again (the
        next use rebuilds the pairs and the index by name). A server calls
        this once the handshake is done: an idle connection then holds its
        request headers in one object, not some forty (about 2 KiB less)."""
        pairs = self._list_
        if pairs is not None:
            if any(":" in name for name, _ in pairs):
                return  # not a token (set by hand): keep the pairs as they are
            self._packed = "".join(f"{n}: {v}\r\n" for n, v in pairs)
            self._list_ = None
        self._dict = None

    def __getitem__(self, name: str) -> str:
        values = self._index()[name.lower()]
        if len(values) > 1:
            raise MultipleValuesError(name)
        return values[0]

    def __setitem__(self, name: str, value: str) -> None:
        """Add a header; earlier values of the same name are kept."""
        if _UNSAFE_VALUE.search(value):
            raise ValueError(f"invalid value for header {name}: {value!r} (CR, LF and NUL are not allowed)")
        self._index().setdefault(name.lower(), []).append(value)
        self._list.append((name, value))

    def __delitem__(self, name: str) -> None:
        key = name.lower()
        del self._index()[key]
        # Slow, like websockets': deleting a header is rare.
        self._list = [(n, v) for n, v in self._list if n.lower() != key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index()

    def __iter__(self) -> Iterator[str]:
        return iter(self._index())

    def __len__(self) -> int:
        return len(self._index())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._index() == other._index()

    __hash__ = None  # type: ignore[assignment]  # mutable, like dict

    def copy(self) -> "Headers":
        """A shallow copy: changing it leaves this one as it is."""
        copy = self.__class__()
        copy._dict = {name: list(values) for name, values in self._index().items()}
        copy._list = list(self._list)
        return copy

    def clear(self) -> None:
        """Remove every header."""
        self._dict = {}
        self._list = []

    def update(self, *args: HeadersLike, **kwargs: str) -> None:  # type: ignore[override]
        """Add the headers of a Headers, a mapping, pairs and/or keywords."""
        converted = tuple(arg.raw_items() if isinstance(arg, Headers) else arg for arg in args)
        super().update(*converted, **kwargs)

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order (empty list if missing)."""
        return list(self._index().get(name.lower(), ()))

    def raw_items(self) -> Iterator[tuple[str, str]]:
        """Every ``(name, value)`` pair, with names as received, in order."""
        return iter(self._list)

    def serialize(self) -> bytes:
        """The header lines as sent on the wire, each ending with CRLF."""
        return "".join(f"{n}: {v}\r\n" for n, v in self._list).encode("latin-1")

    def __str__(self) -> str:
        return "".join(f"{n}: {v}\r\n" for n, v in self._list) + "\r\n"

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self._list!r})"


class MultipleValuesError(LookupError):
    """A header that must appear once appeared several times (as in
    ``websockets``: a ``LookupError``, not a ``KeyError``, so ``get()`` does
    not hide it)."""

    def __str__(self) -> str:
        # Like KeyError's: the name in quotes.
        if len(self.args) == 1:
            return repr(self.args[0])
        return super().__str__()


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
    why = str(exc) or type(exc).__name__
    return make_response(exc.status, f"Failed to open a WebSocket connection: {why}.\n", headers=extra)


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
