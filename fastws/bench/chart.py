"""``fastws bench --chart FILE.svg``: the latency distribution and the rate
over time of one run, as a self-contained SVG (no plotting library)."""

from __future__ import annotations

import math
from html import escape
from pathlib import Path
from typing import Any

__all__ = ["write_svg"]

W, H = 1060, 360
PANEL_W, PANEL_H = 400, 240
MARGIN_X, MARGIN_Y = 70, 60


def _nice_max(value: float) -> float:
    """A round number at or above ``value`` for an axis."""
    if value <= 0:
        return 1.0
    exp = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= step * exp:
            return step * exp
    return 10.0 * exp


def _fmt(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.1f}M"
    if value >= 1e3:
        return f"{value / 1e3:.0f}k"
    if value >= 10:
        return f"{value:.0f}"
    return f"{value:.2g}"


def _panel(x0: float, title: str, xlabels: list[tuple[float, str]], points: list[tuple[float, float]], ymax: float, unit: str) -> str:
    """One line chart: points in [0, 1] x [0, ymax]."""
    y0 = MARGIN_Y + PANEL_H
    parts = [f'<text x="{x0}" y="{MARGIN_Y - 20}" font-size="15" font-weight="600">{escape(title)}</text>']
    for i in range(5):
        value = ymax * i / 4
        y = y0 - PANEL_H * i / 4
        parts.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + PANEL_W}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{_fmt(value)}{unit}</text>')
    for fx, label in xlabels:
        x = x0 + PANEL_W * fx
        parts.append(f'<text x="{x:.1f}" y="{y0 + 18}" font-size="11" text-anchor="middle">{escape(label)}</text>')
    if points:
        path = " ".join(f"{x0 + PANEL_W * fx:.1f},{y0 - PANEL_H * min(fy / ymax, 1.0):.1f}" for fx, fy in points)
        parts.append(f'<polyline fill="none" stroke="#2563eb" stroke-width="2" points="{path}"/>')
    else:
        parts.append(f'<text x="{x0 + PANEL_W / 2}" y="{y0 - PANEL_H / 2}" font-size="13" text-anchor="middle">no data</text>')
    return "\n".join(parts)


def _nines(q: float) -> float:
    """Percentile position on a 'number of nines' axis: 0 -> 0, 0.9 -> 1, 0.99 -> 2."""
    return math.log10(1 / (1 - q)) if q < 1 else 4.0


def write_svg(path: str | Path, result: dict[str, Any]) -> None:
    """Write the chart of a ``fastws bench`` result (echo scenarios)."""
    curve = result.get("latency_curve_ms") or []
    timeline = result.get("timeline") or []
    lat_points = [(min(_nines(q), 4.0) / 4.0, ms) for q, ms in curve]
    lat_max = _nice_max(max((ms for _, ms in lat_points), default=1.0))
    ticks = [(0.0, "p0"), (0.25, "p90"), (0.5, "p99"), (0.75, "p99.9"), (1.0, "max")]
    total = max((t for t, _ in timeline), default=1.0) or 1.0
    rate_points = [(t / total, rate) for t, rate in timeline]
    rate_max = _nice_max(max((r for _, r in rate_points), default=1.0))
    time_ticks = [(i / 4, f"{total * i / 4:.1f} s") for i in range(5)]
    heading = (
        f"fastws bench {result.get('scenario', '')}: {result.get('url', '')} - {result.get('conns', '?')} conns x "
        f"{result.get('pipeline', '?')} in flight x {result.get('size', '?')} B; {result.get('msgs_per_s', 0):,.0f} msg/s"
    )
    svg = "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{MARGIN_X}" y="20" font-size="13">{escape(heading)}</text>',
        _panel(MARGIN_X, "Round-trip latency by percentile (ms)", ticks, lat_points, lat_max, ""),
        _panel(MARGIN_X + PANEL_W + 90, "Messages per second over time", time_ticks, rate_points, rate_max, "/s"),
        "</svg>",
    ])  # fmt: skip
    Path(path).write_text(svg + "\n")
