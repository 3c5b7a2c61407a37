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
    python -m bench.run --baseline HEAD~3 --servers fastws-callback,fastws-callback@base,picows \
        --reference fastws-callback@base           # before/after: this code against commit HEAD~3
    python -m bench.run --servers fastws-callback,fastws-callback-tls,picows,picows-tls   # ws:// and wss://
    python -m bench.run --servers fastws-cli-w1,fastws-cli-w2 --no-pin --procs 2 \
        --reference fastws-cli-w1                   # fastws serve --workers 1 against --workers 2

``--baseline GITREF`` exports that commit of the checkout to a temporary
directory, builds its extensions there and adds ``<name>@base`` servers: the
same ``bench/servers.py`` echo servers (the run's copy), importing the
baseline's fastws; the load generator is the run's own for every server.

Servers named ``*-tls`` are served on wss:// with a certificate that the run
makes in its temporary directory (``bench.tls``); the load generator trusts
it. A server with several worker processes (``fastws-cli-w2``) needs as many
CPUs: run it with ``--no-pin`` (then server and load generator share the
cores, and the table says when all of them were busy) or ``--server-cpus``.

Writes ``<out>.csv`` (one row per run), ``<out>.json`` (everything),
``<out>.txt`` (the table) and ``<out>.svg`` (a bar chart).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import math
import os
import platform
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import tls
from bench.servers import SERVERS, fastws_digest, is_tls, workers

__all__ = ["main"]

DEFAULT_SERVERS = ["fastws-callback", "fastws-coroutine", "picows", "websockets", "aiohttp"]
ROOT = Path(__file__).resolve().parent.parent
#: Servers of ``bench.servers`` that run fastws (the others are its peers).
FASTWS_SERVERS = [name for name in SERVERS if name.startswith("fastws")]
#: ``fastws-callback@base``: fastws-callback on the ``--baseline`` commit's fastws.
BASE_SUFFIX = "@base"
#: Percent of a core used by neither server nor loadgen above which we warn.
OTHER_LOAD_WARN = 25.0
#: Fraction of the shared cores busy above which the machine, not one program, was the limit.
MACHINE_SATURATED = 0.90


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


#: Run by a fresh interpreter set up as a server is: public names of fastws
#: only, so that it works on the fastws of any commit (``COMPILED`` is in all
#: of them), and the run's own bench.servers (every code directory has it).
_PROBE = (
    "import fastws; print('compiled' if fastws.COMPILED else 'pure-python'); "
    "print(fastws.Connection.__module__); print(fastws.__file__); "
    "from bench.servers import foreign_fastws_modules as f; print(' '.join(f()) or '-')"
)


def code_env(codedir: Path) -> dict[str, str]:
    """The environment of a server run from ``codedir``: that directory first
    on ``PYTHONPATH`` (as well as its working directory, which ``python -m``
    puts first on sys.path), so it imports the fastws copy there, not the
    installed one nor the checkout's."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(codedir), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def probe_fastws(codedir: Path, what: str) -> dict[str, str]:
    """Ask a fresh interpreter, started as the servers are (cwd ``codedir``,
    :func:`code_env`), which fastws it imports: codec, the module of
    ``fastws.Connection`` and the fingerprint (``fastws-build``) that its
    servers must report. Exit if it fails or is not the copy in ``codedir``."""
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=codedir, env=code_env(codedir), capture_output=True, text=True, timeout=60
    )
    if probe.returncode != 0:
        raise SystemExit(f"run: cannot import {what} fastws from {codedir}: {probe.stderr.strip()[-500:]}")
    codec, protocol, path, foreign = probe.stdout.splitlines()[-4:]
    package = codedir / "fastws"
    if Path(path).resolve().parent != package.resolve():
        raise SystemExit(f"run: {what} fastws should be imported from {package}, but {path} was")
    if foreign != "-":
        raise SystemExit(
            f"run: {what} fastws in {package} lacks modules that an installed fastws supplied instead "
            f"(an editable install's import hook): {foreign}"
        )
    # Builds of the same sources differ (compiled modules embed their build
    # directory), so the sources get a fingerprint of their own.
    return {
        "codec": codec,
        "protocol": protocol,
        "build": fastws_digest(package),
        "source": fastws_digest(package, (".py", ".pyx", ".pxd")),
    }


def describe_machine(workdir: Path) -> dict[str, Any]:
    """Date, commit, CPU, cores, kernel and library versions of this run;
    the fastws facts are asked of the copy in ``workdir`` that will run."""
    fastws_info = probe_fastws(workdir, "the current")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "--", "fastws"))
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": (_git("rev-parse", "--short", "HEAD") or "?") + ("+dirty(fastws/)" if dirty else ""),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "fastws_codec": fastws_info["codec"],
        # Which Connection class fastws serves with (its module: compiled or pure Python).
        "fastws_protocol": fastws_info["protocol"],
        # The fingerprint of the copy that runs; the servers report what they loaded.
        "fastws_build_at_start": fastws_info["build"],
        "fastws_source": fastws_info["source"],
        "versions": {d: _version(d) for d in ("uvloop", "websockets", "picows", "aiofastnet", "aiohttp", "psutil")},
    }


_SNAPSHOT_IGNORE = shutil.ignore_patterns("__pycache__", "*.c", "*.html", "results", "*.pyc")


def snapshot(dest: Path) -> Path:
    """Copy ``fastws/`` and ``bench/`` (built modules included) into ``dest``.

    Every run of a comparison then uses the same code, even if someone edits
    or rebuilds the checkout meanwhile; subprocesses run with ``dest`` as
    their working directory, which ``python -m`` puts first on sys.path.
    """
    for pkg in ("fastws", "bench"):
        shutil.copytree(ROOT / pkg, dest / pkg, ignore=_SNAPSHOT_IGNORE)
    return dest


def _build_requires(tree: Path) -> list[str]:
    """``[build-system] requires`` of the tree's pyproject.toml ([] if none)."""
    try:
        with open(tree / "pyproject.toml", "rb") as f:
            return [str(r) for r in tomllib.load(f).get("build-system", {}).get("requires", [])]
    except (OSError, tomllib.TOMLDecodeError):
        return []


def _build_in_place(tree: Path, timeout: float = 1800) -> tuple[int, str]:
    """``python setup.py build_ext --inplace`` in ``tree`` with this Python,
    output captured; its own process group, killed whole if we are stopped
    meanwhile (so no compiler is left running). ``(exit status, output)``."""
    proc = subprocess.Popen(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=tree,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except BaseException:  # timeout, Ctrl-C, SIGTERM
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return proc.returncode, output


def prepare_baseline(ref: str, dest: Path, bench_dir: Path) -> dict[str, Any]:
    """Export commit ``ref`` of the checkout into ``dest``, build its
    extensions in place and put ``bench_dir`` (the run's own ``bench/``) in
    place of the commit's, so that its servers are the same echo servers
    running the baseline's fastws. Facts about it for the header and JSON."""
    sha = _git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if not sha:
        raise SystemExit(f"run: --baseline {ref}: not a commit of the checkout {ROOT}")
    short, subject = _git("log", "-1", "--format=%h %s", sha).partition(" ")[::2]
    print(f"run: baseline {ref} = {short}: exporting it and building its extensions", file=sys.stderr)
    started = time.monotonic()
    archive = subprocess.run(["git", "archive", "--format=tar", sha], cwd=ROOT, capture_output=True, timeout=300)
    if archive.returncode != 0:
        raise SystemExit(f"run: git archive {short} failed: {archive.stderr.decode(errors='replace').strip()[-500:]}")
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        # The "data" filter (Python >= 3.11.4) refuses members that would land outside dest.
        tar.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))  # type: ignore[arg-type]
    if not (dest / "fastws" / "__init__.py").is_file() or not (dest / "setup.py").is_file():
        raise SystemExit(f"run: --baseline {ref} ({short}) has no fastws/ package or no setup.py")
    shutil.rmtree(dest / "bench", ignore_errors=True)
    shutil.copytree(bench_dir, dest / "bench", ignore=_SNAPSHOT_IGNORE)
    status, output = _build_in_place(dest)
    if status != 0:
        requires = _build_requires(dest)
        need = (
            f" It builds with this Python's installed packages, so the commit's build requirements "
            f"({', '.join(requires)}) must be installed: pip install {' '.join(map(shlex.quote, requires))}."
            if requires
            else ""
        )
        tail = "\n".join("    " + line for line in output.strip().splitlines()[-25:])
        raise SystemExit(
            f"run: building the baseline {ref} ({short}) failed: `{Path(sys.executable).name} setup.py build_ext "
            f"--inplace` in {dest} exited with status {status}.{need} Last lines of its output:\n{tail}"
        )
    info = probe_fastws(dest, f"the baseline's ({ref})")
    print(f"run: baseline {short} built in {time.monotonic() - started:.0f} s (fastws {info['codec']})", file=sys.stderr)
    return {"ref": ref, "commit": short, "subject": subject, **info}


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


def server_command(name: str, port: int, tls_dir: Path | None) -> list[str]:
    """The command that runs ``bench.servers`` server ``name`` on ``port``
    (wss:// with the certificate in ``tls_dir`` for a ``-tls`` server)."""
    cmd = [sys.executable, "-m", "bench.servers", name, "--port", str(port)]
    if is_tls(name):
        if tls_dir is None:
            raise ValueError(f"{name} needs a certificate (bench.tls.make_cert)")
        cmd += ["--tls-dir", str(tls_dir)]
    return cmd


def pinning_warnings(servers: list[str], server_cpus: set[int] | None) -> list[str]:
    """A warning for each server with more worker processes than the CPUs it is pinned to."""
    if not server_cpus:
        return []
    return [
        f"WARNING {name} runs {workers(name)} worker processes pinned to {len(server_cpus)} CPU(s) "
        f"{sorted(server_cpus)}: they share them (use --no-pin or --server-cpus)"
        for name in servers
        if workers(name) > len(server_cpus)
    ]


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
    if proc.stdout is not None:
        proc.stdout.close()
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
    base_dir: Path | None = None,
    tls_dir: Path | None = None,
) -> dict[str, Any]:
    """Start ``server``, load it, stop it; the loadgen's figures plus health.

    The server runs from ``workdir`` (the run's copy of fastws and bench), or
    for ``NAME@base`` from ``base_dir`` (the ``--baseline`` tree, with the
    run's bench); the load generator always runs from ``workdir``. A ``-tls``
    server uses the certificate in ``tls_dir``, which the loadgen trusts."""
    port = _free_port()
    url = f"{'wss' if is_tls(server) else 'ws'}://127.0.0.1:{port}/"
    row: dict[str, Any] = {"server": server, "port": port}
    name = server.removesuffix(BASE_SUFFIX)
    server_dir = workdir
    if name != server:
        assert base_dir is not None, f"{server} needs --baseline"
        server_dir = base_dir
    with tempfile.TemporaryFile() as errlog:
        proc = subprocess.Popen(
            server_command(name, port, tls_dir),
            cwd=server_dir,
            env=code_env(server_dir),
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
                    sys.executable, "-m", "fastws.bench.loadgen", url,
                    "--conns", str(opts.conns), "--pipeline", str(opts.pipeline), "--size", str(opts.size),
                    "--duration", str(opts.duration), "--warmup", str(opts.warmup),
                    "--procs", str(opts.procs), "--server-pid", str(proc.pid), "--json",
                ]  # fmt: skip
                if opts.text:
                    cmd.append("--text")
                if tls_dir is not None and is_tls(server):
                    cmd += ["--cafile", str(tls_dir / tls.CERT_FILE), "--ecdh-curve", tls.GROUP]
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
    if log.strip() and row.get("fatal") and row["fatal"][0].startswith("server did not start"):
        row["fatal"][0] += f": {log.strip().splitlines()[-1][:300]}"
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
            "machine_busy_pct": _median([r.get("machine_busy_pct") for r in good]),
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


def _base_twin(by: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    """The ``@base`` row that ``name`` compares with: ``NAME@base`` for a
    fastws server, itself for an ``@base`` one; {} for the peers."""
    return by.get(name if name.endswith(BASE_SUFFIX) else name + BASE_SUFFIX, {})


def format_table(summary: list[dict[str, Any]], reference: str, second: str, shared_cores: int = 0) -> str:
    """The comparison table (medians of rounds) plus a bar chart and notes.

    With ``@base`` servers in the run (``--baseline``), two more columns give
    each fastws server's ratios to the same server on the baseline commit.
    ``shared_cores``: how many cores server and load generator shared (0:
    pinned apart); a note names the servers whose runs kept them all busy."""
    by = {s["server"]: s for s in summary}
    ref = by.get(reference, {})
    sec = by.get(second, {})
    before_after = any(name.endswith(BASE_SUFFIX) for name in by)
    headers = [
        "server", "msg/s", "spread", f"vs {reference}", f"vs {second}", *(["vs @base"] if before_after else []),
        "p50 ms", "p99 ms", "srv CPU", "LG CPU", "other", "msg/srv-CPU-s", f"CPU-norm vs {reference}",
        *(["CPU-norm vs @base"] if before_after else []), "RSS MiB",
    ]  # fmt: skip
    rows = []
    for s in summary:
        base = _base_twin(by, s["server"])
        rows.append([
            s["server"],
            _n(s["msgs_per_s"]),
            "-" if s["spread_pct"] is None else f"{s['spread_pct']:.0f}%",
            _ratio(s["msgs_per_s"], ref.get("msgs_per_s")),
            _ratio(s["msgs_per_s"], sec.get("msgs_per_s")),
            *([_ratio(s["msgs_per_s"], base.get("msgs_per_s"))] if before_after else []),
            _n(s["p50_ms"], ".2f"),
            _n(s["p99_ms"], ".2f"),
            "-" if s["server_cpu_pct"] is None else f"{s['server_cpu_pct']:.0f}%",
            "-" if s["loadgen_cpu_pct"] is None else f"{s['loadgen_cpu_pct']:.0f}%" + ("!" if s["loadgen_saturated_rounds"] else ""),
            "-" if s["other_cpu_pct"] is None else f"{s['other_cpu_pct']:.0f}%",
            _n(s["msgs_per_server_cpu_s"]),
            _ratio(s["msgs_per_server_cpu_s"], ref.get("msgs_per_server_cpu_s")),
            *([_ratio(s["msgs_per_server_cpu_s"], base.get("msgs_per_server_cpu_s"))] if before_after else []),
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
        busy = s["machine_busy_pct"]
        if shared_cores and busy is not None and busy >= MACHINE_SATURATED * 100 * shared_cores:
            notes.append(
                f"note {s['server']}: server and load generator shared {shared_cores} cores, all busy "
                f"({busy:.0f}% in all: server {_n(s['server_cpu_pct'])}%, loadgen {_n(s['loadgen_cpu_pct'])}%, other "
                f"{_n(s['other_cpu_pct'])}%): the cores, not the server alone, were the limit - compare msg/srv-CPU-s"
            )
        if s["error_rounds"] or s["failed"]:
            notes.append(f"ERRORS {s['server']}: {s['errors']} {'; '.join(s['failed'])}")
        if s["server_log_lines"]:
            notes.append(f"note {s['server']}: the server wrote {s['server_log_lines']} log line(s) to stderr (see JSON)")
    if notes:
        out += [""] + notes
    return "\n".join(out)


def build_warnings(runs: list[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    """Check the fastws fingerprints the servers reported, for each side
    apart: the current code (every server but ``@base``) and the baseline
    (``@base``), each of which must have run one build, the one of its copy."""
    out = []
    base = meta.get("baseline")
    # (is_base, what changed, whose servers, the fingerprint of their copy)
    sides = [(False, "the fastws code", "the current code's servers", meta.get("fastws_build_at_start"))]
    if base:
        sides.append((True, f"the baseline's ({base['ref']}) fastws code", "the @base servers", base["build"]))
    seen: dict[bool, list[str]] = {}
    for is_base, code, servers, expected in sides:
        builds = seen[is_base] = sorted(
            {r.get("fastws_build", "-") for r in runs if r["server"].endswith(BASE_SUFFIX) == is_base} - {"-"}
        )
        if len(builds) > 1:
            out.append(
                f"WARNING {code} changed during this comparison ({len(builds)} builds seen: "
                f"{', '.join(builds)}); its rounds mix versions - run again (without --no-snapshot)"
            )
        elif builds and expected and builds[0] != expected:
            out.append(
                f"WARNING {servers} loaded fastws build {builds[0]}, not {expected} (the copy meant for them): "
                "check PYTHONPATH and installed copies of fastws"
            )
    if base and base.get("source") == meta.get("fastws_source"):
        out.append(
            f"note the baseline {base['ref']} has the same fastws sources as the current code (only the builds "
            "differ): the @base rows measure this machine's noise, not a change"
        )
    return out


def format_header(meta: dict[str, Any], opts: argparse.Namespace, pin_text: str) -> str:
    v = meta["versions"]
    base = meta.get("baseline")
    return "\n".join([
        f"fastws benchmark: pipelined echo, {opts.conns} conns x {opts.pipeline} in flight x {opts.size} B "
        f"{'text' if opts.text else 'binary'}; {opts.rounds} interleaved rounds x {opts.duration:g} s "
        f"(+{opts.warmup:g} s warmup); medians of rounds",
        f"date {meta['date']}  commit {meta['commit']}  fastws codec {meta['fastws_codec']}, "
        f"protocol {meta['fastws_protocol']}, build {meta.get('fastws_build', '-')}",
        *([
            f"baseline (servers @base) {base['ref']} = commit {base['commit']} \"{_clip(base['subject'], 60)}\": fastws codec "
            f"{base['codec']}, protocol {base['protocol']}, build {base.get('builds_seen') or base['build']}"
        ] if base else []),
        f"machine {meta['cpu']}, {meta['cores']} cores, {meta['kernel']}, Python {meta['python']}",
        f"{pin_text}; loadgen: {opts.procs} process(es); "
        + ("fastws/ and bench/ run from a copy taken at the start" if meta.get("snapshot") else "live checkout"),
        "versions " + " ".join(f"{k} {val}" for k, val in v.items()),
        *([f"wss:// servers: {meta['tls']}"] if meta.get("tls") else []),
    ])  # fmt: skip


# -- SVG chart -------------------------------------------------------------


def write_svg(path: Path, summary: list[dict[str, Any]], title: str) -> None:
    """A horizontal bar chart of median msg/s with min-max whiskers."""
    bar_h, gap, width = 22, 10, 400
    # Room for the longest name (~7 px a character at 12 px), 150 px at least.
    left = max(150, 16 + 7 * max((len(s["server"]) for s in summary), default=0))
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
        color = "#999999"  # peers; fastws dark blue, fastws on the baseline light blue
        if s["server"].startswith("fastws"):
            color = "#8dbbe0" if s["server"].endswith(BASE_SUFFIX) else "#2b7bb9"
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


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


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
    p.add_argument(
        "--servers",
        default=",".join(DEFAULT_SERVERS),
        help=f"comma-separated, from: {', '.join(SERVERS)}; with --baseline also "
        f"{', '.join(n + BASE_SUFFIX for n in FASTWS_SERVERS)}",
    )
    p.add_argument(
        "--baseline",
        metavar="GITREF",
        default=None,
        help=f"also run the fastws servers on this commit of the checkout, as NAME{BASE_SUFFIX} (exported and built "
        f"in a temporary directory; needs Cython); without {BASE_SUFFIX} names in --servers, each fastws server "
        f"there is followed by its {BASE_SUFFIX} twin",
    )
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring (default 1)")
    p.add_argument("--quick", action="store_true", help="2 rounds x 2 s, 0.5 s warmup (a smoke test, not a result)")
    p.add_argument("--conns", type=int, default=64)
    p.add_argument("--pipeline", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--text", action="store_true", help="text messages instead of binary")
    p.add_argument("--procs", type=int, default=1, help="load-generator processes (default 1)")
    p.add_argument(
        "--reference",
        default="picows",
        help=f"ratios are to this server's medians (default picows; e.g. fastws-callback{BASE_SUFFIX} for before/after)",
    )
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
    known = list(SERVERS)
    if opts.baseline:
        known += [name + BASE_SUFFIX for name in FASTWS_SERVERS]
        if not any(s.endswith(BASE_SUFFIX) for s in servers):
            servers = [x for s in servers for x in ([s, s + BASE_SUFFIX] if s in FASTWS_SERVERS else [s])]
    unknown = [s for s in servers if s not in known]
    if unknown:
        hint = f" ({BASE_SUFFIX} servers need --baseline GITREF)" if any(BASE_SUFFIX in s for s in unknown) else ""
        build_parser().error(f"unknown server(s) {unknown}{hint}; known: {', '.join(known)}")
    for option, name in (("--reference", opts.reference), ("--second", opts.second)):
        if name not in servers:
            print(f"run: {option} {name} is not among the servers: its ratio columns will show '-'", file=sys.stderr)
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
    if server_cpus and loadgen_cpus:
        overlap = server_cpus & loadgen_cpus
        shared_cores = len(server_cpus | loadgen_cpus) if overlap else 0
    else:
        shared_cores = len(os.sched_getaffinity(0))
    warnings = pinning_warnings(servers, server_cpus)
    for line in warnings:
        print(f"run: {line}", file=sys.stderr)

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # stop like Ctrl-C: the current server is stopped, the rest summarised

    signal.signal(signal.SIGTERM, on_sigterm)
    tmp = tempfile.TemporaryDirectory(prefix="fastws-bench-")
    base_dir = Path(tmp.name) / "base" if opts.baseline else None
    try:
        workdir = snapshot(Path(tmp.name)) if opts.snapshot else ROOT
        meta = describe_machine(workdir)
        if opts.baseline:
            assert base_dir is not None
            meta["baseline"] = prepare_baseline(opts.baseline, base_dir, workdir / "bench")
        tls_dir = tls.make_cert(Path(tmp.name) / "tls") if any(map(is_tls, servers)) else None
    except KeyboardInterrupt:
        tmp.cleanup()
        raise SystemExit("run: interrupted before the first run")
    except BaseException:
        tmp.cleanup()
        raise
    meta["snapshot"] = opts.snapshot
    scenario = f"echo-c{opts.conns}-p{opts.pipeline}-s{opts.size}"
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(opts.out) if opts.out else ROOT / "bench" / "results" / f"{stamp}-{scenario}"
    out.parent.mkdir(parents=True, exist_ok=True)
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
                row = run_one(name, opts, server_cpus, loadgen_cpus, workdir, base_dir, tls_dir)
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

    def builds_seen(is_base: bool) -> str:
        seen = {r.get("fastws_build", "-") for r in runs if r["server"].endswith(BASE_SUFFIX) == is_base}
        return ",".join(sorted(seen - {"-"})) or "-"

    meta["fastws_build"] = builds_seen(False)
    if tls_dir is not None:
        negotiated = ", ".join(sorted({r["tls"] for r in runs if r.get("tls")})) or "-"
        meta["tls"] = f"{tls.SETTINGS}; negotiated {negotiated}"
    if opts.baseline:
        meta["baseline"]["builds_seen"] = builds_seen(True)
    summary = summarise(runs, servers)
    text = format_header(meta, opts, pin_text) + "\n\n" + format_table(summary, opts.reference, opts.second, shared_cores)
    text += "".join("\n" + line for line in [*warnings, *build_warnings(runs, meta)])
    print(text)
    config = {k: v for k, v in vars(opts).items() if k not in ("server_cpus", "loadgen_cpus")}
    config.update(server_cpus=sorted(server_cpus or []), loadgen_cpus=sorted(loadgen_cpus or []), servers=servers)
    with open(out.with_suffix(".json"), "w") as f:
        json.dump({"meta": meta, "config": config, "summary": summary, "runs": runs}, f, indent=2)
    fields = [
        "round", "server", "msgs_per_s", "p50_ms", "p90_ms", "p99_ms", "server_cpu_pct", "loadgen_cpu_pct",
        "loadgen_saturated", "other_cpu_pct", "msgs_per_server_cpu_s", "server_rss_mib", "window_s", "messages", "errors", "fatal",
        "fastws_build",
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
