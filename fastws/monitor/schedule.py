"""Checks of many endpoints on a schedule, their uptime, and the outputs of
``fastws monitor``: a live table, JSON lines, Prometheus metrics.

Each endpoint has its own task and its own schedule (start + k x interval,
on the monotonic clock), so a slow endpoint never delays the others: a
check that outlives its interval makes the next one start when it ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from . import Result, check

__all__ = ["Endpoint", "Monitor", "format_table"]

logger = logging.getLogger("fastws.monitor")

HOUR = 3600.0
DAY = 86400.0


@dataclass
class Endpoint:
    """One endpoint and how to check it (the ``check()`` options)."""

    url: str
    options: dict[str, Any] = field(default_factory=dict)
    #: (time, up) of each check in the last day.
    history: deque[tuple[float, bool]] = field(default_factory=deque)
    last: Result | None = None
    checks: int = 0

    def record(self, result: Result) -> None:
        self.last = result
        self.checks += 1
        self.history.append((result.time, result.up))
        while self.history and self.history[0][0] < result.time - DAY:
            self.history.popleft()

    def uptime(self, window: float, now: float | None = None) -> float | None:
        """Percentage of checks up in the last ``window`` seconds."""
        since = (time.time() if now is None else now) - window
        recent = [up for t, up in self.history if t >= since]
        return 100.0 * sum(recent) / len(recent) if recent else None


class Monitor:
    """Check ``endpoints`` every ``interval`` seconds; call ``report`` after each check."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        interval: float,
        report: Callable[[Endpoint, Result], None],
        cert_warn_days: float = 14.0,
    ) -> None:
        self.endpoints = list(endpoints)
        self.interval = interval
        self.report = report
        self.cert_warn_days = cert_warn_days

    async def check_once(self) -> list[Result]:
        """One check of every endpoint, concurrently."""
        results = await asyncio.gather(*(check(e.url, **e.options) for e in self.endpoints))
        for endpoint, result in zip(self.endpoints, results):
            self._done(endpoint, result)
        return list(results)

    def _done(self, endpoint: Endpoint, result: Result) -> None:
        endpoint.record(result)
        if result.cert_days_left is not None and result.cert_days_left < self.cert_warn_days:
            result.extra["cert_warning"] = f"certificate expires in {result.cert_days_left:.1f} days"
        self.report(endpoint, result)

    async def _loop(self, endpoint: Endpoint) -> None:
        start = time.monotonic()
        k = 0
        while True:
            self._done(endpoint, await check(endpoint.url, **endpoint.options))
            k += 1
            now = time.monotonic()
            while start + k * self.interval <= now:
                k += 1  # a check longer than the interval: skip the slots it covered
            await asyncio.sleep(start + k * self.interval - now)

    async def run(self) -> None:
        """Check every endpoint on its own schedule, until cancelled."""
        await asyncio.gather(*(self._loop(e) for e in self.endpoints))


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


COLUMNS = ("endpoint", "state", "1h", "24h", "dns ms", "tcp ms", "tls ms", "101 ms", "ping ms", "cert days", "last failure")


def format_table(endpoints: Sequence[Endpoint], now: float | None = None) -> str:
    """The terminal table: one row per endpoint."""
    rows: list[tuple[str, ...]] = [COLUMNS]
    for e in endpoints:
        r = e.last
        if r is None:
            rows.append((e.url, "...", *["-"] * (len(COLUMNS) - 2)))
            continue
        failure = "" if r.up else f"{r.failure}: {r.error}"
        if r.extra.get("cert_warning"):
            failure = (failure + "; " if failure else "") + "WARNING " + r.extra["cert_warning"]
        rows.append((
            e.url, "UP" if r.up else "DOWN", _pct(e.uptime(HOUR, now)), _pct(e.uptime(DAY, now)),
            _ms(r.dns), _ms(r.connect), _ms(r.tls), _ms(r.upgrade), _ms(r.ping),
            "-" if r.cert_days_left is None else f"{r.cert_days_left:.1f}", failure,
        ))  # fmt: skip
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(COLUMNS) - 1)]
    lines = []
    for row in rows:
        cells = [str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells + [str(row[-1])]).rstrip())
    return "\n".join(lines)


class LiveTable:
    """The table, redrawn in place on a terminal (one block per check
    round elsewhere)."""

    def __init__(self, endpoints: Sequence[Endpoint], out: TextIO = sys.stdout) -> None:
        self.endpoints = endpoints
        self.out = out
        self._lines = 0
        self.tty = out.isatty()

    def __call__(self, endpoint: Endpoint, result: Result) -> None:
        table = format_table(self.endpoints)
        if self.tty:
            if self._lines:
                self.out.write(f"\x1b[{self._lines}F\x1b[J")
            self.out.write(table + "\n")
            self._lines = table.count("\n") + 1
        elif endpoint is self.endpoints[-1]:
            self.out.write(table + "\n\n")
        self.out.flush()


def json_line(out: TextIO = sys.stdout) -> Callable[[Endpoint, Result], None]:
    """A reporter writing one JSON document per check."""

    def report(endpoint: Endpoint, result: Result) -> None:
        doc = result.as_dict()
        doc["uptime_1h"] = endpoint.uptime(HOUR)
        doc["uptime_24h"] = endpoint.uptime(DAY)
        out.write(json.dumps(doc) + "\n")
        out.flush()

    return report


class PrometheusExport:
    """The endpoints' latest figures on a Prometheus port (prometheus-client's
    own HTTP server, in a thread)."""

    def __init__(self, endpoints: Sequence[Endpoint], port: int, host: str = "127.0.0.1") -> None:
        from prometheus_client import start_http_server
        from prometheus_client.core import GaugeMetricFamily
        from prometheus_client.registry import CollectorRegistry

        self.endpoints = endpoints

        class Collector:
            def collect(self) -> Any:
                up = GaugeMetricFamily("fastws_monitor_up", "1 if the last check passed.", labels=["url"])
                uptime = GaugeMetricFamily("fastws_monitor_uptime_ratio", "Share of checks up in the window.", labels=["url", "window"])
                phase = GaugeMetricFamily("fastws_monitor_phase_seconds", "Time of each phase of the last check.", labels=["url", "phase"])
                cert = GaugeMetricFamily("fastws_monitor_cert_days_left", "Days until the TLS certificate expires.", labels=["url"])
                failure = GaugeMetricFamily("fastws_monitor_failure", "1 for the failure of the last check.", labels=["url", "failure"])
                for e in endpoints:
                    r = e.last
                    if r is None:
                        continue
                    up.add_metric([e.url], 1.0 if r.up else 0.0)
                    for window, seconds in (("1h", HOUR), ("24h", DAY)):
                        value = e.uptime(seconds)
                        if value is not None:
                            uptime.add_metric([e.url, window], value / 100)
                    for name in ("dns", "connect", "tls", "upgrade", "ping", "answer"):
                        value = getattr(r, name)
                        if value is not None:
                            phase.add_metric([e.url, name], value)
                    if r.cert_days_left is not None:
                        cert.add_metric([e.url], r.cert_days_left)
                    if r.failure is not None:
                        failure.add_metric([e.url, r.failure], 1.0)
                yield from (up, uptime, phase, cert, failure)

        registry = CollectorRegistry(auto_describe=False)
        registry.register(Collector())
        self.server, self.thread = start_http_server(port, addr=host, registry=registry)

    def close(self) -> None:
        self.server.shutdown()
