"""The echo servers we compare, each on uvloop, in one process but for ``fastws-cli-w2`` and
``granian`` (a supervisor and its workers), ``socketify`` (a child process), and
the rooms servers ``fastws-rooms-workers-broadcast`` (the CLI's workers) and
``fastws-rooms-redisN-broadcast`` (redis-server and N fastws nodes, all child processes).

``python -m bench.servers NAME --port P`` runs one of:

- ``fastws-callback``  — fastws' callback level: ``fastws.demo.EchoHandler``;
- ``fastws-coroutine`` — fastws' coroutine level: ``async for m in ws: await ws.send(m)``;
- ``websockets``       — the same coroutine on ``websockets.asyncio.server``;
- ``picows``           — a ``WSListener`` that sends each frame back;
- ``aiohttp``          — an ``aiohttp.web`` app with a ``WebSocketResponse`` echo;
- ``picows-uvloop``    — the picows echo with ``use_aiofastnet=False`` (uvloop's
  transport instead of picows' default aiofastnet one), for reference.
- ``fastws-callback-metrics`` — ``fastws-callback`` with ``metrics=True``: the
  per-message counters on (issue 11: its cost against metrics off).
- ``fastws-callback-hashlib`` — ``fastws-callback`` with the server's accept-key
  function replaced by the pure twin's (``hashlib.sha1`` + ``base64``) instead
  of the compiled hand-written SHA-1, for ``python -m bench.handshakes``.
- ``fastws-callback-tls``, ``picows-tls`` — ``fastws-callback`` and ``picows``
  on wss://: a name ending in ``-tls`` runs the server of the name without it
  with the certificate in ``--tls-dir`` (made by ``bench.run`` or
  ``bench.handshakes``; by hand, a fresh one in a temporary directory, its
  path on stderr). Both get the same ``ssl.SSLContext`` settings,
  :func:`bench.tls.server_context`: a self-signed ECDSA P-256 certificate,
  TLS 1.2 or newer offered (TLS 1.3 negotiated with the bench's clients),
  ECDHE on P-256 only, OpenSSL's default cipher suites. fastws does TLS with
  uvloop's SSL transport (``ssl.MemoryBIO``), picows with aiofastnet's own.
- ``fastws-cli-w1``, ``fastws-cli-w2`` — the real CLI, ``python -m fastws serve
  fastws.demo:EchoHandler --workers N --no-access-log --log-level warning
  --ws-max-size MAX`` (N = 1, 2), started by this process, which prints
  ``ready`` once the port has N listening sockets (each worker binds its own,
  ``SO_REUSEPORT``, after the supervisor logs its start line) and answers a
  WebSocket handshake, and stops it with SIGTERM. With 2 workers it is a supervisor
  (plus multiprocessing's resource tracker) and 2 worker processes: the
  load generator measures CPU and RSS of this process's whole tree (this
  wrapper, idle, included), and the kernel spreads connections over the
  workers by a hash of their addresses, not evenly. Pin it to as many CPUs
  as workers (``bench.run --no-pin``, or ``--server-cpus 0-1``), or the
  workers share one.
- ``uvicorn`` — uvicorn serving the ASGI echo :func:`bench.peer_apps.echo_asgi`,
  in this process (``uvicorn.Server(config).serve()`` in a task on this
  process's uvloop loop, signals left to this process), with
  ``http="httptools"``, ``ws="websockets-sansio"`` (what uvicorn's default
  ``auto`` picks since 0.50 with ``websockets`` installed, with write flow
  control since 0.52.1; faster here than the deprecated ``ws="websockets"``,
  which runs ``websockets.legacy``: about 29.5k against 26.3k echoes/s in
  one short pipelined run),
  ``ws_max_size=MAX``, ``ws_per_message_deflate=False``, ``lifespan="off"``,
  access log off, log level warning; its keepalive pings on, every 20 s, as
  the ``websockets`` server's.
- ``granian`` — granian (a Rust server: hyper + tungstenite, its own process
  model) with its ASGI interface serving the same
  ``bench.peer_apps:echo_asgi``, ``--loop uvloop --workers 1``, log level
  warning, no access log, started as a subprocess (in a session of its own)
  like ``fastws-cli-*``: a supervisor process and one worker process, both
  measured. granian has no option for the largest message: tungstenite's
  defaults hold (64 MiB a message, 16 MiB a frame), above ``--max-size``'s
  default. ASGI rather than granian's own RSGI so that granian and uvicorn
  run the same app; RSGI's WebSocket support is no richer for an echo (the
  same messages, no size option either) and it measured no faster here
  (within the noise of a few runs), so it is only the reference
  ``granian-rsgi`` (:func:`bench.peer_apps.echo_rsgi`).
- ``socketify`` — socketify.py (uWebSockets through cffi) with an
  ``App().ws("/*", ...)`` echo (``ws.send(message, opcode)``),
  ``max_payload_length=MAX``, compression off, no idle timeout, started as a
  subprocess (``python -m bench.peer_apps socketify``): socketify runs its
  libuv loop by polling it from an asyncio loop of its own (uvloop's here),
  busy while there is traffic, so its CPU time includes that polling.
- ``NAME-broadcast`` for ``fastws-callback``, ``picows``, ``websockets``,
  ``aiohttp`` and ``socketify`` (uWS pub/sub: every connection subscribes to
  one topic, ``App.publish`` sends to all) — for the ``broadcast`` load scenario: every data message that
  any connection sends goes to every open connection, the sender included,
  with the same opcode, in the order the server received them. No send waits
  for a slow listener: fastws' ``ws.send(data, is_text)`` and picows'
  ``transport.send()`` write at once; ``websockets`` uses its
  ``broadcast()`` (no backpressure); aiohttp raises each connection's
  transport high-water mark to 2 GiB - 1 (``set_write_buffer_limits``,
  uvloop's largest) so that ``send_bytes``/``send_str`` do not wait on
  ``drain``. A slow listener's frames pile up in its own write buffer
  instead (fastws drops a peer past ``max_write_buffer``, 16 MiB by
  default). picows forwards frames as they come, so a fragmented message is
  not reassembled (the load generator sends none).
- ``fastws-rooms-*-broadcast`` — the same broadcast through fastws' rooms
  (``bench.peer_apps.RoomsBroadcast``: every connection ``ws.subscribe("bench")``
  in ``on_connect``, every message ``ws.publish("bench", data, text=is_text)``),
  one per rooms backend:

  - ``fastws-rooms-broadcast``: in this process, ``broker="memory"``;
  - ``fastws-rooms-workers-broadcast``: the CLI, ``python -m fastws serve
    bench.peer_apps:RoomsBroadcast --workers 2 --broker workers`` (as
    ``fastws-cli-w2``: 2 workers sharing the port with ``SO_REUSEPORT``; the
    supervisor runs the relay that carries each worker's publishes to the
    other);
  - ``fastws-rooms-redisN-broadcast`` (N = 1, 2, 3): this process starts one
    ``redis-server`` (on a free loopback port, ``--save "" --appendonly no``,
    in a temporary directory of its own, its log there) and N independent
    fastws nodes, ``python -m bench.peer_apps fastws-rooms --broker
    redis://127.0.0.1:PORT/0``: separate processes (not workers of one
    supervisor), each with its own Redis connections, all on the same port
    with ``SO_REUSEPORT``, so the kernel spreads the connections over them
    like a load balancer (by a hash of the addresses, not evenly). They are
    stopped with it: the nodes first, then redis-server.

  Every process of these servers is a child of this one, so the load
  generator's server CPU and RSS (this process's tree) include all the
  nodes, the CLI's supervisor and relay thread, and redis-server too. The
  default slow-receiver policy of rooms holds (``room_max_buffer`` 1 MiB, then
  close 1013), and Redis' default ``client-output-buffer-limit pubsub 32mb 8mb 60``.

All (the ``-broadcast`` ones but for what they send back) echo text as text
and binary as binary, accept any path, answer a close frame, negotiate no
extension (the load generator offers none), log only errors, and allow
messages up to ``--max-size`` bytes (16 MiB by default, so that
large-message runs are not refused by one server's smaller default; granian
has no such option, see above).
Each prints one ``ready`` line on stdout once it listens, with a fingerprint
of the fastws code it loaded (``fastws-build=...``, ``-`` for the peers).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import hashlib
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from ssl import SSLContext
from typing import Any, Protocol

from bench import tls

__all__ = ["SERVERS", "TLS_SUFFIX", "fastws_digest", "foreign_fastws_modules", "is_tls", "main", "redis_server_path", "workers"]

MAX_SIZE = 16 * 2**20
#: A server name ending so speaks wss:// (the server of the name without it, with TLS).
TLS_SUFFIX = "-tls"
#: Seconds a ``fastws-cli-*`` server may take to listen, and to stop on SIGTERM.
CLI_START_TIMEOUT = 15.0
CLI_STOP_TIMEOUT = 8.0
#: Worker processes of ``fastws-rooms-workers-broadcast``.
ROOMS_WORKERS = 2
#: ``fastws-rooms-redisN``: N fastws nodes sharing one redis-server.
ROOMS_REDIS_PREFIX = "fastws-rooms-redis"
#: The bench.peer_apps handler of the rooms broadcast servers.
ROOMS_TARGET = "bench.peer_apps:RoomsBroadcast"


class ServerStart(Protocol):
    """Start an echo server on ``host:port`` (wss:// when ``ssl`` is given);
    return an object to keep while it serves (closed at the end)."""

    def __call__(self, host: str, port: int, max_size: int, ssl: SSLContext | None = None) -> Awaitable[Any]: ...


def is_tls(name: str) -> bool:
    """Whether server ``name`` (``@base`` suffix or not) speaks wss://."""
    return name.partition("@")[0].endswith(TLS_SUFFIX)


def workers(name: str) -> int:
    """How many processes serve connections for server ``name``
    (``fastws-cli-wN``: N workers; ``fastws-rooms-workers``: 2;
    ``fastws-rooms-redisN``: N nodes, redis-server not counted), with or
    without its ``-broadcast`` suffix."""
    base = name.partition("@")[0].removesuffix("-broadcast")
    prefix = "fastws-cli-w"
    if base.startswith(prefix):
        return int(base.removeprefix(prefix))
    if base == "fastws-rooms-workers":
        return ROOMS_WORKERS
    if base.startswith(ROOMS_REDIS_PREFIX) and base.removeprefix(ROOMS_REDIS_PREFIX).isdigit():
        return int(base.removeprefix(ROOMS_REDIS_PREFIX))
    return 1


async def _fastws_callback(host: str, port: int, max_size: int, ssl: SSLContext | None = None) -> Any:
    import fastws
    from fastws.demo import EchoHandler

    return await fastws.serve(EchoHandler, host, port, access_log=False, max_message_size=max_size, ssl=ssl)


async def _fastws_callback_metrics(host: str, port: int, max_size: int, ssl: SSLContext | None = None) -> Any:
    """``fastws-callback`` with metrics on: every message counted (issue 11)."""
    import fastws
    from fastws.demo import EchoHandler

    return await fastws.serve(EchoHandler, host, port, access_log=False, max_message_size=max_size, ssl=ssl, metrics=True)


async def _fastws_callback_hashlib(host: str, port: int, max_size: int, ssl: SSLContext | None = None) -> Any:
    """``fastws-callback`` computing Sec-WebSocket-Accept with hashlib + base64.

    ``fastws.protocol.http.check_request`` calls ``_handshake.accept_key(key)``
    on the picked codec module object (``fastws.codec.handshake``) at call
    time, so replacing the attribute on that module object switches the
    server to the pure twin's ``accept_key`` (``hashlib.sha1(key + GUID,
    usedforsecurity=False)`` then ``base64.b64encode``) and nothing else.
    """
    import fastws.codec
    import fastws.protocol.http
    from fastws.codec import _handshake_py

    setattr(fastws.codec.handshake, "accept_key", _handshake_py.accept_key)
    # The variant must really run hashlib: the module check_request uses is
    # the one we patched, and its accept_key is now the twin's.
    # (Not ``assert``: it must hold under ``python -O`` too.)
    used = getattr(fastws.protocol.http, "_handshake")
    if used is not fastws.codec.handshake or used.accept_key is not _handshake_py.accept_key:
        raise RuntimeError("fastws-callback-hashlib: check_request would not call the hashlib accept_key")
    return await _fastws_callback(host, port, max_size, ssl)


async def _fastws_coroutine(host: str, port: int, max_size: int, ssl: SSLContext | None = None) -> Any:
    import fastws

    async def echo(ws: Any) -> None:
        async for message in ws:
            await ws.send(message)

    return await fastws.serve(echo, host, port, access_log=False, max_message_size=max_size, ssl=ssl)


async def _websockets(host: str, port: int, max_size: int, ssl: SSLContext | None = None) -> Any:
    from websockets.asyncio.server import serve
    from websockets.exceptions import ConnectionClosed

    async def echo(ws: Any) -> None:
        try:
            async for message in ws:
                await ws.send(message)
        except ConnectionClosed:
            # send() after the client's close frame (echoes still in flight):
            # websockets logs that as a handler failure unless we catch it.
            pass

    return await serve(echo, host, port, max_size=max_size, ssl=ssl)


async def _picows(
    host: str, port: int, max_size: int, ssl: SSLContext | None = None, use_aiofastnet: bool | None = None
) -> Any:
    from picows import WSCloseCode, WSListener, WSMsgType, ws_create_server

    class Echo(WSListener):
        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            msg_type = frame.msg_type
            if msg_type == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code() or WSCloseCode.OK)
                transport.disconnect()
            elif msg_type != WSMsgType.PING and msg_type != WSMsgType.PONG:
                # The frame points into picows' read buffer; send() copies.
                transport.send(msg_type, frame.get_payload_as_memoryview(), frame.fin)

    # use_aiofastnet=None is picows' default: its own transport (aiofastnet)
    # when that package is installed, else the event loop's.
    return await ws_create_server(
        lambda request: Echo(), host, port, max_frame_size=max_size, use_aiofastnet=use_aiofastnet, ssl=ssl
    )


async def _picows_uvloop(host: str, port: int, max_size: int, ssl: SSLContext | None = None) -> Any:
    return await _picows(host, port, max_size, ssl, use_aiofastnet=False)


async def _aiohttp(host: str, port: int, max_size: int, ssl: SSLContext | None = None) -> Any:
    from aiohttp import WSMsgType, web

    async def echo(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=max_size)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl)
    await site.start()
    return runner


async def _fastws_callback_broadcast(host: str, port: int, max_size: int, ssl: SSLContext | None = None) -> Any:
    """Every message to every open connection (a ``Handler`` keeping the set)."""
    import fastws
    from fastws import Connection, ConnectionClosed, Handler

    members: set[Connection] = set()

    class Broadcast(Handler):
        def on_connect(self, ws: Connection) -> None:
            members.add(ws)

        def on_message(self, ws: Connection, data: bytes, is_text: bool) -> None:
            for peer in tuple(members):  # a send may close a peer (on_close) while we loop
                try:
                    peer.send(data, is_text)
                except ConnectionClosed:
                    pass  # closing: its on_close comes

        def on_close(self, ws: Connection, code: int, reason: str) -> None:
            members.discard(ws)

    return await fastws.serve(Broadcast, host, port, access_log=False, max_message_size=max_size, ssl=ssl)


async def _picows_broadcast(host: str, port: int, max_size: int, ssl: SSLContext | None = None) -> Any:
    """Every frame to every open connection (a ``WSListener`` keeping the set)."""
    from picows import WSCloseCode, WSListener, WSMsgType, ws_create_server

    members: set[Any] = set()

    class Broadcast(WSListener):
        def on_ws_connected(self, transport: Any) -> None:
            members.add(transport)

        def on_ws_disconnected(self, transport: Any) -> None:
            members.discard(transport)

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            msg_type = frame.msg_type
            if msg_type == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code() or WSCloseCode.OK)
                transport.disconnect()
            elif msg_type != WSMsgType.PING and msg_type != WSMsgType.PONG:
                payload = frame.get_payload_as_memoryview()
                # send() copies, and ignores a transport that sent its close frame.
                for peer in tuple(members):
                    peer.send(msg_type, payload, frame.fin)

    return await ws_create_server(lambda request: Broadcast(), host, port, max_frame_size=max_size, ssl=ssl)


async def _websockets_broadcast(host: str, port: int, max_size: int, ssl: SSLContext | None = None) -> Any:
    """Every message to every open connection, with ``websockets``' ``broadcast()``."""
    from websockets.asyncio.server import ServerConnection, broadcast, serve
    from websockets.exceptions import ConnectionClosed

    members: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        members.add(ws)
        try:
            async for message in ws:
                broadcast(members, message)  # writes at once, skips connections not open
        except ConnectionClosed:
            pass
        finally:
            members.discard(ws)

    return await serve(handler, host, port, max_size=max_size, ssl=ssl)


async def _aiohttp_broadcast(host: str, port: int, max_size: int, ssl: SSLContext | None = None) -> Any:
    """Every message to every open connection, on ``aiohttp.web``."""
    from aiohttp import WSMsgType, web

    members: set[web.WebSocketResponse] = set()

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=max_size)
        await ws.prepare(request)
        if request.transport is not None:
            # Never pause writing: send_*() then never waits on drain(), so a
            # slow listener cannot hold up a sender (its frames pile up in
            # its buffer, as with the other servers' non-blocking sends).
            request.transport.set_write_buffer_limits(high=2**31 - 1)  # uvloop's largest (a C int)
        members.add(ws)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT or msg.type == WSMsgType.BINARY:
                    for peer in tuple(members):
                        if peer.closed:
                            continue
                        try:
                            if msg.type == WSMsgType.TEXT:
                                await peer.send_str(msg.data)
                            else:
                                await peer.send_bytes(msg.data)
                        except ConnectionError:
                            pass  # closing: its handler removes it
        finally:
            members.discard(ws)
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl)
    await site.start()
    return runner


#: Seconds an in-process uvicorn may take to stop gracefully before it is cancelled.
INPROCESS_STOP_TIMEOUT = 2.0


class _InProcess:
    """uvicorn running as a task of this process: ``await stop()`` stops it
    gracefully (open WebSockets get a close frame, 1012), ``close()`` at once."""

    def __init__(self, server: Any, task: asyncio.Task[None]) -> None:
        self.server = server
        self.task = task

    async def stop(self) -> None:
        self.server.should_exit = True  # uvicorn's own way out of its main loop
        try:
            await asyncio.wait_for(asyncio.shield(self.task), INPROCESS_STOP_TIMEOUT)
        except TimeoutError:
            self.close()

    def close(self) -> None:
        self.server.should_exit = True
        self.task.cancel()


async def _uvicorn(host: str, port: int, max_size: int, ssl: SSLContext | None = None) -> Any:
    """uvicorn serving ``bench.peer_apps:echo_asgi`` in this process (see the module docstring)."""
    import contextlib

    import uvicorn

    from bench.peer_apps import echo_asgi

    if ssl is not None:
        raise ValueError("uvicorn has no TLS variant here")

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # This process handles SIGINT/SIGTERM itself (_run), and closes us.
            yield

    config = uvicorn.Config(
        echo_asgi, host=host, port=port,
        # serve() runs on the running loop (this process's uvloop); loop= only
        # matters to uvicorn.run(), which would make the same choice.
        loop="uvloop", http="httptools", ws="websockets-sansio",
        ws_max_size=max_size, ws_per_message_deflate=False, lifespan="off",
        log_config=None, log_level="warning", access_log=False,
    )  # fmt: skip
    server = Server(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + CLI_START_TIMEOUT
    while not server.started:
        if task.done():
            task.result()  # its error, if any
            raise RuntimeError(f"uvicorn stopped before listening on {host}:{port}")
        if time.monotonic() > deadline:
            task.cancel()
            raise RuntimeError(f"uvicorn: not listening on {host}:{port} after {CLI_START_TIMEOUT:g} s")
        await asyncio.sleep(0.01)
    return _InProcess(server, task)


def _require(module: str, server: str) -> None:
    """Fail at once, and plainly, if a subprocess server's package is missing."""
    if importlib.util.find_spec(module) is None:
        raise RuntimeError(f"{server}: the {module!r} package is not installed (pip install {module})")


async def _granian(
    host: str, port: int, max_size: int, ssl: SSLContext | None = None, interface: str = "asgi"
) -> Any:
    """granian serving ``bench.peer_apps``' echo with ``interface`` (asgi or rsgi), in a subprocess."""
    if ssl is not None:
        raise ValueError("granian has no TLS variant here")
    _require("granian", "granian")
    target = {"asgi": "bench.peer_apps:echo_asgi", "rsgi": "bench.peer_apps:echo_rsgi"}[interface]
    cmd = [
        sys.executable, "-m", "granian", "--interface", interface, "--loop", "uvloop", "--workers", "1",
        "--host", host, "--port", str(port), "--log-level", "warning", "--no-access-log",
        # On SIGTERM, kill a worker still waiting for open WebSockets after 1 s.
        "--workers-kill-timeout", "1", target,
    ]  # fmt: skip
    # max_size: granian has no option for it (see the module docstring).
    return await _start_process(cmd, host, port, f"granian --interface {interface}", stdout=sys.stderr.fileno())


async def _granian_rsgi(host: str, port: int, max_size: int, ssl: SSLContext | None = None) -> Any:
    return await _granian(host, port, max_size, ssl, interface="rsgi")


async def _socketify(host: str, port: int, max_size: int, ssl: SSLContext | None = None, broadcast: bool = False) -> Any:
    """socketify's echo (``bench.peer_apps``), in a subprocess."""
    if ssl is not None:
        raise ValueError("socketify has no TLS variant here")
    _require("socketify", "socketify")
    cmd = [
        sys.executable, "-m", "bench.peer_apps", "socketify",
        "--host", host, "--port", str(port), "--max-size", str(max_size), *(["--broadcast"] if broadcast else []),
    ]  # fmt: skip
    return await _start_process(cmd, host, port, "socketify", stdout=sys.stderr.fileno())


async def _socketify_broadcast(host: str, port: int, max_size: int, ssl: SSLContext | None = None) -> Any:
    """socketify sending every message to every connection (uWS pub/sub)."""
    return await _socketify(host, port, max_size, ssl, broadcast=True)


class _Cli:
    """A running server process (``fastws serve``, granian, socketify), in a
    session of its own; ``close()`` stops it."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # the supervisor forwards it to its workers
            try:
                self.proc.wait(CLI_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _listening(port: int) -> int:
    """How many TCP sockets listen on ``port`` (SO_REUSEPORT: one per worker)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local_address is HOST:PORT in hex; state 0A is LISTEN.
            if len(fields) > 3 and fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                count += 1
    return count


def _die_with_parent() -> None:
    try:  # PR_SET_PDEATHSIG: SIGTERM when this wrapper dies, even by SIGKILL
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


#: A WebSocket handshake request (RFC 6455's sample key) and a masked close frame (1000).
_PROBE_REQUEST = (
    "GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
_PROBE_CLOSE = b"\x88\x82\x00\x00\x00\x00\x03\xe8"  # mask 0: the payload is the code itself


async def _answers_upgrade(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether the server on ``host:port`` completes a WebSocket handshake
    (then closed cleanly: our close frame, its answer, EOF)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(_PROBE_REQUEST.format(host=host, port=port).encode("latin-1"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        if not head.startswith(b"HTTP/1.1 101"):
            return False
        writer.write(_PROBE_CLOSE)
        try:
            await asyncio.wait_for(reader.read(), timeout)  # its close frame, then EOF
        except (OSError, TimeoutError):
            pass
        return True
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return False
    finally:
        writer.close()


async def _start_process(
    cmd: list[str], host: str, port: int, what: str, listeners: int = 1, stdout: int | None = None
) -> _Cli:
    """Start ``cmd`` (a server of ``listeners`` listening sockets on
    ``port``) in a session of its own; return it once the port has that many
    listening sockets and answers a WebSocket handshake. ``stdout``: where
    its standard output goes (default: ours)."""
    cli = _Cli(_spawn(cmd, stdout))
    await _wait_serving([cli], host, port, what, listeners)
    return cli


def _spawn(cmd: list[str], stdout: int | None = None) -> subprocess.Popen[bytes]:
    # Its own session, so that a stuck one is killed whole (killpg), workers included.
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stdout, start_new_session=True, preexec_fn=_die_with_parent)


async def _wait_serving(procs: list[_Cli], host: str, port: int, what: str, listeners: int) -> None:
    """Wait until ``port`` has ``listeners`` listening sockets and answers a
    WebSocket handshake; if one of ``procs`` exits first, or it takes more
    than ``CLI_START_TIMEOUT``, stop them all and raise."""
    deadline = time.monotonic() + CLI_START_TIMEOUT
    while True:
        dead = [p.proc for p in procs if p.proc.poll() is not None]
        if dead:
            for p in procs:
                p.close()
            raise RuntimeError(f"{what}: a process exited with status {dead[0].returncode} before listening")
        if _listening(port) >= listeners and await _answers_upgrade(host, port):
            return
        if time.monotonic() > deadline:
            for p in procs:
                p.close()
            raise RuntimeError(f"{what}: not serving on port {port} after {CLI_START_TIMEOUT:g} s")
        await asyncio.sleep(0.05)


async def _fastws_cli(
    host: str, port: int, max_size: int, ssl: SSLContext | None = None, worker_count: int = 1,
    target: str = "fastws.demo:EchoHandler", extra: tuple[str, ...] = (),
) -> Any:  # fmt: skip
    """``python -m fastws serve target`` with ``--workers worker_count`` (and
    ``extra`` options), once all its workers listen and it answers a
    WebSocket handshake (see the module docstring)."""
    import fastws  # noqa: F401 - the ready line's fingerprint: the copy the child imports too (same cwd, PYTHONPATH)

    if ssl is not None:
        raise ValueError("fastws-cli servers have no TLS variant")
    cmd = [
        sys.executable, "-m", "fastws", "serve", target, "--host", host, "--port", str(port),
        "--workers", str(worker_count), "--no-access-log", "--log-level", "warning", "--ws-max-size", str(max_size),
        *extra,
    ]  # fmt: skip
    what = " ".join(["fastws serve", "--workers", str(worker_count), *extra])
    return await _start_process(cmd, host, port, what, listeners=worker_count)


async def _fastws_cli_w1(host: str, port: int, max_size: int, ssl: SSLContext | None = None) -> Any:
    return await _fastws_cli(host, port, max_size, ssl, worker_count=1)


async def _fastws_cli_w2(host: str, port: int, max_size: int, ssl: SSLContext | None = None) -> Any:
    return await _fastws_cli(host, port, max_size, ssl, worker_count=2)


async def _fastws_rooms_broadcast(host: str, port: int, max_size: int, ssl: SSLContext | None = None) -> Any:
    """Rooms, one process: ``bench.peer_apps.RoomsBroadcast`` on the memory broker."""
    import fastws
    from bench.peer_apps import RoomsBroadcast

    return await fastws.serve(
        RoomsBroadcast, host, port, access_log=False, max_message_size=max_size, ssl=ssl, broker="memory"
    )


async def _fastws_rooms_workers_broadcast(host: str, port: int, max_size: int, ssl: SSLContext | None = None) -> Any:
    """Rooms across the CLI's workers: ``fastws serve ... --workers 2 --broker workers``."""
    return await _fastws_cli(host, port, max_size, ssl, ROOMS_WORKERS, ROOMS_TARGET, ("--broker", "workers"))


#: Seconds redis-server may take to answer PING.
REDIS_START_TIMEOUT = 10.0


def redis_server_path() -> str | None:
    """The ``redis-server`` to run (PATH, else Debian's), or None."""
    import shutil

    found = shutil.which("redis-server")
    if found is None and os.access("/usr/bin/redis-server", os.X_OK):
        found = "/usr/bin/redis-server"
    return found


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def _redis_pong(host: str, port: int) -> bool:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"PING\r\n")
        return (await asyncio.wait_for(reader.readline(), 1.0)).startswith(b"+PONG")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


class _Group:
    """Several server processes stopped together: ``nodes`` first (all told at
    once), then ``last`` (redis-server); then ``directory`` is removed."""

    def __init__(self, nodes: list[_Cli], last: _Cli | None = None, directory: str | None = None) -> None:
        self.nodes = nodes
        self.last = last
        self.directory = directory

    def close(self) -> None:
        import shutil

        for node in self.nodes:
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            node.close()
        if self.last is not None:
            self.last.close()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


async def _start_redis(host: str) -> tuple[_Cli, str, str]:
    """A ``redis-server`` on a free port of ``host``, without persistence, in
    a temporary directory of its own (its log there): ``(process, redis:// URL,
    directory)`` once it answers PING."""
    import shutil

    path = redis_server_path()
    if path is None:
        raise RuntimeError("fastws-rooms-redis*: redis-server not found (apt-get install redis-server)")
    directory = tempfile.mkdtemp(prefix="fastws-bench-redis-")
    port = _free_port(host)
    cmd = [
        path, "--bind", host, "--port", str(port), "--save", "", "--appendonly", "no", "--daemonize", "no",
        "--dir", directory, "--logfile", os.path.join(directory, "redis.log"), "--loglevel", "warning",
    ]  # fmt: skip
    redis = _Cli(_spawn(cmd))
    deadline = time.monotonic() + REDIS_START_TIMEOUT
    while not await _redis_pong(host, port):
        if redis.proc.poll() is not None or time.monotonic() > deadline:
            redis.close()
            try:
                log = Path(directory, "redis.log").read_text(errors="replace").strip().splitlines()[-3:]
            except OSError:
                log = []
            shutil.rmtree(directory, ignore_errors=True)
            status = redis.proc.returncode
            raise RuntimeError(f"redis-server did not answer PING on {host}:{port} (status {status}): {' | '.join(log)}")
        await asyncio.sleep(0.05)
    return redis, f"redis://{host}:{port}/0", directory


async def _fastws_rooms_redis(host: str, port: int, max_size: int, ssl: SSLContext | None = None, nodes: int = 1) -> Any:
    """Rooms across ``nodes`` independent fastws processes on one port
    (``SO_REUSEPORT``) and one redis-server (see the module docstring)."""
    import fastws  # noqa: F401 - the ready line's fingerprint: the copy the nodes import too (same cwd, PYTHONPATH)

    if ssl is not None:
        raise ValueError("fastws-rooms-redis servers have no TLS variant")
    redis, url, directory = await _start_redis(host)
    cmd = [
        sys.executable, "-m", "bench.peer_apps", "fastws-rooms", "--host", host, "--port", str(port),
        "--max-size", str(max_size), "--broker", url,
    ]  # fmt: skip
    group = _Group([], redis, directory)
    try:
        group.nodes = [_Cli(_spawn(cmd)) for _ in range(nodes)]
        await _wait_serving(group.nodes, host, port, f"{nodes} fastws-rooms node(s) on {url}", listeners=nodes)
    except BaseException:
        group.close()
        raise
    return group


async def _fastws_rooms_redis1(host: str, port: int, max_size: int, ssl: SSLContext | None = None) -> Any:
    return await _fastws_rooms_redis(host, port, max_size, ssl, nodes=1)


async def _fastws_rooms_redis2(host: str, port: int, max_size: int, ssl: SSLContext | None = None) -> Any:
    return await _fastws_rooms_redis(host, port, max_size, ssl, nodes=2)


async def _fastws_rooms_redis3(host: str, port: int, max_size: int, ssl: SSLContext | None = None) -> Any:
    return await _fastws_rooms_redis(host, port, max_size, ssl, nodes=3)


#: name -> coroutine that starts the server and returns an object to keep.
SERVERS: dict[str, ServerStart] = {
    "fastws-callback": _fastws_callback,
    "fastws-coroutine": _fastws_coroutine,
    "websockets": _websockets,
    "picows": _picows,
    "aiohttp": _aiohttp,
    # Not in the default comparison: picows on uvloop's own transport.
    "picows-uvloop": _picows_uvloop,
    # Not in the default comparison: fastws-callback with hashlib's SHA-1
    # for the accept key (python -m bench.handshakes).
    "fastws-callback-hashlib": _fastws_callback_hashlib,
    # Not in the default comparison: metrics on (counters per message).
    "fastws-callback-metrics": _fastws_callback_metrics,
    # Not in the default comparison: wss:// (is_tls), issue 10.
    "fastws-callback-tls": _fastws_callback,
    "picows-tls": _picows,
    # Not in the default comparison: the CLI with 1 and 2 worker processes.
    "fastws-cli-w1": _fastws_cli_w1,
    "fastws-cli-w2": _fastws_cli_w2,
    # Peers that are not in the default comparison (bench.run --servers ...).
    "uvicorn": _uvicorn,
    "granian": _granian,
    "socketify": _socketify,
    # Not in the default comparison: granian's own interface, RSGI.
    "granian-rsgi": _granian_rsgi,
    # For the broadcast scenario: every message to every connection.
    "fastws-callback-broadcast": _fastws_callback_broadcast,
    "picows-broadcast": _picows_broadcast,
    "websockets-broadcast": _websockets_broadcast,
    "aiohttp-broadcast": _aiohttp_broadcast,
    "socketify-broadcast": _socketify_broadcast,
    # The same broadcast through fastws' rooms, one per backend (bench.run
    # accepts them as fastws-rooms, fastws-rooms-workers, fastws-rooms-redisN).
    "fastws-rooms-broadcast": _fastws_rooms_broadcast,
    "fastws-rooms-workers-broadcast": _fastws_rooms_workers_broadcast,
    "fastws-rooms-redis1-broadcast": _fastws_rooms_redis1,
    "fastws-rooms-redis2-broadcast": _fastws_rooms_redis2,
    "fastws-rooms-redis3-broadcast": _fastws_rooms_redis3,
}


def loaded_fastws_digest() -> str:
    """Fingerprint of the fastws code this process runs: a hash of every
    source and compiled file of the ``fastws`` package it imported (relative
    paths and contents), so a comparison on a shared checkout can tell if
    fastws changed between runs; ``+foreign`` appended when some fastws
    module came from elsewhere (:func:`foreign_fastws_modules`). ``-`` when
    fastws is not loaded."""
    module = sys.modules.get("fastws")
    if module is None or not getattr(module, "__file__", None):
        return "-"
    root = Path(module.__file__).parent  # type: ignore[arg-type]
    foreign = foreign_fastws_modules()
    if foreign:
        print(f"bench.servers: fastws modules from outside {root}: {', '.join(foreign)}", file=sys.stderr, flush=True)
    return fastws_digest(root) + ("+foreign" if foreign else "")


def foreign_fastws_modules() -> list[str]:
    """The loaded ``fastws.*`` modules whose file is not in the directory of
    the ``fastws`` package itself. An editable install's import hook (after
    the path finder on ``sys.meta_path``) serves a submodule that a copy of
    fastws lacks from the installed checkout: such a copy runs mixed code."""
    module = sys.modules.get("fastws")
    if module is None or not getattr(module, "__file__", None):
        return []
    root = Path(module.__file__).parent  # type: ignore[arg-type]
    return sorted(
        name
        for name, m in list(sys.modules.items())
        if name.startswith("fastws.") and getattr(m, "__file__", None) and root not in Path(m.__file__).parents  # type: ignore[arg-type]
    )


def fastws_digest(root: Path, suffixes: tuple[str, ...] = (".py", ".so", ".pyx", ".pxd", ".html")) -> str:
    """The fingerprint of the ``fastws`` package directory ``root`` (see
    :func:`loaded_fastws_digest`); ``bench.run`` computes it for each copy of
    fastws it runs, to check that every server loaded the copy meant for it,
    and of the sources alone (``suffixes``) to tell two copies of the same code."""
    h = hashlib.sha1()
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in suffixes:
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


async def _run(name: str, host: str, port: int, max_size: int, tls_dir: Path | None) -> None:
    context = tls.server_context(tls_dir) if tls_dir is not None else None
    keep = await SERVERS[name](host, port, max_size, ssl=context)
    scheme = "ws" if context is None else "wss"
    print(f"ready {name} {scheme}://{host}:{port}/ fastws-build={loaded_fastws_digest()}", flush=True)
    stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_signal() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, on_signal)
    await stop
    # Stop without ceremony: the benchmark is over, connections are gone.
    close = getattr(keep, "close", None)
    if name in ("aiohttp", "aiohttp-broadcast"):
        await keep.cleanup()
    elif isinstance(keep, _InProcess):
        await keep.stop()
    elif close is not None:
        close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.servers", description="Run one benchmark echo server.")
    p.add_argument("name", choices=sorted(SERVERS))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9001)
    p.add_argument("--max-size", type=int, default=MAX_SIZE, help=f"largest message in bytes (default {MAX_SIZE})")
    p.add_argument("--log-level", default="error", help="logging level (default error: no per-connection logs)")
    p.add_argument(
        "--tls-dir",
        type=Path,
        default=None,
        help=f"for the {TLS_SUFFIX} servers: the directory with {tls.CERT_FILE} and {tls.KEY_FILE} "
        "(default: a fresh certificate in a temporary directory, its path on stderr)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    import uvloop

    with tempfile.TemporaryDirectory(prefix="fastws-bench-tls-") as tmp:
        tls_dir = args.tls_dir if is_tls(args.name) else None
        if is_tls(args.name) and tls_dir is None:
            tls_dir = tls.make_cert(Path(tmp))
            print(f"bench.servers: certificate {tls_dir / tls.CERT_FILE} (bench.loadgen --cafile)", file=sys.stderr, flush=True)
        try:
            uvloop.run(_run(args.name, args.host, args.port, args.max_size, tls_dir))
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
