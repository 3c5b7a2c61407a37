"""Rooms across server processes through a real Redis (``fastws.rooms.redis``).

Every test starts what it needs: a ``redis-server`` (or a 3-master cluster)
from ``redis_fixtures``, and fastws nodes, either ``python -m fastws serve
tests.integration.room_apps:Rooms --broker redis://...`` processes or
in-process ``fastws.serve(...)`` servers when the test needs a node's
``stats()`` or ``presence()``. Clients are ``websockets`` asyncio clients that
drive the nodes with the text commands of ``room_apps`` (``join``, ``pub``,
``resume``, ``leave``).

A node's SUBSCRIBE reaches Redis a little after ``joined``: tests wait for
``PUBSUB NUMSUB`` (``SHARDNUMSUB`` in a cluster) before publishing.
Everything listens on 127.0.0.1 and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import signal
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis as redis_py
from redis.crc import key_slot
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from fastws.codec._frame_py import OP_TEXT

from ..conftest import handshake, serving, unit
from .conftest import CliProcess, FrameStream, client_frame, free_port
from .redis_fixtures import redis_cluster, redis_server, redis_server_aof
from .redis_service import RedisCluster, RedisServer
from .room_apps import Rooms, rooms_coroutine

__all__ = [
    "redis_cluster",
    "redis_server",
    "redis_server_aof",
]  # the fixtures, used by name

pytestmark = pytest.mark.timeout(90)

ROOMS = "tests.integration.room_apps:Rooms"
ROOMS_COROUTINE = "tests.integration.room_apps:rooms_coroutine"
PREFIX = "fastws:"

#: The first word of the answers room_apps sends; anything else is a room message.
CONTROL = frozenset({"joined", "left", "resumed", "gap", "error", "rooms", "pong"})
#: ``"<epoch>:<ms>-<seq> <message>"``: a room message with room_history.
OFFSET = re.compile(r"^([0-9a-f]+):(\d+)-(\d+) (.*)$", re.DOTALL)


def channel(room: str) -> str:
    return f"{PREFIX}{{{room}}}"


def split_offset(message: str) -> tuple[str, tuple[int, int], str]:
    """``(epoch, (ms, seq), text)`` of a history-mode message."""
    m = OFFSET.match(message)
    assert m, f"no offset prefix: {message!r}"
    return m[1], (int(m[2]), int(m[3])), m[4]


# -- clients ----------------------------------------------------------------------


class Client:
    """A websockets client whose messages a task collects: room messages in
    ``data`` (with arrival times in ``times``), answers in ``control``."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.data: list[str] = []
        self.times: list[float] = []
        self.control: list[str] = []
        self._new = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str) -> Client:
        ws = await connect(
            url + "/",
            open_timeout=unit(5),
            close_timeout=unit(2),
            compression=None,
            ping_interval=None,
            max_queue=None,
            proxy=None,
        )
        return cls(ws)

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                assert isinstance(message, str), message
                if message.partition(" ")[0] in CONTROL:
                    self.control.append(message)
                else:
                    self.data.append(message)
                    self.times.append(time.monotonic())
                self._new.set()
        except ConnectionClosed:
            pass
        finally:
            self._new.set()

    async def send(self, text: str) -> None:
        await self.ws.send(text)

    async def wait_until(self, predicate: Callable[[Client], Any], timeout: float = 5.0, what: str = "") -> None:
        deadline = time.monotonic() + unit(timeout)
        while True:
            self._new.clear()
            if predicate(self):
                return
            left = deadline - time.monotonic()
            if left <= 0 or self.task.done():
                raise AssertionError(
                    f"timed out waiting for {what or predicate}: {len(self.data)} messages, "
                    f"last {self.data[-3:]}, answers {self.control[-5:]}, closed={self.task.done()}"
                )
            try:
                await asyncio.wait_for(self._new.wait(), left)
            except TimeoutError:
                pass

    async def answer(self, prefix: str, timeout: float = 5.0) -> str:
        """The next answer starting with ``prefix`` (consumed)."""
        await self.wait_until(
            lambda c: any(a.startswith(prefix) for a in c.control),
            timeout,
            f"answer {prefix!r}",
        )
        for i, a in enumerate(self.control):
            if a.startswith(prefix):
                return self.control.pop(i)
        raise AssertionError("unreachable")

    async def join(self, room: str, member: str = "") -> None:
        await self.send(f"join {room} {member}".rstrip())
        assert await self.answer(f"joined {room}") == f"joined {room}"

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.wait([self.task], timeout=unit(5))


@pytest.fixture
async def clients() -> AsyncIterator[Callable[[str], Any]]:
    """Factory of connected Clients, all closed after the test."""
    opened: list[Client] = []

    async def open_client(url: str) -> Client:
        client = await Client.open(url)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        if client.ws.transport is not None:
            client.ws.transport.abort()
        client.task.cancel()
    await asyncio.gather(*(c.task for c in opened), return_exceptions=True)


# -- fastws nodes in processes ------------------------------------------------------


@pytest.fixture
def start_nodes() -> Iterator[Callable[..., Any]]:
    """Factory: ``await start_nodes(argv, argv, ...)`` starts one ``python -m
    fastws serve`` per argv at once and returns them listening; all are
    stopped (SIGTERM, then SIGKILL) after the test."""
    procs: list[CliProcess] = []

    async def start(*argvs: list[str]) -> list[CliProcess]:
        new = [CliProcess(*argv) for argv in argvs]
        procs.extend(new)
        await asyncio.gather(*(asyncio.to_thread(p.start, 20.0) for p in new))
        return new

    yield start
    for proc in procs:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.stop(signal.SIGTERM, timeout=10)


def node_argv(app: str, broker: str, *extra: str) -> list[str]:
    return [app, "--port", str(free_port()), "--broker", broker, "--no-access-log", *extra]


# -- Redis ------------------------------------------------------------------------------


async def wait_numsub(client: Any, room: str, count: int, timeout: float = 5.0) -> None:
    """Poll ``PUBSUB NUMSUB <prefix>{room}`` until it is ``count``."""
    deadline = time.monotonic() + unit(timeout)
    while True:
        got = dict(client.pubsub_numsub(channel(room)))[channel(room)]
        if got == count:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"PUBSUB NUMSUB {channel(room)} is {got}, expected {count}")
        await asyncio.sleep(0.02)


async def numsub_reaches(server: Any, room: str, count: int, timeout: float = 5.0) -> None:
    """``wait_numsub`` on a client of ``server`` (a RedisServer) made for it."""
    client = server.client()
    try:
        await wait_numsub(client, room, count, timeout)
    finally:
        client.close()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis_py.Redis]:
    client = redis_server.client()
    yield client
    client.close()


# -- a. three processes, 30 members, 10,000 messages --------------------------------------


async def test_three_processes_every_member_gets_every_message_once_in_order(
    redis_server: RedisServer,
    redis_client: redis_py.Redis,
    start_nodes: Any,
    clients: Any,
) -> None:
    url = redis_server.url
    # Two callback-level nodes and one coroutine-level node.
    nodes = await start_nodes(node_argv(ROOMS, url), node_argv(ROOMS, url), node_argv(ROOMS_COROUTINE, url))
    members: list[Client] = [await clients(nodes[i % 3].url) for i in range(30)]
    await asyncio.gather(*(m.join("r") for m in members))
    await wait_numsub(redis_client, "r", 3)

    counts = [3334, 3333, 3333]
    total = sum(counts)
    publishers = [await clients(node.url) for node in nodes]  # not members

    async def publish(i: int) -> None:
        for seq in range(counts[i]):
            await publishers[i].send(f"pub r p{i}:{seq}")

    started = time.monotonic()
    await asyncio.gather(*(publish(i) for i in range(3)))
    await asyncio.gather(*(m.wait_until(lambda c: len(c.data) >= total, 60, f"{total} messages") for m in members))
    elapsed = time.monotonic() - started
    await asyncio.sleep(0.3)  # room for a duplicate to show up

    for n, member in enumerate(members):
        assert len(member.data) == total, (n, len(member.data))
        seen = Counter(member.data)
        assert len(seen) == total, f"member {n}: duplicates {[(m, k) for m, k in seen.items() if k > 1][:5]}"
        by_publisher: dict[str, list[int]] = {}
        for message in member.data:
            who, _, seq = message.partition(":")
            by_publisher.setdefault(who, []).append(int(seq))
        for i in range(3):
            assert by_publisher[f"p{i}"] == list(range(counts[i])), f"member {n} (node {n % 3}): p{i} out of order"
        assert not member.control, member.control
    for node in nodes:
        assert node.proc is not None and node.proc.poll() is None, node.output
    print(f"10,000 messages x 30 members over 3 processes in {elapsed:.1f} s")


# -- b. PUBSUB NUMSUB follows the nodes that have members ------------------------------------


async def test_numsub_counts_the_nodes_with_members(
    redis_server: RedisServer,
    redis_client: redis_py.Redis,
    start_nodes: Any,
    clients: Any,
) -> None:
    url = redis_server.url
    nodes = await start_nodes(*(node_argv(ROOMS, url) for _ in range(3)))
    on0 = [await clients(nodes[0].url) for _ in range(2)]
    on1 = [await clients(nodes[1].url) for _ in range(2)]
    idle = await clients(nodes[2].url)  # connected to node 2, in no room
    await wait_numsub(redis_client, "r", 0)
    for member in on0 + on1:
        await member.join("r")
    await wait_numsub(redis_client, "r", 2)

    # A member of another room on node 2 does not subscribe node 2 to "r".
    await idle.join("other")
    await wait_numsub(redis_client, "other", 1)
    await wait_numsub(redis_client, "r", 2)

    # Node 0's members leave: node 0 unsubscribes.
    for member in on0:
        await member.send("leave r")
        assert await member.answer("left r") == "left r"
    await wait_numsub(redis_client, "r", 1)
    # Leaving twice is harmless.
    await on0[0].send("leave r")
    assert await on0[0].answer("left r") == "left r no"

    # Node 1: one leaves, the other disconnects (leaving every room it was in).
    await on1[0].send("leave r")
    assert await on1[0].answer("left r") == "left r"
    await wait_numsub(redis_client, "r", 1)
    await on1[1].close()
    await wait_numsub(redis_client, "r", 0)
    await wait_numsub(redis_client, "other", 1)

    # And back: a new member on node 2 subscribes it again.
    await idle.join("r")
    await wait_numsub(redis_client, "r", 1)


# -- c. Redis killed and restarted, no history --------------------------------------------------


async def test_publishing_resumes_after_redis_is_killed_and_restarted(
    redis_server_aof: RedisServer, clients: Any
) -> None:
    redis = redis_server_aof
    async with (
        serving(Rooms, broker=redis.url) as (a, url_a),
        serving(Rooms, broker=redis.url) as (b, url_b),
    ):
        on_a = await clients(url_a)
        on_b = await clients(url_b)
        await on_a.join("r")
        await on_b.join("r")
        await numsub_reaches(redis, "r", 2)

        published: list[float] = []  # publish time of message n
        stop = asyncio.Event()

        async def publish() -> None:
            while not stop.is_set():
                published.append(time.monotonic())
                a.publish("r", str(len(published) - 1))
                await asyncio.sleep(0.005)

        publisher = asyncio.create_task(publish())
        try:
            await on_b.wait_until(lambda c: len(c.data) >= 20, 5, "messages before the kill")
            await asyncio.to_thread(redis.kill)
            killed = time.monotonic()
            await asyncio.sleep(0.3)
            await asyncio.to_thread(redis.restart)
            restarted = time.monotonic()

            def after_restart(c: Client) -> bool:
                return any(published[int(m)] > restarted for m in c.data[-50:])

            await on_b.wait_until(after_restart, 10, "a message published after the restart")
        finally:
            stop.set()
            await publisher
        first_arrival = next(t for t in on_b.times if t > restarted) - restarted
        first_new = next(t for m, t in zip(on_b.data, on_b.times) if published[int(m)] > restarted) - restarted
        print(
            f"Redis down {restarted - killed:.2f} s; first cross-node delivery {first_arrival:.2f} s "
            f"after restart, first message published after it {first_new:.2f} s"
        )
        assert first_arrival < 5.0
        assert first_new < 5.0

        n = len(published)
        # On the publisher's node every member got everything (delivered at once).
        await on_a.wait_until(lambda c: len(c.data) >= n, 5, "all messages on the publisher's node")
        assert [int(m) for m in on_a.data] == list(range(n))
        # Across nodes at most once, in order.
        await asyncio.sleep(0.3)
        numbers = [int(m) for m in on_b.data]
        assert numbers == sorted(set(numbers)), "duplicates or disorder on the other node"
        assert numbers[-1] == n - 1

        # Both nodes lost their subscription and took it back (A's members
        # noticed nothing: A delivers its own publishes at once).
        assert b.stats()["rooms"]["reconnects"] >= 1, b.stats()["rooms"]
        while a.stats()["rooms"]["reconnects"] < 1:
            assert time.monotonic() - restarted < 5.0, f"node A did not resubscribe: {a.stats()['rooms']}"
            await asyncio.sleep(0.02)
        print(f"node A resubscribed {time.monotonic() - restarted:.2f} s after the restart")
        assert a.stats()["rooms"]["errors"] >= 1, a.stats()["rooms"]
        await numsub_reaches(redis, "r", 2)


# -- d. Redis killed and restarted, with history: nothing lost -------------------------------------


async def test_with_history_nothing_is_lost_across_a_redis_crash(
    redis_server_aof: RedisServer, start_nodes: Any, clients: Any
) -> None:
    redis = redis_server_aof
    url = redis.url
    nodes = await start_nodes(
        node_argv(ROOMS, url, "--room-history"),
        node_argv(ROOMS_COROUTINE, url, "--room-history"),
    )
    members = [await clients(nodes[i % 2].url) for i in range(4)]
    for member in members:
        await member.join("r")
    await numsub_reaches(redis, "r", 2)
    publisher = await clients(nodes[0].url)

    sent = 0
    stop = asyncio.Event()

    async def publish() -> None:
        nonlocal sent
        while not stop.is_set():
            await publisher.send(f"pub r {sent}")
            sent += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(publish())
    try:
        await asyncio.gather(
            *(m.wait_until(lambda c: len(c.data) >= 30, 5, "messages before the kill") for m in members)
        )
        await asyncio.to_thread(redis.kill)
        await asyncio.sleep(0.5)  # publishing on meanwhile: the nodes queue
        await asyncio.to_thread(redis.restart)
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await task
    await asyncio.gather(*(m.wait_until(lambda c: len(c.data) >= sent, 15, f"{sent} messages") for m in members))
    await asyncio.sleep(0.3)  # room for a duplicate to show up

    for n, member in enumerate(members):
        parsed = [split_offset(m) for m in member.data]
        numbers = [int(text) for _, _, text in parsed]
        dups = [k for k, v in Counter(numbers).items() if v > 1]
        assert numbers == list(range(sent)), (
            f"member {n} (node {n % 2}): {len(numbers)} messages for {sent} sent; duplicates {dups[:10]}; "
            f"missing {sorted(set(range(sent)) - set(numbers))[:10]}"
        )
        epochs = {epoch for epoch, _, _ in parsed}
        assert len(epochs) == 1, epochs  # the epoch survived the crash (AOF)
        sids = [sid for _, sid, _ in parsed]
        assert all(x < y for x, y in itertools.pairwise(sids)), f"member {n}: offsets not increasing"
    # Every member saw the same offsets.
    assert len({tuple(m.data) for m in members}) == 1


# -- e. resuming with an offset ------------------------------------------------------------------


async def test_resume_gets_exactly_what_was_missed_and_gaps_are_reported(
    redis_server: RedisServer, clients: Any
) -> None:
    options = {"broker": redis_server.url, "room_history": True}
    async with (
        serving(Rooms, **options) as (a, url_a),
        serving(rooms_coroutine, **options) as (b, url_b),
    ):
        witness = await clients(url_a)  # stays in the room throughout
        first = await clients(url_a)
        await witness.join("r")
        await first.join("r")
        await numsub_reaches(redis_server, "r", 1)

        for i in range(10):
            a.publish("r", f"m{i}")
        await first.wait_until(lambda c: len(c.data) >= 10, 5, "10 messages")
        assert [split_offset(m)[2] for m in first.data] == [f"m{i}" for i in range(10)]
        last = first.data[-1].partition(" ")[0]
        await first.close()

        for i in range(10, 20):
            b.publish("r", f"m{i}")  # published on the other node: through Redis
        await witness.wait_until(lambda c: len(c.data) >= 20, 5, "20 messages")

        # A new client on the other (coroutine-level) node resumes after the last it saw.
        second = await clients(url_b)
        await second.send(f"resume r {last}")
        assert await second.answer("resumed") == "resumed 10"
        for i in range(20, 25):
            a.publish("r", f"m{i}")
        await second.wait_until(lambda c: len(c.data) >= 15, 5, "15 messages")
        await witness.wait_until(lambda c: len(c.data) >= 25, 5, "25 messages")
        await asyncio.sleep(0.2)
        assert [split_offset(m)[2] for m in second.data] == [f"m{i}" for i in range(10, 25)]
        # The replayed messages are the very ones (offsets included) the live members got.
        assert second.data == witness.data[10:25]

        # Resume with an offset of another epoch: a gap; subscribed from now on.
        third = await clients(url_a)
        await third.send("resume r deadbeef:1-0")
        gap = await third.answer("gap")
        assert "epoch" in gap, gap
        assert not third.data
        a.publish("r", "after gap")
        await third.wait_until(lambda c: len(c.data) >= 1, 5, "a live message after the gap")
        assert split_offset(third.data[0])[2] == "after gap"

        # A malformed offset is the caller's error, at once.
        await third.send("resume s nonsense")
        assert (await third.answer("error")).startswith("error not a room offset")


async def test_resume_after_trimming_is_a_gap(redis_server: RedisServer, clients: Any) -> None:
    """room_history_size=10 keeps about 10 messages: Redis trims the stream
    with ``MAXLEN ~``, in whole nodes of 100 entries (documented as
    approximate). After 100 messages nothing is trimmed yet and a resume
    replays everything; after 250 the early ones are gone and resuming from
    one of them must be a gap, not a silent skip to what is left."""
    options = {
        "broker": redis_server.url,
        "room_history": True,
        "room_history_size": 10,
    }
    async with (
        serving(Rooms, **options) as (a, url_a),
        serving(rooms_coroutine, **options) as (_b, url_b),
    ):
        watcher = await clients(url_b)
        await watcher.join("t")
        rc = redis_server.client()
        try:
            await wait_numsub(rc, "t", 1)
            for i in range(100):
                a.publish("t", f"t{i}")
            await watcher.wait_until(lambda c: len(c.data) >= 100, 10, "100 messages")
            kept_100 = rc.xlen(f"{channel('t')}:log")
            early = watcher.data[5].partition(" ")[0]
            first = await clients(url_a)
            await first.send(f"resume t {early}")
            await first.wait_until(lambda c: bool(c.control), 5, "an answer")
            if kept_100 == 100:  # nothing trimmed yet: everything after t5 replayed
                assert first.control == ["resumed 94"], (kept_100, first.control)
                assert first.data == watcher.data[6:100]
            else:
                assert first.control[0].startswith("gap"), (kept_100, first.control)

            for i in range(100, 250):
                a.publish("t", f"t{i}")
                if i % 50 == 49:
                    await asyncio.sleep(0)
            await watcher.wait_until(lambda c: len(c.data) >= 250, 10, "250 messages")
            kept = rc.xlen(f"{channel('t')}:log")
            assert kept < 240, kept  # trimmed
        finally:
            rc.close()
        # From a recent offset: what followed it.
        recent = watcher.data[247].partition(" ")[0]
        again = await clients(url_b)
        await again.send(f"resume t {recent}")
        assert await again.answer("resumed") == "resumed 2"
        assert again.data == watcher.data[248:250]
        # From an early one: t6..t(249 - kept) are gone, so a gap.
        late = await clients(url_a)
        await late.send(f"resume t {early}")
        await late.wait_until(lambda c: bool(c.control), 5, "an answer")
        assert late.control[0].startswith("gap"), (
            f"resuming after t5 with only the last {kept} of 250 messages kept answered {late.control[0]!r} "
            f"and replayed {len(late.data)} messages from {late.data[:1]}: t6..t{249 - kept} were skipped silently"
        )
        assert "trimmed" in late.control[0], late.control


# -- f. a member that does not read --------------------------------------------------------------------


def stalled_member(port: int) -> socket.socket:
    """A raw client with a tiny receive buffer that joins room "r", reads the
    answer, then never reads again (blocking; run in a thread)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(unit(5))
    sock.connect(("127.0.0.1", port))
    handshake(sock)
    sock.sendall(client_frame(OP_TEXT, "join r"))
    event = FrameStream(sock).next()
    assert event == (OP_TEXT, b"joined r"), event
    return sock


@pytest.mark.parametrize("policy", ["close", "drop"])
async def test_a_stalled_member_does_not_hold_back_the_others(
    redis_server: RedisServer, clients: Any, policy: str
) -> None:
    slow_options = {
        "broker": redis_server.url,
        "room_max_buffer": 64 * 1024,
        "room_slow_policy": policy,
        "close_timeout": 1,
    }
    async with (
        serving(Rooms, **slow_options) as (a, url_a),
        serving(Rooms, broker=redis_server.url) as (b, url_b),
    ):
        port_a = int(url_a.rsplit(":", 1)[1])
        sock = await asyncio.to_thread(stalled_member, port_a)
        try:
            normal = await clients(url_b)
            await normal.join("r")
            await numsub_reaches(redis_server, "r", 2)
            # ~4 MiB in 1024 messages of 4 KiB, published on the stalled
            # member's node, paced by the normal member (which is on the
            # other node: everything it gets came through Redis).
            count, size = 1024, 4096
            for i in range(count):
                a.publish("r", f"{i:08d}".ljust(size, "."))
                if i % 32 == 31:
                    behind = i + 1 - 64
                    await normal.wait_until(lambda c, n=behind: len(c.data) >= n, 10, f"message {behind}")
            await normal.wait_until(lambda c: len(c.data) >= count, 10, f"{count} messages")
            assert [int(m[:8]) for m in normal.data] == list(range(count))
            assert all(len(m) == size for m in normal.data)

            rooms = a.stats()["rooms"]
            if policy == "close":
                assert rooms["closed_slow"] >= 1, rooms
                assert rooms["dropped"] == 0, rooms
                start = time.monotonic()
                while a.connections or a.hub.members("r"):
                    assert time.monotonic() - start < unit(5), "the stalled member is still there"
                    await asyncio.sleep(0.02)
            else:
                assert rooms["dropped"] > 0, rooms
                assert rooms["closed_slow"] == 0, rooms
                assert len(a.connections) == 1 and len(a.hub.members("r")) == 1
            assert b.stats()["rooms"]["closed_slow"] == 0 and b.stats()["rooms"]["dropped"] == 0
        finally:
            sock.close()


# -- g. presence across nodes ---------------------------------------------------------------------------


async def test_presence_lists_every_node_and_forgets_a_killed_one(
    redis_server: RedisServer, start_nodes: Any, clients: Any
) -> None:
    ttl = 2.0
    options = {"broker": redis_server.url, "presence": True, "presence_ttl": ttl}
    (node,) = await start_nodes(node_argv(ROOMS, redis_server.url, "--presence", "--presence-ttl", str(ttl)))
    async with (
        serving(Rooms, **options) as (a, url_a),
        serving(Rooms, **options) as (c, _),
    ):
        for name in ("alice", "bob"):
            await (await clients(url_a)).join("r", name)
        for name in ("carol", "dave"):
            await (await clients(node.url)).join("r", name)

        async def wait_presence(server: Any, names: list[str], timeout: float) -> float:
            start = time.monotonic()
            while True:
                got = await server.presence("r")
                if got == names:
                    return time.monotonic() - start
                if time.monotonic() - start > unit(timeout):
                    raise AssertionError(f"presence is {got}, expected {names}")
                await asyncio.sleep(0.05)

        everyone = ["alice", "bob", "carol", "dave"]
        await wait_presence(a, everyone, 5)
        await wait_presence(c, everyone, 5)  # a node with no member of the room
        assert a.hub.local_presence("r") == ["alice", "bob"]

        assert node.proc is not None
        node.proc.kill()  # SIGKILL: no goodbye to Redis
        node.proc.wait(unit(5))
        # Refreshed every ttl/3, so gone at most ttl after the kill.
        elapsed = await wait_presence(c, ["alice", "bob"], ttl + 1.5)
        print(f"a killed node's members expired {elapsed:.2f} s after the kill (ttl {ttl} s)")
        assert elapsed <= ttl + 1.0
        # The living node's members are still refreshed past the ttl.
        await asyncio.sleep(ttl)
        assert await a.presence("r") == ["alice", "bob"]


# -- h. Redis Cluster: sharded pub/sub --------------------------------------------------------------------


def rooms_per_master(cluster: RedisCluster, base: str) -> dict[int, str]:
    """One room name per master port: its channel's slot is served there."""
    slots: dict[int, list[int]] = {}
    probe = redis_py.Redis(host=cluster.nodes[0][0], port=cluster.nodes[0][1], decode_responses=True)
    try:
        for start, end, master, *_ in probe.execute_command("CLUSTER SLOTS"):
            slots.setdefault(int(master[1]), []).append((int(start), int(end)))  # type: ignore[arg-type]
    finally:
        probe.close()
    out: dict[int, str] = {}
    for i in range(1000):
        room = f"{base}{i}"
        slot = key_slot(channel(room).encode())
        port = next(p for p, ranges in slots.items() if any(s <= slot <= e for s, e in ranges))  # type: ignore[misc]
        out.setdefault(port, room)
        if len(out) == len(cluster.nodes):
            return out
    raise AssertionError("no room for every master")


async def wait_shardnumsub(cluster: RedisCluster, rooms: dict[int, str], count: int, timeout: float = 5.0) -> None:
    """Poll ``PUBSUB SHARDNUMSUB`` on every master: ``count`` on the master
    of each room's slot, 0 on the others."""
    masters = {port: redis_py.Redis(host=host, port=port, decode_responses=True) for host, port in cluster.nodes}
    try:
        deadline = time.monotonic() + unit(timeout)
        while True:
            seen = {
                (room, port): dict(_pairs(client.execute_command("PUBSUB", "SHARDNUMSUB", channel(room))))[
                    channel(room)
                ]
                for room in rooms.values()
                for port, client in masters.items()
            }
            want = {(room, port): (count if owner == port else 0) for owner, room in rooms.items() for port in masters}
            if seen == want:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"SHARDNUMSUB {seen}, expected {want}")
            await asyncio.sleep(0.02)
    finally:
        for client in masters.values():
            client.close()


def _pairs(reply: list[Any]) -> list[tuple[str, int]]:
    return [(reply[i], int(reply[i + 1])) for i in range(0, len(reply), 2)]


async def test_cluster_rooms_on_every_master(redis_cluster: RedisCluster, clients: Any) -> None:
    rooms = rooms_per_master(redis_cluster, "c")
    assert len(set(rooms.values())) == 3
    async with (
        serving(Rooms, broker=redis_cluster.url) as (a, url_a),
        serving(Rooms, broker=redis_cluster.url) as (b, url_b),
    ):
        members = [await clients(url_a), await clients(url_b)]
        for member in members:
            for room in rooms.values():
                await member.join(room)
        await wait_shardnumsub(redis_cluster, rooms, 2)

        per = 200
        for seq in range(per):
            for room in rooms.values():
                a.publish(room, f"a:{room}:{seq}")
                b.publish(room, f"b:{room}:{seq}")
            if seq % 20 == 19:
                await asyncio.sleep(0)
        total = per * 2 * len(rooms)
        for member in members:
            await member.wait_until(lambda c: len(c.data) >= total, 15, f"{total} messages")
        await asyncio.sleep(0.2)
        for n, member in enumerate(members):
            assert len(member.data) == total, (n, len(member.data))
            streams: dict[str, list[int]] = {}
            for message in member.data:
                origin, room, seq = message.split(":")
                streams.setdefault(f"{origin}:{room}", []).append(int(seq))
            assert len(streams) == 6
            for key, seqs in streams.items():
                assert seqs == list(range(per)), f"member {n}: {key} out of order or incomplete"

        # Everyone leaves: the shard channels are unsubscribed on their masters.
        for member in members:
            for room in rooms.values():
                await member.send(f"leave {room}")
                await member.answer(f"left {room}")
        await wait_shardnumsub(redis_cluster, rooms, 0)


async def test_cluster_with_history_messages_carry_offsets(redis_cluster: RedisCluster, clients: Any) -> None:
    rooms = rooms_per_master(redis_cluster, "h")
    options = {"broker": redis_cluster.url, "room_history": True}
    async with (
        serving(Rooms, **options) as (a, url_a),
        serving(Rooms, **options) as (_b, url_b),
    ):
        members = [await clients(url_a), await clients(url_b)]
        for member in members:
            for room in rooms.values():
                await member.join(room)
        await wait_shardnumsub(redis_cluster, rooms, 2)
        for seq in range(5):
            for room in rooms.values():
                a.publish(room, f"{room}:{seq}")
        for member in members:
            await member.wait_until(lambda c: len(c.data) >= 15, 10, "15 messages")
        await asyncio.sleep(0.2)
        for member in members:
            assert len(member.data) == 15, member.data
            by_room: dict[str, list[tuple[str, tuple[int, int], int]]] = {}
            for message in member.data:
                epoch, sid, text = split_offset(message)
                room, _, seq = text.partition(":")
                by_room.setdefault(room, []).append((epoch, sid, int(seq)))
            assert set(by_room) == set(rooms.values())
            for room, entries in by_room.items():
                assert [seq for _, _, seq in entries] == list(range(5))
                assert len({epoch for epoch, _, _ in entries}) == 1
                sids = [sid for _, sid, _ in entries]
                assert sids == sorted(sids) and len(set(sids)) == 5
        assert members[0].data == members[1].data  # same offsets on both nodes

        # Resume on a cluster: the history of a room lives on its master.
        room = next(iter(rooms.values()))
        offset = next(m for m in members[0].data if split_offset(m)[2] == f"{room}:1").partition(" ")[0]
        late = await clients(url_b)
        await late.send(f"resume {room} {offset}")
        assert await late.answer("resumed") == "resumed 3"
        assert [split_offset(m)[2] for m in late.data] == [f"{room}:{seq}" for seq in range(2, 5)]


# -- a publish whose reply is lost ----------------------------------------------------------------------


class ReplyEater:
    """A TCP proxy to Redis on 127.0.0.1 that can swallow Redis' replies: a
    network that loses the answers to commands Redis did execute (what a
    crash between executing and answering looks like, made deterministic)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.swallow = False
        self.port = 0
        self._links: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> ReplyEater:
        self._server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._links.append((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, replies: bool) -> None:
            try:
                while data := await src.read(65536):
                    if replies and self.swallow:
                        continue
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))

    def cut(self) -> None:
        """Drop every proxied connection (both sides)."""
        for writer, up_writer in self._links:
            writer.transport.abort()
            up_writer.transport.abort()
        self._links.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.mark.parametrize("history", [False, True], ids=["plain", "history"])
async def test_a_publish_whose_reply_is_lost_is_not_delivered_twice(
    redis_server: RedisServer, clients: Any, history: bool
) -> None:
    """Node A reaches Redis through a proxy that loses Redis' answer to a
    publish Redis did carry out, then drops the connection. The message has
    reached the room's members; publishing it again after the reconnect
    delivers it twice (at most once without history; exactly once with it)."""
    proxy = await ReplyEater(redis_server.port).start()
    try:
        options: dict[str, Any] = {"room_history": history}
        async with (
            serving(Rooms, broker=proxy.url, **options) as (a, _),
            serving(Rooms, broker=redis_server.url, **options) as (_b, url_b),
        ):
            member = await clients(url_b)
            await member.join("r")
            await numsub_reaches(redis_server, "r", 1)

            def texts(c: Client) -> list[str]:
                return [split_offset(m)[2] if history else m for m in c.data]

            a.publish("r", "m0")
            await member.wait_until(lambda c: texts(c) == ["m0"], 5, "m0")
            proxy.swallow = True
            a.publish("r", "m1")
            # Redis carried it out: the member on node B has it.
            await member.wait_until(lambda c: texts(c) == ["m0", "m1"], 5, "m1")
            await asyncio.sleep(0.1)
            proxy.cut()  # node A never got the answer; its connection drops
            proxy.swallow = False
            a.publish("r", "m2")
            await member.wait_until(lambda c: "m2" in texts(c), 10, "m2 after A reconnected")
            await asyncio.sleep(0.3)
            assert texts(member) == ["m0", "m1", "m2"], f"{member.data} (node A: {a.stats()['rooms']})"
    finally:
        await proxy.close()
