"""Opening + closing handshakes per second of real servers, in interleaved rounds.

Each connection of this benchmark does nothing but the handshakes: TCP
connect to 127.0.0.1, an HTTP upgrade request with a random 16-byte base64
``Sec-WebSocket-Key``, the ``101`` head read and its ``Sec-WebSocket-Accept``
checked, a masked close frame (code 1000) sent, the server's close frame read,
EOF awaited, close. ``C`` clients (default 32) do that in a loop for a window
of ``--duration`` seconds after a ``--warmup``; each completed cycle counts as
one handshake. The question it answers is whether per-connection work of a
server (such as computing the accept key) shows in connections per second.
Against a ``-tls`` server (wss://) each cycle starts with a full TLS
handshake (no session resumption: every connection is new to the server):
the certificate is made for the run (``bench.tls``: self-signed ECDSA P-256,
ECDHE on P-256, TLS 1.3 negotiated) and trusted by the clients, which then do
the same upgrade and close inside TLS.

Usage::

    python -m bench.handshakes                       # 7 rounds x 5 s: fastws-callback vs fastws-callback-hashlib
    python -m bench.handshakes --servers fastws-callback,fastws-callback-hashlib,picows --rounds 7 --duration 5
    python -m bench.handshakes --rounds 2 --duration 1 --json /tmp/hs.json
    python -m bench.handshakes --servers fastws-callback,fastws-callback-tls,picows,picows-tls --rounds 5

Method, as ``bench.run``'s: for each of ``--rounds`` rounds every server of
``--servers`` (names of ``bench.servers.SERVERS``) runs once, the order
rotated by one each round (``--order rotate``, the default: A B C, B C A,
C A B, ...; so that no server always runs first, or right after the same
other server; ``--order fixed`` keeps A B C), each run a fresh ``python -m bench.servers NAME --port P`` process pinned to
the first CPU. The load generator is this process, pinned to the second CPU:
uvloop and bare ``asyncio.Protocol`` objects, no WebSocket library, so that it
stays cheap. Over the measured window it reads the server's CPU time (user +
sys, ``/proc/PID/stat``, its child processes' included), its own (``getrusage``) and the machine's busy time
(``/proc/stat``); ``other`` is the busy CPU charged to neither (other programs,
kernel work billed to no one of the two), in % of one core. The table shows
per server the MEDIAN over rounds of handshakes/s and of server CPU
microseconds per handshake, each with its spread ((max - min) / median) and
its ratio to the first server's median, and the range over rounds of the
per-round ratio of server CPU per handshake to the first server's in the same
round (and how many rounds it was above 1). When the load generator used >= 90% of its core, it, not the server,
limited handshakes/s: then CPU microseconds per handshake is the figure that
holds, and a WARNING line says so.

Servers run from a copy of ``fastws/`` and ``bench/`` taken at the start (as
``bench.run`` does; ``--no-snapshot`` runs the live checkout), so edits to the
checkout during the run cannot mix code into it. Progress goes to stderr, the
table to stdout, everything to ``--json FILE``. Exit status 1 if a run failed
or any handshake went wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ctypes
import datetime
import hashlib
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from ssl import SSLContext
from typing import Any

from bench import tls
from fastws.bench.loadgen import describe_tls
from bench.run import _free_port, _stop, _wait_ready, code_env, pinning_warnings, server_command
from bench.servers import SERVERS, is_tls

__all__ = ["main", "run_load"]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SERVERS = ["fastws-callback", "fastws-callback-hashlib"]
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Load generator CPU (% of its core) at or above which it was the bottleneck.
LG_SATURATED = 90.0
#: Other load (% of one core) above which the table warns.
OTHER_LOAD_WARN = 25.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the client ------------------------------------------------------------


class _Stats:
    """Counters shared by the clients of one run."""

    __slots__ = ("completed", "errors", "recording_errors", "recording", "tls")

    def __init__(self) -> None:
        #: TLS version and cipher of the first connection (None: ws://).
        self.tls: str | None = None
        self.completed = 0
        self.errors: dict[str, int] = {}
        self.recording_errors: dict[str, int] = {}
        self.recording = False

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if self.recording:
            self.recording_errors[kind] = self.recording_errors.get(kind, 0) + 1


_HEAD, _CLOSE, _EOF = 0, 1, 2


class HandshakeClient(asyncio.Protocol):
    """One connection: upgrade, check the 101, close handshake, EOF.

    ``done`` gets None when every step went right, else a short error kind.
    """

    __slots__ = ("transport", "buf", "state", "request", "expected", "close_frame", "done", "timer", "eof", "timeout")

    def __init__(self, request: bytes, expected: bytes, close_frame: bytes, done: asyncio.Future[str | None], timeout: float) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.state = _HEAD
        self.request = request
        self.expected = expected
        self.close_frame = close_frame
        self.done = done
        self.timer: asyncio.TimerHandle | None = None
        self.eof = False
        self.timeout = timeout

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.timer = asyncio.get_running_loop().call_later(self.timeout, self._fail, "timeout")
        transport.write(self.request)  # type: ignore[attr-defined]

    def _fail(self, kind: str) -> None:
        if not self.done.done():
            self.done.set_result(kind)
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if self.state == _HEAD:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 16384:
                    self._fail("head too long")
                else:
                    self.buf = buf
                return
            head = buf[:end]
            buf = buf[end + 4 :]
            if not head.startswith(b"HTTP/1.1 101 "):
                self._fail("status " + head[9:12].decode("latin-1"))
                return
            accept = None
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"sec-websocket-accept":
                    accept = value.strip()
            if accept != self.expected:
                self._fail("bad accept" if accept else "no accept")
                return
            self.state = _CLOSE
            self.transport.write(self.close_frame)  # type: ignore[union-attr]
        if self.state == _CLOSE:
            if len(buf) < 2:
                self.buf = buf
                return
            if buf[0] != 0x88 or buf[1] & 0x80:
                self._fail("not a close frame")
                return
            length = buf[1]
            if length > 125:
                self._fail("bad close frame")
                return
            if len(buf) < 2 + length:
                self.buf = buf
                return
            if length < 2 or int.from_bytes(buf[2:4], "big") != 1000:
                self._fail("close code not 1000")
                return
            buf = buf[2 + length :]
            self.state = _EOF
        if buf:
            self._fail("data after close")
            return
        self.buf = b""

    def eof_received(self) -> bool:
        self.eof = True
        return False  # the transport closes itself: our close

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.done.done():
            return
        if exc is not None:
            self.done.set_result(type(exc).__name__)
        elif self.state != _EOF:
            self.done.set_result(("closed before 101", "closed before close frame")[self.state])
        elif not self.eof:
            self.done.set_result("closed without EOF")
        else:
            self.done.set_result(None)


def _masked_close(code: int = 1000) -> bytes:
    mask = os.urandom(4)
    payload = code.to_bytes(2, "big")
    return bytes((0x88, 0x82)) + mask + bytes(b ^ mask[i] for i, b in enumerate(payload))


async def _client(
    loop: asyncio.AbstractEventLoop,
    host: str,
    port: int,
    stats: _Stats,
    stopping: list[bool],
    timeout: float,
    context: SSLContext | None = None,
) -> None:
    prefix = (
        f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
    ).encode("latin-1")
    b64encode, sha1, urandom = base64.b64encode, hashlib.sha1, os.urandom
    while not stopping[0]:
        key = b64encode(urandom(16))
        expected = b64encode(sha1(key + GUID, usedforsecurity=False).digest())
        done: asyncio.Future[str | None] = loop.create_future()
        proto = HandshakeClient(prefix + key + b"\r\n\r\n", expected, _masked_close(), done, timeout)
        try:
            transport, _ = await loop.create_connection(
                lambda: proto, host, port, ssl=context, server_hostname=host if context else None
            )
        except OSError as exc:
            stats.error(f"connect: {type(exc).__name__}")
            await asyncio.sleep(0.01)
            continue
        if context is not None and stats.tls is None:
            stats.tls = describe_tls(transport.get_extra_info("ssl_object"))
        result = await done
        if result is None:
            stats.completed += 1
        else:
            stats.error(result)


# -- measurements ----------------------------------------------------------


def _tree_cpu(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` and its descendants (the
    workers of a multi-process server; they must live through the window)."""
    import psutil

    try:
        pids = [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    except psutil.Error:
        pids = [pid]
    own = _proc_cpu(pid)
    return None if own is None else own + sum(_proc_cpu(p) or 0.0 for p in pids[1:])


def _proc_cpu(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _machine() -> tuple[float, float]:
    """(busy, steal) CPU seconds of all cores since boot, from /proc/stat:
    busy is user + nice + system + irq + softirq (guest time is in user)."""
    try:
        with open("/proc/stat", "rb") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return math.nan, math.nan
    v += [0] * (8 - len(v))
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / _CLK_TCK, v[7] / _CLK_TCK


def wait_quiet(max_wait: float, below: float) -> float:
    """Wait (up to ``max_wait`` s) until the machine's busy CPU over one
    second is under ``below`` % of one core; return the last reading."""
    deadline = time.monotonic() + max_wait
    while True:
        b0 = _machine()[0]
        time.sleep(1.0)
        busy = 100.0 * (_machine()[0] - b0)
        if busy < below or time.monotonic() >= deadline:
            return busy


def _sample(stats: _Stats, server_pid: int) -> dict[str, float]:
    busy, steal = _machine()
    return {
        "t": time.perf_counter(),
        "completed": stats.completed,
        "server_cpu": _tree_cpu(server_pid) or math.nan,
        "self_cpu": _self_cpu(),
        "busy": busy,
        "steal": steal,
    }


def run_load(
    host: str,
    port: int,
    server_pid: int,
    conns: int,
    warmup: float,
    duration: float,
    timeout: float = 10.0,
    context: SSLContext | None = None,
) -> dict[str, Any]:
    """Run ``conns`` clients against ``host:port`` (over TLS with ``context``)
    on a fresh uvloop loop for ``warmup`` + ``duration`` seconds; the
    window's figures."""
    import uvloop

    async def drive() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        stats = _Stats()
        stopping = [False]
        tasks = [loop.create_task(_client(loop, host, port, stats, stopping, timeout, context)) for _ in range(conns)]
        await asyncio.sleep(warmup)
        start = _sample(stats, server_pid)
        stats.recording = True
        await asyncio.sleep(duration)
        end = _sample(stats, server_pid)
        stats.recording = False
        stopping[0] = True
        # Let the connections in flight finish their cycle, then give up on them.
        _, pending = await asyncio.wait(tasks, timeout=timeout + 2)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=2)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                stats.error(f"client crashed: {task.exception()!r}")
        wall = end["t"] - start["t"]
        n = end["completed"] - start["completed"]
        server_cpu = end["server_cpu"] - start["server_cpu"]
        self_cpu = end["self_cpu"] - start["self_cpu"]
        busy = end["busy"] - start["busy"]
        return {
            "window_s": wall,
            "handshakes": n,
            "handshakes_per_s": n / wall if wall > 0 else math.nan,
            "server_cpu_s": server_cpu,
            "server_cpu_pct": 100.0 * server_cpu / wall,
            "server_cpu_us_per_handshake": 1e6 * server_cpu / n if n else math.nan,
            "loadgen_cpu_pct": 100.0 * self_cpu / wall,
            "loadgen_cpu_us_per_handshake": 1e6 * self_cpu / n if n else math.nan,
            "other_pct": 100.0 * (busy - server_cpu - self_cpu) / wall,
            "steal_pct": 100.0 * (end["steal"] - start["steal"]) / wall,
            "errors_in_window": stats.recording_errors,
            "errors": stats.errors,
            "completed_total": stats.completed,
            "tls": stats.tls,
        }

    return uvloop.run(drive())


# -- one run ---------------------------------------------------------------




def _server_preexec(cpus: set[int] | None) -> Any:
    def setup() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)
        try:  # die with us (PR_SET_PDEATHSIG): no stray server if we are killed
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
        except (OSError, AttributeError):
            pass

    return setup








def _check_compiled(workdir: Path) -> None:
    """Exit unless the fastws the servers will import (from ``workdir``) is
    that copy and compiled: a twin fallback (an extension that failed to
    import, say half-rebuilt when copied) would make the fastws figures and
    the accept-key comparison meaningless."""
    probe = subprocess.run(
        [sys.executable, "-c", "import fastws, fastws.codec as c; print(fastws.COMPILED, c.handshake.__name__, fastws.__file__)"],
        cwd=workdir,
        env=code_env(workdir),
        capture_output=True,
        text=True,
        timeout=60,
    )
    words = probe.stdout.split()
    if probe.returncode != 0 or len(words) != 3:
        raise SystemExit(f"handshakes: cannot import fastws from {workdir}: {probe.stderr.strip()[-500:]}")
    compiled, handshake_module, path = words
    if Path(path).resolve().parent != (workdir / "fastws").resolve():
        raise SystemExit(f"handshakes: fastws should be imported from {workdir / 'fastws'}, but {path} was")
    if compiled != "True" or handshake_module != "fastws.codec._handshake":
        raise SystemExit(
            f"handshakes: fastws in {workdir} is not compiled (COMPILED={compiled}, accept key from "
            f"{handshake_module}); run `python setup.py build_ext --inplace` first. {probe.stderr.strip()[-300:]}"
        )


def run_one(
    name: str, opts: argparse.Namespace, workdir: Path, server_cpus: set[int] | None, tls_dir: Path | None = None
) -> dict[str, Any]:
    """Start server ``name``, run the clients against it, stop it; a ``-tls``
    server with the certificate in ``tls_dir``, which the clients trust."""
    port = _free_port()
    row: dict[str, Any] = {"server": name, "port": port}
    env = code_env(workdir)
    context = tls.client_context(tls_dir / tls.CERT_FILE) if tls_dir is not None and is_tls(name) else None
    with tempfile.TemporaryFile() as errlog:
        proc = subprocess.Popen(
            server_command(name, port, tls_dir),
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errlog,
            preexec_fn=_server_preexec(server_cpus),
            start_new_session=True,  # Ctrl-C reaches us only; we stop it
        )
        try:
            ready = _wait_ready(proc, 30)
            if ready is None:
                row["fatal"] = f"server did not start (exit status {proc.poll()})"
            else:
                row["fastws_build"] = ready.rpartition("fastws-build=")[2] or "-"
                row.update(run_load("127.0.0.1", port, proc.pid, opts.conns, opts.warmup, opts.duration, opts.timeout, context))
                if proc.poll() is not None:
                    row["fatal"] = f"server died during the run (exit status {proc.returncode})"
        finally:
            row["server_exit"] = _stop(proc)
        errlog.seek(0)
        log = errlog.read().decode("utf-8", "replace").strip()
    row["server_log_tail"] = "\n".join(log.splitlines()[-15:])
    if row.get("fatal") and log:
        row["fatal"] += ": " + log.splitlines()[-1][:300]
    return row


# -- summary ---------------------------------------------------------------


def _good(v: Any) -> bool:
    return isinstance(v, (int, float)) and not math.isnan(v)


def _median(values: list[Any]) -> float:
    vals = [v for v in values if _good(v)]
    return statistics.median(vals) if vals else math.nan


def _spread(values: list[Any]) -> float:
    vals = [v for v in values if _good(v)]
    if not vals:
        return math.nan
    m = statistics.median(vals)
    return 100.0 * (max(vals) - min(vals)) / m if m else math.nan


def summarise(runs: list[dict[str, Any]], servers: list[str]) -> list[dict[str, Any]]:
    """Per server: medians over its good rounds, spreads, ratios to the first."""
    out = []
    by_round = {(r["round"], r["server"]): r for r in runs if not r.get("fatal")}
    first = servers[0]
    for name in servers:
        mine = [r for r in runs if r["server"] == name and not r.get("fatal")]
        hs = [r["handshakes_per_s"] for r in mine]
        us = [r["server_cpu_us_per_handshake"] for r in mine]
        paired = []  # server CPU per handshake / the first server's, same round
        for r in mine:
            ref = by_round.get((r["round"], first))
            if ref and _good(ref["server_cpu_us_per_handshake"]) and _good(r["server_cpu_us_per_handshake"]):
                paired.append(r["server_cpu_us_per_handshake"] / ref["server_cpu_us_per_handshake"])
        errors: dict[str, int] = {}
        for r in mine:
            for k, v in r.get("errors", {}).items():
                errors[k] = errors.get(k, 0) + v
        out.append(
            {
                "server": name,
                "rounds": len(mine),
                "failed_runs": sum(1 for r in runs if r["server"] == name and r.get("fatal")),
                "handshakes_per_s": _median(hs),
                "handshakes_per_s_spread_pct": _spread(hs),
                "server_cpu_us_per_handshake": _median(us),
                "server_cpu_us_spread_pct": _spread(us),
                "paired_cpu_ratio_min": min(paired) if paired else math.nan,
                "paired_cpu_ratio_median": _median(paired),
                "paired_cpu_ratio_max": max(paired) if paired else math.nan,
                "paired_cpu_ratio_above_1": sum(1 for x in paired if x > 1.0),
                "paired_rounds": len(paired),
                "server_cpu_pct": _median([r["server_cpu_pct"] for r in mine]),
                "loadgen_cpu_pct": _median([r["loadgen_cpu_pct"] for r in mine]),
                "loadgen_saturated_rounds": sum(1 for r in mine if r["loadgen_cpu_pct"] >= LG_SATURATED),
                "loadgen_cpu_us_per_handshake": _median([r["loadgen_cpu_us_per_handshake"] for r in mine]),
                "other_pct": _median([r["other_pct"] for r in mine]),
                "steal_pct": _median([r["steal_pct"] for r in mine]),
                "errors": errors,
            }
        )
    ref = out[0] if out else None
    for s in out:
        s["handshakes_per_s_vs_first"] = s["handshakes_per_s"] / ref["handshakes_per_s"] if ref and ref["handshakes_per_s"] else math.nan
        s["server_cpu_us_vs_first"] = (
            s["server_cpu_us_per_handshake"] / ref["server_cpu_us_per_handshake"]
            if ref and ref["server_cpu_us_per_handshake"]
            else math.nan
        )
    return out


def _f(x: Any, fmt: str) -> str:
    return format(x, fmt) if _good(x) else "-"


def format_table(summary: list[dict[str, Any]]) -> str:
    first = summary[0]["server"] if summary else "-"
    cols = [
        ("server", "<"),
        ("hs/s", ">"),
        ("spread", ">"),
        ("vs first", ">"),
        ("srv CPU us/hs", ">"),
        ("spread", ">"),
        ("vs first", ">"),
        ("per-round ratio", ">"),
        ("srv CPU", ">"),
        ("LG CPU", ">"),
        ("LG us/hs", ">"),
        ("other", ">"),
        ("errors", ">"),
    ]
    rows = []
    for s in summary:
        sat = "!" if s["loadgen_saturated_rounds"] else ""
        rows.append(
            [
                s["server"],
                _f(s["handshakes_per_s"], ",.0f"),
                _f(s["handshakes_per_s_spread_pct"], ".1f") + "%",
                _f(s["handshakes_per_s_vs_first"], ".3f") + "x",
                _f(s["server_cpu_us_per_handshake"], ".1f"),
                _f(s["server_cpu_us_spread_pct"], ".1f") + "%",
                _f(s["server_cpu_us_vs_first"], ".3f") + "x",
                f"{_f(s['paired_cpu_ratio_median'], '.3f')} [{_f(s['paired_cpu_ratio_min'], '.2f')}-{_f(s['paired_cpu_ratio_max'], '.2f')}]",
                _f(s["server_cpu_pct"], ".0f") + "%",
                _f(s["loadgen_cpu_pct"], ".0f") + "%" + sat,
                _f(s["loadgen_cpu_us_per_handshake"], ".1f"),
                _f(s["other_pct"], ".0f") + "%",
                str(sum(s["errors"].values())),
            ]
        )
    widths = [max(len(c[0]), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]

    def line(cells: list[str]) -> str:
        return "  ".join(f"{v:{cols[i][1]}{widths[i]}}" for i, v in enumerate(cells)).rstrip()

    out = [line([c[0] for c in cols]), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    out.append("")
    out.append(
        f"medians over rounds; spread = (max - min) / median; vs first = ratio of medians to {first}; "
        f"per-round ratio = median [min-max] over rounds of srv CPU us/hs / {first}'s in the same round; "
        "srv CPU, LG CPU, other in % of one core (other: machine CPU charged to neither); "
        f"! = load generator >= {LG_SATURATED:.0f}% of its core in some round"
    )
    for s in summary[1:]:
        if not _good(s["server_cpu_us_vs_first"]):
            continue
        diff = 100.0 * (s["server_cpu_us_vs_first"] - 1.0)
        spread = max(summary[0]["server_cpu_us_spread_pct"], s["server_cpu_us_spread_pct"])
        out.append(
            f"{s['server']} vs {first}: server CPU per handshake {diff:+.1f}% (ratio of medians); per-round ratio "
            f"above 1 in {s['paired_cpu_ratio_above_1']}/{s['paired_rounds']} rounds; round-to-round spread up to "
            f"{spread:.0f}%: the difference is {'BIGGER' if abs(diff) > spread else 'not bigger'} than the spread"
        )
    return "\n".join(out)


def format_rounds(runs: list[dict[str, Any]], servers: list[str]) -> str:
    rounds = sorted({r["round"] for r in runs})
    head = ["round"] + [f"{s} hs/s | us/hs" for s in servers]
    rows = []
    for n in rounds:
        row = [str(n)]
        for s in servers:
            r = next((r for r in runs if r["round"] == n and r["server"] == s), None)
            if r is None or r.get("fatal"):
                row.append("failed")
            else:
                row.append(f"{r['handshakes_per_s']:,.0f} | {r['server_cpu_us_per_handshake']:.1f}")
        rows.append(row)
    widths = [max(len(head[i]), *(len(r[i]) for r in rows)) for i in range(len(head))]

    def fmt(cells: list[str]) -> str:
        return "  ".join(f"{v:>{widths[i]}}" for i, v in enumerate(cells))

    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def build_warnings(runs: list[dict[str, Any]], summary: list[dict[str, Any]]) -> list[str]:
    out = []
    for s in summary:
        if s["loadgen_saturated_rounds"]:
            out.append(
                f"WARNING {s['server']}: the load generator was at >= {LG_SATURATED:.0f}% of its core in "
                f"{s['loadgen_saturated_rounds']}/{s['rounds']} rounds: it, not the server, limited handshakes/s "
                "(a lower bound) - compare server CPU us per handshake"
            )
        if _good(s["other_pct"]) and s["other_pct"] > OTHER_LOAD_WARN:
            out.append(
                f"WARNING {s['server']}: other load {s['other_pct']:.0f}% of a core (median): the machine was "
                "not quiet; CPU us per handshake is the figure that holds"
            )
        if s["errors"]:
            out.append(f"WARNING {s['server']}: handshake errors {s['errors']}")
        if s["failed_runs"]:
            out.append(f"WARNING {s['server']}: {s['failed_runs']} run(s) failed")
    builds = {str(r["fastws_build"]) for r in runs if r.get("fastws_build") not in (None, "-")}
    if len(builds) > 1:
        out.append(f"WARNING more than one fastws build was loaded by the servers: {sorted(builds)}")
    for r in runs:
        if r.get("fatal"):
            out.append(f"WARNING round {r['round']} {r['server']}: {r['fatal']}")
    return out


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def describe(opts: argparse.Namespace, server_cpus: set[int] | None, loadgen_cpus: set[int] | None) -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "--", "fastws"))
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": (_git("rev-parse", "--short", "HEAD") or "?") + ("+dirty fastws/" if dirty else ""),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": {d: _version(d) for d in ("uvloop", "picows", "aiofastnet", "psutil")},
        "server_cpus": sorted(server_cpus) if server_cpus else None,
        "loadgen_cpus": sorted(loadgen_cpus) if loadgen_cpus else None,
        "snapshot": not opts.no_snapshot,
        "servers": opts.servers,
        "rounds": opts.rounds,
        "conns": opts.conns,
        "duration": opts.duration,
        "warmup": opts.warmup,
        "order": opts.order,
        "wait_quiet": opts.wait_quiet,
    }


def format_header(meta: dict[str, Any]) -> str:
    v = meta["versions"]
    pin = (
        f"server on CPU {meta['server_cpus']}, loadgen (this process) on CPU {meta['loadgen_cpus']}"
        if meta["server_cpus"]
        else "not pinned"
    )
    return "\n".join(
        [
            f"fastws handshake benchmark: {meta['conns']} clients x (connect, upgrade, check 101 + accept key, "
            f"close 1000, EOF); {meta['rounds']} interleaved rounds x {meta['duration']:g} s "
            f"(+{meta['warmup']:g} s warmup), order {meta['order']}; medians of rounds",
            f"date {meta['date']}  commit {meta['commit']}  builds {', '.join(meta.get('builds', [])) or '-'}",
            f"machine {meta['cpu']}, {meta['cores']} cores, Linux {meta['kernel']}, Python {meta['python']}",
            f"pinned: {pin}; servers run from {'a copy taken at the start' if meta['snapshot'] else 'the checkout'}",
            f"versions uvloop {v['uvloop']} picows {v['picows']} aiofastnet {v['aiofastnet']}",
            *([f"wss:// servers: {meta['tls']}"] if meta.get("tls") else []),
        ]
    )


# -- main ------------------------------------------------------------------


def _cpus(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.handshakes",
        description="Handshakes per second and server CPU per handshake, interleaved rounds.",
    )
    p.add_argument("--servers", default=",".join(DEFAULT_SERVERS), help=f"comma-separated, of: {', '.join(SERVERS)} (default %(default)s); ratios are to the first")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default %(default)s)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run (default %(default)s)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before the window (default %(default)s)")
    p.add_argument(
        "--order",
        choices=("rotate", "fixed"),
        default="rotate",
        help="server order in each round: rotated by one per round (default) or always as given",
    )
    p.add_argument("--conns", "-c", type=int, default=32, help="concurrent clients (default %(default)s)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds one connection may take (default %(default)s)")
    p.add_argument("--server-cpus", type=_cpus, default=None, help="CPUs of the servers (default: the first allowed CPU)")
    p.add_argument("--loadgen-cpus", type=_cpus, default=None, help="CPUs of the load generator (default: the second)")
    p.add_argument("--no-pin", action="store_true", help="pin nothing")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each run, wait up to SECONDS for the machine to be quiet (busy < --quiet-below %% of one core)",
    )
    p.add_argument("--quiet-below", type=float, default=20.0, help="see --wait-quiet (default %(default)s)")
    p.add_argument("--no-snapshot", action="store_true", help="run servers from the checkout, not a copy")
    p.add_argument("--json", metavar="FILE", help="write configuration, every run and the summary as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    servers = [s.strip() for s in opts.servers.split(",") if s.strip()]
    unknown = [s for s in servers if s not in SERVERS]
    if unknown or not servers:
        raise SystemExit(f"handshakes: unknown server(s) {unknown}; known: {', '.join(SERVERS)}")
    opts.servers = servers
    server_cpus = loadgen_cpus = None
    if not opts.no_pin:
        allowed = sorted(os.sched_getaffinity(0))
        if len(allowed) >= 2:
            server_cpus = opts.server_cpus or {allowed[0]}
            loadgen_cpus = opts.loadgen_cpus or {allowed[1]}
        else:
            print("handshakes: only one CPU allowed: not pinning", file=sys.stderr)
    meta = describe(opts, server_cpus, loadgen_cpus)
    pinning = pinning_warnings(servers, server_cpus)
    for line in pinning:
        print(f"handshakes: {line}", file=sys.stderr)
    if loadgen_cpus:
        os.sched_setaffinity(0, loadgen_cpus)  # the load generator is this process
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fastws-handshakes-") as tmp:
        workdir = ROOT
        if not opts.no_snapshot:
            ignore = shutil.ignore_patterns("__pycache__", "*.c", "*.html", "results", "*.pyc")
            for pkg in ("fastws", "bench"):
                shutil.copytree(ROOT / pkg, Path(tmp) / pkg, ignore=ignore)
            workdir = Path(tmp)
        _check_compiled(workdir)
        tls_dir = tls.make_cert(Path(tmp) / "tls") if any(map(is_tls, servers)) else None
        if tls_dir is not None:
            meta["tls"] = f"{tls.SETTINGS}; a full TLS handshake per connection"
        total = opts.rounds * len(servers)
        started = time.monotonic()
        for rnd in range(1, opts.rounds + 1):
            shift = (rnd - 1) % len(servers) if opts.order == "rotate" else 0
            for name in servers[shift:] + servers[:shift]:
                busy_before = wait_quiet(opts.wait_quiet, opts.quiet_below) if opts.wait_quiet > 0 else None
                row = run_one(name, opts, workdir, server_cpus, tls_dir)
                row["busy_before_pct"] = busy_before
                row["round"] = rnd
                runs.append(row)
                done = len(runs)
                if row.get("fatal"):
                    what = f"FAILED: {row['fatal']}"
                else:
                    what = (
                        f"{row['handshakes_per_s']:,.0f} hs/s, server {row['server_cpu_us_per_handshake']:.1f} us/hs "
                        f"({row['server_cpu_pct']:.0f}% CPU), loadgen {row['loadgen_cpu_pct']:.0f}%, "
                        f"other {row['other_pct']:.0f}%, errors {sum(row['errors'].values())}"
                    )
                eta = (time.monotonic() - started) / done * (total - done)
                print(f"handshakes: [{done}/{total}] round {rnd} {name}: {what}  (eta {eta:.0f} s)", file=sys.stderr, flush=True)
    meta["builds"] = sorted({r["fastws_build"] for r in runs if r.get("fastws_build") not in (None, "-")})
    if meta.get("tls"):
        meta["tls"] += "; negotiated " + (", ".join(sorted({r["tls"] for r in runs if r.get("tls")})) or "-")
    summary = summarise(runs, servers)
    warnings = pinning + build_warnings(runs, summary)
    text = "\n\n".join(
        [format_header(meta), format_table(summary), "per round (hs/s | server CPU us per handshake):\n" + format_rounds(runs, servers)]
        + (["\n".join(warnings)] if warnings else [])
    )
    print(text)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"meta": meta, "summary": summary, "runs": runs, "warnings": warnings}, f, indent=1, default=str)
    bad = any(r.get("fatal") for r in runs) or any(s["errors"] for s in summary)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
