"""A fallback session: an asyncio transport made of HTTP requests.

A session *is* the transport of an ordinary :class:`~fastws.Connection`:
the connection writes WebSocket frames to it and reads frames from it, so
both API levels, the rooms, limits, metrics and the close handshake work on
a session exactly as on a socket. Down, the frames the connection writes are
parsed (``FrameReader`` without masks) into numbered messages kept in a
bounded outbox until the client acknowledges them, and sent on the session's
current SSE stream or long poll. Up, the messages a client POSTs are framed
(masked, as a client would) and fed to the connection, once each.

What the connection sees of the client:

- its close frame, when the client POSTs ``close``; the connection's own close
  frame is answered at once (the client learns the code from the ``close``
  event);
- a pong for each ping (sessions have their own liveness: ``fallback_timeout``);
- flow control: ``pause_writing`` above half the outbox, ``resume_writing``
  below a quarter (acks trim it); the connection's ``pause_reading`` holds
  uploads (the POST waits), so a slow handler slows its client.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from collections import deque
from typing import TYPE_CHECKING, Any

from ...codec import frame as _frame
from ...exceptions import ProtocolError
from ...types import CloseCode

if TYPE_CHECKING:
    from ...config import Config
    from ...connection import Connection

__all__ = ["Session"]

logger = logging.getLogger("fastws.fallback")

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 1, 2, 8, 9, 10

#: Longest wait of a POST for a handler that does not read (then it is
#: answered without taking its messages; the client sends them again).
UPLOAD_HOLD = 1.0

#: One message down: (sequence number, "t" or "b", text or base64).
Message = tuple[int, str, str]


class Session:
    """One client of the HTTP fallback; see the module. Implements the part of
    ``asyncio.Transport`` a ``Connection`` uses."""

    def __init__(
        self,
        sid: str,
        token: str,
        transport_name: str,
        config: "Config",
        extra: dict[str, Any],
        on_gone: Any,
    ) -> None:
        self.id = sid
        self.token = token
        self.transport_name = transport_name
        self.config = config
        self._extra = dict(extra, fastws_transport=transport_name)
        self._on_gone = on_gone  # the registry forgets the session
        self._loop = asyncio.get_running_loop()
        self.conn: "Connection | None" = None
        #: The handshake's answer: 101 once open, else the refusal's bytes.
        self.opened: asyncio.Future[bytes] = self._loop.create_future()
        self._head = b""
        self._reader = _frame.FrameReader(max_message_size=None, require_mask=False)
        self._mask = os.urandom(4)
        # Down: messages not yet acknowledged, and their size.
        self.outbox: deque[Message] = deque()
        self.outbox_bytes = 0
        self.seq = 0  # the last sequence number given
        #: The session's end as the client will see it: {"code", "reason"}.
        self.close_event: dict[str, Any] | None = None
        self._high = config.fallback_max_outbox // 2
        self._low = config.fallback_max_outbox // 4
        self._high_count = config.fallback_max_outbox_messages // 2
        self._low_count = config.fallback_max_outbox_messages // 4
        self._write_paused = False
        self._closing = False
        self._lost = False
        # Up: the highest upload sequence number handed to the connection.
        self.received = 0
        self._reading_paused = False
        self._resumed: asyncio.Future[None] | None = None
        #: The request in progress that holds the session (stream, poll, POST).
        self.stream: Any = None
        self.posting = False
        self._flush_scheduled = False
        self.last_activity = self._loop.time()
        self._idle = self._loop.call_later(config.fallback_timeout, self._check_idle)

    def use(self, transport_name: str) -> None:
        """The client now uses this transport (``ws.transport_name``)."""
        self.transport_name = transport_name
        self._extra["fastws_transport"] = transport_name

    # -- asyncio.Transport, as the connection uses it ----------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass  # the outbox has its own limits (fallback_max_outbox)

    def get_write_buffer_size(self) -> int:
        return self.outbox_bytes

    def is_closing(self) -> bool:
        return self._closing

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        self._reading_paused = False
        if self._resumed is not None and not self._resumed.done():
            self._resumed.set_result(None)

    def writelines(self, data: Any) -> None:
        self.write(b"".join(data))

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._lost:
            return
        if not self.opened.done():
            self._handshake_answer(bytes(data))
            return
        reader = self._reader
        reader.feed_data(data)
        while True:
            try:
                event = reader.next_event()
            except ProtocolError:  # our own connection's frames: cannot happen
                logger.exception("session %s: bad frame from the connection", self.id)
                self.abort()
                return
            if event is None:
                break
            opcode, payload = event
            if opcode == OP_TEXT:
                self._queue("t", payload.decode("utf-8"))
            elif opcode == OP_BINARY:
                self._queue("b", base64.b64encode(payload).decode("ascii"))
            elif opcode == OP_PING:
                # Liveness is the session's own business: answer at once.
                self._loop.call_soon(self._feed, _frame.encode_frame(OP_PONG, payload, mask=self._mask))
            elif opcode == OP_CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else CloseCode.NO_STATUS_RCVD
                reason = payload[2:].decode("utf-8", "replace")
                if self.close_event is None:
                    self.close_event = {"code": code, "reason": reason}
                    # The client's answer to the server's close frame.
                    self._loop.call_soon(self._feed, _frame.encode_frame(OP_CLOSE, payload[:2], mask=self._mask))
                self._schedule_flush()
        if self.outbox_bytes > self.config.fallback_max_outbox:
            # Only a sender that ignores flow control gets here (the callback
            # level's send does not wait): the client is not keeping up.
            if self.conn is not None and self.close_event is None:
                logger.warning(
                    "session %s: %d messages / %d bytes not acknowledged; closing with 1013",
                    self.id, len(self.outbox), self.outbox_bytes,
                )  # fmt: skip
                self._loop.call_soon(self.conn.close, CloseCode.TRY_AGAIN_LATER, "fallback outbox full")
        elif not self._write_paused and self.conn is not None and (
            self.outbox_bytes > self._high or len(self.outbox) > self._high_count
        ):
            self._write_paused = True
            self.conn.pause_writing()

    def close(self) -> None:
        """The connection is done (after the close handshake): it is told at
        once; the session stays until the client has the close event."""
        if self._closing:
            return
        self._closing = True
        if self.close_event is None:
            self.close_event = {"code": CloseCode.ABNORMAL_CLOSURE, "reason": ""}
        self._schedule_flush()
        self._loop.call_soon(self._connection_lost)

    def abort(self) -> None:
        """End now: the connection sees the transport lost; the session is gone."""
        self._closing = True
        if self.close_event is None:
            self.close_event = {"code": CloseCode.ABNORMAL_CLOSURE, "reason": ""}
        self._schedule_flush()
        self._loop.call_soon(self._connection_lost)
        self.forget()

    def _connection_lost(self) -> None:
        if self._resumed is not None and not self._resumed.done():
            self._resumed.set_result(None)  # an upload that waits is answered
        if not self._lost:
            self._lost = True
            if self.conn is not None:
                self.conn.connection_lost(None)

    def forget(self) -> None:
        """Drop the session from its registry and stop its timer."""
        self._idle.cancel()
        self._on_gone(self)

    # -- the handshake --------------------------------------------------------

    def _handshake_answer(self, data: bytes) -> None:
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            return
        head, rest = self._head[: end + 4], self._head[end + 4 :]
        self._head = b""
        if head.startswith(b"HTTP/1.1 101"):
            self.opened.set_result(head)
            if rest:
                self.write(rest)
        else:
            self.opened.set_result(head + rest)  # a refusal, sent as it is

    def _feed(self, frames: bytes) -> None:
        if not self._lost and self.conn is not None:
            self.conn.data_received(frames)

    # -- down -------------------------------------------------------------------

    def _queue(self, kind: str, data: str) -> None:
        self.seq += 1
        self.outbox.append((self.seq, kind, data))
        self.outbox_bytes += len(data) + 16
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        # Everything queued in one loop iteration goes out in one write.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        stream = self.stream
        if stream is not None:
            stream.deliver(self)

    def after(self, last: int) -> list[Message]:
        """The messages after sequence number ``last``."""
        return [m for m in self.outbox if m[0] > last]

    def ack(self, last: int) -> None:
        """The client has every message down to ``last``: forget them."""
        outbox = self.outbox
        while outbox and outbox[0][0] <= last:
            _, _, data = outbox.popleft()
            self.outbox_bytes -= len(data) + 16
        if self._write_paused and self.outbox_bytes <= self._low and len(outbox) <= self._low_count and self.conn is not None:
            self._write_paused = False
            self.conn.resume_writing()

    # -- up -------------------------------------------------------------------------

    async def upload(self, first: int, messages: list[Any]) -> int:
        """Hand the client's messages numbered from ``first`` to the
        connection, each once; the highest number handed."""
        frames = []
        seq = last = first - 1
        for item in messages:
            seq += 1
            if seq <= self.received:
                continue  # sent again after a lost answer: already delivered
            kind, data = item[0], item[1]
            if kind == "t":
                frames.append(_frame.encode_frame(OP_TEXT, data.encode("utf-8"), mask=self._mask))
            else:
                frames.append(_frame.encode_frame(OP_BINARY, base64.b64decode(data, validate=True), mask=self._mask))
            last = seq
        if frames:
            deadline = self._loop.time() + UPLOAD_HOLD
            while self._reading_paused and not self._lost:
                # The handler (or the client's acks) is behind: this POST
                # waits, and with it the client, but not for long: answered
                # without taking the messages, the client sends them again
                # with its latest ack, which may be what lets the handler
                # go on. If the POST is dropped meanwhile, nothing of it
                # counts as received either.
                left = deadline - self._loop.time()
                if left <= 0:
                    return self.received
                self._resumed = self._loop.create_future()
                try:
                    await asyncio.wait_for(asyncio.shield(self._resumed), left)
                except asyncio.TimeoutError:
                    return self.received
            if last > self.received:
                self.received = last
                self._feed(b"".join(frames))
        return self.received

    def client_close(self, code: int, reason: str) -> None:
        """The client closes: the connection gets its close frame."""
        payload = code.to_bytes(2, "big") + reason.encode("utf-8")
        self._feed(_frame.encode_frame(OP_CLOSE, payload, mask=self._mask))

    # -- liveness -----------------------------------------------------------------------

    def touch(self) -> None:
        self.last_activity = self._loop.time()

    def _check_idle(self) -> None:
        timeout = self.config.fallback_timeout
        now = self._loop.time()
        if self.stream is None and not self.posting and now - self.last_activity >= timeout:
            if not self._closing:
                logger.info("session %s: no request for %.0fs; closing (1006)", self.id, timeout)
            self.abort()
            return
        wait = timeout if self.stream is not None or self.posting else timeout - (now - self.last_activity)
        self._idle = self._loop.call_later(max(0.05, wait), self._check_idle)
