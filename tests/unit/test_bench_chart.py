"""``fastws bench --chart``: one layout, drawn as SVG (by hand) and PNG (Pillow)."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from fastws.bench import chart

RESULT = {
    "scenario": "pipelined",
    "url": "ws://127.0.0.1:9001/",
    "conns": 4,
    "pipeline": 2,
    "size": 64,
    "msgs_per_s": 12345.0,
    "rate_unit": "msg/s",
    "latency_curve_ms": [[0.0, 0.02], [0.5, 0.05], [0.9, 0.08], [0.99, 0.2], [0.999, 1.5], [1.0, 3.0]],
    "timeline": [[0.5, 12000.0], [1.0, 12500.0], [1.5, 12400.0]],
}


def test_svg_is_a_document_with_both_panels(tmp_path: Path) -> None:
    out = tmp_path / "c.svg"
    chart.write_chart(out, RESULT)
    root = ET.fromstring(out.read_text())
    ns = "{http://www.w3.org/2000/svg}"
    texts = [t.text for t in root.iter(f"{ns}text")]
    assert "Round-trip latency by percentile (ms)" in texts
    assert "Messages per second over time" in texts
    lines = list(root.iter(f"{ns}polyline"))
    assert len(lines) == 2  # one curve per panel
    # 6 latency points, 3 rate points
    assert [len(p.get("points", "").split()) for p in lines] == [6, 3]


def test_broadcast_charts_deliveries(tmp_path: Path) -> None:
    out = tmp_path / "b.svg"
    chart.write_chart(out, {**RESULT, "rate_unit": "deliveries/s"})
    assert "Deliveries per second over time" in out.read_text()


def test_png_is_drawn_at_twice_the_size(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    out = tmp_path / "c.png"
    chart.write_chart(out, RESULT)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (2 * chart.W, 2 * chart.H)
    from PIL import Image

    with Image.open(out) as image:
        colours = {c for _, c in image.convert("RGB").getcolors(2**20) or []}
    assert (0x25, 0x63, 0xEB) in colours  # the curves are drawn, not a blank page


def test_empty_run_says_no_data(tmp_path: Path) -> None:
    out = tmp_path / "e.svg"
    chart.write_chart(out, {"scenario": "rr", "url": "ws://x/"})
    assert out.read_text().count("no data") == 2


def test_other_suffix_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.svg or \.png"):
        chart.write_chart(tmp_path / "c.jpg", RESULT)
