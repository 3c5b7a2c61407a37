"""What the machine adds to a latency figure, and a way to take it out.

On a virtual machine an idle vCPU is halted; waking it (an inter-processor
interrupt through the hypervisor) can take 100 us or more, and a
latency-bound run (``rr``, ``handshakes``: one message at a time, so the
other side's CPU idles between them) then measures the hypervisor, not the
server. :func:`wake_probe` measures it before a run: one-byte round trips
over a socket pair, ``gap`` apart so the far CPU goes idle, between two
threads on different CPUs and on the same CPU (a context switch, no
wake-up). The difference is what waking costs.

:class:`KeepAwake` (``fastws bench --keep-awake``) starts one busy loop per
CPU at idle priority (``SCHED_IDLE``: any other task preempts it at once), so
no CPU halts during the run; its CPU time is measured and left out of the
machine's "other processes" figure.
"""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
import threading
from typing import Any

from . import echo

__all__ = ["KeepAwake", "wake_probe"]


def _round_trips(cpu_a: int, cpu_b: int, n: int, gap_ns: int) -> Any:
    """``n`` round trips between a thread on ``cpu_a`` and one on ``cpu_b``."""
    a, b = socket.socketpair()
    hist = echo.Histogram()
    problems: list[str] = []

    def side_b() -> None:
        os.sched_setaffinity(0, {cpu_b})  # this thread only (Linux)
        why = echo.pong(b.fileno(), n)
        if why:
            problems.append(why)

    with a, b:
        thread = threading.Thread(target=side_b, daemon=True)
        thread.start()
        saved = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {cpu_a})
        try:
            why = echo.ping(a.fileno(), n, gap_ns, hist)
        finally:
            os.sched_setaffinity(0, saved)
        thread.join(5)
    if why or problems:
        raise OSError(f"wake-up probe failed: {why or problems[0]}")
    return hist


def wake_probe(n: int = 200, gap_s: float = 0.002) -> dict[str, Any]:
    """Round trips across CPUs and on one CPU (median and p90, us); None
    figures on a machine with one usable CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    out: dict[str, Any] = {"cpus": len(cpus), "probe_round_trips": n, "probe_gap_ms": gap_s * 1e3}
    same = _round_trips(cpus[0], cpus[0], n, int(gap_s * 1e9))
    p50, p90 = same.quantiles([0.5, 0.9])
    out["same_cpu_us"] = {"p50": p50 / 1e3, "p90": p90 / 1e3}
    if len(cpus) < 2:
        out["cross_cpu_us"] = None
        out["wake_us"] = None
        return out
    cross = _round_trips(cpus[0], cpus[-1], n, int(gap_s * 1e9))
    c50, c90 = cross.quantiles([0.5, 0.9])
    out["cross_cpu_us"] = {"p50": c50 / 1e3, "p90": c90 / 1e3}
    # Two wake-ups per round trip (there and back) when both sides idle.
    out["wake_us"] = max(0.0, (c50 - p50) / 1e3 / 2)
    return out


#: One busy loop at idle priority on one CPU, as a process of its own that
#: the kernel kills when the process that started it dies (PR_SET_PDEATHSIG
#: = 1, SIGKILL = 9), so no loop outlives a run that was killed.
_SPIN = (
    "import ctypes, os, sys; ctypes.CDLL(None).prctl(1, 9)\n"
    "if os.getppid() != int(sys.argv[2]): sys.exit()  # the starter died before prctl\n"
    "os.sched_setaffinity(0, {int(sys.argv[1])}); os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n"
    "while True: pass"
)


class KeepAwake:
    """One idle-priority busy loop per CPU while the ``with`` block runs."""

    def __init__(self, cpus: list[int] | None = None) -> None:
        self.cpus = cpus if cpus is not None else sorted(os.sched_getaffinity(0))
        self._procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> KeepAwake:
        for cpu in self.cpus:
            self._procs.append(
                subprocess.Popen([sys.executable, "-c", _SPIN, str(cpu), str(os.getpid()), "fastws-keep-awake"], stdin=subprocess.DEVNULL)
            )
        return self

    def cpu_seconds(self) -> float:
        """CPU time the busy loops have used so far (0.0 without psutil)."""
        try:
            psutil: Any = importlib.import_module("psutil")
        except ImportError:
            return 0.0
        total = 0.0
        for p in self._procs:
            try:
                t = psutil.Process(p.pid).cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def __exit__(self, *exc: object) -> None:
        for p in self._procs:
            p.kill()
        for p in self._procs:
            p.wait(5)
        self._procs.clear()


def format_host(host: dict[str, Any]) -> str:
    """The report's lines on the machine: the wake-up probe, keep-awake."""

    def line(probe: dict[str, Any]) -> str:
        same = probe["same_cpu_us"]
        if probe["cross_cpu_us"] is None:
            return f"one CPU; round trip {same['p50']:.0f} us"
        cross = probe["cross_cpu_us"]
        return (
            f"loopback round trip, idle CPUs: across CPUs p50 {cross['p50']:.0f} us (p90 {cross['p90']:.0f}), "
            f"same CPU p50 {same['p50']:.0f} us: ~{probe['wake_us']:.0f} us to wake a CPU"
        )

    lines = [f"  host        {host['cpus']} CPUs; {line(host)}"]
    if host.get("keep_awake"):
        lines.append(f"  keep-awake  on: {line(host['awake_probe'])}; busy loops used {host['keep_awake_cpu_s']:.1f} CPU-s")
    elif host.get("wake_us") is not None and host["wake_us"] >= 20:
        lines.append("  note        waking an idle CPU is slow here: rr and handshakes latency include it (try --keep-awake)")
    return "\n".join(lines)
