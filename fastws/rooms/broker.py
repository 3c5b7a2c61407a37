"""The in-process broker, and what every broker shares (reconnect backoff,
background task logging). What a broker must be is declared beside the hub
(``fastws.rooms.hub.Broker``), which brokers sit above.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .hub import Hub

__all__ = ["MemoryBroker", "backoff", "quiet_task"]

logger = logging.getLogger("fastws.rooms")


class MemoryBroker:
    """One process: the hub's own members are every member there is."""

    local_first = True
    remote = False

    def __init__(self) -> None:
        self.counters: dict[str, int] = {"reconnects": 0, "errors": 0, "queued_dropped": 0, "unconfirmed": 0}
        self.hub: "Hub | None" = None

    async def start(self, hub: "Hub") -> None:
        self.hub = hub

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
        # This process's members: presence across processes needs the
        # Redis broker (docs/scaling.md).
        assert self.hub is not None
        return self.hub.local_presence(room)

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
