"""Every option of the server, with its unit and default, in one place.

The API (:func:`fastws.serve`) and the CLI (``fastws serve``) both build a
:class:`Config`, so a default is written exactly once (STYLE.md item 7).
``None`` means "off" / "no limit" wherever a limit allows it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["Config", "DEFAULTS"]


@dataclass(frozen=True, slots=True)
class Config:
    """Limits and timeouts of a server; see ``docs/limits.md`` for each one."""

    #: Largest message (reassembled payload) accepted, in bytes; over it the
    #: connection is closed with 1009. ``None``: no limit.
    max_message_size: int | None = 2**20
    #: Largest request line + header block of the handshake, in bytes; over
    #: it the server answers 431.
    max_header_size: int = 16 * 1024
    #: Seconds a client has to complete its opening handshake.
    open_timeout: float | None = 10.0
    #: Seconds to wait for the peer's close frame (and TCP close) after ours.
    close_timeout: float | None = 10.0
    #: High-water mark of a connection's write buffer, in bytes: above it the
    #: connection stops reading from the peer (callback level) and
    #: ``await send()`` waits (coroutine level) until it drains.
    write_limit: int = 64 * 1024
    #: Hard cap of a connection's write buffer, in bytes; a peer that lets
    #: more pile up (it does not read) is disconnected. ``None``: no cap.
    max_write_buffer: int | None = 16 * 2**20
    #: Coroutine level: messages held for a handler that has not called
    #: ``recv()`` yet before reading from the socket pauses.
    max_queue: int | None = 16
    #: Coroutine level keepalive: seconds between pings, and seconds to wait
    #: for the pong before closing with 1011. ``None``: off.
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    #: Listen backlog passed to ``listen()``.
    backlog: int = 2048
    #: ``Server`` header value; ``None`` sends none.
    server_header: str | None = "fastws"
    #: Log one line per connection (logger ``fastws.access``).
    access_log: bool = True

    def replace(self, **changes: object) -> "Config":
        """A copy with some options changed."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


DEFAULTS = Config()
