"""The listening server: ``serve()``, ``Server`` and what connections share.

``serve`` is shaped like ``websockets.asyncio.server.serve``: await it, or use
it as an async context manager, and get a :class:`Server` with ``close()``,
``wait_closed()``, ``serve_forever()``, ``sockets`` and ``connections``.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import inspect
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from types import TracebackType
from typing import Any

from .compression import negotiate as negotiate_deflate
from .config import DEFAULTS, Config
from .exceptions import InvalidHeader, InvalidOrigin, NegotiationError
from .http import Request, Response, make_response, upgrade_required
from . import _impl
from .protocol import CLOSED, CONNECTING, OPEN, Connection

__all__ = ["Server", "basic_auth", "serve", "unix_serve", "resolve_handler"]

logger = logging.getLogger("fastws")

ProcessRequest = Callable[[Any, Request], "Response | None | Awaitable[Response | None]"]

# websockets' names for options that mean the same as a Config field.
_ALIASES = {"max_size": "max_message_size"}


def resolve_handler(handler: Any, create_connection: type | None = None) -> tuple[Callable[[], Any], bool]:
    """Turn what the user passed into a per-connection handler factory.

    Returns ``(factory, is_coroutine)``. Accepted: an ``async def
    handler(ws)`` (coroutine level), a handler class or any zero-argument
    factory (one handler per connection), or a handler instance (shared).
    """
    if inspect.iscoroutinefunction(handler):
        from .asyncio import coroutine_handler_factory

        return coroutine_handler_factory(handler, create_connection), True
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
        create_connection: type | None = None,
    ) -> None:
        self.config = config
        self.make_handler, self.is_coroutine = resolve_handler(handler, create_connection)
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
        task.add_done_callback(self.tasks.discard)

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
        """Origin check, subprotocol and extension choice; extra header lines
        for the 101. Sets ``conn.subprotocol`` and, when permessage-deflate
        is agreed, ``conn._deflate``."""
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
        if self.config.compression is not None:
            offers = headers.get_all("Sec-WebSocket-Extensions")
            if offers:
                agreed = negotiate_deflate(offers, self.config)
                if agreed is not None:
                    conn._deflate = agreed[1]
                    extra += f"Sec-WebSocket-Extensions: {agreed[0]}\r\n".encode("latin-1")
        return extra


class Server:
    """A running WebSocket server (returned by :func:`serve`)."""

    def __init__(self, state: ServerState) -> None:
        self._state = state
        self._server: asyncio.Server | None = None
        self._closing: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._loop = asyncio.get_running_loop()

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

    async def _listen(self, create: Callable[[Callable[[], Any]], Awaitable[asyncio.Server]]) -> None:
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
        if self._server is not None and not self._server.is_serving() and self._closing is None:
            await self._server.start_serving()
        try:
            await self._closed.wait()
        except asyncio.CancelledError:
            self.close()
            await self.wait_closed()
            raise

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the server runs on."""
        return self._loop

    def close(self, close_connections: bool = True, code: int = 1001, reason: str = "") -> None:
        """Stop accepting; close open connections with ``code`` (1001).

        Then wait (up to ``close_timeout``) for connections to close and for
        handlers to return; past it, connections are dropped and handlers
        cancelled. With ``close_connections=False`` open connections are left
        to end on their own and :meth:`wait_closed` waits for them. The
        closing runs in the background; await :meth:`wait_closed`.
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
        deadline = self._state.config.close_timeout if close_connections else None
        loop = asyncio.get_running_loop()
        end = None if deadline is None else loop.time() + deadline
        waiters = [asyncio.ensure_future(c.wait_closed()) for c in conns if c._state != CLOSED]
        if waiters:
            _, pending = await asyncio.wait(waiters, timeout=deadline)
            for conn in list(self._state.connections):
                conn.abort()
            for w in pending:
                w.cancel()
        # Handlers may still be cleaning up after their connection ended
        # (finally: blocks); give them what is left of the deadline.
        tasks = list(self._state.tasks)
        if tasks:
            left = None if end is None else max(0.0, end - loop.time())
            _, late = await asyncio.wait(tasks, timeout=left)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        if self._server is not None:
            # asyncio's wait_closed also waits for connections; they are gone.
            await self._server.wait_closed()
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
    # websockets accepts (high, low) pairs for max_queue and write_limit and
    # (message, fragment) for max_size; fastws keeps the first (its low-water
    # marks are derived) and has no separate per-fragment limit.
    for key in ("max_queue", "write_limit", "max_size", "max_message_size"):
        if isinstance(options.get(key), tuple):
            options[key] = options[key][0]
    for key in list(options):
        name = _ALIASES.get(key, key)
        if name in Config.__dataclass_fields__:
            changes[name] = options.pop(key)
    if changes:
        config = config.replace(**changes)
    return config, options


_STATE_OPTIONS = {
    "process_request",
    "process_response",
    "subprotocols",
    "select_subprotocol",
    "origins",
    "server_header",
    "create_connection",
}
# Accepted for websockets compatibility and deliberately unused (docs/migration.md).
_IGNORED_OPTIONS = {"logger", "extensions", "extra_headers"}


class serve:
    """Start a WebSocket server: ``await serve(...)`` or ``async with serve(...)``.

    ``handler`` is an ``async def handler(ws)`` (coroutine level) or a
    handler class / instance with ``on_message`` (callback level). Options
    are keyword-only: every field of :class:`fastws.Config` (``max_size`` is
    accepted for ``max_message_size``, as in ``websockets``;
    ``compression="deflate"``, the default, negotiates permessage-deflate
    and ``None`` declines it), plus
    ``process_request``, ``process_response``, ``subprotocols``,
    ``select_subprotocol``, ``origins``, ``sock``, ``ssl``, ``reuse_port``.
    """

    def __init__(self, handler: Any, host: str | Sequence[str] | None = None, port: int | None = None, **options: Any) -> None:
        config, rest = _split_options(dict(options))
        state_kwargs = {k: rest.pop(k) for k in list(rest) if k in _STATE_OPTIONS}
        self._unix_path = rest.pop("path", None)
        for ignored in _IGNORED_OPTIONS:
            rest.pop(ignored, None)
        # What is left goes to loop.create_server(), as in websockets.
        listen_kwargs = rest
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

            async def create(factory: Callable[[], Any]) -> asyncio.Server:
                return await loop.create_unix_server(factory, self._unix_path, backlog=backlog, **kwargs)

        else:

            async def create(factory: Callable[[], Any]) -> asyncio.Server:
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


def basic_auth(
    realm: str = "",
    credentials: "tuple[str, str] | Iterable[tuple[str, str]] | None" = None,
    check_credentials: "Callable[[str, str], Awaitable[bool] | bool] | None" = None,
) -> Callable[[Any, Request], Awaitable[Response | None]]:
    """A ``process_request`` hook for HTTP Basic Auth (RFC 7617), as in websockets.

    Give ``credentials`` (one ``(username, password)`` pair or several) or a
    ``check_credentials(username, password)`` function (may be async). A
    request without valid credentials gets 401 with ``WWW-Authenticate``;
    an accepted one sets ``connection.username``.
    """
    if (credentials is None) == (check_credentials is None):
        raise TypeError("provide either credentials or check_credentials")
    if credentials is not None:
        pairs: list[Any]
        if isinstance(credentials, tuple) and len(credentials) == 2 and all(isinstance(c, str) for c in credentials):
            pairs = [credentials]
        else:
            pairs = list(credentials)
        for pair in pairs:
            if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(c, str) for c in pair)):
                raise TypeError(f"invalid credentials argument: {credentials!r}")
        known: dict[str, str] = dict(pairs)

        def check(username: str, password: str) -> bool:
            expected = known.get(username)
            return expected is not None and hmac.compare_digest(expected.encode(), password.encode())

        checker: Callable[[str, str], Any] = check
    else:
        assert check_credentials is not None
        checker = check_credentials

    challenge = f'Basic realm="{realm}", charset="UTF-8"'

    def unauthorized(text: str) -> Response:
        return make_response(401, text, headers=[("WWW-Authenticate", challenge)])

    async def process_request(connection: Any, request: Request) -> Response | None:
        try:
            authorization = request.headers["Authorization"]
        except KeyError:
            return unauthorized("Missing credentials\n")
        scheme, _, token = authorization.partition(" ")
        try:
            if scheme.lower() != "basic":
                raise ValueError(scheme)
            username, sep, password = base64.b64decode(token.strip(), validate=True).decode().partition(":")
            if not sep:
                raise ValueError("no colon")
        except (ValueError, UnicodeDecodeError):
            return unauthorized("Unsupported credentials\n")
        valid = checker(username, password)
        if inspect.isawaitable(valid):
            valid = await valid
        if not valid:
            return unauthorized("Invalid credentials\n")
        connection.username = username
        return None

    return process_request
