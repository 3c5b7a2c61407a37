"""The coroutine level: ``async def handler(ws)``, a drop-in for ``websockets``.

Owns :class:`ServerConnection` (what the handler receives), the coroutine
face that runs the handler in a task, and :func:`broadcast`. It is a face on
the connection's declared interface, not a second protocol. What it adds,
and what that costs per message:

- a bounded receive queue (a ``deque`` append, and a future only when
  ``recv()`` is already waiting);
- flow control both ways: reading from the socket pauses when ``max_queue``
  messages wait, and ``await send()`` waits while the write buffer is above
  ``write_limit``;
- keepalive pings on timers (no task per connection), which tell a blocked
  event loop from a peer that is gone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

from ..codec import frame as _frame
from ..connection import Connection
from ..exceptions import ConcurrencyError, ConnectionClosed, ConnectionClosedOK
from ..protocol.http import Request, Response
from ..types import CloseCode, PauseReason, State

__all__ = ["ServerConnection", "broadcast", "coroutine_face"]

logger = logging.getLogger("fastws")

OP_CONT: int = _frame.OP_CONT
OP_TEXT: int = _frame.OP_TEXT
OP_BINARY: int = _frame.OP_BINARY
OP_PING: int = _frame.OP_PING

Data = str | bytes


class ServerConnection:
    """What an ``async def handler(ws)`` receives; mirrors ``websockets``'.

    ``recv()``, ``send()``, ``async for``, ``close()``, ``wait_closed()``,
    ``ping()``, ``pong()``, ``request``, ``remote_address``,
    ``local_address``, ``scheme``, ``subprotocol``, ``close_code``, ``close_reason``,
    ``latency``, ``state``, ``id``, ``respond()``.
    """

    def __init__(self, handler: Callable[["ServerConnection"], Awaitable[Any]]) -> None:
        self._handler = handler
        self._conn: Connection = None  # type: ignore[assignment]
        self._messages: deque[tuple[bytes, bool]] = deque()
        self._recv_waiter: asyncio.Future[None] | None = None
        self._recv_busy = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._pings: dict[bytes, tuple[asyncio.Future[float], float]] = {}
        self._task: asyncio.Task[Any] | None = None
        self._high = 0
        self._low = 0
        self._queue_paused = False
        self._logger: logging.LoggerAdapter[Any] | None = None
        self._server_logger: "logging.Logger | logging.LoggerAdapter[Any] | None" = None
        #: Set by :func:`fastws.basic_auth` to the authenticated user.
        self.username: str | None = None
        self._fragmenting: asyncio.Future[None] | None = None

    # -- attributes, as in websockets -----------------------------------

    @property
    def request(self) -> Request | None:
        """The opening handshake request (``path``, ``headers``)."""
        return self._conn.request

    @property
    def response(self) -> Response | None:
        return self._conn.response

    @property
    def remote_address(self) -> Any:
        return self._conn.remote_address

    @property
    def local_address(self) -> Any:
        return self._conn.local_address

    @property
    def scheme(self) -> str:
        """``"ws"`` or ``"wss"`` (behind a trusted proxy, the client's)."""
        return self._conn.scheme

    @property
    def subprotocol(self) -> str | None:
        return self._conn.subprotocol

    @property
    def state(self) -> State:
        return self._conn.state

    @property
    def close_code(self) -> int | None:
        return self._conn.close_code

    @property
    def close_reason(self) -> str | None:
        return self._conn.close_reason

    @property
    def id(self) -> Any:
        return self._conn.id

    @property
    def latency(self) -> float:
        """Round-trip time of the last ping answered (keepalive or
        :meth:`ping`), in seconds; 0 until one is."""
        return float(self._conn.latency)

    @property
    def logger(self) -> logging.LoggerAdapter[Any]:
        """The server's logger (``logger=``), tagging records with this
        connection (``websocket`` in ``extra``), as in websockets."""
        if self._logger is None:
            base = self._server_logger if self._server_logger is not None else logging.getLogger("fastws.server")
            self._logger = logging.LoggerAdapter(base, {"websocket": self})
        return self._logger

    @property
    def connection(self) -> Connection:
        """The callback-level connection underneath."""
        return self._conn

    def respond(self, status: int, text: str) -> Response:
        """Build a plain-text HTTP response (for ``process_request``)."""
        return self._conn.respond(status, text)

    # -- rooms: the connection's, see fastws.rooms -------------------------

    def subscribe(self, room: str, *, since: str | None = None, member: str | None = None) -> "asyncio.Future[int]":
        """Join ``room``; ``await`` it for the number of messages replayed
        after ``since`` (see :meth:`fastws.Connection.subscribe`)."""
        return self._conn.subscribe(room, since=since, member=member)

    def unsubscribe(self, room: str) -> bool:
        """Leave ``room``; False if this connection was not in it."""
        return self._conn.unsubscribe(room)

    def publish(self, room: str, message: Data, *, text: bool | None = None) -> None:
        """Send ``message`` to every member of ``room`` on every node."""
        self._conn.publish(room, message, text=text)

    @property
    def rooms(self) -> frozenset[str]:
        """The rooms this connection is in."""
        return self._conn.rooms

    @property
    def transport_name(self) -> str:
        """``"websocket"``, or ``"sse"`` / ``"polling"`` for a client of the
        HTTP fallback (docs/fallback.md)."""
        return self._conn.transport_name

    def __repr__(self) -> str:
        return f"<fastws.ServerConnection {self._conn!r}>"

    # -- receiving ------------------------------------------------------

    async def recv(self, decode: bool | None = None) -> Data:
        """The next message: ``str`` for text, ``bytes`` for binary.

        ``decode=False`` returns text as bytes; ``decode=True`` decodes binary
        as UTF-8. Raises :class:`ConnectionClosedOK` after a normal close,
        :class:`ConnectionClosedError` otherwise.
        """
        if self._recv_busy:
            raise ConcurrencyError("cannot call recv while another coroutine is already running recv")
        messages = self._messages
        if not messages:
            state = self._conn.state
            if state is State.CLOSED or state is State.CLOSING and self._conn.close_rcvd is not None:
                raise self._conn.close_exc
            self._recv_busy = True
            waiter = self._recv_waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._recv_busy = False
                self._recv_waiter = None
            if not messages:
                raise self._conn.close_exc
        data, is_text = messages.popleft()
        conn = self._conn
        if not messages and conn.close_pending:
            # A close arrived behind this message: let the handler answer it
            # first (its send() runs in this task step), then close.
            asyncio.get_running_loop().call_soon(conn.release_close)
        if self._queue_paused and len(messages) <= self._low:
            self._queue_paused = False
            conn.resume_reading(PauseReason.QUEUE)
        if decode is None:
            return data.decode() if is_text else data
        return data.decode() if decode else data

    async def recv_streaming(self, decode: bool | None = None) -> AsyncIterator[Data]:
        """The next message as an async iterator of fragments.

        fastws reassembles messages in its codec (within ``max_size``), so
        the whole message comes as one fragment; code written for
        ``websockets`` that joins the fragments works unchanged.
        """
        yield await self.recv(decode)

    def __aiter__(self) -> AsyncIterator[Data]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Data]:
        try:
            while True:
                yield await self.recv()
        except ConnectionClosedOK:
            return

    # -- sending --------------------------------------------------------

    async def send(self, message: Data | Iterable[Data] | AsyncIterable[Data], text: bool | None = None) -> None:
        """Send a message; an (async) iterable is sent as one fragmented message.

        Waits while the write buffer is above ``write_limit``, so a peer that
        does not read slows the sender instead of growing memory.
        """
        conn = self._conn
        while self._fragmenting is not None:
            # Another coroutine is sending a fragmented message: frames of
            # two messages must not interleave (RFC 6455 section 5.4).
            await asyncio.shield(self._fragmenting)
        if isinstance(message, (str, bytes, bytearray, memoryview)):
            conn.cork()
            conn.send(message, text)
        elif isinstance(message, dict):
            raise TypeError("data is a dict-like object")
        elif isinstance(message, (Iterable, AsyncIterable)):
            self._fragmenting = asyncio.get_running_loop().create_future()
            try:
                if isinstance(message, Iterable):
                    await self._send_fragments(iter(message), text)
                else:
                    await self._send_async_fragments(message, text)
            finally:
                done, self._fragmenting = self._fragmenting, None
                done.set_result(None)
            return
        else:
            raise TypeError(f"message has unsupported type {type(message).__name__}")
        if not conn.writable:
            await self._drain()

    async def _send_fragments(self, chunks: Any, text: bool | None) -> None:
        conn = self._conn
        try:
            first = next(chunks)
        except StopIteration:
            return
        opcode = _fragment_opcode(first, text)
        first_is_str = isinstance(first, str)
        prev = first
        for chunk in chunks:
            _check_fragment(chunk, first_is_str)
            conn.send_frame(opcode, prev, fin=False)
            opcode = OP_CONT
            prev = chunk
            if not conn.writable:
                await self._drain()
        conn.send_frame(opcode, prev, fin=True)
        if not conn.writable:
            await self._drain()

    async def _send_async_fragments(self, chunks: AsyncIterable[Data], text: bool | None) -> None:
        conn = self._conn
        iterator = chunks.__aiter__()
        try:
            prev = await iterator.__anext__()
        except StopAsyncIteration:
            return
        opcode = _fragment_opcode(prev, text)
        first_is_str = isinstance(prev, str)
        async for chunk in iterator:
            _check_fragment(chunk, first_is_str)
            conn.send_frame(opcode, prev, fin=False)
            opcode = OP_CONT
            prev = chunk
            if not conn.writable:
                await self._drain()
        conn.send_frame(opcode, prev, fin=True)
        if not conn.writable:
            await self._drain()

    async def _drain(self) -> None:
        conn = self._conn
        while not conn.writable:
            if conn.state is State.CLOSED:
                raise conn.close_exc
            waiter = asyncio.get_running_loop().create_future()
            self._drain_waiters.append(waiter)
            await waiter

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Close with ``code`` and wait until the TCP connection is closed."""
        self._conn.close(code, reason)
        await self._conn.wait_closed()

    async def wait_closed(self) -> None:
        """Wait until the connection is closed."""
        await self._conn.wait_closed()

    async def ping(self, data: Data | None = None) -> Awaitable[float]:
        """Send a ping; return an awaitable that resolves to the latency
        (seconds) when the matching pong arrives."""
        conn = self._conn
        if data is None:
            payload = os.urandom(4)
            while payload in self._pings:
                payload = os.urandom(4)
        else:
            payload = data.encode() if isinstance(data, str) else bytes(data)
            if payload in self._pings:
                raise ConcurrencyError("already waiting for a pong with the same data")
        conn.ping(payload)
        waiter: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._pings[payload] = (waiter, time.monotonic())
        return waiter

    async def pong(self, data: Data = b"") -> None:
        """Send an unsolicited pong."""
        self._conn.pong(data)

    # -- callbacks from the protocol --------------------------------------

    def _bind(self, conn: Connection) -> "ServerConnection":
        self._conn = conn
        config = conn.config
        self._high = config.max_queue or 0
        self._low = self._high // 4
        return self

    def _on_connect(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run())
        conn.track_task(self._task)

    def _on_message(self, conn: Connection, data: bytes, is_text: bool) -> None:
        messages = self._messages
        messages.append((data, is_text))
        waiter = self._recv_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._high and len(messages) >= self._high:
            if not self._queue_paused:
                self._queue_paused = True
                conn.pause_reading(PauseReason.QUEUE)

    def _on_pong(self, conn: Connection, data: bytes) -> None:
        now = time.monotonic()
        entry = self._pings.get(data)
        if entry is None:
            return  # unsolicited pong: ignored (RFC 6455 section 5.5.3)
        # A pong acknowledges its ping and every earlier one (as websockets).
        for payload in list(self._pings):
            waiter, sent = self._pings.pop(payload)
            if not waiter.done():
                waiter.set_result(now - sent)
            if payload == data:
                conn.latency = now - sent
                break

    def _on_drain(self, conn: Connection) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _on_close(self, conn: Connection, code: int, reason: str) -> None:
        waiter = self._recv_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        exc = conn.close_exc
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_exception(exc)
        self._drain_waiters = []
        for ping_waiter, _ in self._pings.values():
            if not ping_waiter.done():
                ping_waiter.set_exception(conn.close_exc)
                # Nobody may be awaiting a ping's waiter; don't warn about it.
                ping_waiter.exception()
        self._pings.clear()

    # -- internals ------------------------------------------------------

    async def _run(self) -> None:
        conn = self._conn
        try:
            await self._handler(self)
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            conn.close(CloseCode.GOING_AWAY, "server shutting down")
            raise
        except Exception:
            # Through the server's logger (logger=), as websockets does.
            self.logger.exception("conn %d: connection handler failed; closing with 1011", conn.num)
            if conn.state is State.OPEN:
                conn.close(CloseCode.INTERNAL_ERROR, "internal error")
            return
        if conn.state is State.OPEN:
            conn.close(CloseCode.NORMAL_CLOSURE, "")


def _fragment_opcode(first: Data, text: bool | None) -> int:
    if text is None:
        if isinstance(first, str):
            return OP_TEXT
        if isinstance(first, (bytes, bytearray, memoryview)):
            return OP_BINARY
        raise TypeError(f"message fragment has unsupported type {type(first).__name__}")
    return OP_TEXT if text else OP_BINARY


def _check_fragment(chunk: Data, first_is_str: bool) -> None:
    if isinstance(chunk, str) is not first_is_str:
        raise TypeError("all fragments must be of the same type")


def coroutine_face(
    handler: Callable[[ServerConnection], Awaitable[Any]],
    create_connection: Callable[..., Any] | None = None,
    logger: "logging.Logger | logging.LoggerAdapter[Any] | None" = None,
) -> Callable[[Connection], None]:
    """The face that runs ``handler(ws)`` in a task for each connection.

    ``create_connection`` (as in websockets: "a wrapper or a subclass") is
    called like ServerConnection and must return a ServerConnection.
    """
    factory = ServerConnection if create_connection is None else create_connection
    if not callable(factory):
        raise TypeError(f"create_connection must be a ServerConnection subclass or a wrapper, got {factory!r}")
    if isinstance(factory, type) and not issubclass(factory, ServerConnection):
        raise TypeError(f"create_connection must be a subclass of fastws.ServerConnection, got {factory!r}")

    def attach(conn: Connection) -> None:
        ws = factory(handler)
        if not isinstance(ws, ServerConnection):
            raise TypeError(f"create_connection returned {ws!r}, not a fastws.ServerConnection")
        ws._bind(conn)
        ws._server_logger = logger
        conn.attach(
            ws,
            ws._on_connect,
            ws._on_message,
            ws._on_close,
            on_pong=ws._on_pong,
            on_drain=ws._on_drain,
            pending=ws._messages.__len__,
        )

    return attach


def broadcast(
    connections: Iterable[Any],
    message: Data,
    raise_exceptions: bool = False,
    *,
    text: bool | None = None,
) -> None:
    """Send ``message`` to every open connection, framing it once, not waiting.

    Works with both levels' connection objects; ``text`` forces a text or
    binary frame as in ``websockets``. The frame is written even to a slow
    reader; one whose write buffer then exceeds ``max_write_buffer`` is
    disconnected, so a slow client cannot grow the server's memory without
    bound. A connection in the middle of a fragmented send is skipped.
    """
    if isinstance(message, str):
        opcode = OP_BINARY if text is False else OP_TEXT
    elif isinstance(message, (bytes, bytearray, memoryview)):
        opcode = OP_TEXT if text is True else OP_BINARY
    else:
        raise TypeError("data must be str or bytes")
    frame = _frame.encode_frame(opcode, message)
    errors: list[Exception] = []
    for ws in connections:
        is_coroutine = isinstance(ws, ServerConnection)
        conn = ws.connection if is_coroutine else ws
        if is_coroutine and ws._fragmenting is not None and conn.state is State.OPEN:
            if raise_exceptions:
                errors.append(ConcurrencyError("sending a fragmented message"))
            else:
                logger.warning("conn %d: skipped broadcast: sending a fragmented message", conn.num)
            continue
        try:
            conn.write_frame(frame)
        except Exception as exc:
            if raise_exceptions:
                failure = RuntimeError("failed to write message")
                failure.__cause__ = exc
                errors.append(failure)
            else:
                logger.warning("conn %d: skipped broadcast: failed to write message: %s", conn.num, exc)
    if errors:
        raise ExceptionGroup("skipped broadcast", errors)
