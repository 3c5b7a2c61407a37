"""The live dashboard (``--dashboard``): a page at ``/fastws/dashboard``
and the WebSocket that feeds it one JSON message a second.

The page (``index.html``) and its chart code (``chart.js``) ship in this
package: no build step, no CDN. Access: with ``dashboard_token`` the page
and the socket need ``?token=...``; without one, only clients on loopback
(the real client's address, behind a trusted proxy) may open them; others
get 403.

The socket is a face of its own: the server's route attaches it to the
connection in place of the application's handler before the upgrade, so
the application never sees dashboard connections (the metrics do count
them, as any connection).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import time
from collections import deque
from collections.abc import Callable
from importlib import resources
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from ..connection import Connection
from ..metrics import merge, rtt_quantile
from ..protocol.http import Request, Response, make_response

__all__ = ["PAGE", "SOCKET", "Feed", "is_websocket_route", "routes"]

PAGE = "/fastws/dashboard"
CHART = "/fastws/dashboard/chart.js"
SOCKET = "/fastws/dashboard/ws"
#: Seconds between two messages of the feed.
INTERVAL = 1.0
#: Seconds of ping round trips the p50/p99 are taken over.
RTT_WINDOW = 10.0
#: Paths shown, most opened first.
TOP_PATHS = 10


class Source(Protocol):
    """What the dashboard reads from the server (``ServerState``)."""

    @property
    def config(self) -> Any: ...

    def all_snapshots(self) -> list[dict[str, Any]]: ...


def is_websocket_route(path: str) -> bool:
    return path.partition("?")[0] == SOCKET


def _asset(name: str) -> bytes:
    return resources.files(__package__).joinpath(name).read_bytes()


def _allowed(source: Source, conn: Connection, request: Request) -> bool:
    token = source.config.dashboard_token
    if token is not None:
        given = parse_qs(urlsplit(request.path).query).get("token", [""])[0]
        return hmac.compare_digest(given.encode(), token.encode())
    address = conn.remote_address
    if not isinstance(address, tuple):
        return True  # a Unix socket: only local processes can connect
    try:
        return ipaddress.ip_address(address[0]).is_loopback
    except ValueError:
        return False


_FORBIDDEN = "The dashboard is for loopback clients, or needs ?token=... (--dashboard-token).\n"


def routes(source: Source) -> dict[str, Callable[[Connection, Request], Response | None]]:
    """The dashboard's paths, for the server's own routes."""

    def page(conn: Connection, request: Request) -> Response:
        if not _allowed(source, conn, request):
            return make_response(403, _FORBIDDEN)
        return make_response(200, _asset("index.html"), content_type="text/html; charset=utf-8")

    def chart(conn: Connection, request: Request) -> Response:
        # Static code with nothing secret in it: no token needed.
        return make_response(200, _asset("chart.js"), content_type="text/javascript; charset=utf-8")

    def socket(conn: Connection, request: Request) -> Response | None:
        if not _allowed(source, conn, request):
            return make_response(403, _FORBIDDEN)
        Feed(source).attach(conn)
        return None  # the upgrade goes on, to the feed instead of the app

    return {PAGE: page, CHART: chart, SOCKET: socket}


def _total(counts: dict[str, int]) -> int:
    return sum(counts.values())


class Feed:
    """One dashboard socket: a JSON message every INTERVAL seconds."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self._timer: asyncio.TimerHandle | None = None
        self._previous: dict[Any, tuple[float, int, int, int, int]] = {}
        self._rtt: deque[tuple[float, list[int]]] = deque()

    def attach(self, conn: Connection) -> None:
        conn.attach(conn, self._on_open, lambda conn, data, is_text: None, self._on_close)

    def _on_open(self, conn: Connection) -> None:
        self._tick(conn)

    def _on_close(self, conn: Connection, code: int, reason: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self, conn: Connection) -> None:
        self._timer = None
        try:
            conn.send(json.dumps(self.frame(self.source.all_snapshots(), time.time())))
        except Exception:
            return  # closed meanwhile; on_close cancels nothing more
        self._timer = asyncio.get_running_loop().call_later(INTERVAL, self._tick, conn)

    def _rates(self, key: Any, now: float, snap: dict[str, Any]) -> dict[str, float]:
        """Per-second rates of one snapshot against the previous one."""
        current = (now, _total(snap["messages_in"]), _total(snap["messages_out"]), _total(snap["bytes_in"]), _total(snap["bytes_out"]))
        before = self._previous.get(key)
        self._previous[key] = current
        names = ("messages_in", "messages_out", "bytes_in", "bytes_out")
        if before is None or current[0] <= before[0]:
            return dict.fromkeys(names, 0.0)
        dt = current[0] - before[0]
        return {name: max(0, current[i + 1] - before[i + 1]) / dt for i, name in enumerate(names)}

    def frame(self, snapshots: list[dict[str, Any]], now: float) -> dict[str, Any]:
        """The message for ``snapshots`` taken at ``now`` (see the page)."""
        total = merge(snapshots)
        buckets = total["rtt"]["buckets"]
        self._rtt.append((now, buckets))
        while len(self._rtt) > 1 and self._rtt[0][0] < now - RTT_WINDOW:
            self._rtt.popleft()
        window = [b - a for a, b in zip(self._rtt[0][1], buckets)] if len(self._rtt) > 1 else [0] * len(buckets)
        paths = sorted(total["paths"].items(), key=lambda item: (-item[1], item[0]))[:TOP_PATHS]
        per_worker = []
        for snap in snapshots:
            rates = self._rates(("worker", snap["worker"]), now, snap)
            per_worker.append({
                "worker": snap["worker"], "pid": snap["pid"], "connections": snap["connections"],
                "messages_in": rates["messages_in"], "messages_out": rates["messages_out"],
                "loop_lag": snap["loop_lag"], "uptime": snap["uptime"],
            })  # fmt: skip
        return {
            "time": now,
            "uptime": total["uptime"],
            "workers": total["workers"],
            "connections": total["connections"],
            "rates": self._rates("total", now, total),
            "rtt": {"p50": rtt_quantile(window, 0.5), "p99": rtt_quantile(window, 0.99)},
            "loop_lag": total["loop_lag"],
            "handshakes": total["handshakes"],
            "close_codes": {"sent": total["close_sent"], "received": total["close_received"]},
            "paths": [[path, n] for path, n in paths],
            "per_worker": per_worker,
        }
