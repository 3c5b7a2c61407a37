"""Rooms across machines through Redis: ``redis://`` and ``redis+cluster://``.

Built on redis-py (``redis.asyncio``, hiredis parsing). A *shard* is one Redis
server with two connections: commands (publishes, pipelined per loop
iteration; history; presence) and pub/sub. ``redis://`` has one shard and uses
PUBLISH/SUBSCRIBE; ``redis+cluster://`` has one shard per master and uses
sharded pub/sub (SPUBLISH/SSUBSCRIBE, Redis 7+), routing each room by the hash
slot of its channel, ``<prefix>{<room>}`` (the braces keep a room's channel,
history and presence keys in one slot).

A node subscribes to a room's channel only while it has a local member
(reference counting is the hub's), and publishes are batched: what is
published during one loop iteration goes out as one pipeline per shard.

Losing Redis (restart, network): the shard reconnects with backoff and jitter,
resubscribes every channel, logs it and counts it; publishes wait in a
bounded queue meanwhile (``broker_queue``, oldest dropped and counted). No
exception reaches user code. Without history, delivery is at most once:
messages published while a node was not subscribed are lost to it. With
``room_history`` each message is appended to a capped Redis stream and
published by one script (so its offset comes with it); a node that
reconnects reads what it missed from the stream, and clients resume with
``subscribe(room, since=offset)``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import hiredis

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import RedisError
from redis.asyncio.retry import Retry

from ..exceptions import HistoryGap
from .broker import backoff, quiet_task
from .hub import FLAG_OFFSET, NODE_ID_SIZE, parse_offset

if TYPE_CHECKING:
    from ..config import Config
    from .hub import Hub

__all__ = ["RedisBroker"]

logger = logging.getLogger("fastws.rooms")

#: A publish waiting to be sent: room, message, this node's sequence number.
_Item = tuple[str, bytes, int]

#: Errors that mean "Redis is not reachable now": reconnect and retry
#: (ConnectionError, which the links raise, is an OSError).
_DOWN = (RedisError, OSError, asyncio.TimeoutError, EOFError)

# Append to the room's stream, publish with the offset, in one step, so the
# order of offsets is the order of delivery. A publish sent again after its
# reply was lost is recognised by its node's sequence number and skipped, so
# it is stored and delivered once. KEYS: stream, epoch key, the room's last
# sequence number per node. ARGV: flags+payload, maxlen, a new epoch, ttl,
# PUBLISH or SPUBLISH, channel, node id, FLAG_OFFSET, sequence number.
_PUBLISH_WITH_HISTORY = """
local seen = redis.call('HGET', KEYS[3], ARGV[7])
if seen and tonumber(seen) >= tonumber(ARGV[9]) then return false end
redis.call('HSET', KEYS[3], ARGV[7], ARGV[9])
redis.call('EXPIRE', KEYS[3], ARGV[4])
local epoch = redis.call('GET', KEYS[2])
if not epoch then epoch = ARGV[3] end
redis.call('SET', KEYS[2], epoch, 'EX', ARGV[4])
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'm', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
local offset = epoch .. ':' .. id
local flags = bit.bor(string.byte(ARGV[1], 1), tonumber(ARGV[8]))
redis.call(ARGV[5], ARGV[6], ARGV[7] .. string.char(flags, #offset) .. offset .. string.sub(ARGV[1], 2))
return offset
"""
_SCRIPT_SHA = hashlib.sha1(_PUBLISH_WITH_HISTORY.encode()).hexdigest()


def _client(host: str, port: int, options: dict[str, Any]) -> "aioredis.Redis":
    # No retries inside redis-py: a lost connection surfaces here, where the
    # shard reconnects, resubscribes and fills history gaps itself.
    return aioredis.Redis(host=host, port=port, retry=Retry(NoBackoff(), 0), **options)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Link(asyncio.Protocol):
    """One RESP connection for the data plane, parsed by hiredis.

    redis-py costs about 28 us per pipelined PUBLISH and about as much per
    message read from pub/sub on this machine, against about 2 us for the
    same bytes packed and parsed by hiredis directly (measured in
    docs/scaling.md): the per-message paths use this, and everything else
    (history, presence, the slot map) stays on redis-py.

    Replies go to the waiters in order (``call``); pub/sub messages
    (``message`` / ``smessage`` pushes) go to ``on_message``.
    """

    def __init__(self, on_message: "Callable[[bytes, bytes], None] | None" = None) -> None:
        self._reader = hiredis.Reader()
        self._on_message = on_message
        self._waiters: deque[tuple[list[Any], int, asyncio.Future[list[Any]]]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        error = ConnectionError(f"connection to Redis lost: {exc}" if exc else "connection to Redis closed")
        while self._waiters:
            _, _, future = self._waiters.popleft()
            if not future.done():
                future.set_exception(error)
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        on_message = self._on_message
        while True:
            reply = reader.gets()
            if reply is False:
                return
            if on_message is not None and type(reply) is list and len(reply) == 3 and reply[0] in (b"message", b"smessage"):
                on_message(reply[1], reply[2])
                continue
            if not self._waiters:
                if isinstance(reply, hiredis.ReplyError):
                    logger.warning("rooms: Redis answered: %s", reply)
                continue  # a subscribe confirmation
            results, count, future = self._waiters[0]
            results.append(reply)
            if len(results) == count:
                self._waiters.popleft()
                if not future.done():
                    future.set_result(results)

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing() and not self.lost.done()

    def send(self, commands: list[tuple[Any, ...]]) -> None:
        """Write commands whose replies nobody waits for (SUBSCRIBE)."""
        assert self.transport is not None
        self.transport.write(b"".join([hiredis.pack_command(c) for c in commands]))

    def call(self, commands: list[tuple[Any, ...]]) -> "asyncio.Future[list[Any]]":
        """Write commands in one write; a future of their replies, in order
        (errors as ``hiredis.ReplyError`` values, not raised)."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        if not self.open:
            future.set_exception(ConnectionError("not connected to Redis"))
            return future
        assert self.transport is not None
        self._waiters.append(([], len(commands), future))
        self.transport.write(b"".join([hiredis.pack_command(c) for c in commands]))
        return future

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Shard:
    """One Redis server: a redis-py client (control plane), a publishing
    link and a subscribing link (data plane), and its channels."""

    def __init__(self, broker: "RedisBroker", host: str, port: int, options: dict[str, Any]) -> None:
        self.broker = broker
        self.host = host
        self.port = port
        self.name = f"{host}:{port}"
        self.client = _client(host, port, options)
        self._password = options.get("password")
        self._username = options.get("username")
        self._db = int(options.get("db") or 0)
        self._ssl = broker.ssl_context
        self.channels: set[bytes] = set()
        self.sub: _Link | None = None
        self.pub: _Link | None = None
        self._connecting: asyncio.Future[_Link] | None = None
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.lost = False  # the subscription dropped since it was last up
        #: Live messages held while a reconnect reads the missed history.
        self.held: list[tuple[bytes, bytes]] | None = None
        self.script_loaded = False  # history: the publish script is loaded there

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._read(), name=f"redis subscriber {self.name}")
        self.task.add_done_callback(quiet_task)

    async def _connect(self, on_message: "Callable[[bytes, bytes], None] | None", select: bool) -> _Link:
        loop = asyncio.get_running_loop()
        _, link = await asyncio.wait_for(
            loop.create_connection(lambda: _Link(on_message), self.host, self.port, ssl=self._ssl), 5.0
        )
        hello: list[tuple[Any, ...]] = []
        if self._password is not None:
            hello.append(("AUTH", self._username, self._password) if self._username else ("AUTH", self._password))
        if select and self._db:
            hello.append(("SELECT", self._db))
        if hello:
            for reply in await asyncio.wait_for(link.call(hello), 5.0):
                if isinstance(reply, hiredis.ReplyError):
                    link.close()
                    raise ConnectionError(f"Redis {self.name} refused {hello[0][0]}: {reply}")
        return link

    async def publisher(self) -> _Link:
        """The publishing link, connected (once at a time) if it is not."""
        link = self.pub
        if link is not None and link.open:
            return link
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect(None, True))
        try:
            link = self.pub = await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None
        return link

    def add(self, channel: bytes) -> None:
        self.channels.add(channel)
        sub = self.sub
        if sub is not None and sub.open:
            sub.send([(self.broker.sub_command, channel)])
        else:
            self.wake.set()

    def discard(self, channel: bytes) -> None:
        self.channels.discard(channel)
        sub = self.sub
        if sub is not None and sub.open:
            sub.send([(self.broker.unsub_command, channel)])

    async def _read(self) -> None:
        broker = self.broker
        attempt = 0
        while True:
            if not self.channels:
                self.wake.clear()
                await self.wake.wait()
                continue
            try:
                # After a loss with history on, live messages wait until
                # what was missed is read from the streams (which reads
                # from the last offset delivered: a live message handled
                # first would move it past the gap).
                self.held = [] if self.lost and broker.keeps_history else None
                link = await self._connect(self._on_message, False)
            except asyncio.CancelledError:
                raise
            except _DOWN as exc:
                attempt += 1
                if not self.lost:
                    logger.error("rooms: lost Redis %s (%s); reconnecting", self.name, exc or type(exc).__name__)
                self.lost = True
                broker.counters["errors"] += 1
                await asyncio.sleep(backoff(attempt))
                continue
            # SSUBSCRIBE takes the channels of one slot per command.
            if broker.cluster:
                link.send([(broker.sub_command, channel) for channel in self.channels])
            else:
                link.send([(broker.sub_command, *self.channels)])
            self.sub = link
            if self.lost:
                self.lost = False
                broker.counters["reconnects"] += 1
                logger.warning("rooms: Redis %s is back; resubscribed %d channels", self.name, len(self.channels))
                await self._fill_gaps(link)
            attempt = 0
            try:
                await link.lost
            finally:
                self.sub = None
                link.close()
            if not self.lost:
                logger.error("rooms: lost Redis %s; reconnecting", self.name)
            self.lost = True
            broker.counters["errors"] += 1
            attempt += 1
            await asyncio.sleep(backoff(attempt))

    def _on_message(self, channel: bytes, data: bytes) -> None:
        held = self.held
        if held is None:
            self.broker.on_message(channel, data)
        else:
            held.append((channel, data))

    async def _fill_gaps(self, link: _Link) -> None:
        """Deliver what the rooms missed (history), then the live messages
        held meanwhile (those already delivered are skipped by offset)."""
        broker = self.broker
        attempt = 0
        while self.held is not None and not link.lost.done():
            try:
                await broker.fill_gaps(self)
                break
            except _DOWN as exc:
                attempt += 1
                broker.counters["errors"] += 1
                if len(self.held) > broker.queue_limit:
                    logger.error("rooms: could not read the missed history from %s (%s); members missed messages", self.name, exc)
                    break
                logger.warning("rooms: reading the missed history from %s failed (%s); retrying", self.name, exc)
                await asyncio.sleep(backoff(attempt))
        held, self.held = self.held or [], None
        for channel, data in held:
            broker.on_message(channel, data)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except BaseException:
                pass
        for link in (self.sub, self.pub):
            if link is not None:
                link.close()
        await self.client.aclose()


class RedisBroker:
    """A Redis (or Redis Cluster) broker; see the module."""

    remote = True

    def __init__(self, url: str, config: "Config") -> None:
        self.url = url
        self.cluster = url.startswith("redis+cluster://")
        self.local_first = not config.room_history
        self.counters: dict[str, int] = {"reconnects": 0, "errors": 0, "queued_dropped": 0, "unconfirmed": 0}
        self.sub_command = "ssubscribe" if self.cluster else "subscribe"
        self.unsub_command = "sunsubscribe" if self.cluster else "unsubscribe"
        self._publish_command = "SPUBLISH" if self.cluster else "PUBLISH"
        self._prefix = config.broker_prefix
        self.keeps_history = config.room_history
        self._history_size = config.room_history_size
        self._history_ttl = max(1, int(config.room_history_ttl))
        self._presence = config.presence
        self._presence_ttl = config.presence_ttl
        self.queue_limit = config.broker_queue
        self._hub: "Hub | None" = None
        self._shards: list[_Shard] = []
        self._slots: list[_Shard] = []  # cluster: the shard of each of the 16384 slots
        self._rooms: dict[bytes, str] = {}  # channel -> room
        self._pending: deque[_Item] = deque()
        self._seq = 0  # publishes of this node (history: a replay is recognised by it)
        self.ssl_context: ssl.SSLContext | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        #: History: the last offset delivered per room (gap fill, dedup).
        self._last: dict[str, tuple[int, int]] = {}
        #: Presence: local members per (room, name), and the task refreshing them.
        self._present: dict[tuple[str, str], int] = {}
        self._refresh: asyncio.Task[None] | None = None
        self._node = ""

    # -- lifecycle ------------------------------------------------------------

    def _options(self) -> tuple[str, int, dict[str, Any]]:
        parsed: dict[str, Any] = dict(aioredis.connection.parse_url(self.url.replace("redis+cluster://", "redis://", 1)))
        host = parsed.pop("host", "localhost")
        port = parsed.pop("port", 6379)
        parsed.pop("connection_class", None)
        if self.url.startswith("rediss://"):
            parsed["ssl"] = True
            context = ssl.create_default_context(cafile=parsed.get("ssl_ca_certs"))
            if str(parsed.get("ssl_cert_reqs", "required")).lower() == "none":
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self.ssl_context = context
        parsed.setdefault("socket_connect_timeout", 5.0)
        return host, port, parsed

    async def start(self, hub: "Hub") -> None:
        self._hub = hub
        self._node = hub.node.hex()
        host, port, options = self._options()
        if self.cluster:
            await self._map_cluster(host, port, options)
        else:
            self._shards = [_Shard(self, host, port, options)]
            try:
                await self._shards[0].client.ping()
            except _DOWN as exc:
                logger.error("rooms: Redis %s:%d is not reachable (%s); retrying in the background", host, port, exc)
        for shard in self._shards:
            shard.start()
        if self._presence:
            self._refresh = self.spawn(self._refresh_presence())
        logger.info(
            "rooms: broker %s (%d shard%s%s%s)", self.url, len(self._shards), "" if len(self._shards) == 1 else "s",
            ", history" if self.keeps_history else "", ", presence" if self._presence else "",
        )  # fmt: skip

    async def _map_cluster(self, host: str, port: int, options: dict[str, Any]) -> None:
        """Read the slot map from a startup node: one shard per master."""
        seed = _client(host, port, options)
        try:
            slots = await seed.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
        finally:
            await seed.aclose()
        by_address: dict[tuple[str, int], _Shard] = {}
        table: list[_Shard | None] = [None] * 16384
        for entry in slots:
            start, end, master = entry[0], entry[1], entry[2]
            node_host = master[0].decode() if isinstance(master[0], bytes) else master[0]
            address = (node_host or host, int(master[1]))
            shard = by_address.get(address)
            if shard is None:
                shard = by_address[address] = _Shard(self, address[0], address[1], options)
            for slot in range(int(start), int(end) + 1):
                table[slot] = shard
        if any(s is None for s in table):
            raise RuntimeError(f"Redis Cluster at {host}:{port} does not cover every hash slot")
        self._shards = list(by_address.values())
        self._slots = table  # type: ignore[assignment]

    async def close(self) -> None:
        if self._flushing is not None and not self._flushing.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._flushing), 2.0)
            except (asyncio.TimeoutError, Exception):
                pass
        if self._present:
            await self._remove_presence()
        for task in list(self._tasks):
            task.cancel()
        for shard in self._shards:
            await shard.close()

    def spawn(self, coro: Any) -> "asyncio.Task[Any]":
        """Run a background task of the broker (kept until it ends)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(quiet_task)
        return task

    # -- names ----------------------------------------------------------------

    def channel(self, room: str) -> bytes:
        return f"{self._prefix}{{{room}}}".encode()

    def _key(self, room: str, kind: str) -> bytes:
        return f"{self._prefix}{{{room}}}:{kind}".encode()

    def _shard(self, channel: bytes) -> _Shard:
        return self._slots[key_slot(channel)] if self.cluster else self._shards[0]

    # -- subscriptions ----------------------------------------------------------

    def subscribe(self, room: str) -> None:
        channel = self.channel(room)
        self._rooms[channel] = room
        self._shard(channel).add(channel)

    def unsubscribe(self, room: str) -> None:
        channel = self.channel(room)
        self._rooms.pop(channel, None)
        self._last.pop(room, None)
        self._shard(channel).discard(channel)

    def on_message(self, channel: bytes, data: bytes) -> None:
        """A message arrived on a subscribed channel."""
        room = self._rooms.get(channel)
        if room is None or self._hub is None:
            return  # unsubscribed meanwhile
        if self.keeps_history and len(data) > NODE_ID_SIZE + 1 and data[NODE_ID_SIZE] & FLAG_OFFSET:
            n = data[NODE_ID_SIZE + 1]
            start = NODE_ID_SIZE + 2
            sid = parse_offset(data[start : start + n].decode("ascii"))[1]
            last = self._last.get(room)
            if last is not None and sid <= last:
                return  # already delivered (read from the stream after a reconnect)
            self._last[room] = sid
        self._hub.receive(room, data)

    # -- publishing ---------------------------------------------------------------

    def publish(self, room: str, message: bytes) -> None:
        if len(self._pending) >= self.queue_limit:
            self._pending.popleft()
            self.counters["queued_dropped"] += 1
            if self.counters["queued_dropped"] == 1 or self.counters["queued_dropped"] % 1_000 == 0:
                logger.warning("rooms: broker unreachable; %d queued messages dropped so far", self.counters["queued_dropped"])
        self._seq += 1
        self._pending.append((room, message, self._seq))
        if self._flushing is None or self._flushing.done():
            self._flushing = self.spawn(self._flush())

    async def _flush(self) -> None:
        # Started by the first publish of a loop iteration; the yield lets
        # the rest of the iteration's publishes join the same write.
        await asyncio.sleep(0)
        attempt = 0
        while self._pending:
            batch = list(self._pending)
            self._pending.clear()
            by_shard: dict[_Shard, list[_Item]] = {}
            for item in batch:
                by_shard.setdefault(self._shard(self.channel(item[0])), []).append(item)
            results = await asyncio.gather(*(self._send(s, items) for s, items in by_shard.items()))
            again = [item for retry in results for item in retry]
            if again:
                # Back in front of what was published meanwhile: order kept.
                self._pending.extendleft(reversed(again))
                while len(self._pending) > self.queue_limit:
                    self._pending.popleft()
                    self.counters["queued_dropped"] += 1
                attempt += 1
                await asyncio.sleep(backoff(attempt))
            else:
                attempt = 0

    async def _send(self, shard: _Shard, items: list[_Item]) -> list[_Item]:
        """Publish on one shard in one write; what must be sent again."""
        try:
            link = await shard.publisher()
            if self.keeps_history and not shard.script_loaded:
                (reply,) = await link.call([("SCRIPT", "LOAD", _PUBLISH_WITH_HISTORY)])
                if isinstance(reply, hiredis.ReplyError):
                    raise ConnectionError(f"SCRIPT LOAD: {reply}")
                shard.script_loaded = True
        except _DOWN as exc:
            # Nothing was sent: safe to send again.
            self.counters["errors"] += 1
            logger.debug("rooms: cannot publish on %s yet: %s", shard.name, exc)
            return items
        commands: list[tuple[Any, ...]]
        if self.keeps_history:
            epoch = os.urandom(4).hex()
            commands = [
                ("EVALSHA", _SCRIPT_SHA, 3, self._key(room, "log"), self._key(room, "epoch"), self._key(room, "seq"),
                 message[NODE_ID_SIZE:], self._history_size, epoch, self._history_ttl, self._publish_command,
                 self.channel(room), message[:NODE_ID_SIZE], FLAG_OFFSET, seq)
                for room, message, seq in items
            ]  # fmt: skip
        else:
            commands = [(self._publish_command, self.channel(room), message) for room, message, _ in items]
        try:
            replies = await link.call(commands)
        except _DOWN as exc:
            self.counters["errors"] += 1
            if self.keeps_history:
                # Sent, maybe run: the script skips what it already ran.
                return items
            # Sent and maybe delivered: sending again could deliver twice,
            # so without history these are lost (at most once).
            self.counters["unconfirmed"] += len(items)
            logger.warning("rooms: lost Redis %s with %d publishes unconfirmed (%s); not sent again", shard.name, len(items), exc)
            return []
        again: list[_Item] = []
        for item, reply in zip(items, replies):
            if isinstance(reply, hiredis.ReplyError):
                if str(reply).startswith("NOSCRIPT"):
                    # Redis restarted and forgot the script: not run; load it, send again.
                    shard.script_loaded = False
                    again.append(item)
                else:
                    self.counters["errors"] += 1
                    logger.error("rooms: Redis %s refused a publish to room %r: %s", shard.name, item[0], reply)
        return again

    # -- history ----------------------------------------------------------------------

    async def history(self, room: str, since: str) -> list[tuple[str, bytes]]:
        if not self.keeps_history:
            raise ValueError("room history is off (room_history=False)")
        epoch, sid = parse_offset(since)
        client = self._shard(self.channel(room)).client
        pipe = client.pipeline(transaction=False)
        pipe.get(self._key(room, "epoch"))
        pipe.xinfo_stream(self._key(room, "log"))
        pipe.xrange(self._key(room, "log"), f"({sid[0]}-{sid[1]}", "+")
        current, info, entries = await pipe.execute(raise_on_error=False)
        if isinstance(current, Exception):
            raise current
        current = current.decode() if isinstance(current, bytes) else current
        if current != epoch:
            raise HistoryGap(room, since, "the room's history was reset (its epoch changed)")
        if isinstance(info, Exception) or isinstance(entries, Exception):
            raise HistoryGap(room, since, "the room keeps no history")
        # Trimming (XADD MAXLEN) moves the first entry on; entries-added
        # beyond length says something was trimmed. If the first entry kept
        # is after `since`, what came between may be gone: a gap (reported
        # also when `since` was the very entry before it: the safe side).
        first = _text(info.get("recorded-first-entry-id") or b"0-0")
        if int(info.get("entries-added", 0)) > int(info.get("length", 0)) and parse_offset(f"x:{first}")[1] > sid:
            raise HistoryGap(room, since, f"messages after it were trimmed (room_history_size={self._history_size})")
        out: list[tuple[str, bytes]] = []
        for entry_id, fields in entries:
            entry = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            out.append((f"{epoch}:{entry}", fields[b"m"]))
        return out

    async def fill_gaps(self, shard: _Shard) -> None:
        """After a reconnect: deliver what the shard's rooms missed (history)."""
        if not self.keeps_history or self._hub is None:
            return
        for channel in list(shard.channels):
            room = self._rooms.get(channel)
            last = None if room is None else self._last.get(room)
            if room is None or last is None:
                continue
            epoch = await shard.client.get(self._key(room, "epoch"))
            if epoch is None:
                continue
            since = f"{epoch.decode() if isinstance(epoch, bytes) else epoch}:{last[0]}-{last[1]}"
            try:
                missed = await self.history(room, since)
            except HistoryGap as gap:
                logger.warning("rooms: %s; members on this node missed messages", gap)
                continue
            for offset, stored in missed:
                self._last[room] = parse_offset(offset)[1]
                self._hub.receive_stored(room, offset, stored)
            if missed:
                logger.info("rooms: room %r: delivered %d messages missed while Redis was away", room, len(missed))

    # -- presence -----------------------------------------------------------------------

    def join(self, room: str, member: str) -> None:
        key = (room, member)
        count = self._present.get(key, 0)
        self._present[key] = count + 1
        if not count:
            self.spawn(self._presence_command("zadd", room, member))

    def leave(self, room: str, member: str) -> None:
        key = (room, member)
        count = self._present.get(key, 0) - 1
        if count > 0:
            self._present[key] = count
            return
        self._present.pop(key, None)
        self.spawn(self._presence_command("zrem", room, member))

    async def _presence_command(self, name: str, room: str, member: str) -> None:
        client = self._shard(self.channel(room)).client
        entry = f"{self._node}:{member}"
        try:
            if name == "zadd":
                await client.zadd(self._key(room, "presence"), {entry: time.time() + self._presence_ttl})
            else:
                await client.zrem(self._key(room, "presence"), entry)
        except _DOWN as exc:
            # The refresh puts it right once Redis is back (or the TTL does).
            logger.debug("rooms: presence %s %r failed: %s", name, room, exc)

    async def _refresh_presence(self) -> None:
        while True:
            await asyncio.sleep(self._presence_ttl / 3)
            expires = time.time() + self._presence_ttl
            by_shard: dict[_Shard, Any] = {}
            for room, member in list(self._present):
                shard = self._shard(self.channel(room))
                pipe = by_shard.get(shard)
                if pipe is None:
                    pipe = by_shard[shard] = shard.client.pipeline(transaction=False)
                pipe.zadd(self._key(room, "presence"), {f"{self._node}:{member}": expires})
            for shard, pipe in by_shard.items():
                try:
                    await pipe.execute()
                except _DOWN as exc:
                    logger.debug("rooms: presence refresh on %s failed: %s", shard.name, exc)

    async def _remove_presence(self) -> None:
        for room, member in list(self._present):
            await self._presence_command("zrem", room, member)
        self._present.clear()

    async def presence(self, room: str) -> list[str]:
        if not self._presence:
            assert self._hub is not None
            return self._hub.local_presence(room)
        client = self._shard(self.channel(room)).client
        key = self._key(room, "presence")
        now = time.time()
        pipe = client.pipeline(transaction=False)
        pipe.zremrangebyscore(key, "-inf", now)
        pipe.zrangebyscore(key, now, "+inf")
        _, entries = await pipe.execute()
        names = {entry.decode().partition(":")[2] for entry in entries}
        return sorted(names)

