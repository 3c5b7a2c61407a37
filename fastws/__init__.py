"""fastws: a Cython-accelerated, high-throughput WebSocket server.

Two API levels on one core:

- callback level (fastest): a :class:`Handler` subclass whose ``on_connect``,
  ``on_message`` and ``on_close`` the server calls directly;
- coroutine level (drop-in for ``websockets``): ``async def handler(ws)``.

Both are served by :func:`serve`. This module is the curated public API;
every other module is an implementation detail.
"""

from __future__ import annotations

from . import _select
from ._version import __version__
from .config import Config
from .connection import Connection
from .exceptions import (
    ConcurrencyError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    HistoryGap,
    InvalidHandshake,
    InvalidHeader,
    InvalidHeaderValue,
    InvalidOrigin,
    InvalidUpgrade,
    NegotiationError,
    PayloadTooBig,
    ProtocolError,
    WebSocketException,
)
from .faces.asyncio import ServerConnection, broadcast
from .faces.callback import Handler
from .protocol.http import Headers, MultipleValuesError, Request, Response
from .server import Server, basic_auth, serve, unix_serve
from .types import Close, CloseCode, State

#: True when the compiled extensions are in use (False: the pure-Python twins).
COMPILED: bool = _select.compiled()

__all__ = [
    "COMPILED",
    "Close",
    "CloseCode",
    "ConcurrencyError",
    "Config",
    "Connection",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "Handler",
    "Headers",
    "HistoryGap",
    "InvalidHandshake",
    "InvalidHeader",
    "InvalidHeaderValue",
    "InvalidOrigin",
    "InvalidUpgrade",
    "MultipleValuesError",
    "NegotiationError",
    "PayloadTooBig",
    "ProtocolError",
    "Request",
    "Response",
    "Server",
    "ServerConnection",
    "State",
    "WebSocketException",
    "__version__",
    "basic_auth",
    "broadcast",
    "serve",
    "unix_serve",
]
