"""``fastws bench URL``: load-test a WebSocket server with a named scenario.

Each scenario is bounded in time (``--warmup`` + ``--duration``) and in
connections; options given on the command line override its settings.
Exit status: 0 when the run had no error, 1 when it had errors (wrong
echoes, protocol errors, unexpected closes, lost connections) or could not
run, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any
from urllib.parse import urlsplit

from .._version import __version__
from . import chart, loadgen, machine, scenarios

__all__ = ["SCENARIOS", "add_parser", "run"]

#: name -> (what it measures, its settings).
SCENARIOS: dict[str, tuple[str, dict[str, Any]]] = {
    "pipelined": ("throughput: many connections, many messages in flight each", {"conns": 64, "pipeline": 16, "size": 64}),
    "rr": ("request/response latency: one message in flight", {"conns": 1, "pipeline": 1, "size": 64}),
    "large": ("large messages (64 KiB; --size 1048576 for 1 MiB), one in flight per connection", {"conns": 8, "pipeline": 1, "size": 65536}),
    "handshakes": ("connect, upgrade, close, repeat: handshakes/s", {"conns": 32, "pipeline": 1, "size": 0}),
    "idle": ("open N connections and hold them: the server's RSS per connection", {"conns": 1024, "pipeline": 1, "size": 0}),
    "broadcast": (
        "one sender, N listeners: deliveries/s of a server that sends every message to every connection",
        {"conns": 101, "pipeline": 8, "size": 64, "mode": "broadcast"},
    ),
    "compressed": (
        "permessage-deflate on: JSON-like text, compressed each way",
        {"conns": 16, "pipeline": 8, "size": 1024, "compress": True, "text": True},
    ),
}


def add_parser(sub: Any) -> None:
    b = sub.add_parser(
        "bench",
        help="load-test any WebSocket server",
        description="Load-test a WebSocket echo endpoint (yours or anyone's): throughput, latency percentiles, errors "
        "by kind, and whether the load generator itself was the limit. See docs/bench.md.",
    )
    b.add_argument("url", help="ws:// or wss:// URL of an endpoint that echoes what it receives")
    b.add_argument(
        "--scenario", default="pipelined", choices=sorted(SCENARIOS),
        help="; ".join(f"{name}: {what}" for name, (what, _) in SCENARIOS.items()) + " (default: pipelined)",
    )  # fmt: skip
    b.add_argument("--connections", "-c", type=int, help="connections (default: the scenario's)")
    b.add_argument("--in-flight", type=int, help="messages in flight per connection (default: the scenario's)")
    b.add_argument("--size", type=int, help="message size in bytes (default: the scenario's)")
    b.add_argument("--duration", type=float, default=5.0, help="measured seconds (default: 5)")
    b.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring (default: 1)")
    b.add_argument(
        "--rate", type=float,
        help="offer this many messages/s in all (broadcast: from the sender) instead of keeping --in-flight "
        "messages in flight (open loop: round trips timed from each write, and how late the writes were is "
        "reported; rr: each message timed from when it was due)",
    )  # fmt: skip
    kind = b.add_mutually_exclusive_group()
    kind.add_argument("--text", action="store_true", help="send text messages")
    kind.add_argument("--binary", action="store_true", help="send binary messages (the default)")
    b.add_argument("--header", action="append", default=[], metavar="K:V", help="extra request header (repeatable)")
    b.add_argument("--subprotocol", help="Sec-WebSocket-Protocol to ask for")
    b.add_argument("--procs", type=int, default=1, help="load-generator processes (default: 1)")
    b.add_argument("--server-pid", default="auto", help="PID of the server to measure: 'auto' (a local listener), a PID, or 'none'")
    b.add_argument(
        "--keep-awake", action="store_true",
        help="run an idle-priority busy loop on every CPU during the run, so no CPU halts between messages "
        "(virtual machines: waking a halted vCPU can dominate rr and handshake latency; see docs/bench.md)",
    )  # fmt: skip
    b.add_argument("--insecure", action="store_true", help="wss://: accept any certificate (test certificates)")
    b.add_argument("--cafile", help="wss://: trust the certificates in this PEM file")
    out = b.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON document instead of the report")
    out.add_argument("--csv", action="store_true", help="print a CSV header and one row instead of the report")
    b.add_argument("--chart", metavar="FILE", help="draw the latency distribution and the rate over time to FILE.svg or FILE.png (PNG needs Pillow)")


def config_from(args: argparse.Namespace) -> loadgen.LoadConfig:
    """The load of the scenario, with the command line's overrides."""
    settings = dict(SCENARIOS[args.scenario][1])
    for option, key in (("connections", "conns"), ("in_flight", "pipeline"), ("size", "size")):
        value = getattr(args, option)
        if value is not None:
            settings[key] = value
    if settings["conns"] < 1 or settings["pipeline"] < 1 or settings["size"] < 0:
        raise ValueError("--connections and --in-flight must be at least 1, --size at least 0")
    if args.rate is not None and args.rate <= 0:
        raise ValueError("--rate must be positive (messages per second)")
    if settings.get("mode") == "broadcast":
        if settings["conns"] < 2:
            raise ValueError("broadcast needs --connections of at least 2 (one sender, listeners)")
        if settings["size"] < 8:
            raise ValueError("broadcast messages carry their send time: --size at least 8")
    if args.text:
        settings["text"] = True
    elif args.binary and settings.get("compress"):
        raise ValueError("the compressed scenario sends text (JSON-like); drop --binary")
    if args.duration <= 0 or args.warmup < 0 or args.procs < 1:
        raise ValueError("--duration must be positive, --warmup at least 0, --procs at least 1")
    headers = []
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--header {item!r}: use NAME:VALUE")
        headers.append((name.strip(), value.strip()))
    parts = urlsplit(args.url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"{args.url!r} is not a ws:// or wss:// URL")
    pid: int | None
    if args.server_pid == "none":
        pid = None
    elif args.server_pid == "auto":
        local = parts.hostname in ("127.0.0.1", "localhost", "::1")
        pid = loadgen.find_listener_pid(parts.hostname, parts.port or (443 if parts.scheme == "wss" else 80)) if local else None
    else:
        pid = int(args.server_pid)
    # rr on ws:// reads with blocking C threads: no event loop in the round trip.
    settings["blocking"] = args.scenario == "rr" and settings["pipeline"] == 1 and parts.scheme == "ws"
    return loadgen.LoadConfig(
        url=args.url, duration=args.duration, warmup=args.warmup, procs=args.procs, rate=args.rate,
        server_pid=pid, cafile=args.cafile, insecure=args.insecure, headers=tuple(headers), subprotocol=args.subprotocol,
        **settings,
    )  # fmt: skip


def _progress(elapsed: float, total: float, rate: float, errors: int) -> None:
    """The live line on a terminal: elapsed, current rate, errors."""
    sys.stderr.write(f"\r\x1b[K  {min(elapsed, total):5.1f} / {total:.1f} s   {rate:>12,.0f} msg/s   errors {errors}")
    sys.stderr.flush()


def _flatten(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """One CSV row: nested keys joined with '.', lists as ';'-joined text."""
    row: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            row.update(_flatten(value, name + "."))
        elif isinstance(value, list):
            row[name] = ";".join(map(str, value))
        else:
            row[name] = value
    return row


#: Names the shape of the JSON document (fastws/bench/result.schema.json).
SCHEMA = "fastws-bench-result/1"


def _common(result: dict[str, Any]) -> None:
    """The keys every scenario's document has: the headline rate, its unit,
    and the server's CPU time per operation (the figure that still compares
    servers on a busy machine)."""
    scenario = result["scenario"]
    if scenario == "handshakes":
        rate, unit, per_op = result["handshakes_per_s"], "handshakes/s", result["server_cpu_us_per_handshake"]
    elif scenario == "idle":
        rate, unit, per_op = None, None, None
    else:
        rate = result["msgs_per_s"]
        unit = "deliveries/s" if result.get("mode") == "broadcast" else "msg/s"
        cpu, n = result.get("server_cpu_s"), result.get("messages")
        per_op = 1e6 * cpu / n if cpu is not None and n else None
    result.update(schema=SCHEMA, fastws_version=__version__, rate=rate, rate_unit=unit, server_cpu_us_per_op=per_op)


def _elapsed(args: argparse.Namespace) -> float:
    return float(args.warmup + args.duration)


def _run_scenario(args: argparse.Namespace, cfg: loadgen.LoadConfig) -> tuple[dict[str, Any], Any]:
    if args.scenario == "handshakes":
        return scenarios.run_handshakes(cfg), scenarios.format_handshakes
    if args.scenario == "idle":
        return scenarios.run_idle(cfg), scenarios.format_idle
    progress = _progress if sys.stderr.isatty() and not (args.json or args.csv) else None
    result = loadgen.run_load(cfg, progress)
    if progress is not None:
        sys.stderr.write("\r\x1b[K")
    return result, loadgen.format_report


def run(args: argparse.Namespace) -> int:
    try:
        if args.chart is not None and (not args.chart.lower().endswith((".svg", ".png")) or args.scenario in ("handshakes", "idle")):
            raise ValueError("--chart writes an .svg or .png file, for the message scenarios (not handshakes or idle)")
        cfg = config_from(args)
    except ValueError as exc:
        sys.stderr.write(f"fastws: error: {exc}\n")
        return 2
    if loadgen.CODEC_NAME != "compiled":
        sys.stderr.write("fastws bench: the compiled codec is not built; the pure-Python parser makes the load generator slow\n")
    host = machine.wake_probe(n=100)
    awake = machine.KeepAwake() if args.keep_awake else None
    if awake is not None:
        awake.__enter__()
        host["awake_probe"] = machine.wake_probe(n=100)
    try:
        result, report = _run_scenario(args, cfg)
    finally:
        if awake is not None:
            host["keep_awake_cpu_s"] = awake.cpu_seconds()
            awake.__exit__()
    host["keep_awake"] = awake is not None
    result["machine"] = host
    result["scenario"] = args.scenario
    _common(result)
    if awake is not None and result.get("machine_busy_pct") is not None and result.get("window_s"):
        # The busy loops ran for the whole command, the window is part of it:
        # charge them pro rata, and leave them out of "other processes".
        share = result["window_s"] / max(result["window_s"], _elapsed(args))
        spin_pct = 100 * host["keep_awake_cpu_s"] * share / result["window_s"]
        result["keep_awake_cpu_pct"] = spin_pct
        if result.get("other_cpu_pct") is not None:
            result["other_cpu_pct"] = max(0.0, result["other_cpu_pct"] - spin_pct)
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    elif args.csv:
        row = _flatten(result)
        writer = csv.writer(sys.stdout)
        writer.writerow(row.keys())
        writer.writerow(row.values())
    else:
        sys.stdout.write(f"scenario {args.scenario}: {SCENARIOS[args.scenario][0]}\n" + report(result) + "\n" + machine.format_host(host) + "\n")
    if args.chart is not None:
        try:
            chart.write_chart(args.chart, result)
        except RuntimeError as exc:
            sys.stderr.write(f"fastws: error: {exc}\n")
            return 2
    errors = sum(result.get("errors", {}).values())
    return 1 if result.get("fatal") or errors else 0
