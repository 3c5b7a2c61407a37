"""``--keep-awake``'s busy loops never outlive the process that started
them, even when it is killed with SIGKILL (at once, or once they spin)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.conftest import unit

psutil = pytest.importorskip("psutil")

OWNER = "from fastws.bench.machine import KeepAwake\nimport time\nKeepAwake().__enter__()\nprint('up', flush=True)\ntime.sleep(60)"


@pytest.mark.parametrize("spin_first", [False, True], ids=["killed-at-once", "killed-while-spinning"])
def test_busy_loops_die_with_their_owner(spin_first: bool) -> None:
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True)
    loops: list = []
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "up"
        loops = psutil.Process(owner.pid).children()
        assert len(loops) == len(os.sched_getaffinity(0))
        if spin_first:
            deadline = time.monotonic() + unit(10)
            while time.monotonic() < deadline and not all(os.sched_getscheduler(p.pid) == os.SCHED_IDLE for p in loops):
                time.sleep(0.02)
            assert all(os.sched_getscheduler(p.pid) == os.SCHED_IDLE for p in loops)
        owner.kill()
        owner.wait(unit(5))
        deadline = time.monotonic() + unit(10)
        while time.monotonic() < deadline and any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in loops):
            time.sleep(0.05)
        assert not [p.pid for p in loops if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    finally:
        for p in [owner, *loops]:
            try:
                p.kill()
            except (OSError, psutil.Error):
                pass
