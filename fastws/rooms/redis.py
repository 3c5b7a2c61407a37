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
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.asyncio.retry import Retry

from ..exceptions import HistoryGap
from .broker import FLAG_OFFSET, NODE_ID_SIZE, backoff, quiet_task
from .hub import parse_offset

if TYPE_CHECKING:
    from ..config import Config
    from .hub import Hub

__all__ = ["RedisBroker"]

logger = logging.getLogger("fastws.rooms")

#: Errors that mean "Redis is not reachable now": reconnect and retry.
_DOWN = (RedisError, OSError, asyncio.TimeoutError, EOFError)

# Append to the room's stream, publish with the offset, in one step, so the
# order of offsets is the order of delivery. KEYS: stream, epoch key.
# ARGV: flags+payload, maxlen, a new epoch, ttl, PUBLISH or SPUBLISH,
# channel, node id.
_PUBLISH_WITH_HISTORY = """
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


class _Shard:
    """One Redis server: a command client, a pub/sub connection, its channels."""

    def __init__(self, broker: "RedisBroker", client: "aioredis.Redis", name: str) -> None:
        self.broker = broker
        self.client = client
        self.name = name
        self.channels: set[bytes] = set()
        self.pubsub: Any = None
        self.up = asyncio.Event()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.lost = False  # the connection dropped since it was last up
        self.script_loaded = False  # history: the publish script is loaded there

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._read(), name=f"redis subscriber {self.name}")
        self.task.add_done_callback(quiet_task)

    def add(self, channel: bytes) -> None:
        self.channels.add(channel)
        pubsub = self.pubsub
        if pubsub is not None:
            self.broker.spawn(self._command(pubsub, self.broker.sub_command, channel))
        else:
            self.wake.set()

    def discard(self, channel: bytes) -> None:
        self.channels.discard(channel)
        pubsub = self.pubsub
        if pubsub is not None:
            self.broker.spawn(self._command(pubsub, self.broker.unsub_command, channel))

    async def _command(self, pubsub: Any, name: str, channel: bytes) -> None:
        try:
            await getattr(pubsub, name)(channel)
        except _DOWN as exc:
            # The reader sees the same loss and resubscribes everything.
            logger.debug("rooms: %s %s on %s failed: %s", name, channel, self.name, exc)

    async def _read(self) -> None:
        broker = self.broker
        attempt = 0
        while True:
            if not self.channels:
                self.wake.clear()
                await self.wake.wait()
                continue
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                if broker.cluster:
                    # SSUBSCRIBE takes channels of one slot per command.
                    for channel in list(self.channels):
                        await pubsub.ssubscribe(channel)
                else:
                    await pubsub.subscribe(*self.channels)
                self.pubsub = pubsub
                if self.lost:
                    self.lost = False
                    broker.counters["reconnects"] += 1
                    logger.warning("rooms: Redis %s is back; resubscribed %d channels", self.name, len(self.channels))
                    await broker.fill_gaps(self)
                attempt = 0
                self.up.set()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                    if message is not None:
                        broker.on_message(message["channel"], message["data"])
            except asyncio.CancelledError:
                raise
            except _DOWN as exc:
                attempt += 1
                if not self.lost:
                    logger.error("rooms: lost Redis %s (%s); reconnecting", self.name, exc or type(exc).__name__)
                self.lost = True
                broker.counters["errors"] += 1
            finally:
                self.pubsub = None
                self.up.clear()
                try:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                except Exception:
                    pass
            await asyncio.sleep(backoff(attempt))

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except BaseException:
                pass
        await self.client.aclose()


class RedisBroker:
    """A Redis (or Redis Cluster) broker; see the module."""

    remote = True

    def __init__(self, url: str, config: "Config") -> None:
        self.url = url
        self.cluster = url.startswith("redis+cluster://")
        self.local_first = not config.room_history
        self.counters: dict[str, int] = {"reconnects": 0, "errors": 0, "queued_dropped": 0}
        self.sub_command = "ssubscribe" if self.cluster else "subscribe"
        self.unsub_command = "sunsubscribe" if self.cluster else "unsubscribe"
        self._publish_command = "SPUBLISH" if self.cluster else "PUBLISH"
        self._prefix = config.broker_prefix
        self._history = config.room_history
        self._history_size = config.room_history_size
        self._history_ttl = max(1, int(config.room_history_ttl))
        self._presence = config.presence
        self._presence_ttl = config.presence_ttl
        self._queue_limit = config.broker_queue
        self._hub: "Hub | None" = None
        self._shards: list[_Shard] = []
        self._slots: list[_Shard] = []  # cluster: the shard of each of the 16384 slots
        self._rooms: dict[bytes, str] = {}  # channel -> room
        self._pending: deque[tuple[str, bytes]] = deque()
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
        parsed.setdefault("socket_connect_timeout", 5.0)
        return host, port, parsed

    async def start(self, hub: "Hub") -> None:
        self._hub = hub
        self._node = hub.node.hex()
        host, port, options = self._options()
        if self.cluster:
            await self._map_cluster(host, port, options)
        else:
            self._shards = [_Shard(self, _client(host, port, options), f"{host}:{port}")]
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
            ", history" if self._history else "", ", presence" if self._presence else "",
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
                shard = by_address[address] = _Shard(self, _client(address[0], address[1], options), f"{address[0]}:{address[1]}")
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
        if self._history and len(data) > NODE_ID_SIZE + 1 and data[NODE_ID_SIZE] & FLAG_OFFSET:
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
        if len(self._pending) >= self._queue_limit:
            self._pending.popleft()
            self.counters["queued_dropped"] += 1
            if self.counters["queued_dropped"] == 1 or self.counters["queued_dropped"] % 1_000 == 0:
                logger.warning("rooms: broker unreachable; %d queued messages dropped so far", self.counters["queued_dropped"])
        self._pending.append((room, message))
        if self._flushing is None or self._flushing.done():
            self._flushing = self.spawn(self._flush())

    async def _flush(self) -> None:
        # Started by the first publish of a loop iteration; the yield lets
        # the rest of the iteration's publishes join the same pipelines.
        await asyncio.sleep(0)
        attempt = 0
        while self._pending:
            batch = list(self._pending)
            self._pending.clear()
            by_shard: dict[_Shard, list[tuple[str, bytes]]] = {}
            for room, message in batch:
                by_shard.setdefault(self._shard(self.channel(room)), []).append((room, message))
            results = await asyncio.gather(*(self._send(s, items) for s, items in by_shard.items()), return_exceptions=True)
            failed: list[tuple[str, bytes]] = []
            for (shard, items), result in zip(by_shard.items(), results):
                if isinstance(result, BaseException):
                    if isinstance(result, ResponseError) or not isinstance(result, _DOWN):
                        logger.error("rooms: publishing to %s failed", shard.name, exc_info=result)
                        self.counters["errors"] += 1
                        continue  # not a lost connection: retrying would not help
                    self.counters["errors"] += 1
                    failed.extend(items)
            if failed:
                # Back in front of what was published meanwhile: order kept.
                self._pending.extendleft(reversed(failed))
                while len(self._pending) > self._queue_limit:
                    self._pending.popleft()
                    self.counters["queued_dropped"] += 1
                attempt += 1
                await asyncio.sleep(backoff(attempt))
            else:
                attempt = 0

    async def _send(self, shard: _Shard, items: list[tuple[str, bytes]]) -> None:
        pipe = shard.client.pipeline(transaction=False)
        if self._history:
            if not shard.script_loaded:
                await shard.client.script_load(_PUBLISH_WITH_HISTORY)
                shard.script_loaded = True
            epoch = os.urandom(4).hex()
            for room, message in items:
                pipe.evalsha(
                    _SCRIPT_SHA, 2, self._key(room, "log"), self._key(room, "epoch"),
                    message[NODE_ID_SIZE:], self._history_size, epoch, self._history_ttl, self._publish_command,
                    self.channel(room), message[:NODE_ID_SIZE], FLAG_OFFSET,
                )  # fmt: skip
        else:
            for room, message in items:
                pipe.execute_command(self._publish_command, self.channel(room), message)
        results = await pipe.execute(raise_on_error=False)
        for result in results:
            if isinstance(result, NoScriptError):
                # Redis restarted and forgot the script: load it, send again.
                shard.script_loaded = False
                raise ConnectionError("the publish script was flushed")
            if isinstance(result, Exception):
                raise result

    # -- history ----------------------------------------------------------------------

    async def history(self, room: str, since: str) -> list[tuple[str, bytes]]:
        if not self._history:
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
        deleted = info.get("max-deleted-entry-id", b"0-0")
        deleted = deleted.decode() if isinstance(deleted, bytes) else str(deleted)
        if parse_offset(f"x:{deleted}")[1] > sid:
            raise HistoryGap(room, since, f"messages after it were trimmed (room_history_size={self._history_size})")
        out: list[tuple[str, bytes]] = []
        for entry_id, fields in entries:
            entry = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            out.append((f"{epoch}:{entry}", fields[b"m"]))
        return out

    async def fill_gaps(self, shard: _Shard) -> None:
        """After a reconnect: deliver what the shard's rooms missed (history)."""
        if not self._history or self._hub is None:
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

