"""``fastws bench`` as a user runs it, against a fastws server and against
broken servers: the counts and the named errors must be right."""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from importlib import resources
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest

from fastws.bench import command

from ..conftest import ROOT, ServerProcess, unit

pytestmark = pytest.mark.timeout(90)

SHORT = ["--duration", "0.6", "--warmup", "0.2", "--json"]
#: For runs that check correctness, not figures.
SHORTER = ["--duration", "0.4", "--warmup", "0.1"]

SCHEMA = json.loads((resources.files("fastws.bench") / "result.schema.json").read_text())


def validate(doc: dict[str, Any]) -> None:
    """``doc`` is a valid fastws-bench-result/1 document (every error listed)."""
    problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in jsonschema.Draft202012Validator(SCHEMA).iter_errors(doc)]
    assert not problems, "\n".join(problems)


def bench(*args: str) -> tuple[int, dict[str, Any]]:
    """Run ``fastws bench ... --json``: its status and its document, which
    must validate against fastws/bench/result.schema.json, clean run or not."""
    res = subprocess.run(
        [sys.executable, "-m", "fastws", "bench", *args], cwd=ROOT, capture_output=True, text=True, timeout=unit(60)
    )
    assert res.stdout.strip(), res.stderr
    doc = json.loads(res.stdout)
    validate(doc)
    return res.returncode, doc


def bench_text(*args: str) -> tuple[int, str]:
    """Run ``fastws bench ...`` for its text report: status and stdout."""
    res = subprocess.run(
        [sys.executable, "-m", "fastws", "bench", *args], cwd=ROOT, capture_output=True, text=True, timeout=unit(60)
    )
    assert res.stdout.strip(), res.stderr
    return res.returncode, res.stdout


@pytest.fixture(scope="module")
def echo_server() -> Any:
    with ServerProcess("--no-access-log") as server:
        yield server


@pytest.fixture(scope="module")
def demo_run(echo_server: ServerProcess) -> Callable[..., tuple[int, dict[str, Any]]]:
    """``bench(demo URL, *args)``, each distinct run done once per module
    (several tests read the same document)."""

    @functools.cache
    def run(*args: str) -> tuple[int, dict[str, Any]]:
        return bench(echo_server.url + "/bench", *args)

    return run


@pytest.fixture(scope="module")
def broadcast_server() -> Any:
    with ServerProcess("tests.integration.apps:Broadcast", "--no-access-log") as server:
        yield server


ECHO_RUNS = {
    "pipelined": ((), (64, 16, 64)),
    "rr": ((), (1, 1, 64)),
    "large": (("--size", "4096"), (8, 1, 4096)),  # the scenario's 8 x 1, a small size: a short run
}


@pytest.mark.parametrize("scenario", list(ECHO_RUNS))
def test_every_scenario_against_fastws(demo_run: Any, scenario: str) -> None:
    extra, expected = ECHO_RUNS[scenario]
    status, result = demo_run("--scenario", scenario, *extra, *SHORT)
    assert status == 0, result
    assert result["scenario"] == scenario and not result["fatal"]
    assert result["messages"] > 0 and result["msgs_per_s"] > 0
    assert sum(result["errors"].values()) == 0, result["errors"]
    assert (result["conns"], result["pipeline"], result["size"]) == expected
    latency = result["latency_ms"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    assert result["rate"] == result["msgs_per_s"] and result["rate_unit"] == "msg/s"
    assert result["client_io"] == ("blocking threads" if scenario == "rr" else "event loop")
    assert result["server_cpu_us_per_op"] > 0  # the local server was found and measured
    assert result["mode"] == "echo" and result["compressed"] is False and result["rate_offered"] is None


def test_scenario_defaults() -> None:
    """Each scenario's load, without a run (the runs above override --size)."""
    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers())
    expected = {
        "pipelined": (64, 16, 64), "rr": (1, 1, 64), "large": (8, 1, 65536), "handshakes": (32, 1, 0),
        "idle": (1024, 1, 0), "broadcast": (101, 8, 64), "compressed": (16, 8, 1024),
    }  # fmt: skip
    assert set(expected) == set(command.SCENARIOS) == set(SCHEMA["properties"]["scenario"]["enum"])
    for scenario, load in expected.items():
        cfg = command.config_from(parser.parse_args(["bench", "ws://127.0.0.1:1/", "--scenario", scenario, "--server-pid", "none"]))
        assert (cfg.conns, cfg.pipeline, cfg.size) == load, scenario
        assert cfg.mode == ("broadcast" if scenario == "broadcast" else "echo")
        assert cfg.compress == cfg.text == (scenario == "compressed")
        assert cfg.blocking == (scenario == "rr")


def test_options_override_the_scenario(echo_server: ServerProcess) -> None:
    status, result = bench(echo_server.url, "--scenario", "rr", "--connections", "3", "--size", "100", "--text", *SHORT)
    assert status == 0 and (result["conns"], result["pipeline"], result["size"], result["text"]) == (3, 1, 100, True)


def test_a_wrong_echo_is_an_error_not_a_statistic() -> None:
    with ServerProcess("tests.integration.apps:WrongEcho", "--no-access-log") as server:
        status, result = bench(server.url, "--scenario", "rr", *SHORT)
    assert status == 1
    assert result["client_io"] == "blocking threads"  # rr reads in C threads: they check the echoes too
    assert result["errors"].get("mismatches", 0) > 0, result["errors"]
    assert any("differs" in sample for sample in result["error_samples"]), result["error_samples"]


def test_a_server_that_answers_200_is_named() -> None:
    with ServerProcess("tests.integration.apps:Answers200", "--no-access-log") as server:
        status, result = bench(server.url, "--scenario", "rr", *SHORT)
    assert status == 1 and result["fatal"], result
    assert "instead of 101" in " ".join(result["fatal"]), result["fatal"]


USAGE_ERRORS = [
    (("http://127.0.0.1:1/",), "not a ws:// or wss:// URL"),
    (("ws://127.0.0.1:1/", "--connections", "0"), "at least 1"),
    (("ws://127.0.0.1:1/", "--rate", "0"), "--rate must be positive"),
    (("ws://127.0.0.1:1/", "--scenario", "rr", "--rate", "-5"), "--rate must be positive"),
    (("ws://127.0.0.1:1/", "--scenario", "broadcast", "--connections", "1"), "at least 2"),
    (("ws://127.0.0.1:1/", "--scenario", "compressed", "--binary"), "drop --binary"),
]


@pytest.fixture(scope="module")
def usage_runs() -> dict[tuple[str, ...], tuple[int | None, str]]:
    """Every command of USAGE_ERRORS run at once (each is a Python start-up
    and nothing more): args -> (status, stderr)."""
    procs = {
        args: subprocess.Popen([sys.executable, "-m", "fastws", "bench", *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for args, _ in USAGE_ERRORS
    }  # fmt: skip
    results = {}
    for args, p in procs.items():
        _, stderr = p.communicate(timeout=unit(30))
        results[args] = (p.returncode, stderr)
    return results


@pytest.mark.parametrize("args, words", USAGE_ERRORS)
def test_usage_errors(usage_runs: Any, args: tuple[str, ...], words: str) -> None:
    status, stderr = usage_runs[args]
    assert status == 2 and stderr.startswith("fastws: error:") and words in stderr, stderr


def test_handshakes_scenario(echo_server: ServerProcess) -> None:
    status, result = bench(echo_server.url, "--scenario", "handshakes", "--connections", "4", *SHORT)
    assert status == 0, result
    assert result["handshakes"] > 0 and result["handshakes_per_s"] > 0 and result["errors"] == {}
    assert result["rate"] == result["handshakes_per_s"] and result["rate_unit"] == "handshakes/s"
    assert result["server_cpu_us_per_op"] == result["server_cpu_us_per_handshake"]
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
    assert result["rate"] is None and result["rate_unit"] is None


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
    assert result["client_io"] == ("blocking threads" if scenario == "rr" else "event loop")
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
    assert result["client_io"] == "blocking threads"
    assert result["errors"].get("connections_lost", 0) == 2, result["errors"]


# -- the JSON schema ------------------------------------------------------------


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        doc = doc[key]
    doc[last] = value


@pytest.mark.parametrize(
    "path, value",
    [
        ("surprise", 1),  # a key the schema does not list
        ("latency_ms.p95", 1.0),  # nor inside latency_ms
        ("conns", "1"),  # wrong types
        ("msgs_per_s", "fast"),
        ("client_io", "threads"),
        ("machine.keep_awake", "yes"),
        ("errors.mismatches", 0),  # a kind listed only when it happened
        ("errors.typos", 3),  # an error kind the schema does not name
        ("schema", "fastws-bench-result/2"),
        ("rate_unit", "msgs/s"),
    ],
)
def test_the_schema_rejects_a_wrong_document(demo_run: Any, path: str, value: Any) -> None:
    status, good = demo_run("--scenario", "rr", *SHORT)  # the same run as test_every_scenario_against_fastws[rr]
    assert status == 0, good
    validate(good)
    bad = copy.deepcopy(good)
    _set(bad, path, value)
    assert not jsonschema.Draft202012Validator(SCHEMA).is_valid(bad), f"{path} = {value!r} was accepted"


@pytest.mark.parametrize("key", ["schema", "fastws_version", "rate", "rate_unit", "server_cpu_us_per_op", "machine", "messages"])
def test_the_schema_requires_the_common_keys(demo_run: Any, key: str) -> None:
    _, good = demo_run("--scenario", "rr", *SHORT)
    bad = copy.deepcopy(good)
    del bad[key]
    assert not jsonschema.Draft202012Validator(SCHEMA).is_valid(bad), f"a document without {key!r} was accepted"


def test_every_document_names_its_schema_and_version(demo_run: Any) -> None:
    import fastws

    _, doc = demo_run("--scenario", "rr", *SHORT)
    assert doc["schema"] == "fastws-bench-result/1" and doc["fastws_version"] == fastws.__version__


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259)")


@pytest.fixture(scope="module")
def no_deflate_run() -> tuple[int, str]:
    """``--scenario compressed`` against a server that declines
    permessage-deflate: the status and the raw --json output."""
    with ServerProcess("--ws-per-message-deflate", "false", "--no-access-log") as server:
        res = subprocess.run(
            [sys.executable, "-m", "fastws", "bench", server.url, "--scenario", "compressed", "--connections", "2", *SHORTER, "--json"],
            cwd=ROOT, capture_output=True, text=True, timeout=unit(60),
        )  # fmt: skip
    assert res.stdout.strip(), res.stderr
    return res.returncode, res.stdout


def test_a_run_that_could_not_start_is_still_strict_json(no_deflate_run: tuple[int, str]) -> None:
    status, out = no_deflate_run
    assert status == 1, out
    json.loads(out, parse_constant=_reject_constant)


# -- broadcast ------------------------------------------------------------------


def _check_broadcast(result: dict[str, Any], conns: int) -> None:
    assert result["scenario"] == "broadcast" and result["mode"] == "broadcast" and not result["fatal"]
    assert result["errors"] == {}, (result["errors"], result["error_samples"])
    assert result["rate_unit"] == "deliveries/s" and result["rate"] == result["msgs_per_s"]
    assert result["conns"] == result["conns_open"] == conns
    assert result["broadcast_sent"] > 0 and result["broadcast_sent_per_s"] > 0
    # Every message reaches every connection, the sender's included.
    expected = conns * result["broadcast_sent_per_s"]
    assert expected / 2 < result["msgs_per_s"] < expected * 2, (result["msgs_per_s"], expected)
    assert result["latency_samples"] > 0 and 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["max"]


@pytest.mark.parametrize("procs", [1, 2])
def test_broadcast_counts_deliveries(broadcast_server: ServerProcess, procs: int) -> None:
    status, result = bench(broadcast_server.url, "--scenario", "broadcast", "--connections", "9", "--procs", str(procs), *SHORTER, "--json")
    assert status == 0, result
    assert result["procs"] == procs
    _check_broadcast(result, 9)


def test_broadcast_names_missing_deliveries() -> None:
    with ServerProcess("tests.integration.apps:BroadcastSkipsOne", "--no-access-log") as server:
        status, result = bench(server.url, "--scenario", "broadcast", "--connections", "5", *SHORTER, "--json")
    assert status == 1, result
    assert result["errors"].get("missing_deliveries", 0) > 0, result["errors"]
    assert any("deliveries missing" in s for s in result["error_samples"]), result["error_samples"]


def test_broadcast_against_an_echo_server_does_not_pass(demo_run: Any) -> None:
    """An echo server sends the sender its own messages only: every
    listener misses every one."""
    status, result = demo_run("--scenario", "broadcast", "--connections", "4", *SHORTER, "--json")
    assert status == 1, result
    sent = result["broadcast_sent"]
    assert sent > 0 and result["errors"].get("missing_deliveries", 0) >= 3 * sent, result["errors"]


# -- compressed -----------------------------------------------------------------


def test_compressed_against_fastws(demo_run: Any) -> None:
    status, result = demo_run("--scenario", "compressed", "--connections", "4", *SHORTER, "--json")
    assert status == 0, result
    assert result["compressed"] is True and result["text"] is True and result["mode"] == "echo"
    assert result["errors"] == {} and not result["fatal"], result
    assert result["messages"] > 0 and result["rate_unit"] == "msg/s" and result["size"] == 1024


def test_compressed_needs_permessage_deflate(no_deflate_run: tuple[int, str]) -> None:
    status, out = no_deflate_run
    result = json.loads(out)
    validate(result)
    assert status == 1, result
    assert result["conns_open"] == 0 and result["fatal"], result
    assert "permessage-deflate" in " ".join(result["fatal"]), result["fatal"]


def test_compressed_checks_the_inflated_echo() -> None:
    with ServerProcess("tests.integration.apps:ShoutsCompressed", "--no-access-log") as server:
        status, result = bench(server.url, "--scenario", "compressed", "--connections", "2", *SHORTER, "--json")
    assert status == 1, result
    assert result["errors"].get("mismatches", 0) > 0, result["errors"]
    assert any("differs" in s for s in result["error_samples"]), result["error_samples"]


# -- --rate ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "scenario, rate, conns, io",
    [("pipelined", 2000, 4, "event loop"), ("rr", 1000, 1, "blocking threads")],
)
def test_rate_offers_a_fixed_rate(echo_server: ServerProcess, scenario: str, rate: int, conns: int, io: str) -> None:
    status, result = bench(echo_server.url, "--scenario", scenario, "--rate", str(rate), "--connections", str(conns), *SHORT)
    assert status == 0, result
    assert result["rate_offered"] == rate and result["client_io"] == io and result["conns"] == conns
    assert abs(result["msgs_per_s"] - rate) <= 0.25 * rate, result["msgs_per_s"]
    assert result["rate_skipped"] == 0 and result["rate_lag_max_ms"] is not None
    assert result["errors"] == {}, result["error_samples"]


def test_rr_rate_beyond_the_server_still_measures(echo_server: ServerProcess) -> None:
    status, result = bench(echo_server.url, "--scenario", "rr", "--rate", "1000000", *SHORTER, "--json")
    assert result["messages"] > 0 and result["msgs_per_s"] > 0, (status, result["messages"], result["latency_ms"])


# -- --keep-awake ---------------------------------------------------------------


def test_keep_awake_spins_during_the_run_only(echo_server: ServerProcess, tmp_path: Any) -> None:
    psutil = pytest.importorskip("psutil")
    marker = f"keep-awake-{uuid.uuid4().hex}"  # in the argv of the load process and of its forks
    seen: dict[int, Any] = {}
    idle: set[int] = set()
    affinity: dict[int, frozenset[int]] = {}
    # Output to files, not pipes: a busy loop left behind would hold a pipe open.
    with open(tmp_path / "out", "w+") as out, open(tmp_path / "err", "w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fastws", "bench", f"{echo_server.url}/?{marker}", "--scenario", "rr", "--keep-awake", *SHORTER, "--json"],
            cwd=ROOT, stdout=out, stderr=err, text=True,
        )  # fmt: skip
        try:
            parent = psutil.Process(proc.pid)
            deadline = time.monotonic() + unit(60)
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    children = parent.children(recursive=True)
                except psutil.NoSuchProcess:
                    break
                for child in children:
                    seen.setdefault(child.pid, child)
                    try:
                        if os.sched_getscheduler(child.pid) == os.SCHED_IDLE:
                            idle.add(child.pid)
                            affinity[child.pid] = frozenset(os.sched_getaffinity(child.pid))
                    except OSError:
                        pass
                time.sleep(0.02)
            status = proc.wait(timeout=unit(30))
            time.sleep(0.1)
            left = [p for p in seen.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            strays = [p for p in psutil.process_iter(["cmdline"]) if any(marker in arg for arg in p.info["cmdline"] or ())]
        finally:
            for p in [proc, *seen.values()]:  # never leave a busy loop behind, even when the test fails
                try:
                    p.kill()
                except (OSError, psutil.Error):
                    pass
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    assert status == 0, stderr
    result = json.loads(stdout)
    validate(result)
    host = result["machine"]
    assert host["keep_awake"] is True and host["keep_awake_cpu_s"] >= 0
    assert host["awake_probe"]["cpus"] == host["cpus"] and host["awake_probe"]["same_cpu_us"]["p50"] > 0
    assert result["client_io"] == "blocking threads" and result["errors"] == {}
    # One busy loop per CPU, each pinned to its CPU, at idle priority ...
    assert len(seen) == host["cpus"], seen
    assert idle == set(seen), (idle, seen)
    assert sorted(next(iter(a)) for a in affinity.values()) == sorted(os.sched_getaffinity(0)) and all(len(a) == 1 for a in affinity.values())
    # ... and none left once the command is done.
    assert not left, left
    assert not strays, strays


def test_without_keep_awake_the_probe_is_still_there(demo_run: Any) -> None:
    _, result = demo_run("--scenario", "rr", *SHORT)
    host = result["machine"]
    assert host["keep_awake"] is False and "awake_probe" not in host and "keep_awake_cpu_s" not in host
    assert host["cpus"] >= 1 and host["probe_round_trips"] > 0 and host["same_cpu_us"]["p50"] > 0
    if host["cpus"] > 1:
        assert host["cross_cpu_us"]["p50"] > 0 and host["wake_us"] is not None


# -- the text report -------------------------------------------------------------

HOST_LINE = re.compile(r"^  host +\d+ CPUs?; .*round trip", re.MULTILINE)


def test_text_report_of_broadcast(broadcast_server: ServerProcess) -> None:
    status, out = bench_text(broadcast_server.url, "--scenario", "broadcast", "--connections", "4", *SHORTER)
    assert status == 0, out
    assert out.startswith("scenario broadcast:") and "1 sender + 3 listeners" in out
    assert re.search(r"throughput +[\d,]+ deliveries/s \([\d,]+ msg/s sent, each to 4 connections\)", out), out
    assert HOST_LINE.search(out), out


def test_text_report_of_compressed(echo_server: ServerProcess) -> None:
    status, out = bench_text(echo_server.url, "--scenario", "compressed", "--connections", "2", *SHORTER)
    assert status == 0, out
    assert out.startswith("scenario compressed:") and "compressed JSON-like text" in out
    assert re.search(r"throughput +[\d,]+ msg/s", out) and "errors      none" in out, out
    assert HOST_LINE.search(out), out
