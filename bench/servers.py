"""The echo servers we compare, each a single process on uvloop.

``python -m bench.servers NAME --port P`` runs one of:

- ``fastws-callback``  — fastws' callback level: ``fastws.demo.EchoHandler``;
- ``fastws-coroutine`` — fastws' coroutine level: ``async for m in ws: await ws.send(m)``;
- ``websockets``       — the same coroutine on ``websockets.asyncio.server``;
- ``picows``           — a ``WSListener`` that sends each frame back;
- ``aiohttp``          — an ``aiohttp.web`` app with a ``WebSocketResponse`` echo;
- ``picows-uvloop``    — the picows echo with ``use_aiofastnet=False`` (uvloop's
  transport instead of picows' default aiofastnet one), for reference.
- ``fastws-callback-hashlib`` — ``fastws-callback`` with the server's accept-key
  function replaced by the pure twin's (``hashlib.sha1`` + ``base64``) instead
  of the compiled hand-written SHA-1, for ``python -m bench.handshakes``.

All echo text as text and binary as binary, accept any path, answer a close
frame, negotiate no extension (the load generator offers none), log only
errors, and allow messages up to ``--max-size`` bytes (16 MiB by default, so
that large-message runs are not refused by one server's smaller default).
Each prints one ``ready`` line on stdout once it listens, with a fingerprint
of the fastws code it loaded (``fastws-build=...``, ``-`` for the peers).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import signal
import sys
from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["SERVERS", "fastws_digest", "foreign_fastws_modules", "main"]

MAX_SIZE = 16 * 2**20


async def _fastws_callback(host: str, port: int, max_size: int) -> Any:
    import fastws
    from fastws.demo import EchoHandler

    return await fastws.serve(EchoHandler, host, port, access_log=False, max_message_size=max_size)


async def _fastws_callback_hashlib(host: str, port: int, max_size: int) -> Any:
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
    return await _fastws_callback(host, port, max_size)


async def _fastws_coroutine(host: str, port: int, max_size: int) -> Any:
    import fastws

    async def echo(ws: Any) -> None:
        async for message in ws:
            await ws.send(message)

    return await fastws.serve(echo, host, port, access_log=False, max_message_size=max_size)


async def _websockets(host: str, port: int, max_size: int) -> Any:
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

    return await serve(echo, host, port, max_size=max_size)


async def _picows(host: str, port: int, max_size: int, use_aiofastnet: bool | None = None) -> Any:
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
        lambda request: Echo(), host, port, max_frame_size=max_size, use_aiofastnet=use_aiofastnet
    )


async def _picows_uvloop(host: str, port: int, max_size: int) -> Any:
    return await _picows(host, port, max_size, use_aiofastnet=False)


async def _aiohttp(host: str, port: int, max_size: int) -> Any:
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
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner


#: name -> coroutine that starts the server and returns an object to keep.
SERVERS: dict[str, Callable[[str, int, int], Awaitable[Any]]] = {
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


async def _run(name: str, host: str, port: int, max_size: int) -> None:
    keep = await SERVERS[name](host, port, max_size)
    print(f"ready {name} ws://{host}:{port}/ fastws-build={loaded_fastws_digest()}", flush=True)
    stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_signal() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, on_signal)
    await stop
    # Stop without ceremony: the benchmark is over, connections are gone.
    close = getattr(keep, "close", None)
    if name == "aiohttp":
        await keep.cleanup()
    elif close is not None:
        close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.servers", description="Run one benchmark echo server.")
    p.add_argument("name", choices=sorted(SERVERS))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9001)
    p.add_argument("--max-size", type=int, default=MAX_SIZE, help=f"largest message in bytes (default {MAX_SIZE})")
    p.add_argument("--log-level", default="error", help="logging level (default error: no per-connection logs)")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    import uvloop

    try:
        uvloop.run(_run(args.name, args.host, args.port, args.max_size))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
