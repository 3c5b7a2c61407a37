"""The listening server: ``serve()``, ``Server`` and what connections share.

``serve`` is shaped like ``websockets.asyncio.server.serve``: await it, or use
it as an async context manager, and get a :class:`Server` with ``close()``,
``wait_closed()``, ``serve_forever()``, ``sockets`` and ``connections``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from types import TracebackType
from typing import Any

from .config import DEFAULTS, Config
from .exceptions import InvalidHeader, InvalidOrigin, NegotiationError
from .http import Request, Response, upgrade_required
from . import _impl
from .protocol import CLOSED, CONNECTING, OPEN, Connection

__all__ = ["Server", "serve", "unix_serve", "resolve_handler"]

logger = logging.getLogger("fastws")

ProcessRequest = Callable[[Any, Request], "Response | None | Awaitable[Response | None]"]

# websockets' names for options that mean the same as a Config field.
_ALIASES = {"max_size": "max_message_size"}


def resolve_handler(handler: Any) -> tuple[Callable[[], Any], bool]:
    """Turn what the user passed into a per-connection handler factory.

    Returns ``(factory, is_coroutine)``. Accepted: an ``async def
    handler(ws)`` (coroutine level), a handler class or any zero-argument
    factory (one handler per connection), or a handler instance (shared).
    """
    if inspect.iscoroutinefunction(handler):
        from .asyncio import coroutine_handler_factory

        return coroutine_handler_factory(handler), True
    if isinstance(handler, type) or (
        callable(handler) and not hasattr(handler, "on_message")
    ):
        return handler, False
    if hasattr(handler, "on_message"):
        return (lambda: handler), False
    raise TypeError(
        "handler must be an async function handler(ws), a handler class with "
        f"on_message(ws, data, is_text), or an instance of one; got {handler!r}"
    )


class ServerState:
    """What every connection of one server shares (config, hooks, registry)."""

    def __init__(
        self,
        handler: Any,
        config: Config,
        *,
        process_request: ProcessRequest | None = None,
        process_response: Callable[[Any, Request, Response], Any] | None = None,
        subprotocols: Sequence[str] | None = None,
        select_subprotocol: Callable[[Any, Sequence[str]], str | None] | None = None,
        origins: Sequence[str | re.Pattern[str] | None] | None = None,
        server_header: str | None = None,
    ) -> None:
        self.config = config
        self.make_handler, self.is_coroutine = resolve_handler(handler)
        self.connections: set[Connection] = set()
        self._process_request = process_request
        self.process_response = process_response
        self.subprotocols = list(subprotocols) if subprotocols else None
        self.select_subprotocol = select_subprotocol
        self.origins = origins
        self.tasks: set[asyncio.Task[Any]] = set()
        header = config.server_header if server_header is None else server_header
        self.extra_101 = f"Server: {header}\r\n".encode("latin-1") if header else b""

    def track_task(self, task: "asyncio.Task[Any] | asyncio.Future[Any]") -> None:
        """Keep a reference to a background task until it ends."""
        self.tasks.add(task)  # type: ignore[arg-type]
        task.add_done_callback(self.tasks.discard)  # type: ignore[arg-type]

    def process_request(self, conn: Connection, request: Request) -> Any:
        """The user's hooks in order: the ``process_request`` option, then the
        handler's own ``process_request`` method. The first answer wins."""
        hook = self._process_request
        user = conn._handler_public()
        if hook is not None:
            result = hook(user, request)
            if inspect.isawaitable(result):
                return self._chain_async(result, conn, request)
            if result is not None:
                return result
        method = getattr(conn._handler, "process_request", None)
        if method is not None:
            return method(user, request)
        return None

    async def _chain_async(self, first: Awaitable[Any], conn: Connection, request: Request) -> Any:
        result = await first
        if result is not None:
            return result
        method = getattr(conn._handler, "process_request", None)
        if method is not None:
            result = method(conn._handler_public(), request)
            if inspect.isawaitable(result):
                result = await result
        return result

    def plain_http_response(self, conn: Connection, request: Request) -> Response:
        """The answer to a request that is not a WebSocket upgrade."""
        return upgrade_required(request)

    def negotiate(self, conn: Connection, request: Request) -> bytes:
        """Origin check and subprotocol choice; extra header lines for the 101."""
        headers = request.headers
        if self.origins is not None:
            origins = headers.get_all("Origin")
            if len(origins) > 1:
                raise InvalidHeader("repeated Origin header")
            origin = origins[0] if origins else None
            for allowed in self.origins:
                if allowed == origin or (
                    isinstance(allowed, re.Pattern) and origin is not None and allowed.fullmatch(origin)
                ):
                    break
            else:
                raise InvalidOrigin(f"origin {origin!r} is not allowed")
        extra = self.extra_101
        # Subprotocol names are case-sensitive, unlike the tokens of
        # parse_tokens, so the raw values are split here.
        offered = [
            p.strip()
            for value in headers.get_all("Sec-WebSocket-Protocol")
            for p in value.split(",")
            if p.strip()
        ]
        chosen: str | None = None
        if self.select_subprotocol is not None:
            chosen = self.select_subprotocol(conn._handler_public(), offered)
            if chosen is not None and chosen not in offered:
                raise NegotiationError(f"select_subprotocol chose {chosen!r}, which the client did not offer")
        elif self.subprotocols:
            if not offered:
                raise NegotiationError("missing subprotocol")
            for candidate in self.subprotocols:
                if candidate in offered:
                    chosen = candidate
                    break
            else:
                raise NegotiationError(
                    "invalid subprotocol; expected one of " + ", ".join(self.subprotocols)
                )
        if chosen is not None:
            conn.subprotocol = chosen
            extra += f"Sec-WebSocket-Protocol: {chosen}\r\n".encode("latin-1")
        return extra


class Server:
    """A running WebSocket server (returned by :func:`serve`)."""

    def __init__(self, state: ServerState) -> None:
        self._state = state
        self._server: asyncio.Server | None = None
        self._closing: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()

    @property
    def config(self) -> Config:
        """The server's limits and timeouts."""
        return self._state.config

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets."""
        if self._server is None:
            return ()
        return tuple(self._server.sockets)

    @property
    def connections(self) -> set[Any]:
        """The open connections (the objects handlers receive)."""
        return {c._handler_public() for c in self._state.connections if c._state == OPEN}

    async def _listen(self, create: Callable[[Callable[[], Connection]], Awaitable[asyncio.Server]]) -> None:
        state = self._state
        connection = _impl.Connection
        self._server = await create(lambda: connection(state))

    def is_serving(self) -> bool:
        """True while the server accepts new connections."""
        return self._server is not None and self._server.is_serving()

    async def start_serving(self) -> None:
        """Start accepting (done already by :func:`serve`)."""
        if self._server is not None:
            await self._server.start_serving()

    async def serve_forever(self) -> None:
        """Serve until :meth:`close` is called or the task is cancelled."""
        try:
            await self._closed.wait()
        except asyncio.CancelledError:
            self.close()
            await self.wait_closed()
            raise

    def close(self, close_connections: bool = True, code: int = 1001, reason: str = "server shutting down") -> None:
        """Stop accepting; close open connections with ``code`` (1001).

        The closing runs in the background; await :meth:`wait_closed`.
        """
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close(close_connections, code, reason))

    async def _close(self, close_connections: bool, code: int, reason: str) -> None:
        if self._server is not None:
            self._server.close()
        conns = list(self._state.connections)
        if close_connections:
            for conn in conns:
                if conn._state == OPEN:
                    conn.close(code, reason)
                elif conn._state == CONNECTING:
                    conn.abort()
        deadline = self._state.config.close_timeout
        waiters = [asyncio.ensure_future(c.wait_closed()) for c in conns if c._state != CLOSED]
        if waiters:
            done, pending = await asyncio.wait(waiters, timeout=deadline)
            for conn in list(self._state.connections):
                conn.abort()
            for w in pending:
                w.cancel()
        if self._server is not None:
            # asyncio's wait_closed also waits for connections; they are gone.
            await self._server.wait_closed()
        for task in list(self._state.tasks):
            task.cancel()
        self._closed.set()

    async def wait_closed(self) -> None:
        """Wait until the server and all its connections are closed."""
        await self._closed.wait()

    async def __aenter__(self) -> "Server":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


def _split_options(options: dict[str, Any]) -> tuple[Config, dict[str, Any]]:
    config = options.pop("config", None) or DEFAULTS
    changes: dict[str, Any] = {}
    for key in list(options):
        name = _ALIASES.get(key, key)
        if name in Config.__dataclass_fields__:
            changes[name] = options.pop(key)
    compression = options.pop("compression", "deflate")
    if compression not in (None, "deflate"):
        raise ValueError(f"unsupported compression: {compression!r}")
    if changes:
        config = config.replace(**changes)
    return config, options


_STATE_OPTIONS = {"process_request", "process_response", "subprotocols", "select_subprotocol", "origins", "server_header"}
_LISTEN_OPTIONS = {"sock", "ssl", "reuse_port", "reuse_address", "family", "start_serving"}


class serve:
    """Start a WebSocket server: ``await serve(...)`` or ``async with serve(...)``.

    ``handler`` is an ``async def handler(ws)`` (coroutine level) or a
    handler class / instance with ``on_message`` (callback level). Options
    are keyword-only: every field of :class:`fastws.Config` (``max_size`` is
    accepted for ``max_message_size``, as in ``websockets``), plus
    ``process_request``, ``process_response``, ``subprotocols``,
    ``select_subprotocol``, ``origins``, ``sock``, ``ssl``, ``reuse_port``.
    """

    def __init__(self, handler: Any, host: str | Sequence[str] | None = None, port: int | None = None, **options: Any) -> None:
        config, rest = _split_options(dict(options))
        state_kwargs = {k: rest.pop(k) for k in list(rest) if k in _STATE_OPTIONS}
        listen_kwargs = {k: rest.pop(k) for k in list(rest) if k in _LISTEN_OPTIONS}
        self._unix_path = rest.pop("path", None)
        for ignored in ("logger", "create_connection", "extensions"):
            rest.pop(ignored, None)
        if rest:
            raise TypeError(f"serve() got unexpected keyword argument(s): {', '.join(sorted(rest))}")
        self._state = ServerState(handler, config, **state_kwargs)
        self._host = host
        self._port = port
        self._listen_kwargs = listen_kwargs
        self.server: Server | None = None

    async def _create(self) -> Server:
        state = self._state
        server = Server(state)
        loop = asyncio.get_running_loop()
        kwargs = dict(self._listen_kwargs)
        backlog = state.config.backlog
        if self._unix_path is not None or (kwargs.get("sock") is not None and kwargs["sock"].family == socket.AF_UNIX):

            async def create(factory: Callable[[], Connection]) -> asyncio.Server:
                return await loop.create_unix_server(factory, self._unix_path, backlog=backlog, **kwargs)

        else:

            async def create(factory: Callable[[], Connection]) -> asyncio.Server:
                return await loop.create_server(factory, self._host, self._port, backlog=backlog, **kwargs)

        await server._listen(create)
        self.server = server
        return server

    def __await__(self) -> Generator[Any, None, Server]:
        return self._create().__await__()

    async def __aenter__(self) -> Server:
        return await self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def unix_serve(handler: Any, path: str | None = None, **options: Any) -> serve:
    """Like :func:`serve`, on a Unix socket at ``path``."""
    return serve(handler, path=path, **options)
