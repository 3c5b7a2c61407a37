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

__all__ = ["ServerProtocol"]

if TYPE_CHECKING:
    from ._server_py import ServerProtocol as ServerProtocol
else:
    ServerProtocol = pick("fastws.protocol._server_c", "fastws.protocol._server_py").ServerProtocol
