"""Compare echo servers under the same load, in interleaved rounds.

For each of ``--rounds`` rounds, every server in ``--servers`` is run once, in
the same order (round 1: A, B, C; round 2: A, B, C; ...), so that a slow
minute of the machine hurts every server alike instead of one of them. Each
run starts the server as a fresh subprocess (``python -m bench.servers``),
pinned to its own CPU, runs the load generator (``python -m bench.loadgen``,
pinned to the other CPUs) against it, then stops it. The table shows, per
server, the MEDIAN of its rounds and ratios of medians to a reference peer;
figures per server CPU-second are shown beside raw throughput because they
hold even when the load generator, not the server, was the limit.

Usage::

    python -m bench.run                         # 5 rounds x 5 s, default servers
    python -m bench.run --quick                 # 2 rounds x 2 s
    python -m bench.run --servers fastws-callback,picows --rounds 7 --out bench/results/mine

Writes ``<out>.csv`` (one row per run), ``<out>.json`` (everything),
``<out>.txt`` (the table) and ``<out>.svg`` (a bar chart).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import platform
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.servers import SERVERS

__all__ = ["main"]

DEFAULT_SERVERS = ["fastws-callback", "fastws-coroutine", "picows", "websockets", "aiohttp"]
ROOT = Path(__file__).resolve().parent.parent
#: Percent of a core used by neither server nor loadgen above which we warn.
OTHER_LOAD_WARN = 25.0


# -- machine and software description -------------------------------------


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def describe_machine(workdir: Path) -> dict[str, Any]:
    """Date, commit, CPU, cores, kernel and library versions of this run;
    the fastws facts are asked of the copy in ``workdir`` that will run."""
    probe = subprocess.run(
        [sys.executable, "-c",
         "import fastws._impl as i; print(i.CODEC_NAME); print(getattr(getattr(i, 'Connection', None), '__module__', '-'))"],
        cwd=workdir, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if probe.returncode != 0:
        raise SystemExit(f"run: cannot import fastws from {workdir}: {probe.stderr.strip()[-500:]}")
    codec, protocol = probe.stdout.split()[:2]
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "--", "fastws"))
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": (_git("rev-parse", "--short", "HEAD") or "?") + ("+dirty(fastws/)" if dirty else ""),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "fastws_codec": codec,
        # Which Connection class fastws serves with (compiled protocol or protocol.py).
        "fastws_protocol": protocol,
        "versions": {d: _version(d) for d in ("uvloop", "websockets", "picows", "aiofastnet", "aiohttp", "psutil")},
    }


def snapshot(dest: Path) -> Path:
    """Copy ``fastws/`` and ``bench/`` (built modules included) into ``dest``.

    Every run of a comparison then uses the same code, even if someone edits
    or rebuilds the checkout meanwhile; subprocesses run with ``dest`` as
    their working directory, which ``python -m`` puts first on sys.path.
    """
    ignore = shutil.ignore_patterns("__pycache__", "*.c", "*.html", "results", "*.pyc")
    for pkg in ("fastws", "bench"):
        shutil.copytree(ROOT / pkg, dest / pkg, ignore=ignore)
    return dest


# -- one run ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pinner(cpus: set[int] | None) -> Any:
    if not cpus:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, cpus)

    return pin


def _wait_ready(proc: subprocess.Popen[bytes], timeout: float) -> str | None:
    """Wait for the server's ``ready`` line on its stdout; return it."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    buf = b""
    try:
        while time.monotonic() < deadline:
            if not sel.select(max(0.0, deadline - time.monotonic())):
                break
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                return None  # exited
            buf += chunk
            if b"ready" in buf and b"\n" in buf[buf.index(b"ready") :]:
                start = buf.index(b"ready")
                return buf[start : buf.index(b"\n", start)].decode("utf-8", "replace")
    finally:
        sel.close()
    return None


def _stop(proc: subprocess.Popen[bytes]) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def wait_quiet(max_wait: float, below: float) -> float:
    """Wait (up to ``max_wait`` s) until the machine's CPU use over one second
    is under ``below`` percent of all cores; return the last reading."""
    import psutil

    deadline = time.monotonic() + max_wait
    while True:
        busy = float(psutil.cpu_percent(interval=1.0))
        if busy < below or time.monotonic() >= deadline:
            return busy


def run_one(
    server: str,
    opts: argparse.Namespace,
    server_cpus: set[int] | None,
    loadgen_cpus: set[int] | None,
    workdir: Path = ROOT,
) -> dict[str, Any]:
    """Start ``server``, load it, stop it; the loadgen's figures plus health."""
    port = _free_port()
    url = f"ws://127.0.0.1:{port}/"
    row: dict[str, Any] = {"server": server, "port": port}
    with tempfile.TemporaryFile() as errlog:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.servers", server, "--port", str(port)],
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=errlog,
            preexec_fn=_pinner(server_cpus),
        )
        try:
            ready = _wait_ready(proc, 20)
            if ready is None:
                row["fatal"] = [f"server did not start (exit status {proc.poll()})"]
            else:
                row["fastws_build"] = ready.rpartition("fastws-build=")[2] or "-"
                cmd = [
                    sys.executable, "-m", "bench.loadgen", url,
                    "--conns", str(opts.conns), "--pipeline", str(opts.pipeline), "--size", str(opts.size),
                    "--duration", str(opts.duration), "--warmup", str(opts.warmup),
                    "--procs", str(opts.procs), "--server-pid", str(proc.pid), "--json",
                ]  # fmt: skip
                if opts.text:
                    cmd.append("--text")
                if loadgen_cpus:
                    cmd += ["--cpus", ",".join(map(str, sorted(loadgen_cpus)))]
                lg = subprocess.run(
                    cmd, cwd=workdir, capture_output=True, text=True, timeout=opts.warmup + opts.duration + 90
                )
                try:
                    row.update(json.loads(lg.stdout))
                except json.JSONDecodeError:
                    row["fatal"] = [f"loadgen failed (status {lg.returncode}): {lg.stderr.strip()[-500:]}"]
            alive = proc.poll() is None
            if not alive:
                row.setdefault("fatal", []).append(f"server died during the run (exit status {proc.returncode})")
        finally:
            status = _stop(proc)
        errlog.seek(0)
        log = errlog.read().decode("utf-8", "replace")
    row["server_exit"] = status
    row["server_log_lines"] = len(log.splitlines())
    row["server_log_tail"] = "\n".join(log.splitlines()[-15:])
    return row


# -- summary ---------------------------------------------------------------


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(vals) if vals else None


def summarise(runs: list[dict[str, Any]], servers: list[str]) -> list[dict[str, Any]]:
    """Per server: medians over its good rounds, spread, counts of trouble."""
    out = []
    for name in servers:
        mine = [r for r in runs if r["server"] == name]
        good = [r for r in mine if not r.get("fatal")]
        rates = [r["msgs_per_s"] for r in good]
        med = _median(rates)
        s: dict[str, Any] = {
            "server": name,
            "rounds": len(mine),
            "good_rounds": len(good),
            "msgs_per_s": med,
            "msgs_per_s_min": min(rates) if rates else None,
            "msgs_per_s_max": max(rates) if rates else None,
            "spread_pct": 100 * (max(rates) - min(rates)) / med if rates and med else None,
            "p50_ms": _median([r["latency_ms"]["p50"] for r in good]),
            "p99_ms": _median([r["latency_ms"]["p99"] for r in good]),
            "server_cpu_pct": _median([r["server_cpu_pct"] for r in good]),
            "loadgen_cpu_pct": _median([r["loadgen_cpu_pct"] for r in good]),
            "other_cpu_pct": _median([r.get("other_cpu_pct") for r in good]),
            "loadgen_cores": max((r["loadgen_cores"] for r in good), default=1),
            "msgs_per_server_cpu_s": _median([r["msgs_per_server_cpu_s"] for r in good]),
            "server_rss_mib": _median([r["server_rss_mib"] for r in good]),
            "loadgen_saturated_rounds": sum(1 for r in good if r.get("loadgen_saturated")),
            "error_rounds": sum(1 for r in good if r.get("errors")),
            "errors": _merge_errors(good),
            "server_log_lines": sum(r.get("server_log_lines", 0) for r in mine),
            "failed": [f for r in mine for f in r.get("fatal") or []],
        }
        out.append(s)
    return out


def _merge_errors(runs: list[dict[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for r in runs:
        for k, v in (r.get("errors") or {}).items():
            total[k] = total.get(k, 0) + v
    return total


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def _n(x: float | None, fmt: str = ",.0f") -> str:
    return "-" if x is None else format(x, fmt)


def format_table(summary: list[dict[str, Any]], reference: str, second: str) -> str:
    """The comparison table (medians of rounds) plus a bar chart and notes."""
    by = {s["server"]: s for s in summary}
    ref = by.get(reference, {})
    sec = by.get(second, {})
    headers = [
        "server", "msg/s", "spread", f"vs {reference}", f"vs {second}", "p50 ms", "p99 ms",
        "srv CPU", "LG CPU", "other", "msg/srv-CPU-s", f"CPU-norm vs {reference}", "RSS MiB",
    ]  # fmt: skip
    rows = []
    for s in summary:
        rows.append([
            s["server"],
            _n(s["msgs_per_s"]),
            "-" if s["spread_pct"] is None else f"{s['spread_pct']:.0f}%",
            _ratio(s["msgs_per_s"], ref.get("msgs_per_s")),
            _ratio(s["msgs_per_s"], sec.get("msgs_per_s")),
            _n(s["p50_ms"], ".2f"),
            _n(s["p99_ms"], ".2f"),
            "-" if s["server_cpu_pct"] is None else f"{s['server_cpu_pct']:.0f}%",
            "-" if s["loadgen_cpu_pct"] is None else f"{s['loadgen_cpu_pct']:.0f}%" + ("!" if s["loadgen_saturated_rounds"] else ""),
            "-" if s["other_cpu_pct"] is None else f"{s['other_cpu_pct']:.0f}%",
            _n(s["msgs_per_server_cpu_s"]),
            _ratio(s["msgs_per_server_cpu_s"], ref.get("msgs_per_server_cpu_s")),
            _n(s["server_rss_mib"], ".1f"),
        ])  # fmt: skip
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    out = [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]
    # Bar chart of median throughput.
    best = max((s["msgs_per_s"] or 0 for s in summary), default=0) or 1
    out.append("")
    name_w = max(len(s["server"]) for s in summary)
    for s in summary:
        v = s["msgs_per_s"] or 0
        out.append(f"{s['server'].ljust(name_w)}  {'#' * round(40 * v / best):<40}  {_n(v)} msg/s")
    notes = []
    busy = [s["other_cpu_pct"] for s in summary if s["other_cpu_pct"] is not None and s["other_cpu_pct"] > OTHER_LOAD_WARN]
    if busy:
        notes.append(
            f"WARNING the machine was busy with other work: up to {max(busy):.0f}% of a core not charged to server or "
            "loadgen (column 'other'); throughput is disturbed, msg/srv-CPU-s less so"
        )
    for s in summary:
        if s["loadgen_saturated_rounds"]:
            notes.append(
                f"WARNING {s['server']}: the load generator was at ~100% of its "
                f"{s['loadgen_cores']} core(s) in {s['loadgen_saturated_rounds']}/{s['good_rounds']} rounds; "
                "its msg/s is a lower bound (the client may be the bottleneck) - compare msg/srv-CPU-s"
            )
        if s["error_rounds"] or s["failed"]:
            notes.append(f"ERRORS {s['server']}: {s['errors']} {'; '.join(s['failed'])}")
        if s["server_log_lines"]:
            notes.append(f"note {s['server']}: the server wrote {s['server_log_lines']} log line(s) to stderr (see JSON)")
    if notes:
        out += [""] + notes
    return "\n".join(out)


def format_header(meta: dict[str, Any], opts: argparse.Namespace, pin_text: str) -> str:
    v = meta["versions"]
    return "\n".join([
        f"fastws benchmark: pipelined echo, {opts.conns} conns x {opts.pipeline} in flight x {opts.size} B "
        f"{'text' if opts.text else 'binary'}; {opts.rounds} interleaved rounds x {opts.duration:g} s "
        f"(+{opts.warmup:g} s warmup); medians of rounds",
        f"date {meta['date']}  commit {meta['commit']}  fastws codec {meta['fastws_codec']}, "
        f"protocol {meta['fastws_protocol']}, build {meta.get('fastws_build', '-')}",
        f"machine {meta['cpu']}, {meta['cores']} cores, {meta['kernel']}, Python {meta['python']}",
        f"{pin_text}; loadgen: {opts.procs} process(es); "
        + ("fastws/ and bench/ run from a copy taken at the start" if meta.get("snapshot") else "live checkout"),
        "versions " + " ".join(f"{k} {val}" for k, val in v.items()),
    ])  # fmt: skip


# -- SVG chart -------------------------------------------------------------


def write_svg(path: Path, summary: list[dict[str, Any]], title: str) -> None:
    """A horizontal bar chart of median msg/s with min-max whiskers."""
    bar_h, gap, left, width = 22, 10, 150, 400
    height = 50 + len(summary) * (bar_h + gap)
    best = max((s["msgs_per_s_max"] or 0 for s in summary), default=0) or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 130}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<text x="10" y="20" font-size="13" font-weight="bold">{_esc(title)}</text>',
    ]
    for i, s in enumerate(summary):
        y = 35 + i * (bar_h + gap)
        v = s["msgs_per_s"] or 0
        w = width * v / best
        color = "#2b7bb9" if s["server"].startswith("fastws") else "#999999"
        parts.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{_esc(s["server"])}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}"/>')
        label_x = left + w + 6
        if s["msgs_per_s_min"] is not None:
            x0 = left + width * s["msgs_per_s_min"] / best
            x1 = left + width * s["msgs_per_s_max"] / best
            parts.append(f'<line x1="{x0:.1f}" y1="{y + bar_h / 2}" x2="{x1:.1f}" y2="{y + bar_h / 2}" stroke="black"/>')
            label_x = max(label_x, x1 + 6)
        parts.append(f'<text x="{label_x:.1f}" y="{y + 15}">{_n(v)} msg/s</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# -- progress --------------------------------------------------------------


class Progress:
    """One line on stderr (tqdm's bar if tqdm is installed)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.done = 0
        self.enabled = enabled
        self.bar: Any = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="run", file=sys.stderr, leave=False)
            except ImportError:
                self.bar = None

    def start(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_description(text)
        else:
            sys.stderr.write(f"\r\033[K[{self.done + 1:>3}/{self.total}] {text}")
            sys.stderr.flush()

    def finish(self, text: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(text)
            self.bar.update(1)
        else:
            sys.stderr.write(f"\r\033[K[{self.done:>3}/{self.total}] {text}")
            sys.stderr.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        else:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


# -- main ------------------------------------------------------------------


def _cpus(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in text.split(","):
        a, _, b = part.partition("-")
        cpus.update(range(int(a), int(b or a) + 1))
    return cpus


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description="Compare WebSocket echo servers.")
    p.add_argument("--servers", default=",".join(DEFAULT_SERVERS), help=f"comma-separated, from: {', '.join(SERVERS)}")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring (default 1)")
    p.add_argument("--quick", action="store_true", help="2 rounds x 2 s, 0.5 s warmup (a smoke test, not a result)")
    p.add_argument("--conns", type=int, default=64)
    p.add_argument("--pipeline", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--text", action="store_true", help="text messages instead of binary")
    p.add_argument("--procs", type=int, default=1, help="load-generator processes (default 1)")
    p.add_argument("--reference", default="picows", help="ratios are to this server's medians (default picows)")
    p.add_argument("--second", default="websockets", help="a second ratio column (default websockets)")
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin server and loadgen to separate CPUs")
    p.add_argument("--server-cpus", type=_cpus, default=None, help="CPUs for the server (default: the first one)")
    p.add_argument("--loadgen-cpus", type=_cpus, default=None, help="CPUs for the load generator (default: the others)")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each run, wait up to SECONDS for the machine to be idle (shared machines; default 0: don't)",
    )
    p.add_argument("--quiet-below", type=float, default=15.0, help="'idle' means CPU use under this %% of all cores (default 15)")
    p.add_argument(
        "--no-snapshot",
        dest="snapshot",
        action="store_false",
        help="run the checkout's fastws/ and bench/ live instead of a copy taken at the start",
    )
    p.add_argument("--out", default=None, help="output path prefix (default bench/results/<date>-<scenario>)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv: list[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    if opts.quick:
        opts.rounds, opts.duration, opts.warmup = 2, 2.0, 0.5
    servers = [s.strip() for s in opts.servers.split(",") if s.strip()]
    unknown = [s for s in servers if s not in SERVERS]
    if unknown:
        build_parser().error(f"unknown server(s) {unknown}; known: {', '.join(SERVERS)}")
    server_cpus = loadgen_cpus = None
    if opts.pin:
        avail = sorted(os.sched_getaffinity(0))
        if len(avail) < 2 and not (opts.server_cpus and opts.loadgen_cpus):
            print("run: fewer than 2 CPUs: not pinning", file=sys.stderr)
        else:
            server_cpus = opts.server_cpus or {avail[0]}
            loadgen_cpus = opts.loadgen_cpus or (set(avail) - server_cpus)
    pin_text = (
        f"pinned: server on CPU {sorted(server_cpus)}, loadgen on CPU {sorted(loadgen_cpus)}"
        if server_cpus and loadgen_cpus
        else "not pinned"
    )
    tmp = tempfile.TemporaryDirectory(prefix="fastws-bench-")
    workdir = snapshot(Path(tmp.name)) if opts.snapshot else ROOT
    meta = describe_machine(workdir)
    meta["snapshot"] = opts.snapshot
    scenario = f"echo-c{opts.conns}-p{opts.pipeline}-s{opts.size}"
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(opts.out) if opts.out else ROOT / "bench" / "results" / f"{stamp}-{scenario}"
    out.parent.mkdir(parents=True, exist_ok=True)

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # stop like Ctrl-C: the current server is stopped, the rest summarised

    signal.signal(signal.SIGTERM, on_sigterm)
    runs: list[dict[str, Any]] = []
    progress = Progress(opts.rounds * len(servers), opts.progress)
    try:
        for rnd in range(1, opts.rounds + 1):
            for name in servers:
                idle_busy = None
                if opts.wait_quiet:
                    progress.start(f"round {rnd}/{opts.rounds}  {name}: waiting for the machine to be quiet")
                    idle_busy = wait_quiet(opts.wait_quiet, opts.quiet_below)
                progress.start(f"round {rnd}/{opts.rounds}  {name}: running ~{opts.warmup + opts.duration:g} s")
                row = run_one(name, opts, server_cpus, loadgen_cpus, workdir)
                row["round"] = rnd
                row["machine_busy_before_pct"] = idle_busy
                runs.append(row)
                if row.get("fatal"):
                    status = f"FAILED: {row['fatal'][0]}"
                else:
                    status = f"{row['msgs_per_s']:,.0f} msg/s, server CPU {row['server_cpu_pct'] or 0:.0f}%, loadgen CPU {row['loadgen_cpu_pct']:.0f}%"
                progress.finish(f"round {rnd}/{opts.rounds}  {name}: {status}")
    except KeyboardInterrupt:
        print("\ninterrupted: summarising the runs done so far", file=sys.stderr)
    finally:
        progress.close()
        tmp.cleanup()

    meta["fastws_build"] = ",".join(sorted({r.get("fastws_build", "-") for r in runs} - {"-"})) or "-"
    summary = summarise(runs, servers)
    text = format_header(meta, opts, pin_text) + "\n\n" + format_table(summary, opts.reference, opts.second)
    builds = sorted({r.get("fastws_build", "-") for r in runs} - {"-"})
    if len(builds) > 1:
        text += (
            f"\nWARNING the fastws code changed during this comparison ({len(builds)} builds seen: "
            f"{', '.join(builds)}); its rounds mix versions - run again (without --no-snapshot)"
        )
    print(text)
    config = {k: v for k, v in vars(opts).items() if k not in ("server_cpus", "loadgen_cpus")}
    config.update(server_cpus=sorted(server_cpus or []), loadgen_cpus=sorted(loadgen_cpus or []), servers=servers)
    with open(out.with_suffix(".json"), "w") as f:
        json.dump({"meta": meta, "config": config, "summary": summary, "runs": runs}, f, indent=2)
    fields = [
        "round", "server", "msgs_per_s", "p50_ms", "p90_ms", "p99_ms", "server_cpu_pct", "loadgen_cpu_pct",
        "loadgen_saturated", "other_cpu_pct", "msgs_per_server_cpu_s", "server_rss_mib", "window_s", "messages", "errors", "fatal",
    ]  # fmt: skip
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in runs:
            lat = r.get("latency_ms") or {}
            w.writerow({
                **{k: r.get(k) for k in fields},
                "p50_ms": lat.get("p50"), "p90_ms": lat.get("p90"), "p99_ms": lat.get("p99"),
                "errors": json.dumps(r.get("errors") or {}), "fatal": "; ".join(r.get("fatal") or []),
            })  # fmt: skip
    out.with_suffix(".txt").write_text(text + "\n")
    write_svg(out.with_suffix(".svg"), summary, f"pipelined echo {opts.conns}x{opts.pipeline}x{opts.size} B: median msg/s ({meta['date']})")
    print(f"\nwrote {out}.csv, .json, .txt, .svg", file=sys.stderr)
    bad = any(s["failed"] or s["error_rounds"] for s in summary)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
