"""``fastws bench --chart FILE.svg|FILE.png``: the latency distribution and
the rate over time of one run.

The chart is laid out once, as a list of shapes (lines, polylines, text),
and drawn by one of two back-ends: SVG, written as text, or PNG,
rasterised with Pillow (a dependency, imported only here).
"""

from __future__ import annotations

import importlib
import math
from html import escape
from pathlib import Path
from typing import Any

__all__ = ["write_chart", "write_svg"]

#: A shape: ("text", x, y, size, text, anchor, bold), ("line", x1, y1, x2, y2,
#: colour, width) or ("polyline", [(x, y), ...], colour, width).
Shape = tuple[Any, ...]

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


def _panel(x0: float, title: str, xlabels: list[tuple[float, str]], points: list[tuple[float, float]], ymax: float, unit: str) -> list[Shape]:
    """One line chart: points in [0, 1] x [0, ymax]."""
    y0 = MARGIN_Y + PANEL_H
    shapes: list[Shape] = [("text", x0, MARGIN_Y - 20, 15, title, "start", True)]
    for i in range(5):
        value = ymax * i / 4
        y = y0 - PANEL_H * i / 4
        shapes.append(("line", x0, y, x0 + PANEL_W, y, "#dddddd", 1))
        shapes.append(("text", x0 - 6, y + 4, 11, f"{_fmt(value)}{unit}", "end", False))
    for fx, label in xlabels:
        shapes.append(("text", x0 + PANEL_W * fx, y0 + 18, 11, label, "middle", False))
    if points:
        line = [(x0 + PANEL_W * fx, y0 - PANEL_H * min(fy / ymax, 1.0)) for fx, fy in points]
        shapes.append(("polyline", line, "#2563eb", 2))
    else:
        shapes.append(("text", x0 + PANEL_W / 2, y0 - PANEL_H / 2, 13, "no data", "middle", False))
    return shapes


def _nines(q: float) -> float:
    """Percentile position on a 'number of nines' axis: 0 -> 0, 0.9 -> 1, 0.99 -> 2."""
    return math.log10(1 / (1 - q)) if q < 1 else 4.0


def layout(result: dict[str, Any]) -> list[Shape]:
    """The shapes of the chart of a ``fastws bench`` result (message scenarios)."""
    curve = result.get("latency_curve_ms") or []
    timeline = result.get("timeline") or []
    lat_points = [(min(_nines(q), 4.0) / 4.0, ms) for q, ms in curve]
    lat_max = _nice_max(max((ms for _, ms in lat_points), default=1.0))
    ticks = [(0.0, "p0"), (0.25, "p90"), (0.5, "p99"), (0.75, "p99.9"), (1.0, "max")]
    total = max((t for t, _ in timeline), default=1.0) or 1.0
    rate_points = [(t / total, rate) for t, rate in timeline]
    rate_max = _nice_max(max((r for _, r in rate_points), default=1.0))
    time_ticks = [(i / 4, f"{total * i / 4:.1f} s") for i in range(5)]
    unit = result.get("rate_unit") or "msg/s"
    heading = (
        f"fastws bench {result.get('scenario', '')}: {result.get('url', '')} - {result.get('conns', '?')} conns x "
        f"{result.get('pipeline', '?')} in flight x {result.get('size', '?')} B; {result.get('msgs_per_s', 0):,.0f} {unit}"
    )
    what = "Deliveries" if unit == "deliveries/s" else "Messages"
    return [
        ("text", MARGIN_X, 20, 13, heading, "start", False),
        *_panel(MARGIN_X, "Round-trip latency by percentile (ms)", ticks, lat_points, lat_max, ""),
        *_panel(MARGIN_X + PANEL_W + 90, f"{what} per second over time", time_ticks, rate_points, rate_max, "/s"),
    ]


def svg(shapes: list[Shape]) -> str:
    """The shapes as a self-contained SVG document."""
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
    ]
    for shape in shapes:
        if shape[0] == "text":
            _, x, y, size, text, anchor, bold = shape
            weight = ' font-weight="600"' if bold else ""
            align = "" if anchor == "start" else f' text-anchor="{anchor}"'
            out.append(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}"{weight}{align}>{escape(text)}</text>')
        elif shape[0] == "line":
            _, x1, y1, x2, y2, colour, width = shape
            out.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{colour}" stroke-width="{width}"/>')
        else:
            _, points, colour, width = shape
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="{width}" points="{path}"/>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def png(shapes: list[Shape], path: str | Path, scale: int = 2) -> None:
    """Rasterise the shapes with Pillow (at ``scale`` x, for sharp text)."""
    try:
        image_mod: Any = importlib.import_module("PIL.Image")
        draw_mod: Any = importlib.import_module("PIL.ImageDraw")
        font_mod: Any = importlib.import_module("PIL.ImageFont")
    except ImportError:
        raise RuntimeError("--chart FILE.png needs Pillow (pip install pillow), or write an .svg") from None
    image = image_mod.new("RGB", (W * scale, H * scale), "white")
    draw = draw_mod.Draw(image)
    fonts: dict[int, Any] = {}
    for shape in shapes:
        if shape[0] == "text":
            _, x, y, size, text, anchor, bold = shape
            font = fonts.get(size) or fonts.setdefault(size, font_mod.load_default(size * scale))
            # SVG places text by its baseline; Pillow's "ls"/"ms"/"rs" anchors do the same.
            where = {"start": "ls", "middle": "ms", "end": "rs"}[anchor]
            draw.text((x * scale, y * scale), text, fill="black", font=font, anchor=where, stroke_width=1 if bold else 0, stroke_fill="black")
        elif shape[0] == "line":
            _, x1, y1, x2, y2, colour, width = shape
            draw.line([(x1 * scale, y1 * scale), (x2 * scale, y2 * scale)], fill=colour, width=width * scale)
        else:
            _, points, colour, width = shape
            draw.line([(x * scale, y * scale) for x, y in points], fill=colour, width=width * scale, joint="curve")
    image.save(path, format="PNG")


def write_svg(path: str | Path, result: dict[str, Any]) -> None:
    """Write the chart of a ``fastws bench`` result as SVG."""
    Path(path).write_text(svg(layout(result)))


def write_chart(path: str | Path, result: dict[str, Any]) -> None:
    """Write the chart as SVG or PNG, by the file name's suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".svg":
        write_svg(path, result)
    elif suffix == ".png":
        png(layout(result), path)
    else:
        raise ValueError(f"--chart {path}: the file name must end in .svg or .png")
