"""Metrics: snapshots of a server's counters, shared between workers, and
rendered in the Prometheus text format (with ``prometheus-client``).

A snapshot is a plain, JSON-safe dict (``Server.stats()`` returns one).
With ``--workers N`` every worker writes its snapshot to a directory the
supervisor made, once a second, and the worker that answers a scrape reads
them all: one scrape gives the whole server, one series per worker (label
``worker``). A restarted worker starts from the counters its predecessor
last wrote, so no counter goes backwards within a series; what the dead
worker counted after its last write (at most a second) is lost.

Counting happens in the protocol and the connection (``Stats``: C integers
in the compiled build, bumped per message only when metrics are on); this
module only reads and renders, so it costs nothing per message.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from .protocol import RTT_BUCKETS

__all__ = ["CONTENT_TYPE", "COUNTERS", "ROOM_COUNTERS", "empty_rooms", "WorkerShare", "empty_counters", "merge", "render", "rtt_quantile"]

logger = logging.getLogger("fastws")

CONTENT_TYPE = CONTENT_TYPE_LATEST

#: The snapshot keys that are counters (carried over a worker restart).
COUNTERS = (
    "handshakes", "messages_in", "bytes_in", "messages_out", "bytes_out", "close_sent", "close_received",
    "rtt", "write_pauses", "slow_readers_dropped", "paths",
)  # fmt: skip


def empty_counters() -> dict[str, Any]:
    """Counters of a server that has counted nothing."""
    return {
        "handshakes": {}, "messages_in": {"text": 0, "binary": 0}, "bytes_in": {"text": 0, "binary": 0},
        "messages_out": {"text": 0, "binary": 0}, "bytes_out": {"text": 0, "binary": 0},
        "close_sent": {}, "close_received": {}, "rtt": {"buckets": [0] * (len(RTT_BUCKETS) + 1), "count": 0, "sum": 0.0},
        "write_pauses": 0, "slow_readers_dropped": 0, "paths": {},
    }  # fmt: skip


#: The rooms figures of a snapshot (fastws.rooms.Hub.snapshot): counters
#: since the worker started, then the gauges ``rooms`` and ``members``.
ROOM_COUNTERS = (
    ("published", "Messages published to a room on this node."),
    ("received", "Room messages received from the broker (other nodes, or all with history)."),
    ("delivered", "Room messages written to members (one per member)."),
    ("dropped", "Room messages not written to a member past room_max_buffer (policy drop)."),
    ("closed_slow", "Members closed with 1013 past room_max_buffer (policy close)."),
    ("reconnects", "Times the broker connection was lost and made again."),
    ("errors", "Broker commands that failed."),
    ("queued_dropped", "Messages dropped from the queue held while the broker was unreachable."),
    ("unconfirmed", "Publishes lost with the broker connection before Redis confirmed them (not sent again without history)."),
)


def empty_rooms() -> dict[str, int]:
    """The rooms figures of a server with no rooms."""
    out = {key: 0 for key, _ in ROOM_COUNTERS}
    out.update(rooms=0, members=0)
    return out


def _add(a: Any, b: Any) -> Any:
    """Sum two counter values of the same shape (numbers, dicts, lists)."""
    if isinstance(a, dict):
        out = dict(a)
        for key, value in b.items():
            out[key] = _add(out[key], value) if key in out else value
        return out
    if isinstance(a, list):
        return [x + y for x, y in zip(a, b)]
    return a + b


def merge(snapshots: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """One snapshot for the whole server: counters and connections summed,
    the oldest start, the worst loop lag."""
    items = list(snapshots)
    total: dict[str, Any] = empty_counters()
    for snap in items:
        for key in COUNTERS:
            total[key] = _add(total[key], snap[key])
    total["connections"] = sum(s["connections"] for s in items)
    total["started"] = min((s["started"] for s in items), default=0.0)
    total["uptime"] = max((s["uptime"] for s in items), default=0.0)
    total["loop_lag"] = max((s["loop_lag"] for s in items), default=0.0)
    total["draining"] = any(s["draining"] for s in items)
    total["workers"] = len(items)
    total["rooms"] = _add(empty_rooms(), {})
    for snap in items:
        total["rooms"] = _add(total["rooms"], snap.get("rooms", {}))
    return total


def rtt_quantile(buckets: list[int], q: float) -> float | None:
    """The ``q`` quantile of a ping round-trip histogram (the upper bound of
    its bucket; the last bound for the +Inf bucket), or None without samples."""
    count = sum(buckets)
    if not count:
        return None
    rank = q * count
    seen = 0
    for i, n in enumerate(buckets):
        seen += n
        if seen >= rank and n:
            # Past the last bucket: its bound, read as "at least".
            return RTT_BUCKETS[min(i, len(RTT_BUCKETS) - 1)]
    return RTT_BUCKETS[-1]


class _Collector(Collector):
    def __init__(self, snapshots: list[dict[str, Any]]) -> None:
        self.snapshots = snapshots

    def collect(self) -> Iterator[Metric]:
        snaps = self.snapshots
        g = GaugeMetricFamily("fastws_connections", "Open WebSocket connections.", labels=["worker"])
        up = GaugeMetricFamily("fastws_uptime_seconds", "Seconds since the worker started serving.", labels=["worker"])
        lag = GaugeMetricFamily(
            "fastws_event_loop_lag_seconds", "How late the event loop ran a timer, last check (every 0.5 s).", labels=["worker"]
        )
        hs = CounterMetricFamily("fastws_handshakes", "Opening handshakes answered, by HTTP status (101 = opened).", labels=["worker", "status"])
        mi = CounterMetricFamily("fastws_messages_received", "Messages received.", labels=["worker", "type"])
        mo = CounterMetricFamily("fastws_messages_sent", "Messages sent.", labels=["worker", "type"])
        bi = CounterMetricFamily(
            "fastws_received_bytes", "Payload bytes of messages received, as on the wire (compressed).", labels=["worker", "type"]
        )
        bo = CounterMetricFamily(
            "fastws_sent_bytes", "Payload bytes of messages sent, as on the wire (compressed).", labels=["worker", "type"]
        )
        cs = CounterMetricFamily("fastws_close_codes_sent", "Close codes sent, per ended connection.", labels=["worker", "code"])
        cr = CounterMetricFamily(
            "fastws_close_codes_received", "Close codes received (1006: none), per ended connection.", labels=["worker", "code"]
        )
        wp = CounterMetricFamily("fastws_write_pauses", "Times a write buffer went above write_limit.", labels=["worker"])
        dr = CounterMetricFamily(
            "fastws_slow_readers_dropped", "Connections dropped for letting more than max_write_buffer pile up.", labels=["worker"]
        )
        rtt = HistogramMetricFamily("fastws_ping_rtt_seconds", "Round-trip time of keepalive pings.", labels=["worker"])
        room_counters = [
            (key, CounterMetricFamily(f"fastws_room_{key}", text, labels=["worker"])) for key, text in ROOM_COUNTERS
        ]
        rooms = GaugeMetricFamily("fastws_rooms", "Rooms with a member on this node.", labels=["worker"])
        members = GaugeMetricFamily("fastws_room_members", "Room memberships on this node.", labels=["worker"])
        for snap in snaps:
            w = str(snap["worker"])
            g.add_metric([w], snap["connections"])
            up.add_metric([w], snap["uptime"])
            lag.add_metric([w], snap["loop_lag"])
            for status, n in sorted(snap["handshakes"].items()):
                hs.add_metric([w, str(status)], n)
            for kind in ("text", "binary"):
                mi.add_metric([w, kind], snap["messages_in"][kind])
                mo.add_metric([w, kind], snap["messages_out"][kind])
                bi.add_metric([w, kind], snap["bytes_in"][kind])
                bo.add_metric([w, kind], snap["bytes_out"][kind])
            for code, n in sorted(snap["close_sent"].items()):
                cs.add_metric([w, str(code)], n)
            for code, n in sorted(snap["close_received"].items()):
                cr.add_metric([w, str(code)], n)
            wp.add_metric([w], snap["write_pauses"])
            dr.add_metric([w], snap["slow_readers_dropped"])
            cumulative, buckets = 0, []
            for bound, n in zip([*map(str, RTT_BUCKETS), "+Inf"], snap["rtt"]["buckets"]):
                cumulative += n
                buckets.append((bound, cumulative))
            rtt.add_metric([w], buckets, snap["rtt"]["sum"])
            figures = {**empty_rooms(), **snap.get("rooms", {})}
            for key, family in room_counters:
                family.add_metric([w], figures[key])
            rooms.add_metric([w], figures["rooms"])
            members.add_metric([w], figures["members"])
        yield from (g, up, lag, hs, mi, mo, bi, bo, cs, cr, wp, dr, rtt, rooms, members)
        yield from (family for _, family in room_counters)


def render(snapshots: list[dict[str, Any]]) -> bytes:
    """The Prometheus text exposition of the workers' snapshots."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(snapshots))
    return generate_latest(registry)


class WorkerShare:
    """A worker's side of the directory where workers publish snapshots."""

    def __init__(self, directory: str, index: int) -> None:
        self.directory = Path(directory)
        self.index = index
        self.path = self.directory / f"worker-{index}.json"
        #: What the previous worker in this slot had counted (carried on).
        self.base: dict[str, Any] = empty_counters()
        try:
            previous = json.loads(self.path.read_text())
        except (OSError, ValueError):
            pass
        else:
            self.base.update((key, previous[key]) for key in COUNTERS if key in previous)

    def carried(self, snapshot: dict[str, Any]) -> dict[str, Any]:
        """``snapshot`` with the predecessor's counters added."""
        out = dict(snapshot)
        for key in COUNTERS:
            out[key] = _add(self.base[key], snapshot[key])
        return out

    def publish(self, snapshot: dict[str, Any]) -> None:
        """Write this worker's snapshot (atomically: readers never see half)."""
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".worker-{self.index}-")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(snapshot, f)
            os.replace(tmp, self.path)
        except OSError as exc:
            logger.warning("cannot publish worker stats to %s: %s", self.path, exc)
            Path(tmp).unlink(missing_ok=True)

    def read_all(self, own: dict[str, Any]) -> list[dict[str, Any]]:
        """Every worker's latest snapshot, this one's fresh."""
        snaps = {self.index: own}
        for path in self.directory.glob("worker-*.json"):
            try:
                snap = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            snaps.setdefault(snap["worker"], snap)
        return [snaps[k] for k in sorted(snaps)]
