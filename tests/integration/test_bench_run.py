"""``python -m bench.run``, the comparison runner, end to end: two scenarios
of ``fastws bench`` against two servers, one short round, its JSON file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import ROOT, unit

pytest.importorskip("websockets")
pytest.importorskip("psutil")


@pytest.mark.timeout(120)
def test_two_scenarios_two_servers(tmp_path: Path) -> None:
    out, chart = tmp_path / "run.json", tmp_path / "run.svg"
    scenarios, servers = ["rr", "handshakes"], ["fastws-callback", "websockets"]
    res = subprocess.run(
        [
            sys.executable, "-m", "bench.run", "--scenario", "rr", "--scenario", "handshakes",
            "--servers", ",".join(servers), "--rounds", "1", "--duration", "0.5", "--warmup", "0.2",
            "--json", str(out), "--chart", str(chart),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=unit(60),
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(out.read_text())
    runs = {(r["scenario"], r["server"]): r for r in doc["runs"]}
    assert sorted(runs) == sorted((sc, s) for sc in scenarios for s in servers)
    for key, run in runs.items():
        result = run["result"]
        assert not run["fatal"], (key, run["fatal"])
        assert result["scenario"] == key[0] and result["rate"] > 0, (key, result)
        assert result["errors"] == {}, (key, result["errors"])
        assert result["server_pid"] is not None and result["server_cpu_us_per_op"] > 0, (key, result)
    # One table per scenario, one summary row per server, in the output and the JSON.
    assert [s["scenario"] for s in doc["scenarios"]] == scenarios
    for section in doc["scenarios"]:
        assert [row["server"] for row in section["summary"]] == servers
        assert all(row["rate"] > 0 and row["errors_total"] == 0 for row in section["summary"])
    assert "== scenario rr:" in res.stdout and "handshakes/s" in res.stdout
    assert res.stderr.count("round 1/1") == 4  # a line per finished run
    assert chart.read_text().startswith("<svg")


def test_broadcast_runs_the_broadcast_variants() -> None:
    sys.path.insert(0, str(ROOT))
    from bench.run import server_for

    assert server_for("broadcast", "picows") == "picows-broadcast"
    assert server_for("broadcast", "fastws-callback@base") == "fastws-callback-broadcast@base"
    assert server_for("broadcast", "socketify") == "socketify-broadcast"
    assert server_for("broadcast", "uvicorn") is None  # no broadcast variant: skipped with a note
    assert server_for("rr", "picows") == "picows"
    assert server_for("rr", "picows-broadcast") is None
