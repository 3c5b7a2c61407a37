"""The server layer: ``serve()``, ``Server`` and what connections share.

Owns listening (TCP or Unix socket, TLS from ``ssl``), choosing the face for
the user's handler, the state shared by a server's connections (a
``ServerContext`` for the connection layer), shutdown, and ``basic_auth``.
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
import os
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from types import TracebackType
from typing import Any

from .config import DEFAULTS, Config, options
from .connection import Connection
from .faces.asyncio import coroutine_face
from .faces.callback import callback_face
from .protocol.http import MultipleValuesError, Request, Response, format_address, make_response
from .protocol.proxy import TrustedProxies, forwarded_client
from .types import CloseCode, State

__all__ = ["Server", "basic_auth", "serve", "unix_serve", "resolve_handler", "tls_context"]

logger = logging.getLogger("fastws")

ProcessRequest = Callable[[Any, Request], "Response | None | Awaitable[Response | None]"]

# websockets' names for options that mean the same as a Config field.
_ALIASES = {"max_size": "max_message_size"}


def resolve_handler(
    handler: Any,
    create_connection: Callable[..., Any] | None = None,
    logger: "logging.Logger | logging.LoggerAdapter[Any] | None" = None,
) -> Callable[[Connection], None]:
    """The face that serves ``handler``: what each new connection attaches.

    - a handler class (a :class:`~fastws.Handler` subclass, or any class with
      ``on_message``), or a zero-argument factory of handlers: callback
      level, one handler per connection;
    - an object with ``on_message``: callback level, shared;
    - any other callable that takes the connection and returns an awaitable
      (``async def handler(ws)``, ``functools.partial``, a lambda, an object
      with ``async def __call__``, a decorated function): coroutine level,
      as in ``websockets``.
    """
    if isinstance(handler, type):
        if not hasattr(handler, "on_message"):
            raise TypeError(f"handler class {handler.__name__} has no on_message(ws, data, is_text)")
        return callback_face(handler)
    if hasattr(handler, "on_message"):
        return callback_face(lambda: handler)
    if not callable(handler):
        raise TypeError(
            "handler must be an async function handler(ws), a handler class with "
            f"on_message(ws, data, is_text), or an instance of one; got {handler!r}"
        )
    if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(getattr(handler, "__call__", None)):
        return coroutine_face(handler, create_connection, logger)
    if _takes_no_argument(handler):
        return callback_face(handler)
    return coroutine_face(handler, create_connection, logger)


def _takes_no_argument(func: Callable[..., Any]) -> bool:
    """True for a factory ``f()`` that cannot take a connection ``f(ws)``."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return False
    try:
        signature.bind(None)
    except TypeError:
        try:
            signature.bind()
        except TypeError:
            return False
        return True
    return False


class ServerState:
    """What every connection of one server shares (a ``ServerContext``)."""

    def __init__(
        self,
        handler: Any,
        config: Config,
        *,
        process_request: ProcessRequest | None = None,
        process_response: Callable[[Any, Request, Response], Any] | None = None,
        subprotocols: Sequence[str] | None = None,
        select_subprotocol: Callable[[Any, Sequence[str]], str | None] | None = None,
        create_connection: Callable[..., Any] | None = None,
        logger: "logging.Logger | logging.LoggerAdapter[Any] | str | None" = None,
    ) -> None:
        if isinstance(subprotocols, str):
            raise TypeError(f"subprotocols must be a list, not a {type(subprotocols).__name__}")
        self.config = config
        #: The server's logger (websockets' ``logger=``: a Logger, an
        #: adapter or a name); ``fastws.server`` by default.
        self.logger: "logging.Logger | logging.LoggerAdapter[Any]" = (
            logging.getLogger("fastws.server") if logger is None
            else logging.getLogger(logger) if isinstance(logger, str) else logger
        )
        self.attach_face = resolve_handler(handler, create_connection, self.logger)
        self.connections: set[Connection] = set()
        self.process_request = process_request
        self.process_response = process_response
        self.subprotocols: Sequence[str] | None = list(subprotocols) if subprotocols else None
        self.select_subprotocol = select_subprotocol
        self.origins: Sequence[str | re.Pattern[str] | None] | None = config.origins
        self.tasks: set[asyncio.Future[Any]] = set()
        self._trusted = TrustedProxies(config.forwarded_allow_ips) if config.proxy_headers else None
        # Connections counted against the limits, with the address each
        # was counted under, and the count per address.
        self._counted: dict[Connection, Any] = {}
        self._per_ip: dict[Any, int] = {}
        limited = config.limit_concurrency is not None or config.limit_per_ip is not None
        # None when off: the connection then skips the call.
        self.admit: Callable[[Connection, Request], Response | None] | None = (
            self._admit if limited or self._trusted is not None else None
        )
        self.release: Callable[[Connection], None] | None = self._release if limited else None

    def _admit(self, conn: Connection, request: Request) -> Response | None:
        """A request is in: find the real client behind a trusted proxy,
        then apply the connection limits (503, 429)."""
        if self._trusted is not None:
            peer = conn.remote_address
            client = forwarded_client(request.headers, peer[0] if isinstance(peer, tuple) else None, self._trusted)
            if client is not None:
                conn.remote_address = (client.host, client.port)
                if client.proto is not None:
                    conn.scheme = client.proto
        config = self.config
        if self.release is None:
            return None
        limit = config.limit_concurrency
        if limit is not None and len(self._counted) >= limit:
            self.logger.warning(
                "conn %d %s: limit-concurrency %d reached; refusing with 503", conn.num, format_address(conn.remote_address), limit
            )
            return make_response(503, "Too many connections; try again later.\n", headers=[("Retry-After", "1")])
        address = conn.remote_address
        host = address[0] if isinstance(address, tuple) else address
        per_ip = config.limit_per_ip
        if per_ip is not None:
            count = self._per_ip.get(host, 0)
            if count >= per_ip:
                self.logger.warning(
                    "conn %d %s: limit-per-ip %d reached by %s; refusing with 429", conn.num, format_address(address), per_ip, host
                )
                return make_response(429, "Too many connections from your address.\n", headers=[("Retry-After", "1")])
            self._per_ip[host] = count + 1
        self._counted[conn] = host
        return None

    def _release(self, conn: Connection) -> None:
        """A connection ended: it no longer counts against the limits."""
        try:
            host = self._counted.pop(conn)
        except KeyError:
            return
        if self.config.limit_per_ip is not None:
            left = self._per_ip[host] - 1
            if left:
                self._per_ip[host] = left
            else:
                del self._per_ip[host]

    def track_task(self, task: "asyncio.Future[Any]") -> None:
        """Keep a reference to a background task until it ends."""
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


class Server:
    """A running WebSocket server (returned by :func:`serve`)."""

    def __init__(self, context: ServerState) -> None:
        self._context = context
        self._server: asyncio.Server | None = None
        self._closing: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    @property
    def logger(self) -> "logging.Logger | logging.LoggerAdapter[Any]":
        """The server's logger (the ``logger`` option, as in websockets)."""
        return self._context.logger

    @property
    def config(self) -> Config:
        """The server's limits and timeouts."""
        return self._context.config

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets."""
        if self._server is None:
            return ()
        return tuple(self._server.sockets)

    @property
    def connections(self) -> set[Any]:
        """The open connections (the objects handlers receive)."""
        return {c.public for c in self._context.connections if c.state is State.OPEN}

    async def _listen(self, create: Callable[[Callable[[], Any]], Awaitable[asyncio.Server]]) -> None:
        context = self._context
        self._server = await create(lambda: Connection(context))

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

    def close(self, close_connections: bool = True, code: int = CloseCode.GOING_AWAY, reason: str = "") -> None:
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
        conns = list(self._context.connections)
        if close_connections:
            for conn in conns:
                if conn.state is State.OPEN or conn.state is State.CONNECTING:
                    # A handshake in progress gets 503 if its request is in.
                    conn.close(code, reason)
        deadline = self._context.config.close_timeout if close_connections else None
        loop = asyncio.get_running_loop()
        end = None if deadline is None else loop.time() + deadline
        waiters = [asyncio.ensure_future(c.wait_closed()) for c in conns if c.state is not State.CLOSED]
        if waiters:
            _, pending = await asyncio.wait(waiters, timeout=deadline)
            for conn in list(self._context.connections):
                conn.abort()
            for w in pending:
                w.cancel()
        # Handlers may still be cleaning up after their connection ended
        # (finally: blocks); give them what is left of the deadline.
        tasks = list(self._context.tasks)
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


_PROCESS_OPTIONS = {f.name for f, opt in options() if opt.process}
# host/port/uds are serve()'s arguments (host, port, path), as in websockets.
_SERVER_OPTIONS = {f.name for f, opt in options() if not opt.process} - {"host", "port", "uds"}


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
        if name in _PROCESS_OPTIONS:
            raise TypeError(f"{name} is an option of the `fastws serve` command, not of serve()")
        if name in _SERVER_OPTIONS:
            changes[name] = options.pop(key)
    if changes:
        config = config.replace(**changes)
    return config, options


_STATE_OPTIONS = {
    "logger",
    "process_request",
    "process_response",
    "subprotocols",
    "select_subprotocol",
    "create_connection",
}
# Accepted for websockets compatibility and deliberately unused (docs/migration.md).
_IGNORED_OPTIONS = {"extensions", "extra_headers"}


_UNSET: Any = object()


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The server's TLS context from ``ssl_*`` options; None without a
    certificate. TLS 1.2 is the oldest version offered."""
    if config.ssl_certfile is None or config.ssl_keyfile is None:
        return None
    for name in ("ssl_certfile", "ssl_keyfile", "ssl_ca_certs"):
        path = getattr(config, name)
        if path is not None and not os.path.isfile(path):
            # ssl's own error does not say which file is missing.
            raise FileNotFoundError(f"{name} {path!r}: no such file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.ssl_certfile, config.ssl_keyfile, password=config.ssl_keyfile_password)
    if config.ssl_ca_certs is not None:
        context.load_verify_locations(config.ssl_ca_certs)
        context.verify_mode = ssl.CERT_REQUIRED
    if config.ssl_ciphers is not None:
        context.set_ciphers(config.ssl_ciphers)
    return context


class serve:
    """Start a WebSocket server: ``await serve(...)`` or ``async with serve(...)``.

    ``handler`` is an ``async def handler(ws)`` (coroutine level) or a
    handler class / instance with ``on_message`` (callback level).
    ``host`` and ``port`` are as in ``websockets`` (``host=None``: every
    interface); when neither is given, nor ``sock`` or ``path``, the
    ``config``'s ``host``/``port``/``uds`` are used. Options are
    keyword-only: every field of :class:`fastws.Config` but the process
    ones (``workers``, ``loop``, ``log_level``; ``max_size`` is accepted
    for ``max_message_size``, as in ``websockets``), plus
    ``process_request``, ``process_response``, ``subprotocols``,
    ``select_subprotocol``, ``origins``, ``create_connection``, ``sock``,
    ``ssl``, ``reuse_port`` (what is left goes to ``loop.create_server``).
    """

    def __init__(self, handler: Any, host: Any = _UNSET, port: Any = _UNSET, **options: Any) -> None:
        config, rest = _split_options(dict(options))
        state_kwargs = {k: rest.pop(k) for k in list(rest) if k in _STATE_OPTIONS}
        self._unix = "path" in rest  # unix_serve(), even with path=None (then sock= or an error)
        self._unix_path = rest.pop("path", None)
        for ignored in _IGNORED_OPTIONS:
            rest.pop(ignored, None)
        if host is _UNSET and port is _UNSET and not self._unix and rest.get("sock") is None:
            host, port, self._unix_path = config.host, config.port, config.uds
        if rest.get("ssl") is None:
            context = tls_context(config)
            if context is not None:
                rest["ssl"] = context
        # What is left goes to loop.create_server(), as in websockets.
        self._context = ServerState(handler, config, **state_kwargs)
        self._host = None if host is _UNSET else host
        self._port = None if port is _UNSET else port
        self._listen_kwargs = rest
        self.server: Server | None = None

    async def _create(self) -> Server:
        context = self._context
        server = Server(context)
        loop = asyncio.get_running_loop()
        kwargs = dict(self._listen_kwargs)
        backlog = context.config.backlog
        if kwargs.get("ssl") is not None and "ssl_handshake_timeout" not in kwargs:
            # open_timeout covers the TLS handshake too (asyncio's own default is 60 s).
            kwargs["ssl_handshake_timeout"] = context.config.open_timeout
        if self._unix or self._unix_path is not None or (kwargs.get("sock") is not None and kwargs["sock"].family == socket.AF_UNIX):

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
        raise ValueError("provide either credentials or check_credentials")
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
        except MultipleValuesError:
            return unauthorized("Unsupported credentials\n")
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
