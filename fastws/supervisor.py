"""Worker processes that heal: what ``fastws serve --workers N`` runs.

The supervisor starts N worker processes (``spawn``), each serving the same
port (SO_REUSEPORT) or the same inherited socket (``--fd``). Each worker
reports once it listens (``on_listening`` is called once all of them
have). A worker that dies is logged with its exit status
and started again; one that dies before it ever listened counts as a crash
at start, and when every start fails ``max_start_failures`` times in a row
(a bad deployment, not bad luck) the supervisor stops and exits 1.

SIGTERM or SIGINT: stop restarting, forward SIGTERM to every worker (each
closes its connections with the shutdown close code and drains, up to
``--timeout-graceful-shutdown``), wait for them, exit 0 when they all
stopped cleanly. A second signal kills the workers and exits at once.

Only the standard library: the worker's body is a picklable callable the
CLI gives (``worker(ready, index)``, which calls ``ready.send(pid)`` once
it listens).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

__all__ = ["Supervisor", "describe_exit"]

logger = logging.getLogger("fastws")

#: Crashes at start in a row (no worker listening in between) before giving up.
MAX_START_FAILURES = 5
#: Delay before restarting a worker that crashed at start, doubled per
#: crash in a row up to the cap; a worker that had been serving restarts at once.
RESTART_DELAY = 0.1
RESTART_DELAY_CAP = 2.0


def describe_exit(code: int | None) -> str:
    """``exit status 3`` or ``killed by SIGKILL``, from a Process.exitcode."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class _Worker:
    __slots__ = ("index", "process", "ready", "started", "listening")

    def __init__(self, index: int, process: Any, ready: Connection) -> None:
        self.index = index
        self.process = process
        self.ready: Connection | None = ready
        self.started = time.monotonic()
        self.listening = False


class Supervisor:
    """Runs ``workers`` copies of ``worker`` until a signal; see the module."""

    def __init__(
        self,
        worker: Callable[[Connection, int], None],
        workers: int,
        *,
        max_start_failures: int = MAX_START_FAILURES,
        on_listening: Callable[[], None] | None = None,
    ) -> None:
        self._body = worker
        self._on_listening = on_listening
        self._count = workers
        self._max_start_failures = max_start_failures
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: dict[int, _Worker] = {}
        self._restarts: list[tuple[float, int]] = []
        self._start_failures = 0
        self._signals: list[str] = []
        self._stopping = False
        self._status = 0

    # -- signals (handlers only record; the loop acts) ---------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signal.Signals(signum).name)

    def _handle_signals(self) -> bool:
        """Act on recorded signals; False when the supervisor must exit now."""
        while self._signals:
            name = self._signals.pop(0)
            if self._stopping:
                logger.warning("second %s: killing the workers and exiting now", name)
                for w in self._workers.values():
                    if w.process.is_alive():
                        w.process.kill()
                for w in self._workers.values():
                    w.process.join(5)
                self._status = 1
                return False
            logger.info("%s received: stopping workers", name)
            self.stop()
        return True

    def stop(self, status: int | None = None) -> None:
        """Stop restarting and ask every worker to stop (SIGTERM)."""
        if status is not None:
            self._status = status
        self._stopping = True
        self._restarts.clear()
        for w in self._workers.values():
            if w.process.is_alive() and w.process.pid is not None:
                os.kill(w.process.pid, signal.SIGTERM)

    # -- workers -----------------------------------------------------------

    def _start(self, index: int) -> None:
        reader, writer = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(target=self._body, args=(writer, index), name=f"fastws-worker-{index}")
        process.start()
        writer.close()  # the child has it; EOF on reader once the child is gone
        self._workers[index] = _Worker(index, process, reader)
        logger.debug("worker %d started (pid %s)", index, process.pid)

    def _ready(self, w: _Worker) -> None:
        assert w.ready is not None
        try:
            w.ready.recv()
        except (EOFError, OSError):
            pass  # died before listening: its exit is handled below
        else:
            w.listening = True
            self._start_failures = 0
            logger.debug("worker %d (pid %s) is listening", w.index, w.process.pid)
            if self._on_listening is not None and sum(x.listening for x in self._workers.values()) == self._count:
                self._on_listening()
                self._on_listening = None  # once: not again after a restart
        w.ready.close()
        w.ready = None

    def _exited(self, w: _Worker) -> None:
        process = w.process
        process.join()
        del self._workers[w.index]
        if w.ready is not None:
            w.ready.close()
        code = process.exitcode
        if self._stopping:
            if code not in (0, -signal.SIGTERM):
                logger.warning("worker %d (pid %s) stopped with %s", w.index, process.pid, describe_exit(code))
                self._status = 1
            return
        if w.listening:
            logger.error("worker %d (pid %s) died (%s); restarting it", w.index, process.pid, describe_exit(code))
            self._restarts.append((time.monotonic(), w.index))
            return
        self._start_failures += 1
        if self._start_failures >= self._max_start_failures:
            logger.critical(
                "workers keep crashing at start (%d times in a row, last: %s); stopping",
                self._start_failures, describe_exit(code),
            )  # fmt: skip
            self.stop(status=1)
            return
        delay = min(RESTART_DELAY_CAP, RESTART_DELAY * 2 ** (self._start_failures - 1))
        logger.error(
            "worker %d (pid %s) crashed at start (%s); restarting it in %.1fs",
            w.index, process.pid, describe_exit(code), delay,
        )  # fmt: skip
        self._restarts.append((time.monotonic() + delay, w.index))

    def run(self) -> int:
        """Start the workers and supervise them; the exit status."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for index in range(self._count):
                self._start(index)
            while self._workers or self._restarts:
                if not self._handle_signals():
                    break
                now = time.monotonic()
                for due, index in [r for r in self._restarts if r[0] <= now]:
                    self._restarts.remove((due, index))
                    self._start(index)
                waits: list[Any] = [w.process.sentinel for w in self._workers.values()]
                waits += [w.ready for w in self._workers.values() if w.ready is not None]
                timeout = 0.2 if not self._restarts else max(0.0, min(0.2, min(r[0] for r in self._restarts) - now))
                if not waits:
                    time.sleep(timeout)
                    continue
                ready = set(wait(waits, timeout=timeout))
                # A signal to the whole group (systemd's KillMode=control-group)
                # may end a worker while we wait: that is a stop, not a death.
                if not self._handle_signals():
                    break
                for w in list(self._workers.values()):
                    if w.ready is not None and w.ready in ready:
                        self._ready(w)
                for w in list(self._workers.values()):
                    if w.process.sentinel in ready:
                        self._exited(w)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self._status
