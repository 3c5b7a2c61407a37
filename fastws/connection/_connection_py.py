"""The connection: the asyncio protocol that does the I/O of one WebSocket.

Owns I/O and nothing else: it feeds received bytes to the sans-I/O
:class:`~fastws.protocol.ServerProtocol`, hands the events it returns to the
face that attached itself, writes what the protocol queued (one write per
read: everything the handlers send while a chunk is processed leaves in one
``writev``), applies flow control both ways, runs the one timer the
protocol's ``deadline`` asks for, and calls the user's handshake hooks. It
takes no protocol decision.

Faces (the callback level, the coroutine level, and later rooms, metrics,
fallback transports and ASGI) use only what :class:`Connection` declares
(``_connection_c.pxd`` and ``__init__.pyi``); a face registers its callbacks
with :meth:`Connection.attach`.

One source, two builds: ``_connection_c.py`` is a link to this file compiled
with ``_connection_c.pxd``; this file is the pure-Python twin.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import os
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..codec import frame as _frame
from ..exceptions import ConnectionClosed
from ..protocol import ServerProtocol as _ServerProtocol
from ..protocol.http import Request, Response, format_address, make_response
from ..types import CloseCode, PauseReason, State

if TYPE_CHECKING:
    from ..protocol import Stats as _Stats
    from ..types import Close
    from . import ServerContext

__all__ = ["Connection"]

logger = logging.getLogger("fastws")
access_logger = logging.getLogger("fastws.access")

OP_TEXT: int = _frame.OP_TEXT
OP_BINARY: int = _frame.OP_BINARY
OP_PING: int = _frame.OP_PING
OP_PONG: int = _frame.OP_PONG
CONNECTING: int = State.CONNECTING
OPEN: int = State.OPEN
CLOSING: int = State.CLOSING
CLOSED: int = State.CLOSED
PAUSE_WRITE_BUFFER: int = PauseReason.WRITE_BUFFER
PAUSE_USER: int = PauseReason.USER
PAUSE_HANDSHAKE: int = PauseReason.HANDSHAKE

# State members by value: `state` returns one without an enum lookup.
_STATES = (State.CONNECTING, State.OPEN, State.CLOSING, State.CLOSED)

_ids = itertools.count(1)


def _loggable(path: str) -> str:
    """The request path for the access log, a ``token=`` value hidden
    (the dashboard's, or an application's)."""
    if "token=" not in path:
        return path
    return _TOKEN.sub(r"\1***", path)


_TOKEN = re.compile(r"([?&][A-Za-z_]*token=)[^&#]*")


class Connection:
    """One WebSocket connection (server side); the callback level's ``ws``.

    Public attributes: ``request`` (path, headers), ``response``,
    ``remote_address``, ``local_address``, ``scheme``, ``subprotocol``, ``state``,
    ``close_code``, ``close_reason``, ``id``; methods ``send``, ``close``,
    ``ping``, ``pong``, ``abort``, ``pause_reading``, ``resume_reading``.
    """

    def __init__(self, context: "ServerContext") -> None:
        self._ctx = context
        #: The server's frozen Config.
        self.config = context.config
        #: Connection number in log lines.
        self.num = next(_ids)
        self._uuid: uuid.UUID | None = None
        self._transport: asyncio.Transport = None  # type: ignore[assignment]
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._proto: _ServerProtocol = None  # type: ignore[assignment]
        self._started = 0.0
        self.remote_address: Any = None
        self.local_address: Any = None
        self._scheme: str | None = None
        self._tls = False
        #: Set by :func:`fastws.basic_auth` to the authenticated user.
        self.username: str | None = None
        #: What user code sees for this connection (set by the face).
        self.public: Any = self
        self._on_open: Callable[[Connection], Any] | None = None
        self._on_message: Callable[[Connection, bytes, bool], Any] = None  # type: ignore[assignment]
        self._on_close: Callable[[Connection, int, str], Any] | None = None
        self._on_ping: Callable[[Connection, bytes], Any] | None = None
        self._on_pong: Callable[[Connection, bytes], Any] | None = None
        self._on_drain: Callable[[Connection], Any] | None = None
        self._pending: Callable[[], int] | None = None
        self._process_request: Callable[[Any, Request], Any] | None = None
        self._opened = False
        self._read_paused = 0
        self._write_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._batching = False
        self._write_limit: int = context.config.write_limit
        self._lost_waiter: asyncio.Future[None] | None = None
        #: The server's counters, or None when metrics are off.
        self._stats: "_Stats | None" = context.stats
        #: Round-trip time of the last ping answered, in seconds (0 until one is).
        self.latency = 0.0
        self._ka_timer: asyncio.TimerHandle | None = None
        self._ka_payload: bytes | None = None
        self._ka_sent = 0.0
        #: Messages received (for idle_timeout: quiet checks compare it).
        self._received = 0
        self._idle_seen = 0
        self._idle_quiet = 0
        self._idle_timer: asyncio.TimerHandle | None = None

    # -- the face's side ------------------------------------------------

    def attach(
        self,
        public: Any,
        on_open: Callable[["Connection"], Any] | None,
        on_message: Callable[["Connection", bytes, bool], Any],
        on_close: Callable[["Connection", int, str], Any] | None,
        *,
        on_ping: Callable[["Connection", bytes], Any] | None = None,
        on_pong: Callable[["Connection", bytes], Any] | None = None,
        on_drain: Callable[["Connection"], Any] | None = None,
        pending: Callable[[], int] | None = None,
        process_request: Callable[[Any, Request], Any] | None = None,
    ) -> None:
        """Register the face of this connection (once, before the handshake).

        ``public`` is what user code receives for this connection (the
        connection itself at the callback level). The callbacks are called
        with the connection: ``on_open`` once open, ``on_message`` per
        message, ``on_close`` once closed (code 1006 if no close frame
        came), ``on_ping`` / ``on_pong`` per control frame, ``on_drain``
        when the write buffer falls below ``write_limit``. ``pending``
        returns how many messages the face holds that its handler has not
        taken: while it is not 0, the peer's close (or error) is held back
        until :meth:`release_close` (bounded by ``close_timeout``).
        ``process_request(public, request)`` runs after the server's own
        ``process_request`` option.
        """
        self.public = public
        self._on_open = on_open
        self._on_message = on_message
        self._on_close = on_close
        self._on_ping = on_ping
        self._on_pong = on_pong
        self._on_drain = on_drain
        self._pending = pending
        self._process_request = process_request

    def track_task(self, task: "asyncio.Future[Any]") -> None:
        """Keep a task of this connection referenced until it ends; the
        server waits for (then cancels) such tasks when it closes."""
        self._ctx.track_task(task)

    def cork(self) -> None:
        """Batch what is sent until the end of this event-loop iteration.

        The coroutine level corks on each send, so the messages many tasks
        send in one iteration leave in one write per connection.
        """
        if not self._batching:
            self._batching = True
            self._loop.call_soon(self._flush)

    def release_close(self) -> None:
        """The face took its pending messages: act on a held close now."""
        proto = self._proto
        if proto is not None and proto.close_pending:
            proto.complete_close(self._loop.time())
            self._after()

    @property
    def close_pending(self) -> bool:
        """True while the peer's close (or error) is read but not acted on."""
        return self._proto is not None and self._proto.close_pending

    def fail(self, code: int, reason: str) -> None:
        """Fail the connection with ``code`` (close frame, then TCP at once)."""
        self._proto.fail(code, reason)
        self._after()

    @property
    def close_exc(self) -> "ConnectionClosed":
        """The ConnectionClosed subclass that describes how this one ended."""
        return self._proto.close_exc

    # -- public API -----------------------------------------------------

    @property
    def id(self) -> uuid.UUID:
        """A unique identifier of the connection (for logs and routing)."""
        if self._uuid is None:
            self._uuid = uuid.uuid4()
        return self._uuid

    @property
    def scheme(self) -> str:
        """``"wss"`` over TLS, else ``"ws"``; behind a trusted proxy, what
        its ``X-Forwarded-Proto`` / ``Forwarded`` header says."""
        if self._scheme is None:
            return "wss" if self._tls else "ws"
        return self._scheme

    @scheme.setter
    def scheme(self, value: str) -> None:
        self._scheme = value

    @property
    def request(self) -> Request | None:
        """The opening handshake request (``path``, ``headers``)."""
        return None if self._proto is None else self._proto.request

    @property
    def response(self) -> Response | None:
        """The handshake response sent: the 101, or the HTTP refusal."""
        return None if self._proto is None else self._proto.response

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol agreed in the handshake, or None."""
        return None if self._proto is None else self._proto.subprotocol

    @property
    def state(self) -> State:
        """CONNECTING, OPEN, CLOSING or CLOSED."""
        return _STATES[0 if self._proto is None else self._proto.state]

    @property
    def close_rcvd(self) -> "Close | None":
        """The close frame received (``Close(code, reason)``), None until one is."""
        return None if self._proto is None else self._proto.close_rcvd

    @property
    def close_sent(self) -> "Close | None":
        """The close frame sent, None until one is."""
        return None if self._proto is None else self._proto.close_sent

    @property
    def close_rcvd_then_sent(self) -> bool | None:
        """Whether the peer's close came first (None until both are known)."""
        return None if self._proto is None else self._proto.close_rcvd_then_sent

    @property
    def close_code(self) -> int | None:
        """The close code received, 1006 if closed without one, else None."""
        rcvd = self.close_rcvd
        if rcvd is not None:
            return rcvd.code
        return CloseCode.ABNORMAL_CLOSURE if self.state is State.CLOSED else None

    @property
    def close_reason(self) -> str | None:
        """The close reason received, ``""`` if none, None while open."""
        rcvd = self.close_rcvd
        if rcvd is not None:
            return rcvd.reason
        return "" if self.state is State.CLOSED else None

    @property
    def write_buffer_size(self) -> int:
        """Bytes accepted by ``send`` and not yet written to the socket."""
        t = self._transport
        buffered = t.get_write_buffer_size() if t is not None and not t.is_closing() else 0
        return buffered + (0 if self._proto is None else self._proto.out_size)

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
        proto = self._proto
        proto.send_message(data, text)
        if self._batching:
            if proto.out_size >= self._write_limit:
                # Keep a batch small enough that flow control still sees it.
                self._write_out()
        elif not self._join_cork():
            self._write_out()

    def send_frame(self, opcode: int, data: str | bytes, fin: bool = True) -> None:
        """Send one frame of a fragmented message (opcode 0: continuation)."""
        self._proto.send_frame(opcode, data, fin)
        if self._batching:
            if self._proto.out_size >= self._write_limit:
                self._write_out()
        elif not self._join_cork():
            self._write_out()

    def write_frame(self, frame: bytes) -> bool:
        """Send a frame encoded once for many connections (broadcast, rooms).

        Returns False, sending nothing, if the connection is not open. A
        peer that lets more than ``max_write_buffer`` pile up is dropped.
        """
        if not self._proto.send_encoded(frame):
            return False
        if self._batching:
            if self._proto.out_size >= self._write_limit:
                self._write_out()
        elif not self._join_cork():
            self._write_out()
        return True

    def ping(self, data: str | bytes = b"") -> None:
        """Send a ping; the pong arrives at the handler's ``on_pong``."""
        self._proto.send_ping(data)
        if not self._batching:
            self._write_out()

    def pong(self, data: str | bytes = b"") -> None:
        """Send an unsolicited pong (a unidirectional heartbeat)."""
        self._proto.send_pong(data)
        if not self._batching:
            self._write_out()

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake.

        Everything sent before is written before the close frame. The TCP
        connection is closed when the peer answers, or after
        ``close_timeout``. Does nothing if already closing.
        """
        if self._proto is None:
            return
        self._proto.close(code, reason, self._loop.time())
        self._after()

    def abort(self) -> None:
        """Drop the TCP connection now, without a closing handshake."""
        if self._proto is not None:
            self._proto.abort()
        if self._transport is not None:
            self._transport.abort()

    def pause_reading(self, reason: int = PAUSE_USER) -> None:
        """Stop reading from the peer until :meth:`resume_reading`.

        Faces pass their own :class:`fastws.types.PauseReason`; reading
        resumes when every reason is lifted.
        """
        if not self._read_paused and self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()
        self._read_paused |= reason

    def resume_reading(self, reason: int = PAUSE_USER) -> None:
        """Undo :meth:`pause_reading` for ``reason``."""
        was = self._read_paused
        self._read_paused &= ~reason
        if was and not self._read_paused and self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    # -- rooms (fastws.rooms, through the server's hub) ---------------------

    @property
    def deflate(self) -> Any:
        """The agreed permessage-deflate state, or None (no compression)."""
        return None if self._proto is None else self._proto.deflate

    def subscribe(self, room: str, *, since: str | None = None, member: str | None = None) -> "asyncio.Future[int]":
        """Join ``room``: every message published to it reaches this client.

        Returns a future of the number of messages replayed (already done,
        0, without ``since``; a callback-level handler may ignore it).
        ``since`` (with ``room_history``): resume after this offset, the one
        the client last received; the future raises
        :class:`~fastws.HistoryGap` when they are not all kept (the member
        joins from now on). ``member``: this connection's name in the
        room's presence (default: its id).
        """
        return self._ctx.hub.subscribe(self, room, since=since, member=member)  # type: ignore[no-any-return]

    def unsubscribe(self, room: str) -> bool:
        """Leave ``room``; False if this connection was not in it."""
        return self._ctx.hub.unsubscribe(self, room)  # type: ignore[no-any-return]

    def publish(self, room: str, message: str | bytes | bytearray | memoryview, *, text: bool | None = None) -> None:
        """Send ``message`` to every member of ``room``, on every node (this
        connection too, if it is a member)."""
        self._ctx.hub.publish(room, message, text=text)

    @property
    def rooms(self) -> frozenset[str]:
        """The rooms this connection is in."""
        return self._ctx.hub.rooms_of(self)  # type: ignore[no-any-return]

    @property
    def transport_name(self) -> str:
        """How this client is connected: ``"websocket"``, or the fallback
        transport (``"sse"``, ``"polling"``) of an HTTP session."""
        t = self._transport
        name = None if t is None else t.get_extra_info("fastws_transport")
        return "websocket" if name is None else str(name)

    def hand_over(self, protocol: asyncio.BaseProtocol) -> bytes:
        """Give the TCP connection to another protocol after the request
        head (an HTTP face such as the fallback transports): this
        connection ends there, no WebSocket opens, and ``protocol`` gets
        ``connection_made``. Returns the bytes read behind the head (the
        start of a body); what arrives later goes to ``protocol``."""
        transport = self._transport
        rest = self._proto.hand_over()
        self.connection_lost(None)  # bookkeeping: it never opened, so no on_close
        self._transport = None  # type: ignore[assignment]
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        return rest

    def respond(self, status: int, text: str) -> Response:
        """Build a plain-text HTTP response (for ``process_request``)."""
        return make_response(status, text)

    async def wait_closed(self) -> None:
        """Wait until the TCP connection is closed."""
        if self._proto is not None and self._proto.state == CLOSED:
            return
        if self._lost_waiter is None:
            self._lost_waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._lost_waiter)

    def __repr__(self) -> str:
        return f"<fastws.Connection #{self.num} {self.state.name} {self.remote_address}>"

    # -- asyncio.Protocol -----------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._loop = loop = asyncio.get_running_loop()
        now = loop.time()
        self._started = now
        self.remote_address = transport.get_extra_info("peername")
        self.local_address = transport.get_extra_info("sockname")
        self._tls = transport.get_extra_info("sslcontext") is not None
        transport.set_write_buffer_limits(high=self._write_limit)  # type: ignore[attr-defined]
        ctx = self._ctx
        ctx.connections.add(self)
        self._proto = _ServerProtocol(self.config, self.num, self.remote_address, ctx.subprotocols, ctx.origins, now, self._stats)
        self._arm_timer()
        try:
            ctx.attach_face(self)
        except Exception:
            # Answered with a 500 once the request has arrived (see
            # _handshake_received): user code never drops TCP unanswered.
            logger.exception("conn %d: handler factory failed", self.num)

    def data_received(self, data: bytes) -> None:
        state = self._proto.state
        if state == OPEN or state == CLOSING:
            self._proto.receive_data(data)
            self._process()
        elif state == CONNECTING:
            self._handshake_received(data)

    def eof_received(self) -> bool | None:
        # The peer half-closed: nothing more will come, so close our side too.
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        proto = self._proto
        proto.connection_lost()
        self._cancel_timer()
        self._stop_heartbeat()
        ctx = self._ctx
        ctx.connections.discard(self)
        if ctx.release is not None:
            ctx.release(self)
        if self._lost_waiter is not None and not self._lost_waiter.done():
            self._lost_waiter.set_result(None)
        if not self._opened:
            return
        rcvd = proto.close_rcvd
        code, reason = (rcvd.code, rcvd.reason) if rcvd is not None else (CloseCode.ABNORMAL_CLOSURE, "")
        stats = self._stats
        if stats is not None:
            stats.close_rcvd[code] = stats.close_rcvd.get(code, 0) + 1
            if proto.close_sent is not None:
                sent_code = proto.close_sent.code
                stats.close_sent[sent_code] = stats.close_sent.get(sent_code, 0) + 1
        if self.config.access_log:
            sent = proto.close_sent
            access_logger.info(
                "conn %d closed %d%s after %.3fs%s",
                self.num,
                code,
                f" {reason!r}" if reason else "",
                self._loop.time() - self._started,
                f" (sent {sent.code})" if sent is not None and sent.code != code else "",
            )
        if self._on_close is not None:
            try:
                self._on_close(self, code, reason)
            except Exception:
                logger.exception("conn %d: error in on_close", self.num)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._stats is not None:
            self._stats.write_pauses += 1
        # A peer that does not read must not make us buffer without bound:
        # stop reading from it too (its requests are what fill our buffer).
        self.pause_reading(PAUSE_WRITE_BUFFER)
        self._check_write_buffer()

    def resume_writing(self) -> None:
        self._write_paused = False
        self.resume_reading(PAUSE_WRITE_BUFFER)
        if self._on_drain is not None:
            try:
                self._on_drain(self)
            except Exception:
                self._user_error("on_drain")

    # -- handshake ------------------------------------------------------

    def _handshake_received(self, data: bytes) -> None:
        proto = self._proto
        if proto.request is not None:
            # Bytes behind the request while hooks decide: the protocol
            # keeps them for after the 101.
            proto.receive_data(data)
            return
        request = proto.receive_request(data)
        if request is None:
            if proto.should_close:
                self._refused()
            return
        if self._on_message is None:
            # The face could not be made (logged in connection_made).
            self._send_response(make_response(500, "Internal server error.\n"), "handler factory failed")
            return
        admit = self._ctx.admit
        if admit is not None:
            try:
                refusal = admit(self, request)
            except Exception:
                self._hook_failed("admit")
                return
            if self._transport is None:
                return  # handed over to another face (hand_over)
            # Log lines name the real client from here on.
            proto.peer = self.remote_address
            if refusal is not None:
                self._send_response(refusal, refusal.reason_phrase)
                return
        self.pause_reading(PAUSE_HANDSHAKE)  # nothing more is read until we decide
        try:
            result = self._run_process_request(request)
        except Exception:
            self._hook_failed("process_request")
            return
        if inspect.isawaitable(result):
            self.track_task(asyncio.ensure_future(self._await_process_request(result)))
            return
        self._decide(result)

    def _run_process_request(self, request: Request) -> Any:
        """The user's hooks in order: the server's ``process_request``
        option, then the face's. The first answer wins."""
        hook = self._ctx.process_request
        if hook is not None:
            result = hook(self.public, request)
            if inspect.isawaitable(result):
                return self._chain_process_request(result, request)
            if result is not None:
                return result
        if self._process_request is not None:
            return self._process_request(self.public, request)
        return None

    async def _chain_process_request(self, first: Awaitable[Any], request: Request) -> Any:
        result = await first
        if result is None and self._process_request is not None:
            result = self._process_request(self.public, request)
            if inspect.isawaitable(result):
                result = await result
        return result

    async def _await_process_request(self, pending: Awaitable[Response | None]) -> None:
        try:
            response = await pending
        except Exception:
            self._hook_failed("process_request")
            return
        self._decide(response)

    def _decide(self, response: Response | None) -> None:
        """After process_request: refuse with its answer, or let the protocol decide."""
        proto = self._proto
        if proto.state != CONNECTING:
            return
        if response is not None:
            self._send_response(response, "process_request")
            return
        request = proto.request
        assert request is not None
        select = self._ctx.select_subprotocol
        public = self.public
        refusal = proto.accept(request, None if select is None else (lambda offered: select(public, offered)))
        if refusal is not None:
            self._send_response(refusal, None)
            return
        hook = self._ctx.process_response
        if hook is None:
            self._send_response(None, None)
            return
        response = proto.response
        assert response is not None
        try:
            result = hook(public, request, response)
        except Exception:
            self._hook_failed("process_response")
            return
        if inspect.isawaitable(result):
            self.track_task(asyncio.ensure_future(self._await_process_response(result, response)))
            return
        self._send_response(response if result is None else result, "process_response")

    async def _await_process_response(self, pending: Awaitable[Response | None], response: Response) -> None:
        try:
            result = await pending
        except Exception:
            self._hook_failed("process_response")
            return
        self._send_response(response if result is None else result, "process_response")

    def _hook_failed(self, hook: str) -> None:
        """User code in a handshake hook raised: answer 500, never drop TCP."""
        logger.exception("conn %d: error in %s", self.num, hook)
        self._send_response(make_response(500, "Internal server error.\n"), f"{hook} failed")

    def _send_response(self, response: Response | None, why: str | None) -> None:
        proto = self._proto
        proto.send_response(response, why)
        if proto.state == OPEN:
            self._open()
        elif proto.should_close:
            self._refused()

    def _open(self) -> None:
        proto = self._proto
        self._write_out()
        self._arm_timer()
        request = proto.request
        if self.config.access_log and request is not None:
            deflate = proto.deflate
            access_logger.info(
                'conn %d %s "%s %s" 101%s%s',
                self.num,
                format_address(self.remote_address),
                request.method,
                _loggable(request.path),
                f" subprotocol={proto.subprotocol}" if proto.subprotocol else "",
                f" extensions={deflate.response_params()}" if deflate is not None else "",
            )
        self._opened = True
        stats = self._stats
        if stats is not None and request is not None:
            stats.opened(request.path)
        self._start_heartbeat()
        self.resume_reading(PAUSE_HANDSHAKE)
        if self._on_open is not None:
            try:
                self._on_open(self)
            except Exception:
                self._user_error("on_connect")
                return
        if request is not None:
            # An idle connection keeps its request headers as one list; a
            # handler that looks one up later rebuilds the index.
            request.headers.compact()
        if proto.state != CLOSED:
            # Frames that came with the request.
            self._process()

    def _refused(self) -> None:
        """The protocol answered over HTTP: log it, write it, close."""
        proto = self._proto
        if self._stats is not None:
            response = proto.response
            self._stats.refused(response.status_code if response is not None else 0)
        if self.config.access_log:
            request = proto.request
            response = proto.response
            access_logger.info(
                'conn %d %s "%s %s" %d (%s)',
                self.num,
                format_address(self.remote_address),
                request.method if request else "-",
                _loggable(request.path) if request else "-",
                response.status_code if response else 0,
                proto.reject_reason,
            )
        self._after()

    # -- frames ---------------------------------------------------------

    def _process(self) -> None:
        # Everything the handlers send while this chunk is processed goes out
        # in one write: a pipelining client costs one syscall per read, not
        # one per message. (If the coroutine level already corked the
        # connection, its scheduled flush covers this chunk too.) What they
        # send to other connections is held too (ctx.corked), and each of
        # those is written once at the end: a broadcast of the k messages of
        # one read costs a write per listener, not k.
        ctx = self._ctx
        corked: "list[Connection] | None" = None
        if ctx.corked is None:
            corked = ctx.corked = []
        try:
            if self._batching:
                self._dispatch()
            else:
                self._batching = True
                try:
                    self._dispatch()
                finally:
                    self._flush()
        finally:
            if corked is not None:
                ctx.corked = None
                for conn in corked:
                    if conn._transport.is_closing():
                        conn._batching = False  # closed meanwhile: nothing more goes out
                    else:
                        conn._flush()

    def _join_cork(self) -> bool:
        """Hold what was just queued until the dispatch under way ends
        (another connection's); False when none is under way."""
        corked = self._ctx.corked
        if corked is None:
            return False
        self._batching = True
        corked.append(self)
        return True

    def _dispatch(self) -> None:
        proto = self._proto
        while True:
            event = proto.next_event()
            if event is None:
                return
            opcode = event[0]
            if opcode == OP_TEXT or opcode == OP_BINARY:
                self._received += 1
                try:
                    self._on_message(self, event[1], opcode == OP_TEXT)
                except Exception as exc:
                    if proto.state != OPEN and isinstance(exc, ConnectionClosed):
                        # A reply to a message read after our close frame:
                        # nothing may be sent any more, and that is no error.
                        continue
                    self._user_error("on_message")
                    return
            elif opcode == OP_PING:
                if self._on_ping is not None:
                    try:
                        self._on_ping(self, event[1])
                    except Exception:
                        self._user_error("on_ping")
                        return
            elif opcode == OP_PONG:
                if self._ka_payload is not None and event[1] == self._ka_payload:
                    self._keepalive_pong()
                elif self._on_pong is not None:
                    try:
                        self._on_pong(self, event[1])
                    except Exception:
                        self._user_error("on_pong")
                        return
            else:
                # The peer closed or broke the protocol. The coroutine level
                # queues messages and its handler runs later, so a close read
                # behind messages it has not taken waits for them (bounded by
                # close_timeout); the reader reads nothing after it.
                pending = self._pending
                if proto.state == OPEN and pending is not None and pending():
                    proto.hold_close(self._loop.time())
                    self._arm_timer()
                else:
                    proto.complete_close(self._loop.time())
                    self._after()
                return

    def _write_out(self) -> None:
        """Write what the protocol queued, in one write."""
        proto = self._proto
        out = proto.out
        n = len(out)
        if n:
            if n == 1:
                self._transport.write(out[0])
            elif self._tls:
                # An SSL transport makes one TLS record per buffer given to
                # writelines: join them, one record per batch.
                self._transport.write(b"".join(out))
            else:
                self._transport.writelines(out)  # uvloop: one writev
            proto.output_written()
            if self._write_paused:
                self._check_write_buffer()

    def _flush(self) -> None:
        """Write the batch (if any) and stop batching."""
        if self._batching:
            self._batching = False
            self._write_out()

    def _after(self) -> None:
        """Carry out what the protocol asks of the transport and the timer."""
        proto = self._proto
        if proto.should_abort:
            self._cancel_timer()
            self._transport.abort()
            return
        if proto.should_close:
            self._cancel_timer()
            # Write what is queued (the close frame last), then close TCP;
            # close() flushes the transport's own buffer first.
            self._batching = False
            self._write_out()
            self._transport.close()
            return
        if not self._batching:
            self._write_out()
        self._arm_timer()

    def _user_error(self, where: str) -> None:
        logger.exception("conn %d: error in %s; closing with 1011", self.num, where)
        # The peer did nothing wrong: a normal closing handshake (not a
        # fail), so its close frame is read and on_close reports 1011.
        self.close(CloseCode.INTERNAL_ERROR, "internal error")

    def _check_write_buffer(self) -> None:
        limit = self.config.max_write_buffer
        t = self._transport
        if limit is not None and t is not None and t.get_write_buffer_size() > limit:
            logger.warning(
                "conn %d %s: peer is not reading; %d bytes buffered > max_write_buffer %d; dropping",
                self.num,
                format_address(self.remote_address),
                t.get_write_buffer_size(),
                limit,
            )
            if self._stats is not None:
                self._stats.slow_readers_dropped += 1
            self._proto.abort()
            t.abort()

    # -- heartbeat: keepalive pings and the idle timeout ------------------------

    def _start_heartbeat(self) -> None:
        config = self.config
        if config.ping_interval is not None:
            self._ka_timer = self._loop.call_later(config.ping_interval, self._keepalive_ping)
        if config.idle_timeout is not None:
            self._idle_timer = self._loop.call_later(config.idle_timeout / 4, self._idle_check)

    def _stop_heartbeat(self) -> None:
        if self._ka_timer is not None:
            self._ka_timer.cancel()
            self._ka_timer = None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _keepalive_ping(self) -> None:
        self._ka_timer = None
        proto = self._proto
        if proto.state != OPEN:
            return
        payload = os.urandom(4)
        self._ka_payload = payload
        self._ka_sent = self._loop.time()
        proto.send_ping(payload)
        if not self._batching:
            self._write_out()
        timeout = self.config.ping_timeout
        if timeout is not None:
            self._ka_timer = self._loop.call_at(self._ka_sent + timeout, self._keepalive_timeout, self._ka_sent + timeout)

    def _keepalive_pong(self) -> None:
        """The pong of our keepalive ping: note the round trip, ping again later."""
        now = self._loop.time()
        self._ka_payload = None
        self.latency = now - self._ka_sent
        if self._stats is not None:
            self._stats.observe_rtt(self.latency)
        if self._ka_timer is not None:
            self._ka_timer.cancel()
        interval = self.config.ping_interval
        self._ka_timer = None if interval is None else self._loop.call_at(self._ka_sent + interval, self._keepalive_ping)

    def _keepalive_timeout(self, due: float) -> None:
        self._ka_timer = None
        if self._proto.state != OPEN or self._ka_payload is None:
            return
        late = self._loop.time() - due
        timeout = self.config.ping_timeout or 0.0
        if late > max(1.0, timeout / 2):
            # The timer fired far too late: our own loop was blocked, so the
            # missing pong proves nothing about the peer. Give it another turn.
            logger.warning("conn %d: keepalive check ran %.1fs late: the event loop was blocked; not closing", self.num, late)
            self._ka_timer = self._loop.call_later(timeout, self._keepalive_timeout, self._loop.time() + timeout)
            return
        if late > 0.05:
            # Late, but not by much: uvloop runs due timers before it reads
            # the sockets, so a pong may be waiting unread. Look again once
            # the loop has read them.
            self._ka_timer = self._loop.call_later(0.01, self._keepalive_timeout, self._loop.time() + 0.01)
            return
        logger.info(
            "conn %d %s: no pong within %ss (ping_timeout): the peer is gone or stuck; closing with 1011",
            self.num, format_address(self.remote_address), timeout,
        )  # fmt: skip
        self.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")

    def _idle_check(self) -> None:
        """Every idle_timeout / 4: a connection that received no message in
        four checks in a row (idle for idle_timeout to 1.25 x) is closed."""
        self._idle_timer = None
        if self._proto.state != OPEN:
            return
        timeout = self.config.idle_timeout or 0.0
        if self._received != self._idle_seen:
            self._idle_seen = self._received
            self._idle_quiet = 0
        else:
            self._idle_quiet += 1
            if self._idle_quiet >= 4:
                logger.info("conn %d %s: no message for %ss (idle_timeout); closing", self.num, format_address(self.remote_address), timeout)
                self.close(CloseCode.NORMAL_CLOSURE, "idle timeout")
                return
        self._idle_timer = self._loop.call_later(timeout / 4, self._idle_check)

    # -- the protocol's deadline --------------------------------------------

    def _arm_timer(self) -> None:
        deadline = self._proto.deadline
        if deadline != self._timer_at:
            self._cancel_timer()
            if deadline:
                self._timer_at = deadline
                self._timer = self._loop.call_at(deadline, self._on_timer)

    def _cancel_timer(self) -> None:
        self._timer_at = 0.0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = 0.0
        proto = self._proto
        if proto.state == CLOSED:
            return
        proto.timeout(self._loop.time())
        self._after()
