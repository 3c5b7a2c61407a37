"""Rooms shared by the ``--workers N`` processes of one server, without Redis.

The supervisor runs a :class:`Relay` (a thread with its own event loop) on a
Unix socket; every worker's :class:`WorkersBroker` connects to it, tells it
which rooms it has members in, and sends it what it publishes. The relay
forwards each message to the other workers subscribed to its room (the
publisher delivered to its own members already), in the order it got them.

On the socket, every frame is ``length (4 bytes, big-endian) + kind (1
byte) + body``: ``S``/``U`` subscribe/unsubscribe (body: the room, UTF-8),
``P`` publish (worker to relay) and ``M`` message (relay to worker), whose
body is ``room length (2 bytes) + room + message``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import threading
from collections import deque
from typing import TYPE_CHECKING

from .broker import MemoryBroker, backoff, quiet_task

if TYPE_CHECKING:
    from ..config import Config
    from .hub import Hub

__all__ = ["Relay", "WorkersBroker"]

logger = logging.getLogger("fastws.rooms")

_HEAD = struct.Struct("!IB")
_ROOM_LEN = struct.Struct("!H")
#: Largest frame accepted on the socket (a room message and its room).
MAX_FRAME = 256 * 2**20
#: Bytes the relay lets pile up for a worker that does not read before it
#: drops messages to it (counted in the log).
RELAY_MAX_BUFFER = 64 * 2**20


def _frame(kind: bytes, body: bytes) -> bytes:
    return _HEAD.pack(len(body) + 1, kind[0]) + body


class _Framed(asyncio.Protocol):
    """Splits the byte stream into frames; ``on_frame(kind, body)``."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        end = len(buffer)
        while end - start >= 5:
            size, kind = _HEAD.unpack_from(buffer, start)
            if size > MAX_FRAME or size < 1:
                logger.error("rooms: bad frame on the workers' relay socket (%d bytes); closing it", size)
                assert self.transport is not None
                self.transport.abort()
                return
            if end - start - 4 < size:
                break
            self.on_frame(kind, bytes(buffer[start + 5 : start + 4 + size]))
            start += 4 + size
        del buffer[:start]

    def on_frame(self, kind: int, body: bytes) -> None:
        raise NotImplementedError


class _RelayPeer(_Framed):
    def __init__(self, relay: "Relay") -> None:
        super().__init__()
        self.relay = relay
        self.rooms: set[str] = set()
        self.dropped = 0

    def connection_lost(self, exc: Exception | None) -> None:
        for room in self.rooms:
            peers = self.relay.rooms.get(room)
            if peers is not None:
                peers.discard(self)
                if not peers:
                    del self.relay.rooms[room]
        self.rooms.clear()

    def on_frame(self, kind: int, body: bytes) -> None:
        rooms = self.relay.rooms
        if kind == 0x50:  # P: forward to the other workers in the room
            (n,) = _ROOM_LEN.unpack_from(body)
            room = body[2 : 2 + n].decode()
            peers = rooms.get(room)
            if peers:
                frame = _frame(b"M", body)
                for peer in peers:
                    if peer is not self:
                        peer.send(frame)
        elif kind == 0x53:  # S
            room = body.decode()
            rooms.setdefault(room, set()).add(self)
            self.rooms.add(room)
        elif kind == 0x55:  # U
            room = body.decode()
            self.rooms.discard(room)
            peers = rooms.get(room)
            if peers is not None:
                peers.discard(self)
                if not peers:
                    del rooms[room]

    def send(self, frame: bytes) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if t.get_write_buffer_size() > RELAY_MAX_BUFFER:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10000 == 0:
                logger.warning("rooms: a worker is not reading from the relay; %d messages to it dropped", self.dropped)
            return
        t.write(frame)


class Relay:
    """The supervisor's side: a thread serving the relay socket at ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.rooms: dict[str, set[_RelayPeer]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> None:
        """Listen (returns once the socket accepts)."""
        self._thread = threading.Thread(target=self._run, name="fastws-rooms-relay", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise RuntimeError(f"rooms relay: cannot listen on {self.path}: {self._error}") from self._error

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            server = loop.run_until_complete(loop.create_unix_server(lambda: _RelayPeer(self), self.path))
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        os.chmod(self.path, 0o600)
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            loop.run_until_complete(server.wait_closed())
            loop.close()

    def stop(self) -> None:
        """Stop serving and join the thread."""
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        try:
            os.unlink(self.path)
        except OSError:
            pass


class _WorkerLink(_Framed):
    def __init__(self, broker: "WorkersBroker") -> None:
        super().__init__()
        self.broker = broker
        self.lost = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    def on_frame(self, kind: int, body: bytes) -> None:
        if kind == 0x4D:  # M
            (n,) = _ROOM_LEN.unpack_from(body)
            hub = self.broker.hub
            if hub is not None:
                hub.receive(body[2 : 2 + n].decode(), body[2 + n :])


class WorkersBroker(MemoryBroker):
    """A worker's side of the relay; see the module. History and presence
    are the memory broker's (this process only)."""

    remote = True

    def __init__(self, path: str, config: "Config") -> None:
        super().__init__()
        self.path = path
        self._rooms: set[str] = set()
        self._link: _WorkerLink | None = None
        self._pending: deque[bytes] = deque()
        self._batch: list[bytes] = []
        self._queue_limit = config.broker_queue
        self._task: asyncio.Task[None] | None = None

    async def start(self, hub: "Hub") -> None:
        self.hub = hub
        self._task = asyncio.get_running_loop().create_task(self._keep_linked(), name="rooms relay link")
        self._task.add_done_callback(quiet_task)

    async def _keep_linked(self) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        ever = False
        while True:
            try:
                _, link = await loop.create_unix_connection(lambda: _WorkerLink(self), self.path)
            except OSError as exc:
                attempt += 1
                if attempt == 1:
                    logger.error("rooms: cannot reach the workers' relay at %s (%s); retrying", self.path, exc)
                self.counters["errors"] += 1
                await asyncio.sleep(backoff(attempt))
                continue
            if ever:
                self.counters["reconnects"] += 1
                logger.warning("rooms: reconnected to the workers' relay")
            ever = True
            attempt = 0
            assert link.transport is not None
            frames = [_frame(b"S", room.encode()) for room in self._rooms]
            frames.extend(self._pending)
            self._pending.clear()
            link.transport.writelines(frames)
            self._link = link
            await link.lost
            self._link = None
            logger.error("rooms: lost the workers' relay; reconnecting")

    def _send(self, frame: bytes) -> bool:
        link = self._link
        if link is None or link.transport is None or link.transport.is_closing():
            return False
        link.transport.write(frame)
        return True

    def subscribe(self, room: str) -> None:
        self._rooms.add(room)
        self._send(_frame(b"S", room.encode()))

    def unsubscribe(self, room: str) -> None:
        self._rooms.discard(room)
        self._send(_frame(b"U", room.encode()))

    def publish(self, room: str, message: bytes) -> None:
        name = room.encode()
        frame = _frame(b"P", _ROOM_LEN.pack(len(name)) + name + message)
        if self._link is None:
            if len(self._pending) >= self._queue_limit:
                self._pending.popleft()
                self.counters["queued_dropped"] += 1
            self._pending.append(frame)
            return
        # What is published in one loop iteration goes out in one write.
        batch = self._batch
        batch.append(frame)
        if len(batch) == 1:
            asyncio.get_running_loop().call_soon(self._write_batch)

    def _write_batch(self) -> None:
        batch = self._batch
        self._batch = []
        link = self._link
        if link is not None and link.transport is not None and not link.transport.is_closing():
            link.transport.writelines(batch)
        else:
            self._pending.extend(batch)  # sent when the link is back
            while len(self._pending) > self._queue_limit:
                self._pending.popleft()
                self.counters["queued_dropped"] += 1

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except BaseException:
                pass
        link = self._link
        if link is not None and link.transport is not None:
            link.transport.close()


def relay_path(directory: str) -> str:
    """Where the relay of a server's workers listens, in ``directory``."""
    return os.path.join(directory, "rooms.sock")

