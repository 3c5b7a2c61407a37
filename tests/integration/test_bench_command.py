"""``fastws bench`` as a user runs it, against a fastws server and against
broken servers: the counts and the named errors must be right."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from ..conftest import ROOT, ServerProcess, unit

pytestmark = pytest.mark.timeout(90)

SHORT = ["--duration", "0.6", "--warmup", "0.2", "--json"]


def bench(*args: str) -> tuple[int, dict[str, Any]]:
    res = subprocess.run(
        [sys.executable, "-m", "fastws", "bench", *args], cwd=ROOT, capture_output=True, text=True, timeout=unit(60)
    )
    assert res.stdout.strip(), res.stderr
    return res.returncode, json.loads(res.stdout)


@pytest.fixture(scope="module")
def echo_server() -> Any:
    with ServerProcess("--no-access-log") as server:
        yield server


@pytest.mark.parametrize("scenario", ["pipelined", "rr", "large"])
def test_every_scenario_against_fastws(echo_server: ServerProcess, scenario: str) -> None:
    status, result = bench(echo_server.url + "/bench", "--scenario", scenario, *SHORT)
    assert status == 0, result
    assert result["scenario"] == scenario and not result["fatal"]
    assert result["messages"] > 0 and result["msgs_per_s"] > 0
    assert sum(result["errors"].values()) == 0, result["errors"]
    expected = {"pipelined": (64, 16, 64), "rr": (1, 1, 64), "large": (8, 1, 65536)}[scenario]
    assert (result["conns"], result["pipeline"], result["size"]) == expected
    latency = result["latency_ms"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]


def test_options_override_the_scenario(echo_server: ServerProcess) -> None:
    status, result = bench(echo_server.url, "--scenario", "rr", "--connections", "3", "--size", "100", "--text", *SHORT)
    assert status == 0 and (result["conns"], result["pipeline"], result["size"], result["text"]) == (3, 1, 100, True)


def test_a_wrong_echo_is_an_error_not_a_statistic() -> None:
    with ServerProcess("tests.integration.apps:WrongEcho", "--no-access-log") as server:
        status, result = bench(server.url, "--scenario", "rr", *SHORT)
    assert status == 1
    assert result["errors"].get("mismatches", 0) > 0, result["errors"]
    assert any("differs" in sample for sample in result["error_samples"]), result["error_samples"]


def test_a_server_that_answers_200_is_named() -> None:
    with ServerProcess("tests.integration.apps:Answers200", "--no-access-log") as server:
        status, result = bench(server.url, "--scenario", "rr", *SHORT)
    assert status == 1 and result["fatal"], result
    assert "instead of 101" in " ".join(result["fatal"]), result["fatal"]


@pytest.mark.parametrize(
    "args, words",
    [
        (["http://127.0.0.1:1/"], "not a ws:// or wss:// URL"),
        (["ws://127.0.0.1:1/", "--connections", "0"], "at least 1"),
    ],
)
def test_usage_errors(args: list[str], words: str) -> None:
    res = subprocess.run([sys.executable, "-m", "fastws", "bench", *args], cwd=ROOT, capture_output=True, text=True, timeout=unit(30))
    assert res.returncode == 2 and res.stderr.startswith("fastws: error:") and words in res.stderr, res.stderr


def test_handshakes_scenario(echo_server: ServerProcess) -> None:
    status, result = bench(echo_server.url, "--scenario", "handshakes", "--connections", "4", *SHORT)
    assert status == 0, result
    assert result["handshakes"] > 0 and result["handshakes_per_s"] > 0 and result["errors"] == {}
    assert result["server_cpu_us_per_handshake"] is not None  # the local server was found and measured
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["max"]


def test_handshakes_against_a_server_that_answers_200() -> None:
    with ServerProcess("tests.integration.apps:Answers200", "--no-access-log") as server:
        status, result = bench(server.url, "--scenario", "handshakes", "--connections", "2", *SHORT)
    assert status == 1 and result["handshakes"] == 0
    assert any("instead of 101" in s for s in result["error_samples"]), result


def test_idle_scenario_measures_memory_per_connection(echo_server: ServerProcess) -> None:
    status, result = bench(echo_server.url, "--scenario", "idle", "--connections", "200", "--duration", "0.5", "--json")
    assert status == 0, result
    assert result["conns_open"] == 200 and result["errors"] == {}
    assert result["server_kib_per_connection"] is not None and result["server_kib_per_connection"] < 64


def test_csv_output(echo_server: ServerProcess) -> None:
    import csv
    import io

    res = subprocess.run(
        [sys.executable, "-m", "fastws", "bench", echo_server.url, "--scenario", "rr", "--duration", "0.5", "--warmup", "0.2", "--csv"],
        cwd=ROOT, capture_output=True, text=True, timeout=unit(60),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(rows) == 1 and int(rows[0]["messages"]) > 0 and float(rows[0]["latency_ms.p99"]) > 0
    assert rows[0]["scenario"] == "rr"


@pytest.mark.parametrize("scenario", ["rr", "handshakes"])
def test_headers_reach_the_server(scenario: str) -> None:
    with ServerProcess("tests.integration.apps:NeedsToken", "--no-access-log") as server:
        status, result = bench(server.url, "--scenario", scenario, "--connections", "2", "--header", "X-Token: t", *SHORT)
        assert status == 0, result
        status, result = bench(server.url, "--scenario", scenario, "--connections", "2", *SHORT)
        assert status == 1 and "403" in json.dumps(result), result


@pytest.mark.parametrize("scenario", ["rr", "pipelined"])
def test_dropped_echoes_are_named(scenario: str) -> None:
    with ServerProcess("tests.integration.apps:DropsEvery100th", "--no-access-log") as server:
        status, result = bench(server.url, "--scenario", scenario, "--connections", "4", *SHORT)
    assert status == 1, result
    assert result["errors"].get("missing_echoes", 0) >= 4, result["errors"]  # at least one per connection
    assert any("got no echo" in s for s in result["error_samples"]), result["error_samples"]


def test_chart_is_an_svg_with_both_panels(echo_server: ServerProcess, tmp_path: Any) -> None:
    import xml.etree.ElementTree as ET

    path = tmp_path / "run.svg"
    status, result = bench(echo_server.url, "--scenario", "pipelined", "--connections", "4", "--duration", "1.2", "--warmup", "0.2",
                           "--json", "--chart", str(path))  # fmt: skip
    assert status == 0, result
    assert len(result["timeline"]) >= 2 and result["latency_curve_ms"][-1][0] == 1.0
    root = ET.fromstring(path.read_text())
    lines = [el for el in root.iter() if el.tag.endswith("polyline")]
    assert len(lines) == 2, path.read_text()[:500]
    texts = " ".join(el.text or "" for el in root.iter() if el.tag.endswith("text"))
    assert "Round-trip latency by percentile" in texts and "Messages per second over time" in texts


def test_an_abrupt_disconnect_is_an_error() -> None:
    with ServerProcess("tests.integration.apps:HangsUpAt50", "--no-access-log") as server:
        status, result = bench(server.url, "--scenario", "rr", "--connections", "2", *SHORT)
    assert status == 1, result
    assert result["errors"].get("connections_lost", 0) == 2, result["errors"]
