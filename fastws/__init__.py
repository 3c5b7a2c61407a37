"""fastws: a Cython-accelerated, high-throughput WebSocket server.

Two API levels on one core:

- callback level (fastest): a :class:`Handler` subclass whose ``on_connect``,
  ``on_message`` and ``on_close`` the server calls directly;
- coroutine level (drop-in for ``websockets``): ``async def handler(ws)``.

Both are served by :func:`serve`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._impl import COMPILED
from ._impl import frame as _codec
from .config import Config
from .exceptions import (
    Close,
    ConcurrencyError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidHeader,
    InvalidHeaderValue,
    InvalidOrigin,
    InvalidUpgrade,
    NegotiationError,
    PayloadTooBig,
    WebSocketException,
)
from .http import Headers, Request, Response
from ._impl import Connection
from .protocol import CloseCode, Handler, State
from .server import Server, basic_auth, serve, unix_serve
from .asyncio import ServerConnection, broadcast

#: Raised by the codec for a protocol violation; ``.code`` is the close code.
ProtocolError = _codec.ProtocolError

__all__ = [
    "COMPILED",
    "ConcurrencyError",
    "ServerConnection",
    "broadcast",
    "Close",
    "CloseCode",
    "Config",
    "Connection",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "Handler",
    "Headers",
    "InvalidHandshake",
    "InvalidHeader",
    "InvalidHeaderValue",
    "InvalidOrigin",
    "InvalidUpgrade",
    "NegotiationError",
    "PayloadTooBig",
    "ProtocolError",
    "Request",
    "Response",
    "Server",
    "State",
    "WebSocketException",
    "basic_auth",
    "__version__",
    "serve",
    "unix_serve",
]
