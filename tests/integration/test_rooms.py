"""Rooms / pub-sub with the in-process ("memory") broker, through real clients.

One small application at both API levels (``RoomHandler`` for the callback
level, ``room_handler`` for the coroutine level) understands text commands:

- ``join ROOM [NAME]``: ``ws.subscribe(ROOM, member=NAME)``; answers
  ``joined ROOM <result of the future>``;
- ``leave ROOM``: answers ``left ROOM <ws.unsubscribe(ROOM)>``;
- ``rooms``: answers ``rooms <sorted ws.rooms, comma separated>``;
- ``pub ROOM TEXT`` (str), ``pubb ROOM TEXT`` (bytes), ``pubt ROOM TEXT``
  (bytes, ``text=True``), ``pubs ROOM TEXT`` (str, ``text=False``): publish,
  answer nothing;
- ``since ROOM OFFSET``: ``ws.subscribe(ROOM, since=OFFSET)`` (the coroutine
  level answers ``error <message>`` when it raises; the callback level lets
  it raise, so the connection closes with 1011);
- ``echo TEXT``: answers TEXT (a direct send, between room messages).

A connection to ``/join/ROOM1,ROOM2?as=NAME`` joins those rooms as soon as it
is open (no command needed: a raw socket that never reads nor writes can be
a member).

Since a connection delivers in order, a command answered after a publish
proves that everything before the answer has arrived: a client that should
get nothing from a room asks ``rooms`` and must find the answer first.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
import zlib
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory, PerMessageDeflate

import fastws
from fastws import Handler
from fastws.codec._frame_py import OP_BINARY, OP_CLOSE, OP_TEXT, FrameReader, encode_frame, parse_close
from fastws.types import State

from ..conftest import raw_connect, serving, unit
from .conftest import free_port, run_cli, upgrade_request

pytestmark = pytest.mark.timeout(int(unit(60)))

# Clients: no compression unless a test asks, no client pings, bounded waits.
CLIENT: dict[str, Any] = {"compression": None, "ping_interval": None, "open_timeout": unit(5), "close_timeout": unit(5)}


# -- the application ---------------------------------------------------------


def join_from_path(ws: Any) -> None:
    """``/join/ROOM1,ROOM2?as=NAME``: join those rooms now."""
    path, _, query = ws.request.path.partition("?")
    if path.startswith("/join/"):
        name = parse_qs(query).get("as", [None])[0]
        for room in path[len("/join/") :].split(","):
            ws.subscribe(room, member=name)


def command(ws: Any, text: str) -> str | None:
    """Run one command (see the module); the answer to send, or None."""
    verb, _, rest = text.partition(" ")
    room, _, arg = rest.partition(" ")
    if verb == "join":
        done = ws.subscribe(room, member=arg or None)
        return f"joined {room} {done.result() if done.done() else 'pending'}"
    if verb == "leave":
        return f"left {room} {ws.unsubscribe(room)}"
    if verb == "rooms":
        return "rooms " + ",".join(sorted(ws.rooms))
    if verb == "pub":
        ws.publish(room, arg)
    elif verb == "pubb":
        ws.publish(room, arg.encode())
    elif verb == "pubt":
        ws.publish(room, arg.encode(), text=True)
    elif verb == "pubs":
        ws.publish(room, arg, text=False)
    elif verb == "since":
        ws.subscribe(room, since=arg)
        return f"joined {room} since {arg}"
    elif verb == "echo":
        return rest
    else:
        return f"unknown {verb}"
    return None


class RoomHandler(Handler):
    """Callback level."""

    def on_connect(self, ws: Any) -> None:
        join_from_path(ws)

    def on_message(self, ws: Any, data: bytes, is_text: bool) -> None:
        reply = command(ws, data.decode())
        if reply is not None:
            ws.send(reply)


async def room_handler(ws: Any) -> None:
    """Coroutine level."""
    join_from_path(ws)
    async for message in ws:
        assert isinstance(message, str)
        reply: str | None
        try:
            if message.startswith("join "):
                _, room, *name = message.split(" ", 2)
                # At this level the future is awaited: 0 messages replayed.
                replayed = await ws.subscribe(room, member=name[0] if name else None)
                reply = f"joined {room} {replayed}"
            else:
                reply = command(ws, message)
        except ValueError as exc:
            reply = f"error {exc}"
        if reply is not None:
            await ws.send(reply)


LEVELS = pytest.mark.parametrize("handler", [RoomHandler, room_handler], ids=["callback", "coroutine"])


# -- helpers ---------------------------------------------------------------------


async def until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "", step: float = 0.005) -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` (scaled)."""
    deadline = time.monotonic() + unit(timeout)
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(step)


async def recv(ws: ClientConnection, timeout: float = 5.0) -> str | bytes:
    return await asyncio.wait_for(ws.recv(), unit(timeout))


async def ask(ws: ClientConnection, text: str) -> str | bytes:
    await ws.send(text)
    return await recv(ws)


async def nothing_before_answer(ws: ClientConnection, expected: str = "rooms ") -> None:
    """The client got no message since the last one it read: the answer to
    ``rooms`` comes first."""
    answer = await ask(ws, "rooms")
    assert isinstance(answer, str) and answer.startswith(expected), f"a message arrived: {answer!r}"


def members(server: fastws.Server, room: str) -> int:
    return len(server.hub.members(room))


def core(conn: Any) -> Any:
    """The callback-level Connection under a coroutine-level ServerConnection."""
    return getattr(conn, "connection", conn)


def find_conn(server: fastws.Server, path: str) -> Any:
    [conn] = [c for c in server.connections if c.request.path == path]
    return core(conn)


def port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


# -- 1. fan-out at both levels -------------------------------------------------------

N_MEMBERS = 20
N_MESSAGES = 500


@LEVELS
async def test_every_member_gets_every_message_in_order_exactly_once(handler: Any) -> None:
    async with serving(handler, compression=None) as (server, url):
        # Half the members are websockets clients, half aiohttp clients.
        clients = [await connect(url + "/join/news", **CLIENT) for _ in range(N_MEMBERS // 2)]
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=unit(20)))
        try:
            aio = [await session.ws_connect(url + "/join/news", autoping=False) for _ in range(N_MEMBERS - len(clients))]
            outsider = await connect(url + "/join/sports", **CLIENT)
            bystander = await connect(url + "/", **CLIENT)  # in no room
            await until(lambda: members(server, "news") == N_MEMBERS and members(server, "sports") == 1, what="joins")
            assert server.stats()["rooms"]["rooms"] == 2
            assert server.stats()["rooms"]["members"] == N_MEMBERS + 1

            publisher = clients[0]  # a member too: it gets its own messages
            expected = [f"news {i:03d}" for i in range(N_MESSAGES)]

            async def collect_ws(ws: ClientConnection) -> list[str | bytes]:
                return [await recv(ws, 10) for _ in range(N_MESSAGES)]

            async def collect_aio(ws: aiohttp.ClientWebSocketResponse) -> list[str | bytes]:
                got: list[str | bytes] = []
                for _ in range(N_MESSAGES):
                    msg = await asyncio.wait_for(ws.receive(), unit(10))
                    assert msg.type is aiohttp.WSMsgType.TEXT, msg
                    got.append(msg.data)
                return got

            collectors = [asyncio.ensure_future(collect_ws(ws)) for ws in clients]
            collectors += [asyncio.ensure_future(collect_aio(ws)) for ws in aio]
            for message in expected:
                await publisher.send("pub news " + message)
            results = await asyncio.wait_for(asyncio.gather(*collectors), unit(30))
            for got in results:
                assert got == expected  # all, in order, exactly once
            # Exactly once: nothing follows the last one.
            for ws in clients:
                await nothing_before_answer(ws, "rooms news")
            for peer in aio:
                await peer.send_str("rooms")
                msg = await asyncio.wait_for(peer.receive(), unit(5))
                assert msg.data == "rooms news"
            # Not members: nothing at all.
            await nothing_before_answer(outsider, "rooms sports")
            await nothing_before_answer(bystander, "rooms ")
            counters = server.stats()["rooms"]
            assert counters["published"] == N_MESSAGES
            assert counters["delivered"] == N_MESSAGES * N_MEMBERS
            assert counters["dropped"] == counters["closed_slow"] == 0
            for peer in aio:
                await peer.close()
        finally:
            await session.close()
        for ws in [*clients, outsider, bystander]:
            await ws.close()


# -- 2. text and binary --------------------------------------------------------------


@LEVELS
async def test_frame_type_follows_the_published_type(handler: Any) -> None:
    async with serving(handler, compression=None) as (server, url):
        member = await connect(url + "/join/r", **CLIENT)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=unit(10))) as session:
            aio = await session.ws_connect(url + "/join/r", autoping=False)
            publisher = await connect(url + "/", **CLIENT)
            await until(lambda: members(server, "r") == 2, what="joins")

            await publisher.send("pub r h\u00e9llo")  # str: text
            await publisher.send("pubb r bytes")  # bytes: binary
            await publisher.send("pubt r forced")  # bytes, text=True: text
            await publisher.send("pubs r str-as-binary")  # str, text=False: binary
            first = [await recv(member) for _ in range(4)]
            server.publish("r", b"\x00\xff\x80")  # bytes that are not UTF-8
            server.publish("r", "from the server")
            server.publish("r", bytearray(b"ba"))
            server.publish("r", memoryview(b"mv"), text=True)
            expected: list[str | bytes] = [
                "h\u00e9llo", b"bytes", "forced", b"str-as-binary", b"\x00\xff\x80", "from the server", b"ba", "mv",
            ]
            got = first + [await recv(member) for _ in expected[4:]]
            assert [(type(m), m) for m in got] == [(type(m), m) for m in expected]

            kinds = {str: aiohttp.WSMsgType.TEXT, bytes: aiohttp.WSMsgType.BINARY}
            for message in expected:
                msg = await asyncio.wait_for(aio.receive(), unit(5))
                assert (msg.type, msg.data) == (kinds[type(message)], message)
            await aio.close()
            await nothing_before_answer(member, "rooms r")
        with pytest.raises(TypeError):
            server.publish("r", 42)  # type: ignore[arg-type]
        for ws in (member, publisher):
            await ws.close()


# -- 3. membership -------------------------------------------------------------------


@LEVELS
async def test_membership_subscribe_unsubscribe_and_rooms(handler: Any) -> None:
    async with serving(handler, compression=None) as (server, url):
        ws = await connect(url + "/", **CLIENT)
        assert await ask(ws, "rooms") == "rooms "
        assert await ask(ws, "join a") == "joined a 0"
        assert await ask(ws, "join a") == "joined a 0"  # twice: one membership
        assert await ask(ws, "join b") == "joined b 0"
        assert await ask(ws, "rooms") == "rooms a,b"
        assert members(server, "a") == members(server, "b") == 1
        assert server.stats()["rooms"]["members"] == 2 and server.stats()["rooms"]["rooms"] == 2

        server.publish("a", "one")
        assert await recv(ws) == "one"
        await nothing_before_answer(ws, "rooms a,b")  # one copy, not two

        assert await ask(ws, "leave a") == "left a True"
        assert await ask(ws, "leave a") == "left a False"
        assert await ask(ws, "leave never-joined") == "left never-joined False"
        assert await ask(ws, "rooms") == "rooms b"
        assert members(server, "a") == 0
        assert server.stats()["rooms"] == {**server.stats()["rooms"], "rooms": 1, "members": 1}
        server.publish("a", "after leaving")
        server.publish("b", "still in b")
        assert await recv(ws) == "still in b"  # and nothing of room a before it
        await nothing_before_answer(ws, "rooms b")

        # Rejoining works, and gets only what is published from then on.
        assert await ask(ws, "join a") == "joined a 0"
        server.publish("a", "back")
        assert await recv(ws) == "back"
        await ws.close()
        await until(lambda: members(server, "a") == members(server, "b") == 0, what="left on close")


@LEVELS
async def test_a_closed_connection_leaves_every_room(handler: Any) -> None:
    rooms = ["x", "y", "z"]
    async with serving(handler, compression=None) as (server, url):
        clients = [await connect(url + "/join/x,y,z", **CLIENT) for _ in range(5)]
        raw = await asyncio.to_thread(_raw_member, port(url), "/join/x,y,z")
        await until(lambda: all(members(server, r) == 6 for r in rooms), what="joins")
        figures = server.stats()["rooms"]
        assert (figures["rooms"], figures["members"]) == (3, 18)
        # Normal close handshake for some, a dropped TCP connection for one.
        for ws in clients[:2]:
            await ws.close()
        await until(lambda: all(members(server, r) == 4 for r in rooms), what="2 left")
        raw.close()
        clients[2].transport.abort()
        await until(lambda: all(members(server, r) == 2 for r in rooms), what="aborted ones left")
        for ws in clients[3:]:
            await ws.close()
        await until(lambda: all(not server.hub.members(r) for r in rooms), what="every room empty")
        await until(lambda: server.stats()["rooms"]["members"] == 0, what="members 0")
        figures = server.stats()["rooms"]
        assert (figures["rooms"], figures["members"]) == (0, 0)
        server.publish("x", "to nobody")  # an empty room: nothing, no error
        assert server.stats()["rooms"]["delivered"] == 0


def _raw_member(port_: int, path: str, rcvbuf: int | None = None) -> socket.socket:
    """A raw WebSocket client (blocking) that completed its handshake."""
    if rcvbuf is None:
        sock = raw_connect(port_)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window stays small
        sock.settimeout(unit(5))
        sock.connect(("127.0.0.1", port_))
    sock.sendall(upgrade_request(path))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)  # byte by byte: nothing after the head is taken
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


# -- 4. compression ---------------------------------------------------------------------


def big_text(seed: int) -> str:
    line = f"{seed:04d} the quick brown fox jumps over the lazy dog; "
    return (line * (20_000 // len(line) + 1))[:20_000]


def read_frame(sock: socket.socket) -> tuple[int, bytes]:
    """One whole frame off a raw socket: (first byte, payload); blocking."""

    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "EOF"
            data += chunk
        return data

    b0, b1 = exactly(2)
    assert not b1 & 0x80, "server frames are not masked"
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(exactly(2), "big")
    elif n == 127:
        n = int.from_bytes(exactly(8), "big")
    return b0, exactly(n)


@LEVELS
async def test_compressed_once_for_no_context_takeover_and_right_for_all(handler: Any) -> None:
    async with serving(handler, metrics=True) as (server, url):
        nct = await connect(
            url + "/join/big",
            **{**CLIENT, "extensions": [ClientPerMessageDeflateFactory(server_no_context_takeover=True)]},
        )
        [ext] = nct.protocol.extensions
        assert isinstance(ext, PerMessageDeflate) and ext.remote_no_context_takeover
        await until(lambda: members(server, "big") == 1, what="join")

        # Alone in the room: what the server counts as sent (payload bytes
        # on the wire) is the compressed size.
        first = big_text(1)
        before = server.stats()["bytes_out"]["text"]
        server.publish("big", first)
        assert await recv(nct) == first
        sent = server.stats()["bytes_out"]["text"] - before
        assert 0 < sent < len(first) // 10, sent

        takeover = await connect(url + "/join/big", **{**CLIENT, "compression": "deflate"})
        assert takeover.protocol.extensions, "default deflate negotiated"
        plain = await connect(url + "/join/big", **CLIENT)
        assert not plain.protocol.extensions
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=unit(10))) as session:
            aio = await session.ws_connect(url + "/join/big", compress=15, autoping=False)
            # On the wire: a raw client asking for server_no_context_takeover.
            raw = await asyncio.to_thread(_raw_deflate_member, port(url), "/join/big")
            await until(lambda: members(server, "big") == 5, what="joins")

            texts = [big_text(2), big_text(3)]
            for i, text in enumerate(texts):
                server.publish("big", text)
                for ws in (nct, takeover, plain):
                    assert await recv(ws) == text
                    # A direct send between room messages: contexts stay right.
                    assert await ask(ws, f"echo {i} " + text[:1000]) == f"{i} " + text[:1000]
                msg = await asyncio.wait_for(aio.receive(), unit(5))
                assert msg.type is aiohttp.WSMsgType.TEXT and msg.data == text
                await aio.send_str(f"echo {i} " + text[:1000])
                msg = await asyncio.wait_for(aio.receive(), unit(5))
                assert msg.type is aiohttp.WSMsgType.TEXT and msg.data == f"{i} " + text[:1000]
            for text in texts:
                b0, payload = await asyncio.to_thread(read_frame, raw)
                assert b0 & 0x0F == OP_TEXT and b0 & 0x80, hex(b0)
                assert b0 & 0x40, "RSV1: the frame is compressed"
                assert len(payload) < len(text) // 10, len(payload)
                # Each message on its own: a fresh decompressor reads it.
                assert zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff") == text.encode()
            await aio.close()
        raw.close()
        for ws in (nct, takeover, plain):
            await ws.close()


def _raw_deflate_member(port_: int, path: str) -> socket.socket:
    sock = raw_connect(port_)
    sock.sendall(upgrade_request(path, extra=[("Sec-WebSocket-Extensions", "permessage-deflate; server_no_context_takeover")]))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    assert b"server_no_context_takeover" in head, head
    return sock


# -- 5, 6. slow receivers ---------------------------------------------------------------

MESSAGE = 4096
TOTAL = 5 * 2**20
COUNT = TOTAL // MESSAGE
BURST = 16


def slow_message(i: int) -> bytes:
    return b"%08d" % i + bytes([i % 251]) * (MESSAGE - 8)


async def publish_past_a_stalled_member(server: fastws.Server, url: str) -> tuple[Any, socket.socket, ClientConnection]:
    """A raw member that never reads, a normal member; publish TOTAL bytes
    in MESSAGE-byte messages; the normal member must get every one."""
    stalled_path = "/join/flood?as=stalled"
    stalled = await asyncio.to_thread(_raw_member, port(url), stalled_path, 4096)
    normal = await connect(url + "/join/flood?as=normal", **{**CLIENT, "max_size": None, "max_queue": None})
    await until(lambda: members(server, "flood") == 2, what="joins")
    stalled_conn = find_conn(server, stalled_path)
    got: list[bytes] = []

    async def read() -> None:
        while len(got) < COUNT:
            message = await recv(normal, 10)
            assert isinstance(message, bytes)
            got.append(message)

    def caught_up(count: int) -> Callable[[], bool]:
        return lambda: len(got) >= count or reader.done()

    reader = asyncio.ensure_future(read())
    try:
        for start in range(0, COUNT, BURST):
            for i in range(start, min(COUNT, start + BURST)):
                server.publish("flood", slow_message(i))
            await asyncio.sleep(0)
            # Keep the normal member close behind (it shares this loop).
            await until(caught_up(start - 4 * BURST), 10, "the normal member")
        await asyncio.wait_for(reader, unit(20))
    finally:
        reader.cancel()
    assert len(got) == COUNT
    for i, message in enumerate(got):
        assert message == slow_message(i), i
    return stalled_conn, stalled, normal


def drain_frames(sock: socket.socket, timeout: float = 10.0) -> tuple[list[bytes], tuple[int, str] | None]:
    """Read a raw member until a close frame or EOF (blocking): the binary
    messages, and the close (code, reason) if one came."""
    sock.settimeout(unit(timeout))
    reader = FrameReader(require_mask=False, max_message_size=None)
    messages: list[bytes] = []
    while True:
        event = reader.next_event()
        if event is None:
            try:
                chunk = sock.recv(1 << 20)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return messages, None
            reader.feed_data(chunk)
            continue
        if event[0] == OP_CLOSE:
            return messages, parse_close(event[1])
        assert event[0] == OP_BINARY, event[0]
        messages.append(event[1])


def read_available(sock: socket.socket, count: int, timeout: float = 10.0) -> list[bytes]:
    """Read exactly ``count`` binary messages off a raw member (blocking)."""
    sock.settimeout(unit(timeout))
    reader = FrameReader(require_mask=False, max_message_size=None)
    messages: list[bytes] = []
    while len(messages) < count:
        event = reader.next_event()
        if event is None:
            chunk = sock.recv(1 << 20)
            assert chunk, "EOF"
            reader.feed_data(chunk)
            continue
        assert event[0] == OP_BINARY, event
        messages.append(event[1])
    return messages


@LEVELS
async def test_a_stalled_member_is_closed_with_1013_and_the_others_get_everything(handler: Any) -> None:
    options = {"room_max_buffer": 64 * 1024, "max_write_buffer": 256 * 2**20, "close_timeout": unit(30), "compression": None}
    async with serving(handler, **options) as (server, url):
        stalled_conn, stalled, normal = await publish_past_a_stalled_member(server, url)
        figures = server.stats()["rooms"]
        assert figures["closed_slow"] == 1, figures  # the stalled one, once; not the normal one
        assert figures["dropped"] == 0
        assert stalled_conn.state in (State.CLOSING, State.CLOSED)
        assert stalled_conn.close_sent is not None and stalled_conn.close_sent.code == 1013
        assert find_conn(server, "/join/flood?as=normal").state is State.OPEN
        assert await server.presence("flood") in (["normal"], ["normal", "stalled"])

        # The stalled client now reads: a prefix of the messages, in order,
        # then the close frame 1013.
        got, close = await asyncio.to_thread(drain_frames, stalled)
        assert close is not None and close[0] == 1013, close
        assert 0 < len(got) < COUNT
        assert got == [slow_message(i) for i in range(len(got))]
        stalled.close()
        await until(lambda: members(server, "flood") == 1, what="the stalled one left")
        await until(lambda: server.stats()["rooms"]["members"] == 1, what="members 1")
        # The normal member goes on getting messages.
        server.publish("flood", b"after")
        assert await recv(normal) == b"after"
        await normal.close()


@LEVELS
async def test_policy_drop_skips_a_stalled_member_and_keeps_it_open(handler: Any) -> None:
    options = {
        "room_max_buffer": 64 * 1024, "room_slow_policy": "drop", "max_write_buffer": 256 * 2**20,
        "close_timeout": unit(30), "compression": None,
    }  # fmt: skip
    async with serving(handler, **options) as (server, url):
        stalled_conn, stalled, normal = await publish_past_a_stalled_member(server, url)
        figures = server.stats()["rooms"]
        assert figures["dropped"] > 0, figures
        assert figures["closed_slow"] == 0
        assert figures["delivered"] == 2 * COUNT - figures["dropped"]
        assert stalled_conn.state is State.OPEN  # still stalled, still open
        assert stalled_conn in server.hub.members("flood")
        assert stalled_conn.close_sent is None

        # The stalled client reads what was kept: whole messages, in order,
        # with the dropped ones missing; then it gets new messages again.
        kept = COUNT - figures["dropped"]
        got = await asyncio.to_thread(read_available, stalled, kept)
        numbers = [int(m[:8]) for m in got]
        assert numbers == sorted(set(numbers)) and numbers[0] == 0
        assert all(m == slow_message(n) for m, n in zip(got, numbers))
        assert len(numbers) < COUNT
        await until(lambda: stalled_conn.write_buffer_size == 0, what="drained")
        server.publish("flood", b"again")
        [again] = await asyncio.to_thread(read_available, stalled, 1)
        assert again == b"again"
        assert await recv(normal) == b"again"
        assert stalled_conn.state is State.OPEN
        stalled.close()
        await normal.close()


# -- 7. publish inside on_message, a pipelined burst ----------------------------------------

FAN = 50
PIPELINED = 64


@LEVELS
async def test_a_pipelined_burst_published_from_the_handler_reaches_50_members(handler: Any) -> None:
    async with serving(handler, compression=None) as (server, url):
        clients = await asyncio.gather(*(connect(url + "/join/chat", **CLIENT) for _ in range(FAN)))
        await until(lambda: members(server, "chat") == FAN, what="joins")
        sender = await asyncio.to_thread(_raw_member, port(url), "/")
        expected = [f"burst {i:02d}" for i in range(PIPELINED)]
        batch = b"".join(encode_frame(OP_TEXT, "pub chat " + m, mask=b"abcd") for m in expected)
        await asyncio.to_thread(sender.sendall, batch)  # one write

        async def collect(ws: ClientConnection) -> list[str | bytes]:
            return [await recv(ws, 10) for _ in expected]

        results = await asyncio.wait_for(asyncio.gather(*(collect(ws) for ws in clients)), unit(20))
        for got in results:
            assert got == expected
        counters = server.stats()["rooms"]
        assert (counters["published"], counters["delivered"]) == (PIPELINED, PIPELINED * FAN)
        await nothing_before_answer(clients[0], "rooms chat")
        sender.close()
        await asyncio.gather(*(ws.close() for ws in clients))


# -- 8. validation ---------------------------------------------------------------------------


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="broker"):
        fastws.Config(broker="bogus")
    with pytest.raises(ValueError, match="Redis"):
        fastws.Config(room_history=True)
    with pytest.raises(ValueError, match="Redis"):
        fastws.Config(room_history=True, broker="memory")
    with pytest.raises(ValueError, match="room_slow_policy"):
        fastws.Config(room_slow_policy="ignore")
    with pytest.raises(ValueError, match="room_max_buffer"):
        fastws.Config(room_max_buffer=0)
    # A member's own batch (up to write_limit) must not count as falling behind.
    with pytest.raises(ValueError, match=r"room_max_buffer \(16384\) must be at least write_limit \(65536\)"):
        fastws.Config(room_max_buffer=16 * 1024)
    assert fastws.Config(room_max_buffer=16 * 1024, write_limit=16 * 1024).room_max_buffer == 16 * 1024
    # What is accepted.
    assert fastws.Config().broker == "memory"
    assert fastws.Config(broker="workers", room_slow_policy="drop").room_slow_policy == "drop"
    assert fastws.Config(broker="redis://127.0.0.1:6379/0", room_history=True).room_history


async def test_serve_refuses_a_bad_broker() -> None:
    with pytest.raises(ValueError, match="broker"):
        await fastws.serve(RoomHandler, "127.0.0.1", 0, broker="bogus")


async def test_since_without_history_is_an_error_at_the_coroutine_level() -> None:
    async with serving(room_handler, compression=None) as (server, url), connect(url + "/", **CLIENT) as ws:
        answer = await ask(ws, "since r 0:1-0")
        assert isinstance(answer, str) and answer.startswith("error ") and "room_history" in answer, answer
        # Nothing joined: the failed subscribe left no membership.
        assert await ask(ws, "rooms") == "rooms "
        assert members(server, "r") == 0 and server.stats()["rooms"]["members"] == 0
        assert await ask(ws, "join r") == "joined r 0"  # and the connection is fine


async def test_an_empty_room_name_is_refused() -> None:
    async with serving(room_handler, compression=None) as (server, url), connect(url + "/", **CLIENT) as ws:
        answer = await ask(ws, "join ")
        assert isinstance(answer, str) and answer.startswith("error ") and "room" in answer, answer
        assert await ask(ws, "rooms") == "rooms "
        assert server.stats()["rooms"]["rooms"] == 0


async def test_a_malformed_since_leaves_no_membership() -> None:
    """With history on (a Redis broker; an unreachable one will do: the
    broker retries in the background), ``subscribe(room, since="garbage")``
    raises ValueError; the failed call must not leave the connection in the
    room."""
    broker = f"redis://127.0.0.1:{free_port()}/0"
    options = {"compression": None, "broker": broker, "room_history": True}
    async with serving(room_handler, **options) as (server, url), connect(url + "/", **CLIENT) as ws:
        answer = await ask(ws, "since r garbage")
        assert isinstance(answer, str) and answer.startswith("error not a room offset"), answer
        assert await ask(ws, "rooms") == "rooms "  # not in the room it failed to join
        figures = server.stats()["rooms"]
        assert (figures["rooms"], figures["members"]) == (0, 0), figures


def test_history_gap_is_public() -> None:
    """``Connection.subscribe`` documents that its future raises
    ``fastws.HistoryGap``, and docs/scaling.md's example catches it with
    ``except fastws.HistoryGap``: it must be in the public API."""
    from fastws.exceptions import HistoryGap

    assert getattr(fastws, "HistoryGap", None) is HistoryGap
    gap = HistoryGap("r", "e:1-0", "trimmed")
    assert isinstance(gap, fastws.WebSocketException) and isinstance(gap, LookupError)
    assert (gap.room, gap.offset, gap.why) == ("r", "e:1-0", "trimmed")
    assert "'r'" in str(gap) and "'e:1-0'" in str(gap) and "trimmed" in str(gap)


async def test_since_without_history_closes_a_callback_level_connection_with_1011() -> None:
    async with serving(RoomHandler, compression=None) as (server, url):
        async with connect(url + "/", **CLIENT) as ws:
            await ws.send("since r 0:1-0")
            with pytest.raises(ConnectionClosed) as closed:
                await recv(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
        assert members(server, "r") == 0


# -- 9. metrics ---------------------------------------------------------------------------------


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def metric(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str) -> float:
    values = [v for (n, _), v in samples.items() if n == name]
    assert len(values) == 1, (name, values)
    return values[0]


@LEVELS
async def test_room_metrics(handler: Any) -> None:
    async with serving(handler, metrics=True, compression=None) as (server, url):
        room_members = [await connect(url + "/join/m1", **CLIENT) for _ in range(3)]
        other = await connect(url + "/join/m2,m3", **CLIENT)
        await until(lambda: members(server, "m1") == 3 and members(server, "m3") == 1, what="joins")
        for i in range(7):
            server.publish("m1", f"m1 {i}")
        for i in range(2):
            await other.send(f"pub m2 m2 {i}")
        server.publish("empty", "nobody")  # published, delivered to none
        for ws in room_members:
            assert [await recv(ws) for _ in range(7)] == [f"m1 {i}" for i in range(7)]
        assert [await recv(other) for _ in range(2)] == ["m2 0", "m2 1"]

        timeout = aiohttp.ClientTimeout(total=unit(10))
        metrics_url = "http" + url.removeprefix("ws") + "/metrics"
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(metrics_url) as response:
            assert response.status == 200
            body = await response.text()
        for name in ("fastws_room_published_total", "fastws_room_delivered_total", "fastws_rooms{", "fastws_room_members{"):
            assert name in body, name
        samples = parse_metrics(body)
        assert metric(samples, "fastws_room_published_total") == 7 + 2 + 1
        assert metric(samples, "fastws_room_delivered_total") == 7 * 3 + 2
        assert metric(samples, "fastws_room_dropped_total") == 0
        assert metric(samples, "fastws_room_closed_slow_total") == 0
        assert metric(samples, "fastws_room_received_total") == 0  # memory broker: nothing from elsewhere
        assert metric(samples, "fastws_rooms") == 3  # m1, m2, m3
        assert metric(samples, "fastws_room_members") == 5

        figures = server.stats()["rooms"]
        assert set(figures) == {
            "published", "received", "delivered", "dropped", "closed_slow", "reconnects", "errors", "queued_dropped",
            "unconfirmed", "rooms", "members",
        }  # fmt: skip
        assert figures == {
            "published": 10, "received": 0, "delivered": 23, "dropped": 0, "closed_slow": 0, "reconnects": 0,
            "errors": 0, "queued_dropped": 0, "unconfirmed": 0, "rooms": 3, "members": 5,
        }  # fmt: skip
        for ws in [*room_members, other]:
            await ws.close()
        await until(lambda: server.stats()["rooms"]["rooms"] == 0, what="rooms gauge back to 0")


# -- 10. CLI ------------------------------------------------------------------------------------


def test_cli_lists_the_room_options() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0, result.stderr
    for flag in ("--broker", "--room-max-buffer", "--room-slow-policy", "--room-history", "--presence"):
        assert flag in result.stdout, flag


def test_cli_refuses_a_bad_broker() -> None:
    result = run_cli("serve", "--port", "0", "--broker", "bogus")
    assert result.returncode != 0
    assert "broker" in result.stderr + result.stdout


# -- 11. presence -------------------------------------------------------------------------------


@LEVELS
async def test_presence_lists_member_names(handler: Any) -> None:
    async with serving(handler, compression=None) as (server, url):
        assert await server.presence("lobby") == []
        alice = await connect(url + "/join/lobby?as=alice", **CLIENT)
        carol = await connect(url + "/join/lobby?as=carol", **CLIENT)
        bob = await connect(url + "/", **CLIENT)
        assert await ask(bob, "join lobby bob") == "joined lobby 0"
        anonymous = await connect(url + "/join/lobby", **CLIENT)
        await until(lambda: members(server, "lobby") == 4, what="joins")
        names = await server.presence("lobby")
        assert names == sorted(names) and len(names) == 4
        assert [n for n in names if n in ("alice", "bob", "carol")] == ["alice", "bob", "carol"]
        [default] = [n for n in names if n not in ("alice", "bob", "carol")]
        assert default == str(find_conn(server, "/join/lobby").id)
        uuid.UUID(default)

        await bob.close()
        await until(lambda: members(server, "lobby") == 3, what="bob left")
        assert await server.presence("lobby") == sorted(["alice", "carol", default])
        assert await ask(alice, "leave lobby") == "left lobby True"
        assert await server.presence("lobby") == sorted(["carol", default])
        for ws in (alice, carol, anonymous):
            await ws.close()
        await until(lambda: members(server, "lobby") == 0, what="all left")
        assert await server.presence("lobby") == []
