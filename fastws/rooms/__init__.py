"""Rooms and pub/sub, beside the faces: ``ws.subscribe(room)``,
``ws.publish(room, message)``, ``server.publish(room, message)``.

Each server has one :class:`Hub` (its rooms and local members) and one
broker that carries messages between nodes: ``memory`` (one process),
``workers`` (the ``--workers N`` processes of one server, through a relay in
the supervisor), ``redis://`` (Redis pub/sub) or ``redis+cluster://``
(sharded pub/sub). See docs/scaling.md for the design and the guarantees.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .broker import MemoryBroker
from .hub import Broker, Hub, parse_offset

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["Broker", "Hub", "MemoryBroker", "open_broker", "parse_offset"]


def open_broker(config: "Config", relay: str | None = None) -> Broker:
    """The broker ``config.broker`` names. ``relay``: the Unix socket of the
    supervisor's relay (``--workers N`` with ``--broker workers``)."""
    url = config.broker
    if url == "memory" or (url == "workers" and relay is None):
        # One process: "workers" without workers is the memory broker.
        return MemoryBroker()
    if url == "workers":
        from .workers import WorkersBroker

        assert relay is not None
        return WorkersBroker(relay, config)
    try:
        from .redis import RedisBroker
    except ImportError as exc:  # pragma: no cover - redis is a dependency
        raise RuntimeError(f"broker {url!r} needs redis-py: pip install 'redis[hiredis]>=8' ({exc})") from None
    return RedisBroker(url, config)
