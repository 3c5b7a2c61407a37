"""The HTTP fallback (``serve(..., fallback=True)``): WebSocket sessions over
Server-Sent Events + POST and over long polling (docs/fallback.md).

Real servers run in-process; the clients are aiohttp, ``websockets`` (for a
WebSocket in the same room as a session) and small asyncio-stream HTTP
clients below (one request per TCP connection, as the fallback answers with
``Connection: close``), so the tests can send exactly the bytes they mean:
no Content-Length, a body in two segments, an SSE stream killed mid-flight.

One application at both API levels echoes what it receives and greets each
client with a JSON description of what the handler saw (``transport_name``,
``request.path`` and some request headers); rooms: a client whose path starts
with ``/room`` joins room ``"r"``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import time
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect

import fastws
from fastws import ConnectionClosed, Handler
from fastws.faces import fallback as fallback_module
from fastws.faces.fallback import session as session_module

from ..conftest import serving, unit
from .conftest import HttpReply, eventually, port_of

pytestmark = pytest.mark.timeout(int(unit(60)))

CLIENT: dict[str, Any] = {"compression": None, "ping_interval": None, "open_timeout": unit(5), "close_timeout": unit(5)}
JS = os.path.join(os.path.dirname(fallback_module.__file__), "fastws.js")


# -- HTTP over asyncio streams ---------------------------------------------------


class Reply(HttpReply):
    """A whole HTTP answer (the server closes after it); a header that
    comes twice fails ``header()``."""

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Reply {self.raw[:500]!r}>"


def _request(method: str, path: str, body: Any, headers: Any, content_length: bool) -> tuple[bytes, bytes]:
    data = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    if not content_length:
        data = b""  # without Content-Length (or chunked) a request has no body
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers)
    if body is not None:
        head += "Content-Type: application/json\r\n"
        if content_length:
            head += f"Content-Length: {len(data)}\r\n"
    return head.encode("latin-1") + b"\r\n", data


async def http(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: Any = (),
    content_length: bool = True,
    split: float | None = None,
    timeout: float = 5.0,
) -> Reply:
    """One request on a new TCP connection; the answer, read until EOF.
    ``split``: send the head, wait that long, then the body."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), unit(timeout))
    try:
        head, data = _request(method, path, body, headers, content_length)
        if split is None:
            writer.write(head + data)
        else:
            writer.write(head)
            await writer.drain()
            await asyncio.sleep(split)
            writer.write(data)
        raw = await asyncio.wait_for(reader.read(), unit(timeout))
        assert raw, f"no answer to {method} {path}"
        return Reply(raw)
    finally:
        writer.close()


def T(text: str) -> list[str]:
    return ["t", text]


def B(data: bytes) -> list[str]:
    return ["b", base64.b64encode(data).decode()]


def decode(message: list[Any]) -> str | bytes:
    """A message down, ``[seq, kind, data]`` or ``[kind, data]``."""
    kind, data = message[-2], message[-1]
    return data if kind == "t" else base64.b64decode(data)


class Client:
    """A fallback session as a client holds it: id, token, upload numbering."""

    def __init__(self, port: int, opened: dict[str, Any]) -> None:
        self.port = port
        self.opened = opened
        self.sid: str = opened["session"]
        self.token: str = opened["token"]
        self.up = 0  # the last upload sequence number accepted

    @property
    def q(self) -> str:
        return f"s={self.sid}&t={self.token}"

    async def send(self, *messages: list[str], seq: int | None = None, ack: int | None = None, timeout: float = 5.0) -> Reply:
        first = self.up + 1 if seq is None else seq
        body: dict[str, Any] = {"seq": first, "messages": list(messages)}
        if ack is not None:
            body["ack"] = ack
        reply = await http(self.port, "POST", f"/_fastws/send?{self.q}", body, timeout=timeout)
        if reply.status == 200:
            self.up = max(self.up, reply.json()["received"])
        return reply

    async def poll(self, last: int, timeout: float = 5.0) -> Reply:
        return await http(self.port, "GET", f"/_fastws/poll?{self.q}&last={last}", timeout=timeout)

    async def receive(self, count: int, last: int, timeout: float = 5.0) -> tuple[list[list[Any]], Any]:
        """Poll from ``last`` until ``count`` messages (or the close) came."""
        messages: list[list[Any]] = []
        deadline = time.monotonic() + unit(timeout)
        while True:
            reply = await self.poll(last, timeout=max(0.1, deadline - time.monotonic()))
            assert reply.status == 200, reply
            answer = reply.json()
            messages += answer["messages"]
            if messages:
                last = messages[-1][0]
            if len(messages) >= count or answer["close"] is not None:
                return messages, answer["close"]
            assert time.monotonic() < deadline, f"got {messages}, expected {count}"

    async def close(self, code: int = 1000, reason: str = "") -> Reply:
        return await http(self.port, "POST", f"/_fastws/close?{self.q}", {"code": code, "reason": reason})


async def open_session(port: int, path: str = "/", transport: str = "polling", headers: Any = ()) -> Client:
    reply = await http(port, "POST", "/_fastws/open", {"path": path, "transport": transport}, headers=headers)
    assert reply.status == 200, reply
    return Client(port, reply.json())


class Event:
    def __init__(self, fields: dict[str, str], comments: list[str]) -> None:
        self.id = int(fields["id"]) if "id" in fields else None
        self.event = fields.get("event")
        self.data = fields.get("data")
        self.comments = comments

    def message(self) -> list[Any]:
        assert self.data is not None
        return json.loads(self.data)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"<Event id={self.id} event={self.event} data={self.data!r} comments={[c[:10] for c in self.comments]}>"


class SSE:
    """A client of ``GET /_fastws/sse`` on a raw stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: Reply) -> None:
        self.reader = reader
        self.writer = writer
        self.head = head

    @classmethod
    async def connect(cls, port: int, query: str, headers: Any = (), timeout: float = 5.0) -> SSE:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, limit=2**20), unit(timeout))
        request = f"GET /_fastws/sse?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
        request += "".join(f"{name}: {value}\r\n" for name, value in headers) + "\r\n"
        writer.write(request.encode("latin-1"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), unit(timeout))
        return cls(reader, writer, Reply(head))

    async def next(self, timeout: float = 5.0) -> Event | None:
        """The next event (comments alone make an event too); None at EOF."""
        fields: dict[str, str] = {}
        comments: list[str] = []
        while True:
            try:
                # asyncio.timeout, not wait_for: no task per line, and a
                # cancelled reader stops at once (3.11's wait_for may swallow
                # a cancellation that races with a line arriving).
                async with asyncio.timeout(unit(timeout)):
                    line = await self.reader.readline()
            except ConnectionResetError:
                line = b""
            if not line.endswith(b"\n"):
                return None  # EOF (a partial event is dropped, as EventSource does)
            text = line[:-1].decode("utf-8")
            if text == "":
                if fields or comments:
                    return Event(fields, comments)
                continue
            if text.startswith(":"):
                comments.append(text[1:])
                continue
            name, _, value = text.partition(":")
            value = value.removeprefix(" ")
            fields[name] = fields[name] + "\n" + value if name in fields else value

    async def message(self, timeout: float = 5.0) -> Event | None:
        """The next event that is not a comment (a message, or ready/close/recycle)."""
        while True:
            event = await self.next(timeout)
            if event is None or event.id is not None or event.event is not None:
                return event

    async def messages(self, count: int, timeout: float = 5.0) -> list[Event]:
        """The next ``count`` messages (after ``ready``, if it comes first)."""
        out: list[Event] = []
        while len(out) < count:
            event = await self.message(timeout)
            if event is not None and event.event == "ready":
                continue
            assert event is not None and event.id is not None, f"{event} after {out}"
            out.append(event)
        return out

    async def rest(self, timeout: float = 5.0) -> list[Event]:
        """Every event until the server closes the stream."""
        out: list[Event] = []
        while True:
            event = await self.next(timeout)
            if event is None:
                return out
            out.append(event)

    def close(self) -> None:
        self.writer.close()

    def kill(self) -> None:
        """Drop TCP at once (unread bytes make it a reset)."""
        self.writer.transport.abort()


# -- the application, at both levels ----------------------------------------------


class App:
    """What the handlers of one test saw."""

    def __init__(self) -> None:
        self.conns: list[Any] = []
        self.received: list[str | bytes] = []
        self.closed: list[tuple[int | None, str | None]] = []
        self.errors: list[ConnectionClosed] = []
        self.drains = 0


def greeting(ws: Any) -> str:
    request = ws.request
    h = request.headers
    return json.dumps({
        "transport": ws.transport_name,
        "path": request.path,
        "cookie": h.get("Cookie"),
        "x-test": h.get("X-Test"),
        "upgrade": h.get("Upgrade"),
        "connection": h.get("Connection"),
        "x-fastws-transport": h.get("X-FastWS-Transport"),
        "content-type": h.get("Content-Type"),
        "content-length": h.get("Content-Length"),
    })  # fmt: skip


def join(ws: Any) -> None:
    if ws.request.path.startswith("/room"):
        ws.subscribe("r")


def make_app(level: str) -> tuple[Any, App]:
    app = App()
    if level == "callback":

        class Echo(Handler):
            def on_connect(self, ws: Any) -> None:
                app.conns.append(ws)
                join(ws)
                ws.send(greeting(ws))

            def on_message(self, ws: Any, data: bytes, is_text: bool) -> None:
                message = data.decode() if is_text else bytes(data)
                app.received.append(message)
                ws.send(message)

            def on_close(self, ws: Any, code: int, reason: str) -> None:
                app.closed.append((code, reason))

        return Echo, app

    async def echo(ws: Any) -> None:
        app.conns.append(ws)
        join(ws)
        await ws.send(greeting(ws))
        try:
            async for message in ws:
                app.received.append(message)
                await ws.send(message)
        except ConnectionClosed as exc:
            app.errors.append(exc)
            app.closed.append((exc.rcvd.code, exc.rcvd.reason) if exc.rcvd is not None else (1006, ""))
            return
        app.closed.append((ws.close_code, ws.close_reason))

    return echo, app


@pytest.fixture(params=["callback", "coroutine"])
def level(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def session_of(server: fastws.Server, sid: str) -> Any:
    """The server's Session object (internal: for what a client cannot see)."""
    fallback = server._context.fallback
    assert fallback is not None
    return fallback.sessions[sid]


def other_process(sid: str) -> str:
    """The same session id with another process's prefix (16 hex chars)."""
    return "".join("0123456789abcdef"[(int(c, 16) + 1) % 16] for c in sid[:16]) + sid[16:]


# -- 1. open ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sse", "polling"])
async def test_open_runs_the_handler_on_the_open_request(level: str, kind: str) -> None:
    handler, app = make_app(level)
    async with serving(handler, fallback=True, fallback_timeout=7.5, fallback_max_body=4096) as (server, url):
        port = port_of(url)
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://127.0.0.1:{port}/_fastws/open",
                json={"path": "/chat?x=1&y=two", "transport": kind},
                headers={"Cookie": "sid=abc; theme=dark", "X-Test": "42"},
                timeout=aiohttp.ClientTimeout(total=unit(5)),
            ) as resp,
        ):
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("application/json")
            assert resp.headers["Cache-Control"] == "no-cache"
            assert "close" in resp.headers["Connection"]
            opened = await resp.json()
        assert set(opened) == {"session", "token", "timeout", "max_body", "heartbeat"}
        assert opened["session"].startswith(server.hub.node.hex())
        assert isinstance(opened["token"], str) and len(opened["token"]) >= 16
        assert opened["timeout"] == 7.5
        assert opened["max_body"] == 4096
        assert opened["heartbeat"] == 15.0
        client = Client(port, opened)
        if kind == "polling":
            messages, close = await client.receive(1, last=0)
            assert close is None
            assert messages[0][:2] == [1, "t"]
            hello = json.loads(messages[0][2])
        else:
            sse = await SSE.connect(port, client.q)
            try:
                event = await sse.message()
                assert event is not None and event.event == "ready"
                event = await sse.message()
                assert event is not None and event.id == 1
                assert event.message()[0] == "t"
                hello = json.loads(event.message()[1])
            finally:
                sse.close()
        assert hello == {
            "transport": kind,
            "path": "/chat?x=1&y=two",
            "cookie": "sid=abc; theme=dark",
            "x-test": "42",
            "upgrade": "websocket",
            "connection": "Upgrade",
            "x-fastws-transport": kind,
            # The POST's own body headers are not the session's.
            "content-type": None,
            "content-length": None,
        }
        assert len(app.conns) == 1
        assert app.conns[0].transport_name == kind
        assert app.conns[0].request.path == "/chat?x=1&y=two"


# -- 2. polling, rooms --------------------------------------------------------------


async def test_polling_round_trip_waiting_poll_and_rooms(level: str) -> None:
    handler, app = make_app(level)
    async with serving(handler, fallback=True) as (server, url):
        port = port_of(url)
        client = await open_session(port, "/room", "polling")
        messages, _ = await client.receive(1, last=0)
        assert messages[0][:2] == [1, "t"]
        assert json.loads(messages[0][2])["transport"] == "polling"

        blob = bytes(range(256)) + os.urandom(3000)
        reply = await client.send(T("héllo ✓ \x00"), B(blob), T(""), B(b""), ack=1)
        assert reply.status == 200 and reply.json() == {"received": 4}
        messages, close = await client.receive(4, last=1)
        assert close is None
        assert [m[0] for m in messages] == [2, 3, 4, 5]
        assert [m[1] for m in messages] == ["t", "b", "t", "b"]
        assert [decode(m) for m in messages] == ["héllo ✓ \x00", blob, "", b""]
        assert app.received == ["héllo ✓ \x00", blob, "", b""]

        # A poll with nothing after `last` waits for the next message.
        waiting = asyncio.ensure_future(client.poll(last=5, timeout=10))
        await asyncio.sleep(unit(0.3))
        assert not waiting.done()
        server.publish("r", "news")
        reply = await asyncio.wait_for(waiting, unit(5))
        assert reply.json() == {"messages": [[6, "t", "news"]], "close": None}

        # A WebSocket in the same room and the session get the same messages.
        async with connect(url + "/room", **CLIENT) as ws:
            hello = json.loads(await asyncio.wait_for(ws.recv(), unit(5)))
            assert hello["transport"] == "websocket"
            for message in ("p1", b"\x00p2\xff", "p3"):
                server.publish("r", message)
            over_ws = [await asyncio.wait_for(ws.recv(), unit(5)) for _ in range(3)]
        messages, _ = await client.receive(3, last=6)
        assert [m[0] for m in messages] == [7, 8, 9]
        assert [decode(m) for m in messages] == over_ws == ["p1", b"\x00p2\xff", "p3"]


async def test_a_new_poll_ends_the_previous_one() -> None:
    handler, app = make_app("callback")
    async with serving(handler, fallback=True) as (server, url):
        port = port_of(url)
        client = await open_session(port, "/", "polling")
        await client.receive(1, last=0)
        first = asyncio.ensure_future(client.poll(last=1, timeout=10))
        await asyncio.sleep(unit(0.2))
        second = asyncio.ensure_future(client.poll(last=1, timeout=10))
        reply = await asyncio.wait_for(first, unit(5))
        assert reply.status == 200 and reply.json() == {"messages": [], "close": None}
        assert not second.done()
        await client.send(T("x"))
        reply = await asyncio.wait_for(second, unit(5))
        assert reply.json() == {"messages": [[2, "t", "x"]], "close": None}


async def test_long_poll_ends_empty_after_its_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fallback_module, "POLL_SECONDS", 0.3)
    handler, app = make_app("callback")
    async with serving(handler, fallback=True) as (server, url):
        client = await open_session(port_of(url), "/", "polling")
        await client.receive(1, last=0)
        started = time.monotonic()
        reply = await client.poll(last=1)
        assert reply.json() == {"messages": [], "close": None}
        assert 0.25 <= time.monotonic() - started < unit(3)


# -- 3. SSE -------------------------------------------------------------------------


async def test_sse_stream_format_resume_and_takeover(level: str) -> None:
    handler, app = make_app(level)
    async with serving(handler, fallback=True) as (server, url):
        port = port_of(url)
        client = await open_session(port, "/chat", "sse")
        sse = await SSE.connect(port, client.q)
        assert sse.head.status == 200
        assert (sse.head.header("Content-Type") or "").startswith("text/event-stream")
        assert sse.head.header("X-Accel-Buffering") == "no"
        assert sse.head.header("Cache-Control") == "no-cache"
        padding = await sse.next()
        assert padding is not None and padding.comments == [" " * 2048] and padding.id is None
        ready = await sse.next()
        assert ready is not None and ready.event == "ready" and ready.id is None and ready.data == ""
        hello = await sse.next()
        assert hello is not None and hello.id == 1 and json.loads(hello.message()[1])["transport"] == "sse"

        await client.send(T("a"), T("b"), B(b"\xffc"))
        events = await sse.messages(3)
        assert [(e.id, e.message()) for e in events] == [(2, ["t", "a"]), (3, ["t", "b"]), (4, B(b"\xffc"))]
        sse.close()
        reply = await client.send(T("d"))  # no stream now: kept for the next one
        assert reply.json() == {"received": 4}

        # Last-Event-ID (as EventSource sends it): what follows 3, nothing before, nothing skipped.
        sse = await SSE.connect(port, client.q, headers=[("Last-Event-ID", "3")])
        events = await sse.messages(2)
        assert [(e.id, decode(e.message())) for e in events] == [(4, b"\xffc"), (5, "d")]

        # last=: the same; and the newer stream ends the older one.
        newer = await SSE.connect(port, client.q + "&last=4")
        ended = await sse.rest()
        assert [e.id for e in ended if e.id is not None] == []
        assert [e.event for e in ended if e.event is not None] == ["recycle"]
        events = await newer.messages(1)
        assert [(e.id, decode(e.message())) for e in events] == [(5, "d")]
        await client.send(T("e"))
        events = await newer.messages(1)
        assert [(e.id, decode(e.message())) for e in events] == [(6, "e")]
        newer.close()
        assert app.received == ["a", "b", b"\xffc", "d", "e"]


async def test_a_client_may_switch_between_sse_and_polling(level: str) -> None:
    handler, app = make_app(level)
    async with serving(handler, fallback=True) as (server, url):
        port = port_of(url)
        client = await open_session(port, "/", "sse")
        sse = await SSE.connect(port, client.q)
        assert (await sse.messages(1))[0].id == 1
        assert app.conns[0].transport_name == "sse"
        sse.close()
        # SSE does not get through (a buffering proxy): long polling, same session.
        await client.send(T("over polling"))
        messages, close = await client.receive(1, last=1)
        assert messages == [[2, "t", "over polling"]] and close is None
        assert app.conns[0].transport_name == "polling"
        sse = await SSE.connect(port, client.q + "&last=2")
        try:
            await client.send(T("back"))
            assert [(e.id, decode(e.message())) for e in await sse.messages(1)] == [(3, "back")]
            assert app.conns[0].transport_name == "sse"
        finally:
            sse.close()
        assert app.received == ["over polling", "back"]


async def test_sse_heartbeat_and_recycling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fallback_module, "HEARTBEAT", 0.2)
    monkeypatch.setattr(fallback_module, "SSE_MAX_BYTES", 3000)
    handler, app = make_app("callback")
    async with serving(handler, fallback=True) as (server, url):
        port = port_of(url)
        client = await open_session(port, "/", "sse")
        sse = await SSE.connect(port, client.q)
        assert (await sse.messages(1))[0].id == 1
        heartbeat = await sse.next(timeout=2)
        assert heartbeat is not None and heartbeat.comments == [" hb"] and heartbeat.id is None
        # Messages one POST at a time: the stream ends past 3000 bytes
        # (event: recycle) and the next one, opened with the last id, goes on.
        got: list[tuple[int, str | bytes]] = []
        recycled = 0
        for i in range(8):
            await client.send(T(f"{i}:" + "x" * 1000))
            while len(got) < i + 1:
                event = await sse.message()
                if event is None or event.event == "recycle":
                    recycled += 1
                    sse.close()
                    sse = await SSE.connect(port, f"{client.q}&last={got[-1][0]}")
                    continue
                if event.id is not None:
                    got.append((event.id, decode(event.message())))
        sse.close()
        assert recycled >= 2
        assert [seq for seq, _ in got] == list(range(2, 10))
        assert [text for _, text in got] == [f"{i}:" + "x" * 1000 for i in range(8)]


# -- 4. exactly once across a killed stream ------------------------------------------


class Downstream:
    """Reads a session's SSE streams: reopens one that ends (with its last id)."""

    def __init__(self, port: int, query: str, ack_every: int = 0) -> None:
        self.port = port
        self.query = query
        #: Send an ack alone (POST /send, no messages) every this many
        #: messages read (0: never); it goes through even while an upload waits.
        self.ack_every = ack_every
        self.acked = 0
        self.acks: set[asyncio.Future[Reply]] = set()
        self.events: list[tuple[int, Any]] = []
        self.last = 0
        self.sse: SSE | None = None
        self.task: asyncio.Future[None] | None = None
        self.streams = 0
        self.close: Any = None
        self.error: BaseException | None = None

    async def start(self) -> None:
        self.sse = await SSE.connect(self.port, f"{self.query}&last={self.last}")
        assert self.sse.head.status == 200, self.sse.head
        self.streams += 1
        self.task = asyncio.ensure_future(self._read(self.sse))

    async def _read(self, sse: SSE) -> None:
        try:
            while True:
                event = await sse.next(timeout=20)
                if event is None or event.event == "recycle":
                    sse.close()
                    await self.start()
                    return
                if event.event == "close":
                    self.close = json.loads(event.data or "null")
                    return
                if event.id is not None:
                    self.events.append((event.id, event.message()))
                    self.last = event.id
                    if self.ack_every and self.last - self.acked >= self.ack_every:
                        self.acked = self.last
                        body = {"seq": 1, "messages": [], "ack": self.last}
                        ack = asyncio.ensure_future(http(self.port, "POST", f"/_fastws/send?{self.query}", body))
                        self.acks.add(ack)
                        ack.add_done_callback(self.acks.discard)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    async def pause(self) -> None:
        """Stop reading (what the server writes now stays unread)."""
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def kill(self) -> None:
        """Abort the stream's TCP connection from the client side (whatever
        the server had written and the client not yet read is lost), then
        open the next one with the last id seen."""
        assert self.sse is not None
        await self.pause()
        self.sse.kill()
        await self.start()

    async def stop(self) -> None:
        for ack in list(self.acks):
            ack.cancel()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.sse is not None:
            self.sse.close()


async def test_exactly_once_both_ways_across_a_killed_sse_stream() -> None:
    n = 10_000
    batch = 250
    upstream: list[str] = []
    numbered_done: list[int] = []

    async def handler(ws: Any) -> None:
        async def numbered() -> None:
            for i in range(1, n + 1):
                await ws.send(f"n{i}")
                if i % 50 == 0:
                    await asyncio.sleep(0)
            numbered_done.append(n)

        task = asyncio.ensure_future(numbered())
        try:
            async for message in ws:
                upstream.append(message)
                await ws.send("e" + message)
            await task
        finally:
            task.cancel()

    # The default outbox bounds: the burst of numbered messages makes the
    # session wait for acks, so a POST may be answered with only part of its
    # batch taken (docs/fallback.md: it waits up to 1 s for the handler);
    # the client sends the rest again with its latest ack. The reader also
    # acks alone every 200 messages (which goes through while an upload
    # waits), or each of those POSTs would be held the whole second.
    async with serving(handler, fallback=True) as (server, url):
        port = port_of(url)
        client = await open_session(port, "/", "sse")
        down = Downstream(port, client.q, ack_every=200)
        await down.start()
        killed_at = written = partial = 0

        async def upload(start: int, end: int, once: bool = False) -> int:
            """Upload u<start>..u<end>; resend what was not taken."""
            nonlocal partial
            while True:
                reply = await client.send(*[T(f"u{i}") for i in range(start, end + 1)], seq=start, ack=down.last)
                assert reply.status == 200, reply
                received = int(reply.json()["received"])
                assert start - 1 <= received <= end or received == client.up, (start, end, received)
                if received >= end or once:
                    return received
                partial += 1
                start = received + 1

        try:
            for k in range(n // batch):
                first, end = k * batch + 1, (k + 1) * batch
                if k == n // batch // 2:
                    # Midway: the client stops reading, the server writes on
                    # the stream, and the client kills it with that unread
                    # (the server's stream says how far it wrote: internal,
                    # but it proves the kill lost messages the next stream
                    # must send again).
                    await down.pause()
                    killed_at = down.last
                    taken = await upload(first, end, once=True)
                    session = session_of(server, client.sid)
                    await eventually(lambda: session.stream is not None and session.stream.sent > killed_at, what="written")
                    written = session.stream.sent
                    await down.kill()
                    if taken < end:
                        await upload(taken + 1, end)
                    continue
                if k == 11:
                    # Overlaps what went before by 100: only the new ones go up.
                    assert await upload(first - 100, end) == end
                else:
                    assert await upload(first, end) == end
                if k == 10:
                    # The same POST again (its answer "lost"): nothing twice.
                    again = await client.send(*[T(f"u{i}") for i in range(first, end + 1)], seq=first, ack=down.last)
                    assert again.json() == {"received": end}
            await eventually(lambda: len(down.events) >= 2 * n or down.error is not None, timeout=30, what="every message down")
            assert down.error is None, repr(down.error)
            assert down.streams >= 2
            ids = [seq for seq, _ in down.events]
            assert ids == list(range(1, 2 * n + 1)), "sequence numbers must be contiguous (each message exactly once)"
            texts = [decode(m) for _, m in down.events]
            assert [t[1:] for t in texts if t[0] == "e"] == [f"u{i}" for i in range(1, n + 1)]
            assert [t for t in texts if t[0] == "n"] == [f"n{i}" for i in range(1, n + 1)]
            assert upstream == [f"u{i}" for i in range(1, n + 1)]
            assert 0 < killed_at < written < 2 * n
            assert numbered_done == [n]
            reply = await client.close(1000, "done")
            assert reply.status == 200
            await eventually(lambda: down.close is not None or down.error is not None, what="event: close")
            assert down.close is not None and down.close["code"] == 1000
        finally:
            await down.stop()


# -- 5. errors ---------------------------------------------------------------------------


async def test_session_errors_404_403_421_400() -> None:
    handler, app = make_app("callback")
    async with serving(handler, fallback=True) as (server, url):
        port = port_of(url)
        client = await open_session(port)
        sid, token = client.sid, client.token
        unknown = sid[:-1] + ("A" if sid[-1] != "A" else "B")
        for method, endpoint, body in (
            ("GET", "poll", None),
            ("GET", "sse", None),
            ("POST", "send", {"seq": 1, "messages": []}),
            ("POST", "close", {}),
        ):
            reply = await http(port, method, f"/_fastws/{endpoint}?s={unknown}&t={token}&last=0", body)
            assert reply.status == 404, reply
            assert "error" in reply.json()
            assert reply.header("Cache-Control") == "no-cache"
            reply = await http(port, method, f"/_fastws/{endpoint}?s={sid}&t={token[:-1]}x&last=0", body)
            assert reply.status == 403, reply
            assert reply.json() == {"error": "wrong token"}
            reply = await http(port, method, f"/_fastws/{endpoint}?s={other_process(sid)}&t={token}&last=0", body)
            assert reply.status == 421, reply
            assert "sticky" in reply.json()["error"]
        reply = await http(port, "GET", f"/_fastws/poll?s={sid}&last=0")
        assert reply.status == 400 and "error" in reply.json()
        reply = await http(port, "GET", f"/_fastws/poll?{client.q}&last=soon")
        assert reply.status == 400
        # The session is unharmed by all this.
        await client.send(T("still here"))
        messages, _ = await client.receive(2, last=0)
        assert decode(messages[1]) == "still here"


async def test_bad_requests_400_404_405_411_413() -> None:
    handler, app = make_app("callback")
    async with serving(handler, fallback=True, fallback_max_body=1024) as (server, url):
        port = port_of(url)
        client = await open_session(port)
        for path in ("/_fastws/nope", "/_fastws/", "/_fastws/open/x"):
            reply = await http(port, "GET", path)
            assert reply.status == 404, reply
            assert "error" in reply.json()
        reply = await http(port, "GET", f"/_fastws/send?{client.q}")
        assert reply.status == 405 and reply.header("Allow") == "POST"
        reply = await http(port, "GET", "/_fastws/open")
        assert reply.status == 405 and reply.header("Allow") == "POST"
        reply = await http(port, "POST", f"/_fastws/sse?{client.q}", {})
        assert reply.status == 405 and reply.header("Allow") == "GET"
        reply = await http(port, "POST", f"/_fastws/send?{client.q}", {"seq": 1, "messages": []}, content_length=False)
        assert reply.status == 411, reply
        reply = await http(port, "POST", "/_fastws/open", b"", headers=[("Transfer-Encoding", "chunked")], content_length=False)
        assert reply.status == 411, reply
        big = {"seq": 1, "messages": [T("x" * 1100)]}
        reply = await http(port, "POST", f"/_fastws/send?{client.q}", big)
        assert reply.status == 413, reply
        reply = await http(port, "POST", "/_fastws/open", {"path": "/" + "p" * 1100})
        assert reply.status == 413, reply
        assert (await client.send(T("y" * 900))).status == 200  # under the limit
        for body in (b"{not json", b"[1, 2", b"\xff\xfe"):
            reply = await http(port, "POST", "/_fastws/open", body)
            assert reply.status == 400, reply
            reply = await http(port, "POST", f"/_fastws/send?{client.q}", body)
            assert reply.status == 400, reply
        for bad in (
            {"path": "/_fastws/open", "transport": "sse"},
            {"path": "/_fastws/", "transport": "polling"},
            {"path": "chat"},
            {"path": "/a b"},
            {"path": 5},
            {"path": "/", "transport": "websocket"},
            ["/"],
        ):
            reply = await http(port, "POST", "/_fastws/open", bad)
            assert reply.status == 400, (bad, reply)
        bad_sends: list[Any] = [
            {"seq": "1", "messages": []},
            {"seq": 1, "messages": {}},
            {"seq": 1, "messages": [["x", "y"]]},
            {"seq": 1, "messages": [["t", 5]]},
            [],
        ]
        for bad in bad_sends:
            reply = await http(port, "POST", f"/_fastws/send?{client.q}", bad)
            assert reply.status == 400, (bad, reply)
        assert len(app.conns) == 1
        # Nothing of that reached the handler.
        assert app.received == ["y" * 900]


async def test_a_body_in_two_segments() -> None:
    handler, app = make_app("callback")
    async with serving(handler, fallback=True) as (server, url):
        port = port_of(url)
        reply = await http(port, "POST", "/_fastws/open", {"path": "/split", "transport": "polling"}, split=0.2)
        assert reply.status == 200, reply
        client = Client(port, reply.json())
        reply = await http(port, "POST", f"/_fastws/send?{client.q}", {"seq": 1, "messages": [T("two parts")]}, split=0.2)
        assert reply.json() == {"received": 1}
        messages, _ = await client.receive(2, last=0)
        assert decode(messages[1]) == "two parts"


@pytest.fixture
def long_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    """A POST waits for the handler up to 30 s instead of 1 s: tests of what
    ends the wait are not satisfied by the hold running out."""
    monkeypatch.setattr(session_module, "UPLOAD_HOLD", 30.0)


def gated_app() -> tuple[Any, asyncio.Event, list[Any]]:
    """A coroutine handler that does not read until ``gate`` is set."""
    gate = asyncio.Event()
    got: list[Any] = []

    async def handler(ws: Any) -> None:
        await gate.wait()
        async for message in ws:
            got.append(message)

    return handler, gate, got


async def test_a_second_post_while_one_is_in_progress_is_409(long_hold: None) -> None:
    # max_queue=1: the first message fills the handler's queue, reading
    # pauses (session.pause_reading), and the next upload waits for it.
    handler, gate, got = gated_app()
    async with serving(handler, fallback=True, max_queue=1) as (server, url):
        port = port_of(url)
        client = await open_session(port)
        reply = await client.send(T("1"), seq=1)
        assert reply.json() == {"received": 1}
        waiting = asyncio.ensure_future(client.send(T("2"), seq=2, timeout=10))
        await asyncio.sleep(unit(0.3))
        assert not waiting.done()
        reply = await client.send(T("3"), seq=3)
        assert reply.status == 409, reply
        assert "error" in reply.json()
        gate.set()
        reply = await asyncio.wait_for(waiting, unit(5))
        assert reply.status == 200 and reply.json() == {"received": 2}
        reply = await client.send(T("3"), seq=3)
        assert reply.json() == {"received": 3}
        await eventually(lambda: got == ["1", "2", "3"], what=f"1, 2, 3 (got {got})")


async def test_an_upload_abandoned_while_it_waits_is_delivered_when_sent_again(long_hold: None) -> None:
    # The documented retry: a POST whose answer is lost is sent again.
    # Here the client gives up on a POST that waits (the handler is behind)
    # and sends it again: its message must reach the handler once.
    handler, gate, got = gated_app()
    async with serving(handler, fallback=True, max_queue=1) as (server, url):
        port = port_of(url)
        client = await open_session(port)
        assert (await client.send(T("1"), seq=1)).json() == {"received": 1}
        abandoned = asyncio.ensure_future(client.send(T("2"), seq=2, timeout=10))
        await asyncio.sleep(unit(0.3))
        assert not abandoned.done()
        abandoned.cancel()  # closes its TCP connection
        with contextlib.suppress(asyncio.CancelledError):
            await abandoned
        await asyncio.sleep(unit(0.2))
        again = asyncio.ensure_future(client.send(T("2"), seq=2, timeout=10))
        await asyncio.sleep(unit(0.2))
        gate.set()
        reply = await asyncio.wait_for(again, unit(5))
        assert reply.json() == {"received": 2}
        await eventually(lambda: got == ["1", "2"], timeout=2, what=f"1, 2 delivered (got {got})")


async def test_a_rejected_batch_delivers_nothing_and_can_be_sent_again(level: str) -> None:
    handler, app = make_app(level)
    async with serving(handler, fallback=True) as (server, url):
        port = port_of(url)
        client = await open_session(port)
        reply = await client.send(T("ok"), ["b", "!!! not base64"], seq=1)
        assert reply.status == 400, reply
        reply = await client.send(T("ok"), seq=1)
        assert reply.json() == {"received": 1}
        await eventually(lambda: app.received == ["ok"], timeout=2, what=f"'ok' delivered (got {app.received})")


async def test_an_upload_held_past_its_time_is_answered_without_its_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    # docs/fallback.md: a POST waits for a handler that does not take
    # messages up to 1 s (UPLOAD_HOLD), then is answered with the `received`
    # it had; the client sends the rest again, and each arrives once.
    monkeypatch.setattr(session_module, "UPLOAD_HOLD", 0.3)
    handler, gate, got = gated_app()
    async with serving(handler, fallback=True, max_queue=1) as (server, url):
        client = await open_session(port_of(url))
        assert (await client.send(T("1"), seq=1)).json() == {"received": 1}
        started = time.monotonic()
        reply = await client.send(T("2"), T("3"), seq=2)
        assert reply.status == 200 and reply.json() == {"received": 1}
        assert 0.25 <= time.monotonic() - started < unit(3)
        gate.set()
        reply = await client.send(T("2"), T("3"), seq=2)
        assert reply.json() == {"received": 3}
        await eventually(lambda: got == ["1", "2", "3"], what=f"1, 2, 3 once each (got {got})")


@pytest.mark.parametrize("how", ["server.close", "handler closes", "client closes"])
async def test_a_session_that_ends_answers_an_upload_that_waits(how: str, long_hold: None) -> None:
    # An upload waits while the handler is behind (reading paused). If the
    # session ends meanwhile, that POST must get an answer (or its TCP
    # connection must close): the client learns the session is gone.
    closing = asyncio.Event()

    async def handler(ws: Any) -> None:
        await closing.wait()  # reads nothing: the second upload waits
        await ws.close(4000, "going")

    async with serving(handler, fallback=True, max_queue=1, close_timeout=1) as (server, url):
        port = port_of(url)
        client = await open_session(port)
        assert (await client.send(T("1"), seq=1)).json() == {"received": 1}
        waiting = asyncio.ensure_future(client.send(T("2"), seq=2, timeout=8))
        await asyncio.sleep(unit(0.3))
        assert not waiting.done()
        session = session_of(server, client.sid)
        if how == "server.close":
            server.close()
            await asyncio.wait_for(server.wait_closed(), unit(10))
        elif how == "handler closes":
            closing.set()
            await eventually(lambda: session.conn.state is fastws.State.CLOSED, what="the connection's end")
        else:
            # POST /close does not count as the session's one POST in progress.
            reply = await client.close(4002, "leaving")
            assert reply.status == 200, reply
            await eventually(lambda: session.conn.state is fastws.State.CLOSED, what="the connection's end")
        done, _ = await asyncio.wait([waiting], timeout=unit(3))
        if not done:
            waiting.cancel()
            with contextlib.suppress(BaseException):
                await waiting
        assert done, f"the upload still waits {unit(3)}s after the session ended ({how})"


# -- 6. lifecycle ------------------------------------------------------------------------------


async def test_client_close_reaches_the_handler_and_the_stream(level: str) -> None:
    handler, app = make_app(level)
    async with serving(handler, fallback=True) as (server, url):
        port = port_of(url)
        client = await open_session(port, "/", "sse")
        sse = await SSE.connect(port, client.q)
        try:
            assert (await sse.messages(1))[0].id == 1
            reply = await client.close(4001, "bye")
            assert reply.status == 200 and reply.json() == {}
            rest = await sse.rest()
            closes = [e for e in rest if e.event == "close"]
            assert len(closes) == 1 and json.loads(closes[0].data or "")["code"] == 4001
            assert rest[-1].event == "close"
        finally:
            sse.close()
        await eventually(lambda: app.closed, what="the handler's end")
        assert app.closed == [(4001, "bye")]
        if level == "coroutine":
            assert len(app.errors) == 1 and isinstance(app.errors[0], ConnectionClosed)
            assert app.errors[0].rcvd is not None and app.errors[0].rcvd.code == 4001
        reply = await client.poll(last=1)
        assert reply.status == 404
        reply = await client.send(T("late"))
        assert reply.status == 404


async def test_a_session_with_no_request_expires(level: str) -> None:
    handler, app = make_app(level)
    async with serving(handler, fallback=True, fallback_timeout=0.5) as (server, url):
        port = port_of(url)
        started = time.monotonic()
        client = await open_session(port, "/", "polling")
        await eventually(lambda: app.closed, timeout=3, what="the session's expiry")
        assert time.monotonic() - started >= 0.45
        assert app.closed == [(1006, "")]
        reply = await client.poll(last=0)
        assert reply.status == 404
        reply = await client.send(T("late"))
        assert reply.status == 404


async def test_a_stream_in_progress_keeps_a_session_alive() -> None:
    handler, app = make_app("callback")
    async with serving(handler, fallback=True, fallback_timeout=0.5) as (server, url):
        port = port_of(url)
        client = await open_session(port, "/", "sse")
        sse = await SSE.connect(port, client.q)
        try:
            assert (await sse.messages(1))[0].id == 1
            await asyncio.sleep(1.2)
            assert app.closed == []
            await client.send(T("alive"))
            assert decode((await sse.messages(1))[0].message()) == "alive"
        finally:
            sse.close()
        # No request any more: it expires.
        await eventually(lambda: app.closed, timeout=3, what="the session's expiry")
        assert app.closed == [(1006, "")]


async def test_server_close_sends_1001_on_the_stream(level: str) -> None:
    handler, app = make_app(level)
    async with serving(handler, fallback=True) as (server, url):
        port = port_of(url)
        client = await open_session(port, "/", "sse")
        sse = await SSE.connect(port, client.q)
        try:
            assert (await sse.messages(1))[0].id == 1
            server.close()
            rest = await sse.rest()
            closes = [json.loads(e.data or "") for e in rest if e.event == "close"]
            assert [c["code"] for c in closes] == [1001]
        finally:
            sse.close()
        await asyncio.wait_for(server.wait_closed(), unit(10))
        assert [code for code, _ in app.closed] == [1001]


async def test_max_message_size_closes_the_session_with_1009() -> None:
    handler, app = make_app("callback")
    async with serving(handler, fallback=True, max_message_size=100) as (server, url):
        client = await open_session(port_of(url), "/", "polling")
        await client.send(T("x" * 200))
        messages, close = await client.receive(10, last=0)
        assert close is not None and close["code"] == 1009
        await eventually(lambda: app.closed, what="on_close")
        assert app.received == []


# -- 7. outbox limits --------------------------------------------------------------------------


async def test_a_client_that_never_acks_is_closed_with_1013() -> None:
    # Past fallback_max_outbox bytes (each message counted with 16 bytes
    # more than its length) the session is closed with 1013: a callback
    # handler that ignores ws.writable and a client that never acks.
    app = App()

    class Flood(Handler):
        def on_connect(self, ws: Any) -> None:
            for i in range(100):
                ws.send(f"{i:03d}" + "x" * 47)  # 50 + 16 bytes each: 6600 > 2048

        def on_close(self, ws: Any, code: int, reason: str) -> None:
            app.closed.append((code, reason))

    async with serving(Flood, fallback=True, fallback_max_outbox=2048) as (server, url):
        client = await open_session(port_of(url), "/", "polling")
        await eventually(lambda: app.closed, timeout=3, what="on_close")
        assert app.closed[0][0] == 1013
        messages, close = await client.receive(1000, last=0)
        assert close is not None and close["code"] == 1013
        assert [decode(m) for m in messages] == [f"{i:03d}" + "x" * 47 for i in range(100)]
        reply = await client.poll(last=100)
        assert reply.status == 404  # the close was delivered: the session is gone


async def test_the_message_bound_makes_a_session_unwritable_but_does_not_close_it() -> None:
    # docs/fallback.md: above half of fallback_max_outbox_messages
    # ws.writable is False; the message count is not a hard limit.
    app = App()
    writable: list[bool] = []

    class Flood(Handler):
        def on_connect(self, ws: Any) -> None:
            for i in range(100):
                ws.send(f"m{i}")
                writable.append(ws.writable)

        def on_drain(self, ws: Any) -> None:
            app.drains += 1

        def on_close(self, ws: Any, code: int, reason: str) -> None:
            app.closed.append((code, reason))

    async with serving(Flood, fallback=True, fallback_max_outbox_messages=50) as (server, url):
        client = await open_session(port_of(url), "/", "polling")
        await eventually(lambda: len(writable) == 100, what="the flood")
        assert writable.index(False) == 25  # the 26th message is over half of 50
        messages, close = await client.receive(100, last=0)
        assert close is None
        assert [decode(m) for m in messages] == [f"m{i}" for i in range(100)]
        assert app.drains == 0
        await client.send(ack=100)  # an ack alone: the outbox empties
        await eventually(lambda: app.drains == 1, what="on_drain after the ack")
        assert app.closed == []


async def test_callback_level_on_drain_after_acks() -> None:
    total = 200
    sent: list[int] = []
    app = App()

    class Producer(Handler):
        def on_connect(self, ws: Any) -> None:
            self.produce(ws)

        def on_drain(self, ws: Any) -> None:
            app.drains += 1
            self.produce(ws)

        def produce(self, ws: Any) -> None:
            while ws.writable and len(sent) < total:
                sent.append(len(sent) + 1)
                ws.send(f"{len(sent):04d}" + "x" * 96)

        def on_close(self, ws: Any, code: int, reason: str) -> None:
            app.closed.append((code, reason))

    async with serving(Producer, fallback=True, fallback_max_outbox=8192) as (server, url):
        client = await open_session(port_of(url), "/", "polling")
        await asyncio.sleep(unit(0.3))
        stalled = len(sent)
        assert stalled < total  # over half the outbox: not writable
        assert stalled * 116 <= 8192
        got: list[list[Any]] = []
        last = 0
        while len(got) < total:
            messages, close = await client.receive(1, last=last)  # each poll acks the one before
            assert close is None, close
            got += messages
            last = got[-1][0]
        assert [m[0] for m in got] == list(range(1, total + 1))
        assert [int(str(decode(m))[:4]) for m in got] == list(range(1, total + 1))
        assert app.drains >= 1
        assert app.closed == []


async def test_coroutine_send_waits_while_the_outbox_is_over_half_full() -> None:
    total = 200
    progress: list[int] = []
    ended: list[Any] = []

    async def handler(ws: Any) -> None:
        try:
            for i in range(1, total + 1):
                await ws.send(f"{i:04d}" + "x" * 96)
                progress.append(i)
            await ws.recv()
        except ConnectionClosed as exc:
            ended.append(exc)

    # write_limit small: the coroutine level writes (and the outbox sees)
    # every ~10 messages, well under half of the outbox (4096 bytes).
    async with serving(handler, fallback=True, fallback_max_outbox=8192, write_limit=1024) as (server, url):
        client = await open_session(port_of(url), "/", "polling")
        await asyncio.sleep(unit(0.3))
        stalled = len(progress)
        assert 0 < stalled < total, stalled
        await asyncio.sleep(unit(0.2))
        assert len(progress) == stalled  # waits for acks
        got: list[list[Any]] = []
        last = 0
        while len(got) < total:
            messages, close = await client.receive(1, last=last)
            assert close is None, (close, len(got), ended)
            got += messages
            last = got[-1][0]
        await eventually(lambda: len(progress) == total, what="every send done")
        assert [m[0] for m in got] == list(range(1, total + 1))
        assert [int(str(decode(m))[:4]) for m in got] == list(range(1, total + 1))
        assert ended == []


async def test_outbox_message_bound_makes_send_wait_too() -> None:
    # docs/fallback.md: above half of fallback_max_outbox_messages (as of
    # fallback_max_outbox) ws.writable is False and `await send()` waits; the
    # message count alone never closes the session. A handler that sends one
    # message per loop turn to a client that acks as it polls waits.
    total = 100
    progress: list[int] = []
    ended: list[Any] = []

    async def handler(ws: Any) -> None:
        try:
            for i in range(1, total + 1):
                await ws.send(f"m{i}")
                progress.append(i)
                await asyncio.sleep(0)
            await ws.recv()
        except ConnectionClosed as exc:
            ended.append(exc)

    async with serving(handler, fallback=True, fallback_max_outbox_messages=50) as (server, url):
        client = await open_session(port_of(url), "/", "polling")
        await asyncio.sleep(unit(0.3))
        assert ended == [], f"closed with {ended[0].sent_code if ended else None} instead of waiting"
        assert 0 < len(progress) < total
        got: list[list[Any]] = []
        last = 0
        while len(got) < total:
            messages, close = await client.receive(1, last=last)
            assert close is None, close
            got += messages
            last = got[-1][0]
        assert [decode(m) for m in got] == [f"m{i}" for i in range(1, total + 1)]


async def test_an_ack_gets_through_while_an_upload_waits_for_it(long_hold: None) -> None:
    # The handler sends 30 messages at once: over half of
    # fallback_max_outbox_messages (50), so the session stops being writable
    # and, as a connection whose peer does not read, stops reading too: an
    # upload waits. The client POSTs a message with the ack it had when it
    # sent it (0), reads the 30 messages on its stream, and acks them. That
    # ack must get through (acks are what make the session writable again),
    # and then the waiting upload must go on.
    got: list[str] = []

    async def handler(ws: Any) -> None:
        for i in range(30):
            await ws.send(f"m{i}")
        async for message in ws:
            got.append(message)
            await ws.send("echo " + message)

    async with serving(handler, fallback=True, fallback_max_outbox_messages=50) as (server, url):
        port = port_of(url)
        client = await open_session(port, "/", "sse")
        sse = await SSE.connect(port, client.q)
        waiting: asyncio.Future[Reply] | None = None
        try:
            assert [decode(e.message()) for e in await sse.messages(30)] == [f"m{i}" for i in range(30)]
            waiting = asyncio.ensure_future(client.send(T("hello"), seq=1, ack=0, timeout=8))
            await asyncio.sleep(unit(0.3))
            ack = await client.send(seq=2, ack=30)  # an ack alone, of everything read
            assert ack.status == 200, f"the ack was refused while the upload waits for it: {ack}"
            reply = await asyncio.wait_for(waiting, unit(5))
            assert reply.json() == {"received": 1}
            assert [decode(e.message()) for e in await sse.messages(1)] == ["echo hello"]
            assert got == ["hello"]
        finally:
            sse.close()
            if waiting is not None and not waiting.done():
                waiting.cancel()
                with contextlib.suppress(BaseException):
                    await waiting


# -- 8. hooks and origins ------------------------------------------------------------------------


async def test_origins_apply_to_open() -> None:
    handler, app = make_app("callback")
    async with serving(handler, fallback=True, origins=["http://good"]) as (server, url):
        port = port_of(url)
        reply = await http(port, "POST", "/_fastws/open", {"path": "/", "transport": "sse"}, headers=[("Origin", "http://evil")])
        assert reply.status == 403, reply
        assert not reply.body.startswith(b"{")  # the raw refusal, as a WebSocket would get it
        assert app.conns == []
        reply = await http(port, "POST", "/_fastws/open", {"path": "/", "transport": "sse"}, headers=[("Origin", "http://good")])
        assert reply.status == 200, reply
        assert len(app.conns) == 1


async def test_process_request_applies_to_open(level: str) -> None:
    seen: list[tuple[str, str | None]] = []

    def check(ws: Any, request: fastws.Request) -> Any:
        seen.append((request.path, request.headers.get("Authorization")))
        if "token=" not in request.path:
            return ws.respond(401, "token required\n")
        return None

    handler, app = make_app(level)
    options: dict[str, Any] = {}
    if level == "callback":

        class Checked(handler):  # type: ignore[misc, valid-type]
            def process_request(self, ws: Any, request: fastws.Request) -> Any:
                return check(ws, request)

        handler = Checked
    else:
        options["process_request"] = check
    async with serving(handler, fallback=True, **options) as (server, url):
        port = port_of(url)
        reply = await http(port, "POST", "/_fastws/open", {"path": "/chat"}, headers=[("Authorization", "Bearer x")])
        assert reply.status == 401, reply
        assert reply.body == b"token required\n"
        assert app.conns == []
        reply = await http(port, "POST", "/_fastws/open", {"path": "/chat?token=1"}, headers=[("Authorization", "Bearer y")])
        assert reply.status == 200, reply
        assert seen == [("/chat", "Bearer x"), ("/chat?token=1", "Bearer y")]
        assert len(app.conns) == 1


async def test_limit_concurrency_counts_sessions() -> None:
    handler, app = make_app("callback")
    async with serving(handler, fallback=True, limit_concurrency=1) as (server, url):
        port = port_of(url)
        first = await open_session(port)
        reply = await http(port, "POST", "/_fastws/open", {"path": "/"})
        assert reply.status == 503, reply
        await first.close()
        await eventually(lambda: app.closed, what="the first session's end")
        await first.receive(10, last=0)  # the close event: the session is gone
        await open_session(port)


# -- 9. metrics -------------------------------------------------------------------------------------


async def test_sessions_count_in_stats(level: str) -> None:
    handler, app = make_app(level)
    async with serving(handler, fallback=True, metrics=True) as (server, url):
        port = port_of(url)
        polling = await open_session(port, "/", "polling")
        sse = await open_session(port, "/", "sse")
        async with connect(url + "/", **CLIENT) as ws:
            await asyncio.wait_for(ws.recv(), unit(5))
            stats = server.stats()
            assert stats["connections"] == 3
            assert stats["handshakes"].get("101") == 3
            await polling.send(T("a"), T("b"))
            await polling.receive(3, last=0)
            assert server.stats()["messages_in"]["text"] == 2
        await polling.close()
        await eventually(lambda: server.stats()["connections"] == 1, what="one session left")
        await sse.close()
        await eventually(lambda: server.stats()["connections"] == 0, what="no session left")


# -- 10, 11. without --fallback; fastws.js -------------------------------------------------------------


async def test_without_fallback_the_endpoints_are_plain_requests() -> None:
    handler, app = make_app("callback")
    async with serving(handler) as (server, url):
        port = port_of(url)
        reply = await http(port, "POST", "/_fastws/open", {"path": "/", "transport": "sse"})
        assert reply.status == 426, reply
        reply = await http(port, "GET", "/_fastws/sse?s=x&t=y")
        assert reply.status == 426, reply
        assert app.conns == []


async def test_fallback_answers_have_one_connection_header() -> None:
    handler, app = make_app("callback")
    async with serving(handler, fallback=True) as (server, url):
        port = port_of(url)
        client = await open_session(port)
        for reply in (
            await http(port, "POST", "/_fastws/open", {"path": "/"}),
            await client.poll(last=0),
            await client.send(T("x")),
            await http(port, "GET", "/_fastws/nope"),
            await http(port, "GET", f"/_fastws/poll?s={client.sid}&t=wrong&last=0"),
        ):
            for name, values in reply.headers.items():
                assert len(values) == 1, f"repeated {name}: {values} in {reply}"


@pytest.mark.skipif(not os.path.exists(JS), reason="fastws/faces/fallback/fastws.js not written yet")
async def test_fastws_js_is_served() -> None:
    handler, app = make_app("callback")
    async with serving(handler, fallback=True) as (server, url):
        reply = await http(port_of(url), "GET", "/fastws.js")
        assert reply.status == 200, reply
        assert (reply.header("Content-Type") or "").startswith("text/javascript")
        with open(JS, "rb") as f:
            assert reply.body == f.read()
