"""Compare WebSocket servers under the same load, in interleaved rounds.

For each of ``--rounds`` rounds, every ``--scenario`` is run against every
server in ``--servers``; inside a round the servers take turns, in an order
rotated by one each round (round 1: A, B, C; round 2: B, C, A; ...), so that
a slow minute of the machine hurts every server alike instead of one of
them. Each run starts the server as a fresh subprocess (``python -m
bench.servers``), pinned to its own CPU, runs the load generator, the
product's own ``python -m fastws bench URL --scenario S --json
--server-pid PID`` (pinned to the other CPUs), against it, parses its JSON
document and stops the server. The table of each scenario shows, per server,
the MEDIAN of its rounds and ratios of medians to a reference server; server
CPU microseconds per operation are shown beside the rate because they hold
even when the load generator, or another program, was the limit.

Scenarios (those of ``fastws bench``): ``pipelined`` (the default), ``rr``,
``large``, ``handshakes``, ``idle``, ``broadcast``, ``compressed``. For
``broadcast`` each server NAME is run as ``NAME-broadcast`` (servers without
one are skipped, with a note; names that have only a broadcast variant, the
rooms servers ``fastws-rooms``, ``fastws-rooms-workers`` and
``fastws-rooms-redisN``, are accepted and skipped by the echo scenarios); for
``compressed``, a server that refuses
permessage-deflate is skipped for the rest of the comparison, with a note.

Usage::

    python -m bench.run                         # pipelined, 5 rounds x 5 s, default servers
    python -m bench.run --quick                 # 2 rounds x 2 s
    python -m bench.run --scenario rr --scenario handshakes --servers fastws-callback,picows,websockets
    python -m bench.run --scenario pipelined --scenario broadcast --servers fastws-callback,picows \
        --rounds 5 --json out.json --chart out.svg
    python -m bench.run --servers fastws-callback,picows --rounds 7 --out bench/results/mine
    python -m bench.run --baseline HEAD~3 --servers fastws-callback,fastws-callback@base,picows \
        --reference fastws-callback@base           # before/after: this code against commit HEAD~3
    python -m bench.run --servers fastws-callback,fastws-callback-tls,picows,picows-tls   # ws:// and wss://
    python -m bench.run --servers fastws-cli-w1,fastws-cli-w2 --no-pin --procs 2 \
        --reference fastws-cli-w1                   # fastws serve --workers 1 against --workers 2

The load of each scenario is ``fastws bench``'s; ``--conns``/``--connections``,
``--pipeline``/``--in-flight``, ``--size``, ``--text``, ``--rate``,
``--procs`` and ``--keep-awake`` are handed to it (for every scenario of the
run) when given.

``--baseline GITREF`` exports that commit of the checkout to a temporary
directory, builds its extensions there and adds ``<name>@base`` servers: the
same ``bench/servers.py`` servers (the run's copy), importing the baseline's
fastws; the load generator is the run's own for every server.

Servers named ``*-tls`` are served on wss:// with a certificate that the run
makes in its temporary directory (``bench.tls``); the load generator trusts
it. A server with several worker processes (``fastws-cli-w2``) needs as many
CPUs: run it with ``--no-pin`` (then server and load generator share the
cores, and the table says when all of them were busy) or ``--server-cpus``.

Writes ``--json FILE`` (everything: configuration, machine, summaries and
every run with the load generator's raw JSON document) and ``--chart
FILE.svg`` (a bar chart of the median rates per scenario, with ratios).
With ``--out PREFIX``, or when neither is given, it writes ``PREFIX.json``,
``PREFIX.csv`` (one row per run), ``PREFIX.txt`` (the tables) and
``PREFIX.svg`` (default prefix ``bench/results/<date>-<scenarios>``).
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
from collections.abc import Sequence
from typing import Any

from bench import tls
from fastws.bench.machine import KeepAwake
from bench.servers import SERVERS, fastws_digest, is_tls, workers

__all__ = ["main"]

DEFAULT_SERVERS = ["fastws-callback", "fastws-coroutine", "picows", "websockets", "aiohttp"]
ROOT = Path(__file__).resolve().parent.parent
#: ``bench.servers`` name of a server's broadcast variant: NAME + this.
BROADCAST_SUFFIX = "-broadcast"
#: Names ``--servers`` accepts that have only a broadcast variant (the rooms
#: servers: ``fastws-rooms`` runs ``fastws-rooms-broadcast``); other scenarios skip them.
BROADCAST_ONLY = [
    name.removesuffix(BROADCAST_SUFFIX)
    for name in SERVERS
    if name.endswith(BROADCAST_SUFFIX) and name.removesuffix(BROADCAST_SUFFIX) not in SERVERS
]
#: Servers of ``bench.servers`` that run fastws (the others are its peers).
FASTWS_SERVERS = [name for name in [*SERVERS, *BROADCAST_ONLY] if name.startswith("fastws")]
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


# -- scenarios -------------------------------------------------------------

#: The scenarios of ``fastws bench`` (fastws/bench/command.py, SCENARIOS;
#: the ``scenario`` enum of fastws/bench/result.schema.json).
SCENARIOS = ("pipelined", "rr", "large", "handshakes", "idle", "broadcast", "compressed")
#: Words of ``fastws bench``'s fatal message when a server refuses compression.
DEFLATE_REFUSED = "permessage-deflate"


def server_for(scenario: str, name: str) -> str | None:
    """The ``bench.servers`` server that runs ``scenario`` for the server
    listed as ``name``: ``NAME-broadcast`` (``@base`` kept) for broadcast,
    ``name`` itself for the echo scenarios; None when there is none (no
    broadcast variant; a broadcast server, or a name with only a broadcast
    variant such as ``fastws-rooms``, does not echo)."""
    base, at, tail = name.partition("@")
    if scenario == "broadcast":
        variant = base if base.endswith(BROADCAST_SUFFIX) else base + BROADCAST_SUFFIX
        return variant + at + tail if variant in SERVERS else None
    return None if base.endswith(BROADCAST_SUFFIX) or base in BROADCAST_ONLY else name


def headline(doc: dict[str, Any]) -> tuple[float | None, str | None]:
    """The figure a document is compared by, and its unit: ``rate`` (msg/s,
    deliveries/s, handshakes/s), or for ``idle`` the server's KiB per
    connection (lower is better)."""
    if doc.get("scenario") == "idle":
        return doc.get("server_kib_per_connection"), "KiB/conn"
    return doc.get("rate"), doc.get("rate_unit")


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


def bench_command(
    scenario: str, url: str, server_pid: int, opts: argparse.Namespace, cafile: Path | None = None
) -> list[str]:
    """``python -m fastws bench URL --scenario S --json --server-pid PID`` with
    the run's durations and the load options given on its command line."""
    cmd = [
        sys.executable, "-m", "fastws", "bench", url, "--scenario", scenario, "--json",
        "--server-pid", str(server_pid), "--duration", str(opts.duration), "--warmup", str(opts.warmup),
        "--procs", str(opts.procs),
    ]  # fmt: skip
    for value, option in ((opts.conns, "--connections"), (opts.pipeline, "--in-flight"), (opts.size, "--size")):
        if value is not None:
            cmd += [option, str(value)]
    if opts.rate is not None:
        cmd += ["--rate", str(opts.rate)]
    if opts.text:
        cmd.append("--text")
    if opts.keep_awake:
        cmd.append("--keep-awake")
    if cafile is not None:
        cmd += ["--cafile", str(cafile)]
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


def server_cpus_awake(cpus: set[int]) -> KeepAwake:
    """``--keep-awake`` for the server's CPUs: ``fastws bench --keep-awake``
    keeps the CPUs it may run on (the load generator's) from halting; these
    busy loops, at idle priority, do the same for the server's CPUs that it
    does not cover. Their CPU time is measured, and taken out of ``other``."""
    return KeepAwake(sorted(cpus))


def run_one(
    server: str,
    scenario: str,
    opts: argparse.Namespace,
    server_cpus: set[int] | None,
    loadgen_cpus: set[int] | None,
    workdir: Path = ROOT,
    base_dir: Path | None = None,
    tls_dir: Path | None = None,
) -> dict[str, Any]:
    """Start ``server``, run ``fastws bench --scenario scenario`` against it,
    stop it. The row: the run's facts, ``fatal`` (why it has no figures, if
    it has none) and ``result``, the load generator's JSON document as it
    printed it (None if it printed none).

    The server runs from ``workdir`` (the run's copy of fastws and bench), or
    for ``NAME@base`` from ``base_dir`` (the ``--baseline`` tree, with the
    run's bench); the load generator always runs from ``workdir``. A ``-tls``
    server uses the certificate in ``tls_dir``, which the loadgen trusts."""
    port = _free_port()
    url = f"{'wss' if is_tls(server) else 'ws'}://127.0.0.1:{port}/"
    row: dict[str, Any] = {"scenario": scenario, "server": server, "port": port, "fatal": [], "result": None}
    name = server.removesuffix(BASE_SUFFIX)
    server_dir = workdir
    if name != server:
        assert base_dir is not None, f"{server} needs --baseline"
        server_dir = base_dir
    awake_cpus = (server_cpus - (loadgen_cpus or set())) if opts.keep_awake and server_cpus else set()
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
                cafile = tls_dir / tls.CERT_FILE if tls_dir is not None and is_tls(server) else None
                cmd = bench_command(scenario, url, proc.pid, opts, cafile)
                row["command"] = shlex.join(["python", *cmd[1:]])
                started = time.monotonic()
                with server_cpus_awake(awake_cpus) as awake:
                    try:
                        lg = subprocess.run(
                            cmd, cwd=workdir, capture_output=True, text=True, timeout=opts.warmup + opts.duration + 120,
                            preexec_fn=_pinner(loadgen_cpus),
                        )  # fmt: skip
                    finally:
                        if awake_cpus:
                            spin = awake.cpu_seconds()
                            row["keep_awake_server_cpus_pct"] = 100 * spin / max(1e-9, time.monotonic() - started)
                row["loadgen_exit"] = lg.returncode
                row["loadgen_stderr"] = "\n".join(lg.stderr.strip().splitlines()[-10:])
                try:
                    doc = json.loads(lg.stdout)
                except json.JSONDecodeError:
                    row["fatal"] = [f"fastws bench failed (status {lg.returncode}): {lg.stderr.strip()[-500:]}"]
                else:
                    row["result"] = doc
                    row["fatal"] = list(doc.get("fatal") or [])
            if proc.poll() is not None:
                row["fatal"].append(f"server died during the run (exit status {proc.returncode})")
        except subprocess.TimeoutExpired as exc:
            row["fatal"].append(f"fastws bench did not finish in {exc.timeout:.0f} s")
        finally:
            parts = tree_cpu_parts(proc.pid)
            if parts is not None:
                row["server_tree_cpu_s"] = parts
            status = _stop(proc)
        errlog.seek(0)
        log = errlog.read().decode("utf-8", "replace")
    if log.strip() and row["fatal"] and row["fatal"][0].startswith("server did not start"):
        row["fatal"][0] += f": {log.strip().splitlines()[-1][:300]}"
    row["server_exit"] = status
    row["server_log_lines"] = len(log.splitlines())
    row["server_log_tail"] = "\n".join(log.splitlines()[-15:])
    return row


#: Processes of a server's tree whose CPU time ``bench.run`` also reports on its own.
SIDE_PROCESSES = ("redis-server",)


def tree_cpu_parts(pid: int) -> dict[str, float] | None:
    """CPU seconds since they started of the processes in ``pid``'s tree,
    split into each of :data:`SIDE_PROCESSES` and ``fastws`` (every other
    process: the bench.servers wrapper, the nodes or workers); None when the
    tree has none of them. It covers the server's whole life (start,
    connections, warmup, window, drain), not only the measured window; the
    load generator's server CPU (the whole tree over the window) includes them."""
    try:
        import psutil

        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except Exception:  # noqa: BLE001 - no psutil, or gone
        return None
    parts: dict[str, float] = {}
    for p in procs:
        try:
            with p.oneshot():
                name = p.name()
                t = p.cpu_times()
        except psutil.Error:
            continue
        key = next((side for side in SIDE_PROCESSES if name.startswith(side)), "fastws")
        parts[key] = parts.get(key, 0.0) + t.user + t.system
    return parts if any(side in parts for side in SIDE_PROCESSES) else None


def side_cpu_share(row: dict[str, Any], side: str = "redis-server") -> float | None:
    """``side``'s percentage of the server tree's CPU over the run (None without it)."""
    parts = row.get("server_tree_cpu_s") or {}
    total = sum(parts.values())
    return 100 * parts[side] / total if side in parts and total > 0 else None


def refused_compression(row: dict[str, Any]) -> bool:
    """Whether a ``compressed`` run failed because the server refused permessage-deflate."""
    return row["scenario"] == "compressed" and any(DEFLATE_REFUSED in f for f in row["fatal"])


# -- summary ---------------------------------------------------------------


def _median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(vals) if vals else None


def _server_cpu_pct(doc: dict[str, Any]) -> float | None:
    """Server CPU in % of one core (handshakes: from its CPU seconds and window)."""
    if doc.get("server_cpu_pct") is not None:
        return float(doc["server_cpu_pct"])
    cpu, window = doc.get("server_cpu_s"), doc.get("window_s")
    return 100 * cpu / window if cpu is not None and window else None


def _other_cpu_pct(row: dict[str, Any]) -> float | None:
    """CPU charged to neither server nor load generator (minus our own busy loops)."""
    other = (row["result"] or {}).get("other_cpu_pct")
    if other is None:
        return None
    return max(0.0, float(other) - float(row.get("keep_awake_server_cpus_pct", 0.0)))


def _errors_total(doc: dict[str, Any] | None) -> int:
    return sum((doc or {}).get("errors", {}).values())


def summarise(runs: list[dict[str, Any]], scenario: str, servers: list[str]) -> list[dict[str, Any]]:
    """Per server of ``scenario`` (the names it ran as): medians over its
    good rounds (those with figures), spread, counts of trouble."""
    out = []
    for name in servers:
        mine = [r for r in runs if r["scenario"] == scenario and r["server"] == name]
        good = [r for r in mine if not r["fatal"] and r["result"] is not None]
        docs = [r["result"] for r in good]
        values = [v for v in (headline(d)[0] for d in docs) if v is not None]
        unit = next((headline(d)[1] for d in docs if headline(d)[1]), None)
        med = _median(values)
        lat = [d.get("latency_ms") or {} for d in docs]
        s: dict[str, Any] = {
            "server": name,
            "rounds": len(mine),
            "good_rounds": len(good),
            "rate": med,
            "rate_unit": unit,
            "rate_min": min(values) if values else None,
            "rate_max": max(values) if values else None,
            "spread_pct": 100 * (max(values) - min(values)) / med if values and med else None,
            "server_cpu_us_per_op": _median([d.get("server_cpu_us_per_op") for d in docs]),
            "p50_ms": _median([x.get("p50") for x in lat]),
            "p99_ms": _median([x.get("p99") for x in lat]),
            "server_cpu_pct": _median([_server_cpu_pct(d) for d in docs]),
            "loadgen_cpu_pct": _median([d.get("loadgen_cpu_pct") for d in docs]),
            "other_cpu_pct": _median([_other_cpu_pct(r) for r in good]),
            "machine_busy_pct": _median([d.get("machine_busy_pct") for d in docs]),
            "loadgen_cores": max((d.get("loadgen_cores") or 1 for d in docs), default=1),
            "server_rss_mib": _median([d.get("server_rss_mib", d.get("server_rss_held_mib")) for d in docs]),
            "loadgen_saturated_rounds": sum(1 for d in docs if d.get("loadgen_saturated")),
            "error_rounds": sum(1 for d in docs if _errors_total(d)),
            "errors": _merge_errors(docs),
            "errors_total": sum(_errors_total(d) for d in docs),
            "wake_us": _median([(d.get("machine") or {}).get("wake_us") for d in docs]),
            "server_log_lines": sum(r.get("server_log_lines", 0) for r in mine),
            "redis_cpu_share_pct": _median([side_cpu_share(r) for r in good]),
            "failed": [f for r in mine for f in r["fatal"]],
        }
        out.append(s)
    return out


def _merge_errors(docs: list[dict[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for d in docs:
        for k, v in (d.get("errors") or {}).items():
            total[k] = total.get(k, 0) + v
    return total


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def _n(x: float | None, fmt: str = ",.0f") -> str:
    return "-" if x is None else format(x, fmt)


def _num(x: float | None) -> str:
    """A rate in few characters: 1,234 / 12.3k / 1.23M; KiB as they are."""
    if x is None:
        return "-"
    if abs(x) >= 1e6:
        return f"{x / 1e6:.2f}M"
    if abs(x) >= 1e4:
        return f"{x / 1e3:.1f}k"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}%"


def _base_twin(by: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    """The ``@base`` row that ``name`` compares with: ``NAME@base`` for a
    fastws server, itself for an ``@base`` one; {} for the peers."""
    return by.get(name if name.endswith(BASE_SUFFIX) else name + BASE_SUFFIX, {})


def format_table(
    summary: list[dict[str, Any]], reference: str | None, second: str | None = None, shared_cores: int = 0
) -> str:
    """The comparison table of one scenario (medians of rounds), a bar chart and notes.

    Columns: the median headline figure (its unit as header), its min-max
    over the rounds, the ratio of medians to ``reference`` (and to
    ``second``, if given), server CPU us per operation and its ratio, median
    p50 and p99 latency, server / load generator / other CPU, how many
    rounds the load generator was saturated in, errors, server RSS. With
    ``@base`` servers in the run (``--baseline``), two more columns give
    each fastws server's ratios to the same server on the baseline commit.
    ``shared_cores``: how many cores server and load generator shared (0:
    pinned apart); a note names the servers whose runs kept them all busy."""
    by = {s["server"]: s for s in summary}
    ref = by.get(reference or "", {})
    sec = by.get(second or "", {}) if second else None
    before_after = any(name.endswith(BASE_SUFFIX) for name in by)
    unit = next((s["rate_unit"] for s in summary if s["rate_unit"]), "rate")
    headers = [
        "server", unit, "min-max", f"vs {reference}", *([f"vs {second}"] if sec is not None else []),
        *(["vs @base"] if before_after else []),
        "srv us/op", f"us/op vs {reference}", *(["us/op vs @base"] if before_after else []),
        "p50 ms", "p99 ms", "srv CPU", "LG CPU", "LG sat", "other", "errors", "RSS MiB",
    ]  # fmt: skip
    rows = []
    for s in summary:
        base = _base_twin(by, s["server"])
        rows.append([
            s["server"],
            _n(s["rate"], ",.0f" if (s["rate"] or 0) >= 100 else ".2f"),
            "-" if s["rate_min"] is None else f"{_num(s['rate_min'])}-{_num(s['rate_max'])}",
            _ratio(s["rate"], ref.get("rate")),
            *([_ratio(s["rate"], sec.get("rate"))] if sec is not None else []),
            *([_ratio(s["rate"], base.get("rate"))] if before_after else []),
            _n(s["server_cpu_us_per_op"], ".2f"),
            _ratio(s["server_cpu_us_per_op"], ref.get("server_cpu_us_per_op")),
            *([_ratio(s["server_cpu_us_per_op"], base.get("server_cpu_us_per_op"))] if before_after else []),
            _n(s["p50_ms"], ".3f"),
            _n(s["p99_ms"], ".3f"),
            _pct(s["server_cpu_pct"]),
            _pct(s["loadgen_cpu_pct"]),
            f"{s['loadgen_saturated_rounds']}/{s['good_rounds']}!" if s["loadgen_saturated_rounds"] else "-",
            _pct(s["other_cpu_pct"]),
            str(s["errors_total"] + len(s["failed"])),
            _n(s["server_rss_mib"], ".1f"),
        ])  # fmt: skip
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]
    # Bar chart of the median headline figure.
    best = max((s["rate"] or 0 for s in summary), default=0) or 1
    out.append("")
    name_w = max(len(s["server"]) for s in summary)
    for s in summary:
        v = s["rate"] or 0
        out.append(f"{s['server'].ljust(name_w)}  {'#' * round(40 * v / best):<40}  {_n(v, ',.0f' if v >= 100 else '.2f')} {unit}")
    notes = []
    busy = [s["other_cpu_pct"] for s in summary if s["other_cpu_pct"] is not None and s["other_cpu_pct"] > OTHER_LOAD_WARN]
    if busy:
        notes.append(
            f"WARNING the machine was busy with other work: up to {max(busy):.0f}% of a core not charged to server or "
            "loadgen (column 'other'); rates are disturbed, server CPU us/op less so"
        )
    for s in summary:
        if s["loadgen_saturated_rounds"]:
            notes.append(
                f"WARNING {s['server']}: the load generator was saturated (~100% of its {s['loadgen_cores']} core(s)) "
                f"in {s['loadgen_saturated_rounds']}/{s['good_rounds']} rounds; its {unit} is a lower bound (the client "
                "may be the bottleneck) - compare srv us/op"
            )
        busy_pct = s["machine_busy_pct"]
        if shared_cores and busy_pct is not None and busy_pct >= MACHINE_SATURATED * 100 * shared_cores:
            notes.append(
                f"note {s['server']}: server and load generator shared {shared_cores} cores, all busy "
                f"({busy_pct:.0f}% in all: server {_n(s['server_cpu_pct'])}%, loadgen {_n(s['loadgen_cpu_pct'])}%, other "
                f"{_n(s['other_cpu_pct'])}%): the cores, not the server alone, were the limit - compare srv us/op"
            )
        if s["error_rounds"] or s["failed"]:
            notes.append(f"ERRORS {s['server']}: {s['errors']} {'; '.join(s['failed'])}".rstrip())
        if s["server_log_lines"]:
            notes.append(f"note {s['server']}: the server wrote {s['server_log_lines']} log line(s) to stderr (see JSON)")
        if s.get("redis_cpu_share_pct") is not None:
            notes.append(
                f"note {s['server']}: srv CPU and srv us/op include redis-server, {s['redis_cpu_share_pct']:.0f}% of "
                "the server processes' CPU time over each whole run (start to stop; median of rounds)"
            )
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
    for is_base, code, servers, expected in sides:
        builds = sorted({r.get("fastws_build", "-") for r in runs if r["server"].endswith(BASE_SUFFIX) == is_base} - {"-"})
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


def describe_load(scenario: str, runs: list[dict[str, Any]], opts: argparse.Namespace) -> str:
    """What the scenario's load was, from its first document."""
    doc = next((r["result"] for r in runs if r["scenario"] == scenario and r["result"] and not r["fatal"]), None)
    timing = f"{opts.duration:g} s (+{opts.warmup:g} s warmup)"
    if doc is None:
        return f"scenario {scenario}: {timing}"
    if scenario == "handshakes":
        load = f"{doc['conns']} clients connecting, upgrading, closing"
    elif scenario == "idle":
        load = f"{doc['conns']} connections held"
    else:
        kind = "text" if doc.get("text") else "binary"
        load = f"{doc['conns']} conns x {doc.get('pipeline')} in flight x {doc.get('size')} B {kind}"
        if doc.get("mode") == "broadcast":
            load = f"1 sender + {doc['conns'] - 1} listeners, {doc.get('pipeline')} in flight x {doc.get('size')} B {kind}"
        if doc.get("compressed"):
            load += ", permessage-deflate"
        if doc.get("rate_offered"):
            load += f", {doc['rate_offered']:,.0f} msg/s offered"
    return f"scenario {scenario}: {load}; {timing} per run"


def _wake_line(probe: dict[str, Any] | None) -> str:
    if not probe:
        return "wake-up probe: not measured"
    same = probe["same_cpu_us"]
    if probe.get("cross_cpu_us") is None:
        return f"wake-up probe: one CPU; loopback round trip p50 {same['p50']:.0f} us"
    cross = probe["cross_cpu_us"]
    text = (
        f"wake-up probe (all CPUs, before the first run): loopback round trip across CPUs p50 {cross['p50']:.0f} us "
        f"(p90 {cross['p90']:.0f}), same CPU p50 {same['p50']:.0f} us: wake_us ~{probe['wake_us']:.0f} us to wake a CPU"
    )
    if probe["wake_us"] >= 20:
        text += " (slow: rr/handshakes latency include it; try --keep-awake)"
    return text


def format_header(meta: dict[str, Any], opts: argparse.Namespace, pin_text: str, scenarios: list[str]) -> str:
    v = meta["versions"]
    base = meta.get("baseline")
    order = "order rotated each round" if opts.order == "rotate" else "same order each round"
    return "\n".join([
        f"fastws benchmark: {', '.join(scenarios)}; {opts.rounds} interleaved rounds ({order}) x {opts.duration:g} s "
        f"(+{opts.warmup:g} s warmup); load generator: python -m fastws bench; medians of rounds",
        f"date {meta['date']}  commit {meta['commit']}  fastws codec {meta['fastws_codec']}, "
        f"protocol {meta['fastws_protocol']}, build {meta.get('fastws_build', '-')}",
        *([
            f"baseline (servers @base) {base['ref']} = commit {base['commit']} \"{_clip(base['subject'], 60)}\": fastws codec "
            f"{base['codec']}, protocol {base['protocol']}, build {base.get('builds_seen') or base['build']}"
        ] if base else []),
        f"machine {meta['cpu']}, {meta['cores']} cores, {meta['kernel']}, Python {meta['python']}",
        _wake_line(meta.get("wake_probe")) + f"; keep-awake {'on' if opts.keep_awake else 'off'}",
        f"{pin_text}; loadgen: {opts.procs} process(es); "
        + ("fastws/ and bench/ run from a copy taken at the start" if meta.get("snapshot") else "live checkout"),
        "versions " + " ".join(f"{k} {val}" for k, val in v.items()),
        *([f"wss:// servers: {meta['tls']}"] if meta.get("tls") else []),
    ])  # fmt: skip


def reference_for(scenario: str, reference: str, ran: list[str]) -> str | None:
    """The server whose medians a scenario's ratios are to: the reference's
    own server for it (its broadcast variant), else the first that ran."""
    name = server_for(scenario, reference)
    return name if name in ran else (ran[0] if ran else None)


# -- SVG chart -------------------------------------------------------------


def write_svg(path: Path, sections: list[dict[str, Any]], title: str) -> None:
    """Horizontal bars of the median headline figure per server, min-max
    whiskers, the figure and its ratio to the reference; one panel per
    scenario. ``sections``: ``{"title", "unit", "reference", "summary"}``."""
    bar_h, gap, width = 20, 8, 400
    names = [s["server"] for sec in sections for s in sec["summary"]]
    # Room for the longest name (~7 px a character at 12 px), 150 px at least.
    left = max(150, 16 + 7 * max(map(len, names), default=0))
    parts: list[str] = [f'<text x="10" y="20" font-size="14" font-weight="bold">{_esc(title)}</text>']
    y = 34
    for sec in sections:
        rows = sec["summary"]
        ref: dict[str, Any] = next((s for s in rows if s["server"] == sec["reference"]), {})
        parts.append(f'<text x="10" y="{y + 14}" font-size="13" font-weight="bold">{_esc(sec["title"])}</text>')
        y += 24
        best = max((s["rate_max"] or s["rate"] or 0 for s in rows), default=0) or 1
        for s in rows:
            v = s["rate"] or 0
            w = width * v / best
            color = "#999999"  # peers; fastws dark blue, fastws on the baseline light blue
            if s["server"].startswith("fastws"):
                color = "#8dbbe0" if s["server"].endswith(BASE_SUFFIX) else "#2b7bb9"
            parts.append(f'<text x="{left - 8}" y="{y + 14}" text-anchor="end">{_esc(s["server"])}</text>')
            parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}"/>')
            label_x = left + w + 6
            if s["rate_min"] is not None:
                x0 = left + width * s["rate_min"] / best
                x1 = left + width * s["rate_max"] / best
                parts.append(f'<line x1="{x0:.1f}" y1="{y + bar_h / 2}" x2="{x1:.1f}" y2="{y + bar_h / 2}" stroke="black"/>')
                label_x = max(label_x, x1 + 6)
            label = "failed" if s["rate"] is None else f"{_n(v, ',.0f' if v >= 100 else '.2f')} {sec['unit']}"
            ratio = _ratio(s["rate"], ref.get("rate"))
            if ratio != "-":
                label += f"  {ratio}"
            parts.append(f'<text x="{label_x:.1f}" y="{y + 14}">{_esc(label)}</text>')
            y += bar_h + gap
        y += 10
    total_w = left + width + 220
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{y + 10}" '
        'font-family="sans-serif" font-size="12">'
    )
    background = f'<rect width="{total_w}" height="{y + 10}" fill="white"/>'
    path.write_text("\n".join([head, background, *parts, "</svg>"]) + "\n")


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# -- progress --------------------------------------------------------------


class Progress:
    """One line on stderr per finished run; while a run goes on, a line that
    the next one overwrites (on a terminal; tqdm's bar when tqdm is installed)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.done = 0
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.bar: Any = None
        if enabled and self.tty:
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
        elif self.tty:
            sys.stderr.write(f"\r\033[K[{self.done + 1:>3}/{self.total}] {text}")
            sys.stderr.flush()

    def _line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            sys.stderr.write(("\r\033[K" if self.tty else "") + text + "\n")
            sys.stderr.flush()

    def finish(self, text: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        self._line(f"[{self.done:>3}/{self.total}] {text}")
        if self.bar is not None:
            self.bar.update(1)

    def note(self, text: str) -> None:
        if self.enabled:
            self._line(text)

    def skip(self, n: int) -> None:
        """``n`` runs fewer to do."""
        self.total -= n
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        elif self.tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _status(row: dict[str, Any]) -> str:
    """What one run gave, in one line."""
    if row["fatal"]:
        return f"FAILED: {_clip(row['fatal'][0], 200)}"
    doc = row["result"]
    value, unit = headline(doc)
    parts = [f"{_n(value, ',.0f' if (value or 0) >= 100 else '.2f')} {unit}"]
    if doc.get("server_cpu_us_per_op") is not None:
        parts.append(f"server {doc['server_cpu_us_per_op']:.2f} us/op")
    lat = doc.get("latency_ms")
    if lat:
        parts.append(f"p50 {lat['p50']:.3f} ms, p99 {lat['p99']:.3f} ms")
    cpu = _server_cpu_pct(doc)
    if cpu is not None:
        parts.append(f"server CPU {cpu:.0f}%")
    if doc.get("loadgen_cpu_pct") is not None:
        parts.append(f"loadgen CPU {doc['loadgen_cpu_pct']:.0f}%" + (" (saturated)" if doc.get("loadgen_saturated") else ""))
    if _errors_total(doc):
        parts.append(f"ERRORS {doc['errors']}")
    return ", ".join(parts)


# -- main ------------------------------------------------------------------


def _cpus(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in text.split(","):
        a, _, b = part.partition("-")
        cpus.update(range(int(a), int(b or a) + 1))
    return cpus


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description="Compare WebSocket servers under fastws bench's scenarios.")
    p.add_argument(
        "--scenario",
        dest="scenarios",
        action="append",
        choices=SCENARIOS,
        metavar="NAME",
        help=f"a scenario of fastws bench, repeatable: {', '.join(SCENARIOS)} (default: pipelined). broadcast runs "
        f"each server's NAME{BROADCAST_SUFFIX} variant",
    )
    p.add_argument(
        "--servers",
        default=",".join(DEFAULT_SERVERS),
        help=f"comma-separated, from: {', '.join(SERVERS)}; for --scenario broadcast only: "
        f"{', '.join(BROADCAST_ONLY)}; with --baseline also "
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
    p.add_argument(
        "--order", choices=("rotate", "fixed"), default="rotate",
        help="server order in each round: rotated by one per round (default) or always as given",
    )  # fmt: skip
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring (default 1)")
    p.add_argument("--quick", action="store_true", help="2 rounds x 2 s, 0.5 s warmup (a smoke test, not a result)")
    load = p.add_argument_group("load (handed to fastws bench; default: each scenario's own)")
    load.add_argument("--conns", "--connections", dest="conns", type=int, default=None, help="connections")
    load.add_argument("--pipeline", "--in-flight", dest="pipeline", type=int, default=None, help="messages in flight per connection")
    load.add_argument("--size", type=int, default=None, help="message size in bytes")
    load.add_argument("--text", action="store_true", help="text messages instead of binary")
    load.add_argument("--rate", type=float, default=None, help="open loop: offer this many messages/s in all")
    load.add_argument("--procs", type=int, default=1, help="load-generator processes (default 1)")
    load.add_argument(
        "--keep-awake", action="store_true",
        help="keep every CPU from halting during the runs (idle-priority busy loops: fastws bench --keep-awake on the "
        "load generator's CPUs, the run's own on the server's)",
    )  # fmt: skip
    p.add_argument(
        "--reference",
        default=None,
        help=f"ratios are to this server's medians (default picows if it runs, else the first server; e.g. "
        f"fastws-callback{BASE_SUFFIX} for before/after); broadcast uses its -broadcast variant",
    )
    p.add_argument("--second", default=None, help="a second ratio column, to this server's median rate")
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
    p.add_argument("--json", metavar="FILE", default=None, help="write everything (every run's raw document included) here")
    p.add_argument("--chart", metavar="FILE.svg", default=None, help="draw the median rates per scenario, with ratios")
    p.add_argument(
        "--out", default=None,
        help="output path prefix for .json, .csv, .txt, .svg (default bench/results/<date>-<scenarios> when neither "
        "--json nor --chart is given)",
    )  # fmt: skip
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


#: The wake-up probe, asked of a fresh interpreter on the run's copy of fastws.
_WAKE_PROBE = "import json; from fastws.bench.machine import wake_probe; print(json.dumps(wake_probe(n=200)))"


def probe_wake(workdir: Path) -> dict[str, Any] | None:
    """``fastws.bench.machine.wake_probe`` over all the run's CPUs (None if it fails)."""
    try:
        p = subprocess.run([sys.executable, "-c", _WAKE_PROBE], cwd=workdir, env=code_env(workdir),
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        return dict(json.loads(p.stdout.strip().splitlines()[-1]))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.rounds, opts.duration, opts.warmup = 2, 2.0, 0.5
    scenarios = list(dict.fromkeys(opts.scenarios or ["pipelined"]))
    if opts.chart and not opts.chart.endswith(".svg"):
        parser.error("--chart writes an .svg file")
    servers = [s.strip() for s in opts.servers.split(",") if s.strip()]
    known = [*SERVERS, *BROADCAST_ONLY]
    if opts.baseline:
        known += [name + BASE_SUFFIX for name in FASTWS_SERVERS]
        if not any(s.endswith(BASE_SUFFIX) for s in servers):
            servers = [x for s in servers for x in ([s, s + BASE_SUFFIX] if s in FASTWS_SERVERS else [s])]
    unknown = [s for s in servers if s not in known]
    if unknown:
        hint = f" ({BASE_SUFFIX} servers need --baseline GITREF)" if any(BASE_SUFFIX in s for s in unknown) else ""
        parser.error(f"unknown server(s) {unknown}{hint}; known: {', '.join(known)}")
    if opts.reference is None:
        opts.reference = "picows" if "picows" in servers else servers[0]
    for option, name in (("--reference", opts.reference), ("--second", opts.second)):
        if name is not None and name not in servers:
            print(f"run: {option} {name} is not among the servers: its ratio columns will show '-'", file=sys.stderr)
    # Which server runs each scenario for each listed one; the pairs with none are skipped.
    plan: dict[str, list[tuple[str, str]]] = {}
    skipped: dict[str, list[str]] = {sc: [] for sc in scenarios}
    for sc in scenarios:
        plan[sc] = []
        for name in servers:
            actual = server_for(sc, name)
            if actual is None:
                if sc == "broadcast":
                    why = "no broadcast variant in bench.servers"
                elif name.partition("@")[0] in BROADCAST_ONLY:
                    why = f"it has only a broadcast variant ({name.partition('@')[0]}{BROADCAST_SUFFIX})"
                else:
                    why = "a broadcast server does not echo"
                skipped[sc].append(f"{name}: {why}")
            else:
                plan[sc].append((name, actual))
    for sc in scenarios:
        for line in skipped[sc]:
            print(f"run: {sc}: skipping {line}", file=sys.stderr)
    if not any(plan.values()):
        parser.error("no server can run any of the scenarios")
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
        meta["wake_probe"] = probe_wake(workdir)
    except KeyboardInterrupt:
        tmp.cleanup()
        raise SystemExit("run: interrupted before the first run")
    except BaseException:
        tmp.cleanup()
        raise
    meta["snapshot"] = opts.snapshot
    runs: list[dict[str, Any]] = []
    refused: set[tuple[str, str]] = set()  # (scenario, server) that refused permessage-deflate
    progress = Progress(opts.rounds * sum(map(len, plan.values())), opts.progress)
    try:
        for rnd in range(1, opts.rounds + 1):
            for sc in scenarios:
                pairs = plan[sc]
                shift = (rnd - 1) % len(pairs) if pairs and opts.order == "rotate" else 0
                for _listed, name in pairs[shift:] + pairs[:shift]:
                    if (sc, name) in refused:
                        continue
                    idle_busy = None
                    where = f"round {rnd}/{opts.rounds}  {sc}  {name}"
                    if opts.wait_quiet:
                        progress.start(f"{where}: waiting for the machine to be quiet")
                        idle_busy = wait_quiet(opts.wait_quiet, opts.quiet_below)
                    progress.start(f"{where}: running ~{opts.warmup + opts.duration:g} s")
                    row = run_one(name, sc, opts, server_cpus, loadgen_cpus, workdir, base_dir, tls_dir)
                    row["round"] = rnd
                    row["machine_busy_before_pct"] = idle_busy
                    runs.append(row)
                    progress.finish(f"{where}: {_status(row)}")
                    if refused_compression(row):
                        refused.add((sc, name))
                        progress.skip(opts.rounds - rnd)
                        progress.note(f"run: {sc}: {name} refused permessage-deflate: skipped from now on")
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
        negotiated = ", ".join(sorted({r["result"]["tls"] for r in runs if (r["result"] or {}).get("tls")})) or "-"
        meta["tls"] = f"{tls.SETTINGS} (servers; fastws bench offers its default groups); negotiated {negotiated}"
    if opts.baseline:
        meta["baseline"]["builds_seen"] = builds_seen(True)
    # Runs refused for compression are not failures of the comparison: a note, and out of the tables.
    for sc, name in sorted(refused):
        skipped[sc].append(f"{name}: refused permessage-deflate (fastws bench: {_clip(next(f for r in runs if r['scenario'] == sc and r['server'] == name for f in r['fatal'] if DEFLATE_REFUSED in f), 160)})")
    measured = [r for r in runs if (r["scenario"], r["server"]) not in refused]
    sections = []
    text = format_header(meta, opts, pin_text, scenarios)
    for sc in scenarios:
        names = [name for _, name in plan[sc] if (sc, name) not in refused]
        summary = summarise(measured, sc, names)
        ref = reference_for(sc, opts.reference, [s["server"] for s in summary if s["rate"] is not None] or names)
        second = server_for(sc, opts.second) if opts.second else None
        unit = next((s["rate_unit"] for s in summary if s["rate_unit"]), "")
        sections.append({
            "scenario": sc, "title": f"{sc}: median {unit}, ratio to {ref}", "unit": unit, "reference": ref,
            "load": describe_load(sc, runs, opts), "summary": summary, "skipped": skipped[sc],
        })  # fmt: skip
        text += f"\n\n== {describe_load(sc, runs, opts)}; ratios to {ref}\n"
        text += format_table(summary, ref, second, shared_cores) if summary else "(no server ran it)"
        text += "".join(f"\nnote {sc}: skipped {line}" for line in skipped[sc])
    text += "".join("\n" + line for line in [*warnings, *build_warnings(runs, meta)])
    print(text)
    config = {k: v for k, v in vars(opts).items() if k not in ("server_cpus", "loadgen_cpus")}
    config.update(
        server_cpus=sorted(server_cpus or []), loadgen_cpus=sorted(loadgen_cpus or []), servers=servers, scenarios=scenarios
    )
    document = _strict({"meta": meta, "config": config, "scenarios": sections, "runs": runs})
    title = f"fastws bench, medians of {opts.rounds} rounds ({meta['date']})"
    written = []
    if opts.json:
        Path(opts.json).write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
        written.append(opts.json)
    if opts.chart:
        write_svg(Path(opts.chart), [s for s in sections if s["summary"]], title)
        written.append(opts.chart)
    if opts.out or not (opts.json or opts.chart):
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path(opts.out) if opts.out else ROOT / "bench" / "results" / f"{stamp}-{'+'.join(scenarios)}"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
        write_csv(out.with_suffix(".csv"), runs)
        out.with_suffix(".txt").write_text(text + "\n")
        write_svg(out.with_suffix(".svg"), [s for s in sections if s["summary"]], title)
        written.append(f"{out}.json, .csv, .txt, .svg")
    print(f"\nwrote {', '.join(written)}", file=sys.stderr)
    bad = any(s["failed"] or s["error_rounds"] for sec in sections for s in sec["summary"])
    return 1 if bad else 0


CSV_FIELDS = [
    "round", "scenario", "server", "rate", "rate_unit", "server_cpu_us_per_op", "p50_ms", "p90_ms", "p99_ms",
    "server_cpu_pct", "loadgen_cpu_pct", "loadgen_saturated", "other_cpu_pct", "server_rss_mib",
    "server_kib_per_connection", "window_s", "wake_us", "errors", "fatal", "fastws_build",
]  # fmt: skip


def _strict(value: Any) -> Any:
    """``value`` with NaN (``fastws bench`` writes them for runs that timed
    nothing) and infinite floats as None, so that the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict(v) for v in value]
    return value


def write_csv(path: Path, runs: list[dict[str, Any]]) -> None:
    """One row per run: its main figures."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in runs:
            doc = r["result"] or {}
            lat = doc.get("latency_ms") or {}
            w.writerow({
                **{k: doc.get(k) for k in CSV_FIELDS},
                "round": r.get("round"), "scenario": r["scenario"], "server": r["server"],
                "p50_ms": lat.get("p50"), "p90_ms": lat.get("p90"), "p99_ms": lat.get("p99"),
                "server_cpu_pct": _server_cpu_pct(doc), "other_cpu_pct": _other_cpu_pct(r) if doc else None,
                "wake_us": (doc.get("machine") or {}).get("wake_us"),
                "errors": json.dumps(doc.get("errors") or {}), "fatal": "; ".join(r["fatal"]),
                "fastws_build": r.get("fastws_build"),
            })  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
