"""The connection: an asyncio protocol that does the handshake, then frames.

One :class:`Connection` per TCP connection. In the handshake phase httptools
parses the request; in the frame phase the sans-I/O ``FrameReader`` (compiled,
see ``_frame.pyx``) turns bytes into events, which go straight to the user's
callback-level handler: no coroutine, future or queue per message. The
coroutine level (``fastws.asyncio``) is a handler on top of this class.

States follow RFC 6455: CONNECTING -> OPEN -> CLOSING -> CLOSED.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import httptools

from . import _impl
from .exceptions import Close, ConnectionClosedError, ConnectionClosedOK, InvalidHandshake
from .http import Headers, Request, Response, check_request, error_response, make_response, upgrade_required

if TYPE_CHECKING:
    from .server import ServerState

__all__ = ["Connection", "Handler", "State", "CloseCode"]

logger = logging.getLogger("fastws")
access_logger = logging.getLogger("fastws.access")

_frame = _impl.frame
_close_payload = _frame.close_payload
_parse_close = _frame.parse_close
_FrameProtocolError = _frame.ProtocolError
FLAG_RSV1: int = _frame.FLAG_RSV1
OP_TEXT: int = _frame.OP_TEXT
OP_BINARY: int = _frame.OP_BINARY
OP_CLOSE: int = _frame.OP_CLOSE
OP_PING: int = _frame.OP_PING
OP_PONG: int = _frame.OP_PONG

_ids = itertools.count(1)


class State(enum.IntEnum):
    """Connection state (RFC 6455 section 4 and 7)."""

    CONNECTING = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3


CONNECTING, OPEN, CLOSING, CLOSED = 0, 1, 2, 3


class CloseCode(enum.IntEnum):
    """Close codes of RFC 6455 section 7.4.1 and the IANA registry."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005
    ABNORMAL_CLOSURE = 1006
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014


# Why reading from a peer is paused; reading resumes when no reason is left.
PAUSE_WRITE_BUFFER = 1  # our write buffer is over write_limit
PAUSE_QUEUE = 2  # the coroutine-level receive queue is full
PAUSE_USER = 4  # the handler called pause_reading()
PAUSE_HANDSHAKE = 8  # process_request is deciding
PAUSE_FAILING = 16  # a failure is held back by _defer (the reader is not finished)


class Handler:
    """Base class of a callback-level handler; override what you need.

    The server makes one handler per connection by calling the class (or any
    factory) you pass to :func:`fastws.serve` with no arguments. Callbacks run
    on the event loop and must not block; ``ws.send()`` writes at once.
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


class Connection:
    """One WebSocket connection (server side) at the callback level.

    Public attributes: ``request`` (path, headers), ``remote_address``,
    ``local_address``, ``subprotocol``, ``state``, ``close_code``,
    ``close_reason``, ``id``; methods ``send``, ``close``, ``ping``, ``pong``.
    """

    def __init__(self, server: "ServerState") -> None:
        self._server = server
        self._config = server.config
        self._num = next(_ids)
        self._uuid: uuid.UUID | None = None
        self._state = CONNECTING
        self._transport: asyncio.Transport | None = None
        self._started = time.monotonic()
        self.request: Request | None = None
        self._response: Response | None = None
        self._head = b""  # the 101 sent, parsed into .response on demand
        self.remote_address: Any = None
        self.local_address: Any = None
        self.subprotocol: str | None = None
        #: The close frame received (``Close(code, reason)``), None until one is.
        self.close_rcvd: Close | None = None
        #: The close frame sent, None until one is.
        self.close_sent: Close | None = None
        #: Whether the peer's close came first (None until both are known).
        self.close_rcvd_then_sent: bool | None = None
        self._handler: Any = None
        self._on_message: Callable[[Connection, bytes, bool], Any] | None = None
        self._on_pong: Callable[[Connection, bytes], Any] | None = None
        self._on_ping: Callable[[Connection, bytes], Any] | None = None
        self._on_drain: Callable[[Connection], Any] | None = None
        self._opened = False
        self._read_paused = 0
        self._write_paused = False
        self._timer: asyncio.TimerHandle | None = None
        # Handshake phase.
        self._parser: httptools.HttpRequestParser | None = None
        self._hs_size = 0
        self._hs_done = False
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._reader: Any = None
        self._writer = _frame.FrameWriter()
        #: permessage-deflate state (fastws.compression) once negotiated, else None.
        self._deflate: Any = None
        self._batching = False
        self._batch: list[bytes] = []
        self._spare: list[bytes] = []
        self._batch_size = 0
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._lost_waiter: asyncio.Future[None] | None = None
        self._public: Any = self
        self._has_pending: Callable[[], bool] | None = None
        self._deferred: tuple[Callable[..., None], tuple[Any, ...]] | None = None

    # -- public API -----------------------------------------------------

    @property
    def id(self) -> uuid.UUID:
        """A unique identifier of the connection (for logs and routing)."""
        if self._uuid is None:
            self._uuid = uuid.uuid4()
        return self._uuid

    @property
    def response(self) -> Response | None:
        """The handshake response sent: the 101, or the HTTP rejection."""
        if self._response is None and self._head:
            self._response = Response.parse_head(self._head)
        return self._response

    @response.setter
    def response(self, value: Response | None) -> None:
        self._response = value

    @property
    def state(self) -> State:
        """CONNECTING, OPEN, CLOSING or CLOSED."""
        return State(self._state)

    @property
    def close_code(self) -> int | None:
        """The close code received, 1006 if closed without one, else None."""
        if self.close_rcvd is not None:
            return self.close_rcvd.code
        return 1006 if self._state == CLOSED else None

    @property
    def close_reason(self) -> str | None:
        """The close reason received, ``""`` if none, None while open."""
        if self.close_rcvd is not None:
            return self.close_rcvd.reason
        return "" if self._state == CLOSED else None

    @property
    def write_buffer_size(self) -> int:
        """Bytes accepted by ``send`` and not yet written to the socket."""
        t = self._transport
        buffered = t.get_write_buffer_size() if t is not None and not t.is_closing() else 0
        return buffered + self._batch_size

    @property
    def writable(self) -> bool:
        """False while the write buffer is above ``write_limit``."""
        return not self._write_paused

    def send(self, data: str | bytes | bytearray | memoryview, text: bool | None = None) -> None:
        """Send one message: ``str`` as text, bytes-like as binary.

        ``text`` overrides the frame type (``send(b"...", text=True)`` sends
        bytes that are UTF-8 as a text frame without decoding them). Raises
        :class:`ConnectionClosed` if the connection is not open. With
        permessage-deflate negotiated the message is compressed (unless it
        is shorter than ``deflate_min_size``).
        """
        if self._state != OPEN:
            raise self._closed_exc()
        if text is None:
            opcode = OP_TEXT if isinstance(data, str) else OP_BINARY
        else:
            opcode = OP_TEXT if text else OP_BINARY
        if self._deflate is None:
            self._write(self._writer.frame(opcode, data))
        else:
            self._write(self._deflate.frame(opcode, data))
        if self._write_paused:
            self._check_write_buffer()

    def send_frame(self, opcode: int, data: str | bytes, fin: bool = True) -> None:
        """Send one frame (fragmented sends: opcode 0 is continuation).

        With permessage-deflate negotiated, the fragments of a message are
        compressed as one deflate stream (RSV1 on the first frame).
        """
        if self._state != OPEN:
            raise self._closed_exc()
        if self._deflate is None:
            self._write(self._writer.frame(opcode, data, fin))
        else:
            self._write(self._deflate.fragment(opcode, data, fin))
        if self._write_paused:
            self._check_write_buffer()

    def ping(self, data: str | bytes = b"") -> None:
        """Send a ping; the pong arrives at the handler's ``on_pong``."""
        if self._state != OPEN:
            raise self._closed_exc()
        self._write(self._writer.frame(OP_PING, data))

    def pong(self, data: str | bytes = b"") -> None:
        """Send an unsolicited pong (a unidirectional heartbeat)."""
        if self._state != OPEN:
            raise self._closed_exc()
        self._write(self._writer.frame(OP_PONG, data))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake.

        Everything sent before is written before the close frame. The TCP
        connection is closed when the peer answers, or after
        ``close_timeout``. Does nothing if already closing.
        """
        if self._state == OPEN:
            self._send_close(code, reason)
            self._state = CLOSING
            if self._deferred is not None:
                # The peer's close (or its error) was already read: finish.
                self.run_deferred()
                return
            self._start_timer(self._config.close_timeout, self._close_timeout)
        elif self._state == CONNECTING and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Drop the TCP connection now, without a closing handshake."""
        if self._transport is not None:
            self._transport.abort()

    def pause_reading(self) -> None:
        """Stop reading from the peer until :meth:`resume_reading`."""
        self._pause(PAUSE_USER)

    def resume_reading(self) -> None:
        """Undo :meth:`pause_reading`."""
        self._resume(PAUSE_USER)

    def respond(self, status: int, text: str) -> Response:
        """Build a plain-text HTTP response (for ``process_request``)."""
        return make_response(status, text)

    async def wait_closed(self) -> None:
        """Wait until the TCP connection is closed."""
        if self._state == CLOSED:
            return
        if self._lost_waiter is None:
            self._lost_waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._lost_waiter)

    def _handler_public(self) -> Any:
        """The object user code sees for this connection."""
        return self._public

    def __repr__(self) -> str:
        return f"<fastws.Connection #{self._num} {State(self._state).name} {self.remote_address}>"

    # -- asyncio.Protocol -----------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()
        self.remote_address = transport.get_extra_info("peername")
        self.local_address = transport.get_extra_info("sockname")
        transport.set_write_buffer_limits(high=self._config.write_limit)  # type: ignore[attr-defined]
        self._server.connections.add(self)
        self._parser = httptools.HttpRequestParser(self)
        self._start_timer(self._config.open_timeout, self._open_timeout)
        try:
            self._handler = handler = self._server.make_handler()
            # The coroutine level wraps this connection in its own object,
            # which is what hooks and server.connections then see.
            bind = getattr(handler, "_fastws_bind", None)
            if bind is not None:
                self._public = bind(self)
        except Exception:
            logger.exception("conn %d: handler factory failed", self._num)
            self._transport.abort()  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        if self._state == OPEN or self._state == CLOSING:
            self._frames_received(data)
        elif self._state == CONNECTING:
            self._handshake_received(data)

    def eof_received(self) -> bool | None:
        # The peer half-closed: nothing more will come, so close our side too.
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        was_open = self._opened
        self._state = CLOSED
        self._cancel_timer()
        self._server.connections.discard(self)
        if self._lost_waiter is not None and not self._lost_waiter.done():
            self._lost_waiter.set_result(None)
        if not was_open:
            return
        rcvd = self.close_rcvd
        code, reason = (rcvd.code, rcvd.reason) if rcvd is not None else (1006, "")
        if self._config.access_log:
            access_logger.info(
                "conn %d closed %d%s after %.3fs%s",
                self._num,
                code,
                f" {reason!r}" if reason else "",
                time.monotonic() - self._started,
                f" (sent {self.close_sent.code})" if self.close_sent and self.close_sent.code != code else "",
            )
        try:
            self._handler.on_close(self, code, reason)
        except Exception:
            logger.exception("conn %d: error in on_close", self._num)

    def pause_writing(self) -> None:
        self._write_paused = True
        # A peer that does not read must not make us buffer without bound:
        # stop reading from it too (its requests are what fill our buffer).
        self._pause(PAUSE_WRITE_BUFFER)
        self._check_write_buffer()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._resume(PAUSE_WRITE_BUFFER)
        if self._on_drain is not None:
            try:
                self._on_drain(self)
            except Exception:
                self._user_error("on_drain")

    # -- httptools callbacks (handshake phase) -----------------------------

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._hs_done = True

    # -- handshake ------------------------------------------------------

    def _handshake_received(self, data: bytes) -> None:
        parser = self._parser
        assert parser is not None
        rest = b""
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            rest = data[exc.args[0]:]
        except httptools.HttpParserError as exc:
            self._reject(make_response(400, f"Malformed HTTP request: {exc}.\n"), "malformed")
            return
        self._hs_size += len(data) - len(rest)
        if self._hs_size > self._config.max_header_size:
            limit = self._config.max_header_size
            self._reject(
                make_response(431, f"Request header block is larger than {limit} bytes.\n"),
                "headers too large",
            )
            return
        if not self._hs_done:
            return
        self._parser = None
        version = parser.get_http_version()
        method = parser.get_method().decode("latin-1")
        self.request = Request(
            self._url.decode("latin-1"), Headers(self._headers), method, version
        )
        self._headers = []
        self._pause(PAUSE_HANDSHAKE)  # nothing more is read until we decide
        try:
            result = self._server.process_request(self, self.request)
        except Exception:
            logger.exception("conn %d: error in process_request", self._num)
            self._reject(make_response(500, "Internal server error.\n"), "process_request failed")
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(self._await_process_request(result, rest))
            self._server.track_task(task)
            return
        self._finish_handshake(result, rest)

    async def _await_process_request(self, result: Awaitable[Response | None], rest: bytes) -> None:
        try:
            response = await result
        except Exception:
            logger.exception("conn %d: error in process_request", self._num)
            self._reject(make_response(500, "Internal server error.\n"), "process_request failed")
            return
        if self._state == CONNECTING:
            self._finish_handshake(response, rest)

    def _finish_handshake(self, response: Response | None, rest: bytes) -> None:
        request = self.request
        assert request is not None
        if response is not None:
            self._reject(response, "process_request")
            return
        try:
            accept, is_upgrade = check_request(request)
            if not is_upgrade:
                self._reject(self._server.plain_http_response(self, request), "not an upgrade")
                return
            extra = self._server.negotiate(self, request)
        except InvalidHandshake as exc:
            self._reject(error_response(exc), str(exc))
            return
        head = _impl.handshake.build_101(accept, extra)
        hook = self._server.process_response
        if hook is not None:
            response = Response.parse_head(head)
            try:
                result = hook(self._public, request, response)
            except Exception:
                logger.exception("conn %d: error in process_response", self._num)
                self._reject(make_response(500, "Internal server error.\n"), "process_response failed")
                return
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(self._await_process_response(result, response, rest))
                self._server.track_task(task)
                return
            self._accept(result if result is not None else response, rest)
            return
        self._head = head
        self._accept(None, rest)

    async def _await_process_response(self, result: Awaitable[Response | None], response: Response, rest: bytes) -> None:
        try:
            final = await result
        except Exception:
            logger.exception("conn %d: error in process_response", self._num)
            self._reject(make_response(500, "Internal server error.\n"), "process_response failed")
            return
        if self._state == CONNECTING:
            self._accept(final if final is not None else response, rest)

    def _accept(self, response: Response | None, rest: bytes) -> None:
        """Send the 101 (or what process_response chose instead) and open."""
        request = self.request
        assert request is not None
        if response is not None:
            if response.status_code != 101:
                self._reject(response, "process_response")
                return
            self.response = response
            head = response.serialize()
            if self._deflate is not None and "permessage-deflate" not in (
                response.headers.get("Sec-WebSocket-Extensions") or ""
            ):
                # process_response sent a 101 without the extension: the
                # client will not inflate, so nothing may be compressed.
                self._deflate = None
        else:
            head = self._head
        transport = self._transport
        assert transport is not None
        transport.write(head)
        self._cancel_timer()
        self._state = OPEN
        if self._deflate is None:
            self._reader = _frame.FrameReader(max_message_size=self._config.max_message_size)
        else:
            # The reader limits what arrives on the wire; deflate may expand
            # a message, so it gets room for that, and the message itself is
            # held to max_message_size after inflating (or, uncompressed, in
            # _process_frames).
            self._reader = _frame.FrameReader(max_message_size=self._deflate.wire_limit, rsv1_allowed=True)
        handler = self._handler
        self._on_message = handler.on_message
        self._on_pong = getattr(handler, "on_pong", None)
        self._on_ping = getattr(handler, "on_ping", None)
        self._on_drain = getattr(handler, "on_drain", None)
        self._has_pending = getattr(handler, "has_pending", None)
        if self._config.access_log:
            access_logger.info(
                'conn %d %s "%s %s" 101%s',
                self._num,
                _format_address(self.remote_address),
                request.method,
                request.path,
                f" subprotocol={self.subprotocol}" if self.subprotocol else "",
            )
        self._opened = True
        self._resume(PAUSE_HANDSHAKE)
        try:
            handler.on_connect(self)
        except Exception:
            self._user_error("on_connect")
            return
        if rest and self._state != CLOSED:
            self._frames_received(rest)

    def _reject(self, response: Response, why: str) -> None:
        """Answer over HTTP and close: the WebSocket never opened."""
        self._cancel_timer()
        self.response = response
        transport = self._transport
        if self._config.access_log:
            request = self.request
            access_logger.info(
                'conn %d %s "%s %s" %d (%s)',
                self._num,
                _format_address(self.remote_address),
                request.method if request else "-",
                request.path if request else "-",
                response.status_code,
                why,
            )
        self._state = CLOSED
        if transport is not None and not transport.is_closing():
            if "Connection" not in response.headers:
                response.headers["Connection"] = "close"
            data = response.serialize()
            if self.request is not None and self.request.method == "HEAD":
                # RFC 9110 section 9.3.2: same headers as GET, no content.
                data = data[: len(data) - len(response.body)]
            transport.write(data)
            transport.close()

    def _open_timeout(self) -> None:
        self._timer = None
        if self._state == CONNECTING and self._transport is not None:
            logger.info(
                "conn %d %s: opening handshake not complete after %ss; closing",
                self._num,
                _format_address(self.remote_address),
                self._config.open_timeout,
            )
            self._transport.abort()

    # -- frame phase ----------------------------------------------------

    def _frames_received(self, data: bytes) -> None:
        # Everything the handlers send while this chunk is processed goes out
        # in one write: a pipelining client costs one syscall per read, not
        # one per message. (If the coroutine level already corked the
        # connection, its scheduled flush covers this chunk too.)
        if self._batching:
            self._process_frames(data)
            return
        self._batching = True
        try:
            self._process_frames(data)
        finally:
            self._flush()

    def cork(self) -> None:
        """Batch what is sent until the end of this event-loop iteration.

        The coroutine level corks on each send, so the messages many tasks
        send in one iteration leave in one write per connection.
        """
        if not self._batching:
            self._batching = True
            self._loop.call_soon(self._flush)

    def _write(self, data: bytes) -> None:
        """Write now, or add to the batch (written at write_limit bytes)."""
        if not self._batching:
            self._transport.write(data)  # type: ignore[union-attr]
            return
        self._batch.append(data)
        self._batch_size += len(data)
        if self._batch_size >= self._config.write_limit:
            # Keep a batch small enough that flow control still sees it.
            self._write_batch()

    def _write_batch(self) -> None:
        batch = self._batch
        if not batch:
            return
        # Two lists, swapped: a write can re-enter (pause_writing -> a
        # handler's send), and what it adds must land in the other list.
        self._batch = self._spare
        self._spare = batch
        self._batch_size = 0
        transport = self._transport
        # Nothing is batched after we close or abort the transport (sends
        # need OPEN, and every close flushes first), so no is_closing() call.
        if self._state != CLOSED:
            if len(batch) == 1:
                transport.write(batch[0])  # type: ignore[union-attr]
            else:
                transport.writelines(batch)  # type: ignore[union-attr]  # uvloop: one writev
        batch.clear()
        if self._write_paused:
            self._check_write_buffer()

    def _flush(self) -> None:
        """Write the batch (if any) and stop batching."""
        if self._batching:
            self._write_batch()
            self._batching = False

    def _process_frames(self, data: bytes) -> None:
        reader = self._reader
        reader.feed_data(data)
        while True:
            try:
                event = reader.next_event()
            except _FrameProtocolError as exc:
                if not self._defer(self._fail, exc.code, str(exc)):
                    self._fail(exc.code, str(exc))
                return
            if event is None:
                return
            opcode = event[0]
            if opcode == OP_TEXT or opcode == OP_BINARY:
                # Messages after our close frame are read (to find the
                # peer's close) but no longer delivered (RFC 6455 5.5.1).
                if self._state == OPEN:
                    if self._deflate is not None and len(event[1]) > self._deflate.max_size:
                        # The reader's limit has room for deflate's expansion
                        # (see _accept); an uncompressed message gets none.
                        self._message_failed(1009, f"message of {len(event[1])} bytes exceeds max_message_size")
                        return
                    try:
                        self._on_message(self, event[1], opcode == OP_TEXT)  # type: ignore[misc]
                    except Exception:
                        self._user_error("on_message")
                        return
            elif opcode == OP_PING:
                if self._state == OPEN:
                    self._write(self._writer.frame(OP_PONG, event[1]))
                    if self._on_ping is not None:
                        try:
                            self._on_ping(self, event[1])
                        except Exception:
                            self._user_error("on_ping")
                            return
            elif opcode == OP_PONG:
                if self._on_pong is not None:
                    try:
                        self._on_pong(self, event[1])
                    except Exception:
                        self._user_error("on_pong")
                        return
            elif opcode == OP_CLOSE:
                if not self._defer(self._close_received, event[1]):
                    self._close_received(event[1])
                return
            elif opcode & FLAG_RSV1 and self._deflate is not None:
                # A compressed message (the reader only lets RSV1 through
                # when permessage-deflate was negotiated). Off the branches
                # above, so uncompressed messages never test for it.
                if self._state == OPEN:
                    try:
                        data = self._deflate.inflate(event[1], opcode == OP_TEXT | FLAG_RSV1)
                    except _FrameProtocolError as exc:
                        self._message_failed(exc.code, str(exc))
                        return
                    try:
                        self._on_message(self, data, opcode == OP_TEXT | FLAG_RSV1)  # type: ignore[misc]
                    except Exception:
                        self._user_error("on_message")
                        return
            else:
                self._fail(1002, f"unexpected frame opcode {opcode:#x}")
                return

    def _message_failed(self, code: int, reason: str) -> None:
        """Fail for a message the codec accepted but we cannot (compression)."""
        if self._defer(self._fail, code, reason):
            # Unlike the codec after its own errors, the reader would go on
            # parsing what follows: read nothing more.
            self._pause(PAUSE_FAILING)
        else:
            self._fail(code, reason)

    def _defer(self, action: Callable[..., None], *args: Any) -> bool:
        """Hold back a close while the handler has messages it has not taken.

        The coroutine level queues messages and its handler runs later, so a
        close frame (or a protocol error) read in the same chunk as messages
        would otherwise end the connection before the handler answers them.
        The reader is finished after the close, so holding it back reads
        nothing more; the handler's queue calls run_deferred() once drained,
        and close_timeout bounds the wait.
        """
        pending = self._has_pending
        if self._state != OPEN or pending is None or not pending():
            return False
        self._deferred = (action, args)
        self._start_timer(self._config.close_timeout, self.run_deferred)
        return True

    def run_deferred(self) -> None:
        """Carry out a close held back by :meth:`_defer` (idempotent)."""
        deferred = self._deferred
        if deferred is None:
            return
        self._deferred = None
        self._cancel_timer()
        if self._state != CLOSED:
            deferred[0](*deferred[1])

    def _close_received(self, payload: bytes) -> None:
        code, reason = _parse_close(payload)
        self.close_rcvd = Close(code, reason)
        if self._state == OPEN:
            self.close_rcvd_then_sent = True
            # Echo the code (RFC 6455 section 5.5.1); 1005 means "none", so
            # an empty close is answered with an empty close.
            self._send_close(code, "")
            self._state = CLOSING
        # The server closes TCP first (RFC 6455 section 7.1.1); close()
        # flushes what is buffered, the close frame included.
        self._cancel_timer()
        self._flush()
        self._transport.close()  # type: ignore[union-attr]

    def _send_close(self, code: int, reason: str) -> None:
        self.close_sent = Close(code, reason)
        if self.close_rcvd_then_sent is None:
            self.close_rcvd_then_sent = self.close_rcvd is not None
        try:
            payload = _close_payload(code, reason)
        except ValueError:
            # A reason over 123 bytes: cut it at a character boundary.
            raw = reason.encode("utf-8")[:123].decode("utf-8", "ignore")
            payload = _close_payload(code, raw)
        self._write(self._writer.frame(OP_CLOSE, payload))

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 section 7.1.7): close frame, then TCP."""
        logger.info("conn %d %s: closing with %d: %s", self._num, _format_address(self.remote_address), code, reason)
        if self._state == OPEN:
            self._send_close(code, reason)
        self._state = CLOSING
        self._cancel_timer()
        self._flush()
        self._transport.close()  # type: ignore[union-attr]

    def _user_error(self, where: str) -> None:
        logger.exception("conn %d: error in %s; closing with 1011", self._num, where)
        # The peer did nothing wrong: a normal closing handshake (not a
        # fail), so its close frame is read and on_close reports 1011.
        self.close(1011, "internal error")

    def _close_timeout(self) -> None:
        self._timer = None
        if self._state != CLOSED and self._transport is not None:
            logger.info(
                "conn %d %s: no close frame from the peer after %ss; dropping",
                self._num,
                _format_address(self.remote_address),
                self._config.close_timeout,
            )
            self._transport.abort()

    def _check_write_buffer(self) -> None:
        limit = self._config.max_write_buffer
        t = self._transport
        if limit is not None and t is not None and t.get_write_buffer_size() > limit:
            logger.warning(
                "conn %d %s: peer is not reading; %d bytes buffered > max_write_buffer %d; dropping",
                self._num,
                _format_address(self.remote_address),
                t.get_write_buffer_size(),
                limit,
            )
            self._state = CLOSING
            t.abort()

    # -- helpers --------------------------------------------------------

    def _pause(self, reason: int) -> None:
        if not self._read_paused and self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()
        self._read_paused |= reason

    def _resume(self, reason: int) -> None:
        was = self._read_paused
        self._read_paused &= ~reason
        if was and not self._read_paused and self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def _start_timer(self, delay: float | None, callback: Callable[[], None]) -> None:
        self._cancel_timer()
        if delay is not None:
            self._timer = asyncio.get_running_loop().call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _closed_exc(self) -> Exception:
        """The ConnectionClosed subclass that describes how this one ended."""
        rcvd = self.close_rcvd
        sent = self.close_sent
        ok = rcvd is not None and sent is not None and rcvd.code in _OK_CODES and sent.code in _OK_CODES
        cls = ConnectionClosedOK if ok else ConnectionClosedError
        return cls(rcvd, sent, self.close_rcvd_then_sent if rcvd is not None and sent is not None else None)


_OK_CODES = (1000, 1001, 1005)


def _format_address(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = address[0]
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address) if address else "-"
