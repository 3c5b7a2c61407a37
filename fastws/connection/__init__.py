"""The connection layer: one asyncio protocol per TCP connection.

Owns the I/O of a WebSocket connection: reading, write batching, flow
control, the protocol's timer, and calling the user's handshake hooks. It
drives a sans-I/O ``ServerProtocol`` (the layer below) and hands events to a
face (the layer above), which registers with ``Connection.attach``.
``Connection`` is the compiled build (``_connection_c``) or its pure-Python
twin (``_connection_py``), picked once by ``fastws._select``.

:class:`ServerContext` is what a connection needs from the server that
accepted it; the server layer implements it, so no arrow points up.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .._select import pick

if TYPE_CHECKING:
    from ..config import Config
    from ..protocol.http import Request, Response
    from ._connection_py import Connection as Connection
else:
    Connection = pick("fastws.connection._connection_c", "fastws.connection._connection_py").Connection

__all__ = ["Connection", "ServerContext"]


class ServerContext(Protocol):
    """What every connection of one server shares, as the connection uses it."""

    #: The server's frozen Config.
    config: "Config"
    #: Every connection of the server, from accept to close (any state).
    connections: set[Any]
    #: Static negotiation settings passed to the protocol.
    subprotocols: Sequence[str] | None
    origins: Sequence[str | re.Pattern[str] | None] | None
    #: User hooks, or None: ``select_subprotocol(public, offered)``,
    #: ``process_request(public, request)``,
    #: ``process_response(public, request, response)``.
    select_subprotocol: Callable[[Any, Sequence[str]], str | None] | None
    process_request: Callable[[Any, "Request"], Any] | None
    process_response: Callable[[Any, "Request", "Response"], Any] | None

    #: Called once the request is in, before the user's hooks, or None
    #: when the server has nothing to check: may set the connection's
    #: ``remote_address`` and ``scheme`` (a trusted proxy's headers) and
    #: returns a refusal (503, 429) or None.
    admit: "Callable[[Connection, Request], Response | None] | None"
    #: The server's counters (``fastws.protocol.Stats``), or None when
    #: metrics are off.
    stats: Any
    #: Called when a connection ends (any state), or None.
    release: "Callable[[Connection], None] | None"
    #: While one connection dispatches what it read: the other connections
    #: its handlers wrote to, each flushed once when the dispatch ends (a
    #: broadcast of k messages read at once is one write per listener, not
    #: k). None outside a dispatch. The server starts it as None.
    corked: "list[Connection] | None"
    #: The server's rooms (``fastws.rooms.Hub``): what ``subscribe``,
    #: ``unsubscribe``, ``publish`` and ``rooms`` use.
    hub: Any

    def attach_face(self, conn: "Connection") -> None:
        """Make the connection's face (its handler); it calls ``conn.attach``."""

    def track_task(self, task: "asyncio.Future[Any]") -> None:
        """Keep a background task referenced until it ends."""
