"""Handlers that the CLI tests serve as ``tests.integration.apps:...``."""

from __future__ import annotations

from fastws import Handler
from fastws.demo import EchoHandler


class Shout(Handler):
    """Callback level: answer every message upper-cased, same type."""

    def on_connect(self, ws):  # type: ignore[no-untyped-def]
        ws.send("welcome " + ws.request.path)

    def on_message(self, ws, data, is_text):  # type: ignore[no-untyped-def]
        ws.send(data.upper(), is_text)


async def reverse(ws):  # type: ignore[no-untyped-def]
    """Coroutine level: answer every message reversed."""
    async for message in ws:
        await ws.send(message[::-1])


#: Not a handler: serving it must fail with a usage error.
NOT_A_HANDLER = 42


class WhichWorker(Handler):
    """Callback level: say which process serves the connection, then echo."""

    def on_connect(self, ws):  # type: ignore[no-untyped-def]
        import os

        ws.send(f"pid {os.getpid()}")

    def on_message(self, ws, data, is_text):  # type: ignore[no-untyped-def]
        ws.send(data, is_text)


class Burst(Handler):
    """Callback level: on ``burst N``, send N messages of 64 KiB, numbered."""

    def on_message(self, ws, data, is_text):  # type: ignore[no-untyped-def]
        count = int(data.split()[1])
        for i in range(count):
            ws.send(b"%08d" % i + b"\x00" * (65536 - 8))


async def burst(ws):  # type: ignore[no-untyped-def]
    """Coroutine level: the same as Burst."""
    async for message in ws:
        for i in range(int(message.split()[1])):
            await ws.send(b"%08d" % i + b"\x00" * (65536 - 8))


class Blocker(Handler):
    """Callback level: on ``block S``, block the event loop for S seconds
    (``time.sleep``, as a careless handler would), then say ``blocked``;
    echo anything else."""

    def on_message(self, ws, data, is_text):  # type: ignore[no-untyped-def]
        import time

        if data.startswith(b"block "):
            time.sleep(float(data.split()[1]))
            ws.send("blocked")
        else:
            ws.send(data, is_text)


class WrongEcho(Handler):
    """Callback level: echo with the last byte changed (a broken server for ``fastws bench``)."""

    def on_message(self, ws, data, is_text):  # type: ignore[no-untyped-def]
        ws.send(data[:-1] + (b"?" if data[-1:] != b"?" else b"!"), is_text)


class Answers200(Handler):
    """Answers every request with 200 instead of upgrading."""

    def process_request(self, ws, request):  # type: ignore[no-untyped-def]
        return ws.respond(200, "no WebSocket here\n")

    def on_message(self, ws, data, is_text):  # type: ignore[no-untyped-def]
        pass


class NeedsToken(EchoHandler):
    """Echo, for clients that send ``X-Token: t`` (403 otherwise)."""

    def process_request(self, ws, request):  # type: ignore[no-untyped-def]
        if request.headers.get("X-Token") != "t":
            return ws.respond(403, "token needed\n")
        return None


class DropsEvery100th(Handler):
    """Echo, except every 100th message of a connection (a broken server for ``fastws bench``)."""

    def on_connect(self, ws):  # type: ignore[no-untyped-def]
        self.count = 0

    def on_message(self, ws, data, is_text):  # type: ignore[no-untyped-def]
        self.count += 1
        if self.count % 100:
            ws.send(data, is_text)


class HangsUpAt50(EchoHandler):
    """Echo, then drop the TCP connection at the 50th message (no close frame)."""

    def on_connect(self, ws):  # type: ignore[no-untyped-def]
        self.count = 0

    def on_message(self, ws, data, is_text):  # type: ignore[no-untyped-def]
        self.count += 1
        if self.count == 50:
            ws.abort()
        else:
            ws.send(data, is_text)


class Broadcast(Handler):
    """Callback level: send every message to every open connection, the sender's included."""

    #: One handler is made per connection: the set of connections is the class's.
    clients: set[object] = set()

    def on_connect(self, ws):  # type: ignore[no-untyped-def]
        self.clients.add(ws)

    def on_close(self, ws, code, reason):  # type: ignore[no-untyped-def]
        self.clients.discard(ws)

    def on_message(self, ws, data, is_text):  # type: ignore[no-untyped-def]
        for client in self.clients:
            client.send(data, is_text)


class BroadcastSkipsOne(Handler):
    """Broken broadcast: every 10th message misses the connection that came last."""

    order: list[object] = []
    count = [0]

    def on_connect(self, ws):  # type: ignore[no-untyped-def]
        self.order.append(ws)

    def on_close(self, ws, code, reason):  # type: ignore[no-untyped-def]
        self.order.remove(ws)

    def on_message(self, ws, data, is_text):  # type: ignore[no-untyped-def]
        self.count[0] += 1
        for client in self.order:
            if self.count[0] % 10 or client is not self.order[-1]:
                client.send(data, is_text)


class ShoutsCompressed(Handler):
    """Echo upper-cased (a broken server for ``fastws bench --scenario compressed``):
    the messages arrive inflated and leave deflated, as the connection negotiated."""

    def on_message(self, ws, data, is_text):  # type: ignore[no-untyped-def]
        ws.send(data.upper(), is_text)


class RoomByWorker(Handler):
    """Callback level: say which process serves the connection, join room
    "r", and publish every message to it (the ``workers`` broker's tests)."""

    def on_connect(self, ws):  # type: ignore[no-untyped-def]
        import os

        ws.send(f"pid {os.getpid()}")
        ws.subscribe("r")

    def on_message(self, ws, data, is_text):  # type: ignore[no-untyped-def]
        ws.publish("r", data, text=is_text)
