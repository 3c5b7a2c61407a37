"""The hub: one server's rooms, its members, and the fan-out; and what a
broker is to it (``Broker``) with the wire format between nodes.

A room is a name; a member is an open connection (the core
``Connection`` of either API level). The hub keeps, per room, the set of
local members, and tells its broker to subscribe to a room when the first
local member joins and to unsubscribe when the last one leaves, so a node
only hears about rooms it has members in.

Fan-out frames a message once per frame setting: one uncompressed frame,
plus one compressed frame per window size for members whose
permessage-deflate compresses each message on its own
(``server_no_context_takeover``). Members that keep a compression context
get the uncompressed frame, which RFC 7692 allows on any connection. Each
member gets the shared bytes object (``write_frame``): no per-member copy.

A member that has more than ``room_max_buffer`` bytes waiting (it does not
read) is closed with 1013 or skipped (``room_slow_policy``); either way the
other members are not slowed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol

from ..codec import frame as _frame
from ..codec.compression import deflate_message
from ..exceptions import HistoryGap
from ..types import CloseCode, State

if TYPE_CHECKING:
    from ..config import Config
    from ..connection import Connection

__all__ = ["Broker", "FLAG_OFFSET", "FLAG_TEXT", "Hub", "NODE_ID_SIZE", "parse_offset"]

logger = logging.getLogger("fastws.rooms")

# A broker carries messages between nodes (worker processes, machines). The
# hub calls it with room names; the broker names channels, keeps its
# connection up, and hands what arrives back to ``hub.receive``. Every
# method the hub calls is synchronous and never raises for a broker that is
# down: the broker queues (bounded), reconnects in the background, logs and
# counts. A message between nodes is ``node id (8 bytes) + flags (1 byte) +
# payload``; with FLAG_OFFSET a length byte and the ASCII offset come before
# the payload (history mode: the offset Redis gave the message).

#: The message is text (else binary).
FLAG_TEXT = 1
#: A length byte and an ASCII offset follow the flags (history mode).
FLAG_OFFSET = 2
#: Bytes of the node id that starts every message.
NODE_ID_SIZE = 8


class Broker(Protocol):
    """A rooms backend, as the hub uses it."""

    #: True: the hub delivers a publish to its own members at once, and the
    #: broker carries it to the other nodes (which skip their own). False:
    #: every delivery comes back through the broker (history mode, where
    #: the broker gives each message its offset).
    local_first: bool
    #: False for the memory broker: nothing to carry to other nodes.
    remote: bool
    #: Counters shown in metrics: ``reconnects``, ``errors``,
    #: ``queued_dropped`` (messages dropped while unreachable),
    #: ``unconfirmed`` (publishes lost with the connection, unconfirmed).
    counters: dict[str, int]

    def start(self, hub: "Hub") -> Awaitable[None]:
        """Connect (briefly; a broker that is down is retried in the background)."""

    def subscribe(self, room: str) -> None:
        """Receive the room's messages from other nodes (first local member)."""

    def unsubscribe(self, room: str) -> None:
        """Stop receiving them (last local member left)."""

    def publish(self, room: str, message: bytes) -> None:
        """Carry a message (node id + flags + payload) to the room's nodes."""

    def history(self, room: str, since: str) -> Awaitable[list[tuple[str, bytes]]]:
        """The room's messages after ``since``, as ``(offset, flags + payload)``;
        raises :class:`~fastws.exceptions.HistoryGap` when they are not all kept."""

    def join(self, room: str, member: str) -> None:
        """Presence: list ``member`` in the room (presence on)."""

    def leave(self, room: str, member: str) -> None:
        """Presence: remove ``member`` from the room."""

    def presence(self, room: str) -> Awaitable[list[str]]:
        """Presence: the room's members on every node."""

    def close(self) -> Awaitable[None]:
        """Stop: unsubscribe, close the connections, end the tasks."""


OP_TEXT = 1
OP_BINARY = 2


def parse_offset(offset: str) -> tuple[str, tuple[int, int]]:
    """``"epoch:ms-seq"`` as ``(epoch, (ms, seq))``; ValueError if malformed."""
    epoch, sep, sid = offset.partition(":")
    ms, dash, seq = sid.partition("-")
    if not sep or not dash or not epoch:
        raise ValueError(f"not a room offset: {offset!r} (expected 'epoch:ms-seq')")
    return epoch, (int(ms), int(seq))


class Hub:
    """A server's rooms; see the module. One per server, on its event loop."""

    def __init__(self, context: Any, config: "Config", broker: Broker) -> None:
        #: Identifies this node's messages (it skips them when they come back).
        self.node = os.urandom(NODE_ID_SIZE)
        self.broker = broker
        self._ctx = context  # the ServerContext: its ``corked`` list
        self._members: dict[str, set["Connection"]] = {}
        #: Members still getting the history they asked for, with the live
        #: messages held for them meanwhile.
        self._replaying: dict[str, dict["Connection", list[tuple[tuple[int, int], int, bytes]]]] = {}
        #: Each member's rooms, with its presence name.
        self._joined: dict["Connection", dict[str, str]] = {}
        self._max_buffer = config.room_max_buffer
        self._close_slow = config.room_slow_policy == "close"
        self._history = config.room_history
        self._presence = config.presence
        self._min_size = config.deflate_min_size
        self._level = config.deflate_level
        self._mem_level = config.deflate_mem_level
        self.counters: dict[str, int] = {"published": 0, "received": 0, "delivered": 0, "dropped": 0, "closed_slow": 0}

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Connect the broker (it keeps retrying in the background)."""
        await self.broker.start(self)

    async def close(self) -> None:
        """Stop the broker; local membership is dropped."""
        self._members.clear()
        self._replaying.clear()
        self._joined.clear()
        await self.broker.close()

    # -- membership -----------------------------------------------------------

    def rooms_of(self, conn: "Connection") -> frozenset[str]:
        """The rooms a connection is in."""
        joined = self._joined.get(conn)
        return frozenset(joined) if joined else frozenset()

    def members(self, room: str) -> frozenset["Connection"]:
        """This node's members of a room (those still replaying history too)."""
        out = set(self._members.get(room, ()))
        out.update(self._replaying.get(room, ()))
        return frozenset(out)

    def local_presence(self, room: str) -> list[str]:
        """Presence names of this node's members of a room."""
        return sorted(self._joined[conn][room] for conn in self.members(room))

    def subscribe(
        self, conn: "Connection", room: str, *, since: str | None = None, member: str | None = None
    ) -> "asyncio.Future[int]":
        """Make ``conn`` a member of ``room``; see ``Connection.subscribe``."""
        if not isinstance(room, str) or not room:
            raise ValueError("room must be a non-empty str")
        if conn.state is not State.OPEN:
            raise conn.close_exc if conn.state is not State.CONNECTING else RuntimeError("subscribe() before the handshake")
        if since is not None:
            if not self._history:
                raise ValueError("subscribe(since=...) needs room_history=True (and a Redis broker)")
            parse_offset(since)  # a malformed offset is the caller's error, before anything changes
        name = member if member is not None else str(conn.id)
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        joined = self._joined.get(conn)
        if joined is None:
            joined = self._joined[conn] = {}
        if room in joined:
            joined[room] = name
            done.set_result(0)
            return done
        joined[room] = name
        members = self._members.get(room)
        if members is None:
            members = self._members[room] = set()
            self.broker.subscribe(room)
        if self._presence:
            self.broker.join(room, name)
        if since is None:
            members.add(conn)
            done.set_result(0)
            return done
        self._replaying.setdefault(room, {})[conn] = []
        done.add_done_callback(_retrieve)
        conn.track_task(asyncio.ensure_future(self._replay(conn, room, since, done)))
        return done

    def unsubscribe(self, conn: "Connection", room: str) -> bool:
        """Remove ``conn`` from ``room``; False if it was not a member."""
        joined = self._joined.get(conn)
        if joined is None or room not in joined:
            return False
        name = joined.pop(room)
        if not joined:
            del self._joined[conn]
        self._leave(conn, room, name)
        return True

    def leave_all(self, conn: "Connection") -> None:
        """A connection ended: it leaves every room it was in."""
        joined = self._joined.pop(conn, None)
        if joined:
            for room, name in joined.items():
                self._leave(conn, room, name)

    def _leave(self, conn: "Connection", room: str, name: str) -> None:
        members = self._members.get(room)
        if members is not None:
            members.discard(conn)
        replaying = self._replaying.get(room)
        if replaying is not None:
            replaying.pop(conn, None)
            if not replaying:
                del self._replaying[room]
        if self._presence:
            self.broker.leave(room, name)
        if not members and room not in self._replaying:
            self._members.pop(room, None)
            self.broker.unsubscribe(room)

    # -- messages ---------------------------------------------------------------

    def publish(self, room: str, message: str | bytes | bytearray | memoryview, *, text: bool | None = None) -> None:
        """Send ``message`` to every member of ``room`` on every node."""
        if isinstance(message, str):
            payload = message.encode("utf-8")
            is_text = text is not False
        elif isinstance(message, (bytes, bytearray, memoryview)):
            payload = bytes(message)
            is_text = text is True
        else:
            raise TypeError(f"message must be str or bytes, not {type(message).__name__}")
        self.counters["published"] += 1
        broker = self.broker
        if broker.local_first:
            self._fan_out(room, OP_TEXT if is_text else OP_BINARY, payload, None)
        if broker.remote:
            broker.publish(room, b"".join((self.node, (FLAG_TEXT if is_text else 0).to_bytes(1, "big"), payload)))

    def receive(self, room: str, message: bytes) -> None:
        """A message from the broker (another node's, or any in history mode)."""
        if self.broker.local_first and message[:NODE_ID_SIZE] == self.node:
            return  # ours: delivered when it was published
        self.counters["received"] += 1
        flags = message[NODE_ID_SIZE]
        opcode = OP_TEXT if flags & FLAG_TEXT else OP_BINARY
        if flags & FLAG_OFFSET:
            n = message[NODE_ID_SIZE + 1]
            start = NODE_ID_SIZE + 2
            offset = message[start : start + n].decode("ascii")
            self._fan_out(room, opcode, _with_offset(offset, message[start + n :]), parse_offset(offset)[1])
        else:
            self._fan_out(room, opcode, message[NODE_ID_SIZE + 1 :], None)

    def receive_stored(self, room: str, offset: str, stored: bytes) -> None:
        """A message read back from history (a gap after a reconnect)."""
        self.receive(room, self.node + bytes((stored[0] | FLAG_OFFSET, len(offset))) + offset.encode("ascii") + stored[1:])

    def _fan_out(self, room: str, opcode: int, payload: bytes, sid: tuple[int, int] | None) -> None:
        replaying = self._replaying.get(room)
        if replaying:
            assert sid is not None
            for held in replaying.values():
                held.append((sid, opcode, payload))
        members = self._members.get(room)
        if not members:
            return
        frame = _frame.encode_frame(opcode, payload)
        compressed: dict[int, bytes] | None = None
        corked = self._ctx.corked is not None
        limit = self._max_buffer
        small = len(payload) < self._min_size
        sent = 0
        for conn in members:
            if conn.write_buffer_size > limit:
                self._slow(conn, room)
                continue
            out = frame
            if not small:
                deflate = conn.deflate
                if deflate is not None and deflate.shared_bits:
                    if compressed is None:
                        compressed = {}
                    out = compressed.get(deflate.shared_bits) or self._deflated(compressed, deflate.shared_bits, opcode, payload)
            if not corked:
                # Outside a dispatch: hold each member's writes until the
                # end of this loop iteration, so the k messages one broker
                # read brings are one write per member, not k.
                conn.cork()
            if conn.write_frame(out):
                sent += 1
        self.counters["delivered"] += sent

    def _deflated(self, cache: dict[int, bytes], bits: int, opcode: int, payload: bytes) -> bytes:
        """The message compressed once for every member with this window."""
        data = deflate_message(payload, bits, self._level, self._mem_level)
        frame: bytes = _frame.encode_frame(opcode, data, True, True)
        cache[bits] = frame
        return frame

    def _slow(self, conn: "Connection", room: str) -> None:
        if self._close_slow:
            if conn.state is State.OPEN:
                self.counters["closed_slow"] += 1
                logger.warning(
                    "conn %d: room %r: %d bytes waiting > room_max_buffer %d; closing with 1013",
                    conn.num, room, conn.write_buffer_size, self._max_buffer,
                )  # fmt: skip
                conn.close(CloseCode.TRY_AGAIN_LATER, "slow receiver")
        else:
            self.counters["dropped"] += 1

    async def _replay(self, conn: "Connection", room: str, since: str, done: "asyncio.Future[int]") -> None:
        """Give a new member the history it asked for, then the live messages."""
        entries: list[tuple[str, bytes]] = []
        error: BaseException | None = None
        try:
            entries = await self.broker.history(room, since)
        except HistoryGap as gap:
            error = gap
        except Exception as exc:  # the broker is down: the member starts from now
            error = HistoryGap(room, since, f"history unavailable: {exc}")
        replaying = self._replaying.get(room)
        held = None if replaying is None else replaying.pop(conn, None)
        if replaying is not None and not replaying:
            del self._replaying[room]
        if held is None:  # left meanwhile
            if not done.done():
                done.cancel()
            return
        last = parse_offset(since)[1] if error is None else None
        count = 0
        if conn.state is State.OPEN:
            for offset, stored in entries:
                sid = parse_offset(offset)[1]
                if last is not None and sid <= last:
                    continue
                opcode = OP_TEXT if stored[0] & FLAG_TEXT else OP_BINARY
                conn.write_frame(_frame.encode_frame(opcode, _with_offset(offset, stored[1:])))
                last = sid
                count += 1
            for sid, opcode, payload in held:
                if last is None or sid > last:
                    conn.write_frame(_frame.encode_frame(opcode, payload))
                    last = sid
        members = self._members.get(room)
        if members is None:
            members = self._members[room] = set()
        members.add(conn)
        if not done.done():
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(count)

    # -- figures ------------------------------------------------------------------

    def snapshot(self) -> dict[str, int]:
        """Counters and gauges for metrics (plain ints)."""
        out = dict(self.counters)
        out.update(self.broker.counters)
        out["rooms"] = len(self._members)
        out["members"] = sum(len(joined) for joined in self._joined.values())
        return out


def _with_offset(offset: str, payload: bytes) -> bytes:
    """What a history-mode client receives: ``"<offset> <message>"``."""
    return offset.encode("ascii") + b" " + payload


def _retrieve(future: "asyncio.Future[int]") -> None:
    # A callback-level handler may never look at subscribe()'s result:
    # the gap is logged instead of asyncio's "exception never retrieved".
    if not future.cancelled() and future.exception() is not None:
        logger.info("rooms: %s", future.exception())

