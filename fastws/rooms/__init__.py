"""Rooms and pub/sub, beside the faces: ``ws.subscribe(room)``,
``ws.publish(room, message)``, ``server.publish(room, message)``.

Each server has one :class:`Hub` (its rooms and local members) and one
broker that carries messages between nodes: ``memory`` (one process),
``workers`` (the ``--workers N`` processes of one server, through a relay in
the supervisor), ``redis://`` (Redis pub/sub) or ``redis+cluster://``
(sharded pub/sub). See docs/scaling.md for the design and the guarantees.
"""

from __future__ import annotations

from .broker import Broker, MemoryBroker, open_broker
from .hub import Hub, parse_offset

__all__ = ["Broker", "Hub", "MemoryBroker", "open_broker", "parse_offset"]
