"""The callback level: a :class:`Handler` whose methods the connection calls.

Owns :class:`Handler` (the public base class) and the callback face: per
connection it makes a handler and registers that handler's methods with the
connection, so a message costs one call of ``on_message`` and nothing else:
no coroutine, future or queue.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..connection import Connection
    from ..protocol.http import Request, Response

__all__ = ["Handler", "callback_face"]


class Handler:
    """Base class of a callback-level handler; override what you need.

    The server makes one handler per connection by calling the class (or any
    factory) you pass to :func:`fastws.serve` with no arguments. Callbacks run
    on the event loop and must not block; ``ws.send()`` writes at once.
    An exception in a callback closes the connection with 1011.
    """

    def on_connect(self, ws: "Connection") -> None:
        """The handshake succeeded; ``ws`` is open."""

    def on_message(self, ws: "Connection", data: bytes, is_text: bool) -> None:
        """A complete message arrived.

        ``data`` is the reassembled payload as bytes; when ``is_text`` it is
        valid UTF-8 (``data.decode()`` cannot fail).
        """

    def on_close(self, ws: "Connection", code: int, reason: str) -> None:
        """The connection is closed; ``code`` is 1006 if the peer vanished."""

    def on_ping(self, ws: "Connection", data: bytes) -> None:
        """A ping arrived (the pong is already sent). Not called unless overridden."""

    def on_pong(self, ws: "Connection", data: bytes) -> None:
        """A pong arrived. Not called unless overridden."""

    def on_drain(self, ws: "Connection") -> None:
        """The write buffer fell below ``write_limit`` (``ws.writable`` is True
        again). Not called unless overridden."""

    def process_request(
        self, ws: "Connection", request: "Request"
    ) -> "Response | None | Awaitable[Response | None]":
        """Before the handshake: return a Response to answer over HTTP
        instead of upgrading, or None to go on (may be ``async``). Runs after
        the server's own ``process_request`` option. Not called unless
        overridden."""
        return None


_OPTIONAL = ("on_ping", "on_pong", "on_drain", "process_request")


def _optional(handler: Any, name: str) -> Any:
    """The handler's method ``name``, or None if it is Handler's no-op."""
    method = getattr(handler, name, None)
    if method is None or getattr(type(handler), name, None) is getattr(Handler, name):
        return None
    return method


def callback_face(make_handler: Callable[[], Any]) -> Callable[["Connection"], None]:
    """The face that gives each connection a handler from ``make_handler()``."""

    def attach(conn: "Connection") -> None:
        handler = make_handler()
        on_ping, on_pong, on_drain, process_request = (_optional(handler, name) for name in _OPTIONAL)
        conn.attach(
            conn,
            handler.on_connect if hasattr(handler, "on_connect") else None,
            handler.on_message,
            handler.on_close if hasattr(handler, "on_close") else None,
            on_ping=on_ping,
            on_pong=on_pong,
            on_drain=on_drain,
            process_request=process_request,
        )

    return attach
