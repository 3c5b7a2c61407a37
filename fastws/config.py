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
    #: Negotiate permessage-deflate (RFC 7692) with clients that offer it:
    #: ``"deflate"``, or ``None`` to decline every offer. docs/compression.md.
    compression: str | None = "deflate"
    #: permessage-deflate: LZ77 window of the server's compressor, as log2
    #: bytes (8-15; 12 = 4 KiB). A client may ask for less, never more.
    deflate_server_max_window_bits: int = 12
    #: Window asked of clients that allow it (8-15); ``None``: don't ask
    #: (they may use 15, and the server inflates with a 32 KiB window).
    deflate_client_max_window_bits: int | None = 12
    #: Reset the compressor (server) / ask clients to reset theirs after
    #: every message: zlib memory is then freed between messages, at the
    #: cost of compression across similar messages.
    deflate_server_no_context_takeover: bool = False
    deflate_client_no_context_takeover: bool = False
    #: zlib compression level (0-9, -1 = zlib's default 6) and memLevel (1-9;
    #: 5 = a 16 KiB hash table) of the server's compressor.
    deflate_level: int = 6
    deflate_mem_level: int = 5
    #: Messages shorter than this (bytes) are sent uncompressed, which RFC
    #: 7692 allows for any message.
    deflate_min_size: int = 32

    def __post_init__(self) -> None:
        if self.compression not in (None, "deflate"):
            raise ValueError(f"unsupported compression: {self.compression!r} (use 'deflate' or None)")
        if not 8 <= self.deflate_server_max_window_bits <= 15:
            raise ValueError("deflate_server_max_window_bits must be between 8 and 15")
        bits = self.deflate_client_max_window_bits
        if bits is not None and not 8 <= bits <= 15:
            raise ValueError("deflate_client_max_window_bits must be between 8 and 15, or None")
        if not -1 <= self.deflate_level <= 9:
            raise ValueError("deflate_level must be between -1 and 9")
        if not 1 <= self.deflate_mem_level <= 9:
            raise ValueError("deflate_mem_level must be between 1 and 9")
        if self.deflate_min_size < 0:
            raise ValueError("deflate_min_size must be >= 0")

    def replace(self, **changes: object) -> "Config":
        """A copy with some options changed."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


DEFAULTS = Config()
