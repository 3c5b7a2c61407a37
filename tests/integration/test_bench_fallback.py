"""``python -m bench.fallback``, the HTTP fallback benchmark, end to end: one
short round of each transport against a real ``fastws serve --fallback``,
its table and its JSON file, with no errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import ROOT, unit

pytest.importorskip("aiohttp")
pytest.importorskip("psutil")

TRANSPORTS = ["websocket", "sse", "polling"]


@pytest.mark.timeout(120)
def test_one_round_of_each_transport(tmp_path: Path) -> None:
    out = tmp_path / "fallback.json"
    res = subprocess.run(
        [
            sys.executable, "-m", "bench.fallback", "--duration", "0.5", "--rounds", "1", "--clients", "2",
            "--json", str(out),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=unit(90),
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    # The summary table: a row per transport, a rate, no errors, its round good.
    lines = res.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("transport "))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = cells
    assert sorted(rows) == sorted(TRANSPORTS), res.stdout
    for name, cells in rows.items():
        assert cells[1] != "FAILED" and float(cells[1].replace(",", "")) > 0, (name, cells)
        assert cells[-2:] == ["0", "1/1"], (name, cells)  # errors, good rounds
    assert "no errors" in res.stdout
    doc = json.loads(out.read_text())
    assert [s["transport"] for s in doc["summary"]] == TRANSPORTS
    assert len(doc["runs"]) == 3
    for run in doc["runs"]:
        result = run["result"]
        assert not run["fatal"], run
        assert result["errors"] == {} and result["client_failures"] == [], (run["transport"], result)
        assert result["messages"] > 0 and result["p99_ms"] is not None, result
        assert result["server_us_per_msg"] > 0, result
        # Every message sent came back (the clients drain before closing).
        assert result["echoed_total"] == result["sent_total"], result
