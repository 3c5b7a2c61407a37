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
import time
import socket
import ssl
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from types import TracebackType
from typing import Any

from .config import DEFAULTS, Config, options
from .connection import Connection
from .faces.asyncio import coroutine_face
from .faces.callback import callback_face
from .faces.fallback import PREFIX as FALLBACK_PREFIX, Fallback, script as fallback_script
from . import dashboard, metrics
from .metrics import WorkerShare
from .protocol import Stats
from .protocol.http import MultipleValuesError, Request, Response, format_address, make_response, parse_tokens, upgrade_required
from .protocol.proxy import TrustedProxies, forwarded_client
from .rooms import Hub, open_broker
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
        worker_share: "tuple[str, int] | None" = None,
        rooms_relay: str | None = None,
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
        self._limited = config.limit_concurrency is not None or config.limit_per_ip is not None
        #: Counters shared by the connections; None when metrics are off.
        self.stats: Stats | None = Stats() if config.counting else None
        self.started = time.time()
        self.loop_lag = 0.0
        #: True once the server stops accepting (readyz answers 503).
        self.draining = False
        self.share = None if worker_share is None or self.stats is None else WorkerShare(*worker_share)
        #: The server's rooms (ws.subscribe / publish), on the broker
        #: ``config.broker`` names (``rooms_relay``: the supervisor's relay
        #: of ``--workers N --broker workers``).
        self.hub = Hub(self, config, open_broker(config, rooms_relay))
        #: The HTTP fallback's sessions (--fallback), or None.
        self.fallback: Fallback | None = Fallback(self, self.hub.node) if config.fallback else None
        self.routes = self._routes()
        # None when off: the connection then skips the call.
        self.admit: Callable[[Connection, Request], Response | None] | None = (
            self._admit if self._limited or self._trusted is not None or self.routes or self.fallback else None
        )
        self.release: Callable[[Connection], None] | None = self._release
        self.corked: list[Connection] | None = None

    # -- what the server answers itself: metrics, health, the dashboard ----

    def _routes(self) -> dict[str, Callable[[Connection, Request], Response | None]]:
        config = self.config
        routes: dict[str, Callable[[Connection, Request], Response | None]] = {}
        if config.health:
            routes["/healthz"] = lambda conn, request: make_response(200, "OK\n")
            routes["/readyz"] = self._readyz
        if config.counting and config.metrics_port is None:
            routes["/metrics"] = self._metrics
        if config.dashboard:
            routes.update(dashboard.routes(self))
        routes["/fastws.js"] = _fastws_js
        return routes

    def _readyz(self, conn: Connection, request: Request) -> Response:
        if self.draining:
            return make_response(503, "draining\n")
        return make_response(200, "ready\n")

    def _metrics(self, conn: Connection, request: Request) -> Response:
        return make_response(200, metrics.render(self.all_snapshots()), content_type=metrics.CONTENT_TYPE)

    def _route(self, conn: Connection, request: Request) -> Response | None:
        """A path the server answers itself: plain GET/HEAD for /metrics,
        /healthz, /readyz and the dashboard page; the dashboard's own
        WebSocket (its route attaches the dashboard face and lets the
        upgrade go on)."""
        handler = self.routes.get(request.path.partition("?")[0])
        if handler is None:
            return None
        upgrade = "websocket" in parse_tokens(request.headers.get_all("Upgrade"))
        if upgrade != dashboard.is_websocket_route(request.path):
            # An upgrade to /metrics is the app's; a plain GET to the
            # dashboard's socket is told to upgrade.
            return upgrade_required(request) if not upgrade else None
        if not upgrade and request.method not in ("GET", "HEAD"):
            return make_response(405, "Method not allowed.\n", headers=[("Allow", "GET, HEAD")])
        return handler(conn, request)

    def snapshot(self) -> dict[str, Any]:
        """This server's figures: a plain, JSON-safe dict (see docs/observability.md)."""
        stats = self.stats
        now = time.time()
        snap: dict[str, Any] = {
            "worker": 0 if self.share is None else self.share.index,
            "pid": os.getpid(),
            "time": now,
            "started": self.started,
            "uptime": now - self.started,
            "connections": sum(1 for c in self.connections if c.state is State.OPEN),
            "loop_lag": self.loop_lag,
            "draining": self.draining,
            "rooms": self.hub.snapshot(),
        }
        if stats is None:
            snap.update(metrics.empty_counters())
            return snap
        snap.update(
            handshakes={str(k): v for k, v in stats.handshakes.items()},
            messages_in={"text": stats.text_in, "binary": stats.binary_in},
            bytes_in={"text": stats.text_bytes_in, "binary": stats.binary_bytes_in},
            messages_out={"text": stats.text_out, "binary": stats.binary_out},
            bytes_out={"text": stats.text_bytes_out, "binary": stats.binary_bytes_out},
            close_sent={str(k): v for k, v in stats.close_sent.items()},
            close_received={str(k): v for k, v in stats.close_rcvd.items()},
            rtt={"buckets": list(stats.rtt_buckets), "count": stats.rtt_count, "sum": stats.rtt_sum},
            write_pauses=stats.write_pauses,
            slow_readers_dropped=stats.slow_readers_dropped,
            paths=dict(stats.paths),
        )
        return snap if self.share is None else self.share.carried(snap)

    def all_snapshots(self) -> list[dict[str, Any]]:
        """One snapshot per worker (just this one without workers)."""
        own = self.snapshot()
        if self.share is None:
            return [own]
        # Published first: whatever a scrape shows of this worker is on
        # disk, so a later scrape answered by another worker (or a
        # successor of this one) never shows less.
        self.share.publish(own)
        return self.share.read_all(own)

    async def watch(self) -> None:
        """While counting: measure event-loop lag every 0.5 s and publish
        this worker's snapshot every second (with workers)."""
        loop = asyncio.get_running_loop()
        tick = 0
        while True:
            expected = loop.time() + 0.5
            await asyncio.sleep(0.5)
            self.loop_lag = max(0.0, loop.time() - expected)
            tick += 1
            if self.share is not None and tick % 2 == 0:
                self.share.publish(self.snapshot())

    def _admit(self, conn: Connection, request: Request) -> Response | None:
        """A request is in: find the real client behind a trusted proxy,
        answer what the server serves itself, then apply the connection
        limits (503, 429)."""
        if self._trusted is not None:
            self._find_client(conn, request, self._trusted)
        if self.fallback is not None and request.path.startswith(FALLBACK_PREFIX):
            return self.fallback.take(conn, request)
        if self.routes:
            answer = self._route(conn, request)
            if answer is not None:
                return answer
        return self._limit(conn) if self._limited else None

    @staticmethod
    def _find_client(conn: Connection, request: Request, trusted: TrustedProxies) -> None:
        """From a trusted proxy: the real client's address and scheme."""
        peer = conn.remote_address
        client = forwarded_client(request.headers, peer[0] if isinstance(peer, tuple) else None, trusted)
        if client is not None:
            conn.remote_address = (client.host, client.port)
            if client.proto is not None:
                conn.scheme = client.proto

    def _limit(self, conn: Connection) -> Response | None:
        """Count the connection against the limits, or refuse it (503, 429)."""
        config = self.config
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
        """A connection ended: it leaves its rooms, and no longer counts
        against the limits."""
        self.hub.leave_all(conn)
        if not self._limited:
            return
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


def _fastws_js(conn: Connection, request: Request) -> Response:
    """``/fastws.js``: the browser client (docs/fallback.md)."""
    response = make_response(200, fallback_script(), content_type="text/javascript; charset=utf-8")
    response.headers["Cache-Control"] = "no-cache"
    return response


class _MetricsPort:
    """The ServerContext of ``metrics_port``: answers ``/metrics``,
    ``/healthz`` and ``/readyz`` from the server's figures, 404 to
    anything else; no WebSocket opens there."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.config = state.config
        self.connections: set[Connection] = set()
        self.subprotocols: Sequence[str] | None = None
        self.origins: Sequence[str | re.Pattern[str] | None] | None = None
        self.select_subprotocol: Callable[[Any, Sequence[str]], str | None] | None = None
        self.process_request: Callable[[Any, Request], Any] | None = None
        self.process_response: Callable[[Any, Request, Response], Any] | None = None
        self.stats: Any = None  # scrapes are not counted
        self.release: Callable[[Connection], None] | None = None
        self.corked: list[Connection] | None = None
        self.hub: Any = None  # no WebSocket opens here
        self.admit: Callable[[Connection, Request], Response | None] | None = self._answer
        self.routes: dict[str, Callable[[Connection, Request], Response | None]] = {
            "/metrics": state._metrics, "/healthz": lambda conn, request: make_response(200, "OK\n"), "/readyz": state._readyz,
        }  # fmt: skip

    def _answer(self, conn: Connection, request: Request) -> Response | None:
        handler = self.routes.get(request.path.partition("?")[0])
        if handler is None or request.method not in ("GET", "HEAD"):
            return make_response(404, "Not found: this port serves /metrics, /healthz and /readyz.\n")
        return handler(conn, request)

    def attach_face(self, conn: Connection) -> None:
        conn.attach(conn, None, lambda conn, data, is_text: None, None)

    def track_task(self, task: "asyncio.Future[Any]") -> None:
        self.state.track_task(task)


class Server:
    """A running WebSocket server (returned by :func:`serve`)."""

    def __init__(self, context: ServerState) -> None:
        self._context = context
        self._server: asyncio.Server | None = None
        self._closing: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._metrics_server: asyncio.Server | None = None
        self._watch: asyncio.Task[None] | None = None

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

    async def _listen(
        self, create: Callable[[Callable[[], Any]], Awaitable[asyncio.Server]], host: Any = None, reuse_port: Any = None
    ) -> None:
        context = self._context
        config = context.config
        if config.metrics_port is not None:
            port_context = _MetricsPort(context)
            self._metrics_server = await self._loop.create_server(
                lambda: Connection(port_context),  # type: ignore[arg-type, return-value]
                host if host is not None else config.host,
                config.metrics_port,
                reuse_port=reuse_port,
            )
        await context.hub.start()
        self._server = await create(lambda: Connection(context))
        if context.stats is not None:
            self._watch = asyncio.ensure_future(context.watch())

    def publish(self, room: str, message: str | bytes | bytearray | memoryview, *, text: bool | None = None) -> None:
        """Send ``message`` to every member of ``room``, on every node
        (``str``: a text message, bytes-like: binary; ``text`` forces one)."""
        self._context.hub.publish(room, message, text=text)

    async def presence(self, room: str) -> list[str]:
        """The members of ``room`` on every node (their ``member`` names),
        sorted; needs ``presence=True`` beyond this node."""
        return await self._context.hub.broker.presence(room)

    @property
    def hub(self) -> Hub:
        """The server's rooms (``fastws.rooms.Hub``)."""
        return self._context.hub

    def stats(self) -> dict[str, Any]:
        """The server's figures as a plain dict: connections, handshakes by
        status, messages and bytes in and out, close codes, ping round
        trips, uptime, event-loop lag (docs/observability.md). Counters
        are zero unless metrics are on (``metrics=True``)."""
        return self._context.snapshot()

    @property
    def metrics_sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets of ``metrics_port``, if any."""
        return () if self._metrics_server is None else tuple(self._metrics_server.sockets)

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
        self._context.draining = True
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
        await self._context.hub.close()
        if self._watch is not None:
            self._watch.cancel()
        if self._metrics_server is not None:
            # Open until the drain is over: /readyz says 503 meanwhile.
            self._metrics_server.close()
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
    "worker_share",
    "rooms_relay",
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

        await server._listen(create, self._host, kwargs.get("reuse_port"))
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
