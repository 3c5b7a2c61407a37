"""What a rooms backend is to the hub, the in-process one, and the wire
format messages have between nodes.

A broker carries messages between nodes (worker processes, machines). The
hub calls it with room names; the broker names channels, keeps its
connection up, and hands what arrives back to ``hub.receive``. Every method
the hub calls is synchronous and never raises for a broker that is down: the
broker queues (bounded), reconnects in the background, logs and counts.

A message between nodes is ``node id (8 bytes) + flags (1 byte) + payload``;
with the ``OFFSET`` flag a length byte and the ASCII offset come before the
payload (history mode: the offset Redis gave the message).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..config import Config
    from .hub import Hub

__all__ = ["Broker", "MemoryBroker", "FLAG_TEXT", "FLAG_OFFSET", "NODE_ID_SIZE", "backoff", "quiet_task"]

logger = logging.getLogger("fastws.rooms")

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


class MemoryBroker:
    """One process: the hub's own members are every member there is."""

    local_first = True
    remote = False

    def __init__(self) -> None:
        self.counters: dict[str, int] = {"reconnects": 0, "errors": 0, "queued_dropped": 0, "unconfirmed": 0}
        self._hub: "Hub | None" = None

    async def start(self, hub: "Hub") -> None:
        self._hub = hub

    def subscribe(self, room: str) -> None:
        pass

    def unsubscribe(self, room: str) -> None:
        pass

    def publish(self, room: str, message: bytes) -> None:
        pass

    async def history(self, room: str, since: str) -> list[tuple[str, bytes]]:
        raise ValueError("room history needs a Redis broker (room_history=True with broker='redis://...')")

    def join(self, room: str, member: str) -> None:
        pass

    def leave(self, room: str, member: str) -> None:
        pass

    async def presence(self, room: str) -> list[str]:
        assert self._hub is not None
        return self._hub.local_presence(room)

    async def close(self) -> None:
        pass


def backoff(attempt: int, base: float = 0.1, cap: float = 5.0) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (1, 2, ...):
    exponential up to ``cap``, with full jitter so that nodes that lost
    their broker together do not all come back in the same millisecond."""
    return random.uniform(base / 2, min(cap, base * 2 ** (attempt - 1)))


def quiet_task(task: "asyncio.Task[Any]") -> None:
    """Done callback of a broker's background task: log how it failed."""
    if not task.cancelled() and task.exception() is not None:
        logger.error("rooms: %s failed", task.get_name(), exc_info=task.exception())
