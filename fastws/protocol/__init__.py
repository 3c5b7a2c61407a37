"""The protocol layer: the sans-I/O WebSocket server protocol and its HTTP.

Owns the handshake decision and the frame-level state machine of one
connection (``ServerProtocol``), and the HTTP vocabulary (``http``). It takes
bytes and returns events and bytes; the connection layer above does the I/O.
``ServerProtocol`` is the compiled build (``_server_c``) or its pure-Python
twin (``_server_py``), picked once by ``fastws._select``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._select import pick

__all__ = ["RTT_BUCKETS", "ServerProtocol", "Stats"]

if TYPE_CHECKING:
    from ._server_py import RTT_BUCKETS as RTT_BUCKETS
    from ._server_py import ServerProtocol as ServerProtocol
    from ._server_py import Stats as Stats
else:
    _module = pick("fastws.protocol._server_c", "fastws.protocol._server_py")
    ServerProtocol = _module.ServerProtocol
    Stats = _module.Stats
    RTT_BUCKETS = _module.RTT_BUCKETS
