"""The peers' echo apps that a server of their own imports by name, for ``bench.servers``.

- :func:`echo_asgi` — an ASGI 3 app: accepts every WebSocket on any path and
  sends each message back as it came (text as text, bytes as bytes); answers
  plain HTTP with 404; handles the lifespan protocol (nothing to do). Run by
  ``uvicorn`` (``bench.servers uvicorn``) and by granian's ASGI interface
  (``bench.servers granian-asgi``), as ``bench.peer_apps:echo_asgi``.
- :func:`echo_rsgi` — the same echo for granian's own interface, RSGI
  (``bench.servers granian``), as ``bench.peer_apps:echo_rsgi``.
- ``python -m bench.peer_apps socketify --host H --port P --max-size N`` —
  a socketify.py ``App`` (uWebSockets) with a ``.ws("/*", ...)`` echo
  (``ws.send(message, opcode)``), run until SIGTERM or SIGINT. socketify
  runs its own loop (libuv, driven from an asyncio loop that it polls), so
  ``bench.servers socketify`` starts it as a subprocess of its own.
- :class:`RoomsBroadcast` — a fastws callback-level ``Handler`` on fastws'
  rooms: every connection subscribes to the room ``"bench"`` in
  ``on_connect`` and publishes every message it sends to that room
  (``ws.publish(ROOM, data, text=is_text)``), so each message reaches every
  member on every node, the sender included, with its opcode. The CLI
  serves it as ``bench.peer_apps:RoomsBroadcast`` (``bench.servers
  fastws-rooms-workers-broadcast``). It is looked up lazily (module
  ``__getattr__``): the ASGI/RSGI peers that import this module do not load
  fastws.
- ``python -m bench.peer_apps fastws-rooms --host H --port P --max-size N
  --broker URL`` — one fastws node serving :class:`RoomsBroadcast` with
  ``fastws.serve(..., reuse_port=True, broker=URL)`` on uvloop until SIGTERM
  or SIGINT: several such processes share one port (``SO_REUSEPORT``), each
  a node of its own with its own broker connection (``bench.servers
  fastws-rooms-redisN-broadcast``). ``fastws serve`` cannot do that: with
  ``--workers 1`` it binds without ``SO_REUSEPORT``, and ``--workers N``
  makes the workers of one supervisor.

Each closes the connection when the client's close frame arrives (the
server answers it) and never logs per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["ROOM", "echo_asgi", "echo_rsgi", "main", "run_fastws_rooms", "run_socketify"]

#: The one room of the rooms broadcast servers.
ROOM = "bench"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_NOT_FOUND = b"Not found: this is a WebSocket echo server.\n"


async def echo_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    """ASGI 3: echo every WebSocket message (see the module docstring)."""
    kind = scope["type"]
    if kind == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.receive":
                    text = message.get("text")
                    if text is not None:
                        await send({"type": "websocket.send", "text": text})
                    else:
                        await send({"type": "websocket.send", "bytes": message["bytes"]})
                elif message["type"] == "websocket.disconnect":
                    return
        except OSError:
            # An echo still in flight when the peer closed (uvicorn raises
            # ClientDisconnected, an OSError): nothing to log.
            return
    elif kind == "http":
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 404, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": _NOT_FOUND})
    elif kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


async def echo_rsgi(scope: Any, protocol: Any) -> None:
    """RSGI (granian's interface): echo every WebSocket message."""
    if scope.proto != "ws":
        protocol.response_bytes(404, [("content-type", "text/plain")], _NOT_FOUND)
        return
    from granian.rsgi import WebsocketMessageType

    transport = await protocol.accept()
    try:
        while True:
            message = await transport.receive()
            if message.kind == WebsocketMessageType.bytes:
                await transport.send_bytes(message.data)
            elif message.kind == WebsocketMessageType.string:
                await transport.send_str(message.data)
            else:  # close
                break
    except RuntimeError:  # granian.rsgi.ProtocolClosed: an echo in flight when the peer left
        pass
    protocol.close(None)


def run_socketify(host: str, port: int, max_size: int, broadcast: bool = False) -> None:
    """Serve the socketify echo on ``host:port`` until SIGTERM or SIGINT;
    ``broadcast``: every message goes to every connection, the sender's
    included (uWS pub/sub: each connection subscribes to one topic, and
    ``App.publish`` sends to all its subscribers)."""
    import uvloop
    from socketify import App, CompressOptions  # type: ignore[import-untyped]

    # socketify drives libuv from an asyncio loop that it makes itself with
    # asyncio.new_event_loop(): let that be uvloop's, like the other servers'.
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    app = App()

    def on_message(ws: Any, message: str | bytes, opcode: Any) -> None:
        ws.send(message, opcode)

    def on_open(ws: Any) -> None:
        ws.subscribe("all")

    def on_broadcast(ws: Any, message: str | bytes, opcode: Any) -> None:
        app.publish("all", message, opcode)

    extra: dict[str, Any] = {"open": on_open, "message": on_broadcast} if broadcast else {"message": on_message}
    app.ws(
        "/*",
        {
            "compression": CompressOptions.DISABLED,
            "max_payload_length": max_size,
            # uWS drops a send (DROPPED) while more than max_backpressure
            # bytes wait in the socket's buffer: allow as much as the other
            # servers buffer, so that pipelined large echoes are never lost.
            "max_backpressure": 2 * max_size + 2**20,
            "close_on_backpressure_limit": False,
            "idle_timeout": 0,  # no idle timeout, as the other servers
            **extra,
        },
    )
    app.any("/*", lambda res, req: res.write_status(404).end(_NOT_FOUND))
    listening: list[Any] = []
    # uWS calls the handler at once, and only once it listens (a failure
    # raises inside socketify's C callback, where it is only printed).
    app.listen({"host": host, "port": port}, listening.append)
    if not listening:
        print(f"socketify: could not listen on {host}:{port}", file=sys.stderr, flush=True)
        raise SystemExit(1)

    def stop(signum: int, frame: Any) -> None:
        app.close()

    signal.signal(signal.SIGTERM, stop)
    app.run()  # sets its own SIGINT handler, which also closes the app


def _rooms_broadcast() -> type:
    """Make :class:`RoomsBroadcast` (fastws imported only when it is asked for)."""
    from fastws import Connection, Handler

    class RoomsBroadcast(Handler):
        """Every connection is a member of ``ROOM``; what it sends is published there."""

        def on_connect(self, ws: Connection) -> None:
            ws.subscribe(ROOM)

        def on_message(self, ws: Connection, data: bytes, is_text: bool) -> None:
            ws.publish(ROOM, data, text=is_text)

        # on_close: nothing to do, a connection that ends leaves its rooms.

    RoomsBroadcast.__module__ = __name__
    RoomsBroadcast.__qualname__ = "RoomsBroadcast"
    return RoomsBroadcast


_lazy: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    # PEP 562: ``bench.peer_apps:RoomsBroadcast`` (fastws serve's target) and
    # ``from bench.peer_apps import RoomsBroadcast`` import fastws then, not before.
    if name == "RoomsBroadcast":
        if name not in _lazy:
            _lazy[name] = _rooms_broadcast()
        return _lazy[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: Seconds a rooms node may take to close (its broker included) on SIGTERM.
ROOMS_STOP_TIMEOUT = 5.0


def run_fastws_rooms(host: str, port: int, max_size: int, broker: str) -> None:
    """Serve :class:`RoomsBroadcast` on ``host:port`` with ``SO_REUSEPORT``
    and ``broker`` as one fastws node, on uvloop, until SIGTERM or SIGINT."""
    import uvloop

    import fastws

    async def serve() -> None:
        handler = __getattr__("RoomsBroadcast")
        server = await fastws.serve(
            handler, host, port, reuse_port=True, broker=broker, access_log=False, max_message_size=max_size
        )
        loop = asyncio.get_running_loop()
        stop: asyncio.Future[None] = loop.create_future()

        def on_signal() -> None:
            if not stop.done():
                stop.set_result(None)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        await stop
        server.close()  # the broker too: its Redis connections are closed
        try:
            await asyncio.wait_for(server.wait_closed(), ROOMS_STOP_TIMEOUT)
        except TimeoutError:
            print(f"fastws-rooms node {os.getpid()}: not closed after {ROOMS_STOP_TIMEOUT:g} s", file=sys.stderr, flush=True)

    uvloop.run(serve())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peer_apps", description="Run a peer echo server that needs a process of its own.")
    p.add_argument("server", choices=["socketify", "fastws-rooms"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9001)
    p.add_argument("--max-size", type=int, default=16 * 2**20)
    p.add_argument("--broadcast", action="store_true", help="send every message to every connection instead of echoing it")
    p.add_argument("--broker", default="memory", help="fastws-rooms: the rooms broker (memory, redis://host:port/db)")
    p.add_argument("--log-level", default="error", help="fastws-rooms: logging level (default error)")
    args = p.parse_args(argv)
    if args.server == "fastws-rooms":
        logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
        run_fastws_rooms(args.host, args.port, args.max_size, args.broker)
    else:
        run_socketify(args.host, args.port, args.max_size, args.broadcast)
    return 0


if __name__ == "__main__":
    sys.exit(main())
