"""Production serving from the shell, with real processes and signals:
workers that heal, a socket passed by a process manager (``--fd``),
graceful drain on SIGTERM, and ``--log-config``.

Every server here is ``python -m fastws serve ...`` started as a user starts
it; workers are found with psutil and killed with real signals.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from websockets.exceptions import ConnectionClosed, ConnectionClosedError
from websockets.sync.client import ClientConnection, connect

from ..conftest import UPGRADE, handshake, raw_connect, unit
from .conftest import CliProcess, free_port, run_cli
from .test_cli import LEGACY, assert_echo, ws_connect

pytestmark = pytest.mark.timeout(60)


def workers_of(proc: CliProcess) -> set[int]:
    """PIDs of the supervisor's live worker processes."""
    assert proc.proc is not None
    children = psutil.Process(proc.proc.pid).children()
    return {c.pid for c in children if "spawn_main" in " ".join(c.cmdline()) and c.status() != psutil.STATUS_ZOMBIE}


def served_by(ws: ClientConnection) -> int:
    greeting = ws.recv(timeout=unit(5))
    assert isinstance(greeting, str) and greeting.startswith("pid "), greeting
    return int(greeting.split()[1])


def close_code(ws: ClientConnection) -> int | None:
    """Read until the server's close; the code it sent."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            ws.recv(timeout=unit(10))
    return None if info.value.rcvd is None else info.value.rcvd.code


# -- workers that heal ----------------------------------------------------------


def test_a_killed_worker_is_restarted_while_the_others_keep_serving(cli_process: Any) -> None:
    port = free_port()
    proc: CliProcess = cli_process("tests.integration.apps:WhichWorker", "--workers", "2", "--port", str(port), "--log-level", "debug")
    proc.wait_for(r"worker \d \(pid \d+\) is listening", timeout=20, count=2)
    before = workers_of(proc)
    assert len(before) == 2, proc.output
    clients = [ws_connect(f"ws://127.0.0.1:{port}/", retry_for=5) for _ in range(16)]
    by_pid: dict[int, list[ClientConnection]] = {}
    for ws in clients:
        by_pid.setdefault(served_by(ws), []).append(ws)
    # SO_REUSEPORT spreads by hash: all 16 on one worker has odds 2**-15.
    assert set(by_pid) == before, (set(by_pid), before)
    victim, survivor = sorted(before)
    psutil.Process(victim).send_signal(signal.SIGKILL)

    line = proc.wait_for(rf"worker (\d) \(pid {victim}\) died \(killed by SIGKILL\); restarting it", timeout=10)
    # The survivor's clients never noticed.
    for ws in by_pid[survivor]:
        assert_echo(ws)
    # The victim's clients lost their TCP connection (no close frame: 1006).
    for ws in by_pid[victim]:
        with pytest.raises(ConnectionClosedError):
            ws.send("anyone?")
            ws.recv(timeout=unit(5))
    # A new worker took the same slot and listens; the supervisor has two again.
    proc.wait_for(rf"worker {line.group(1)} \(pid \d+\) is listening", timeout=20, count=2)
    after = workers_of(proc)
    assert len(after) == 2 and survivor in after and victim not in after, (before, after)
    (newcomer,) = after - before
    seen: set[int] = set()
    for _ in range(24):
        with ws_connect(f"ws://127.0.0.1:{port}/") as ws:
            seen.add(served_by(ws))
            assert_echo(ws)
    assert seen == after, (seen, after)

    assert proc.stop(signal.SIGTERM) == 0, proc.output
    for ws in by_pid[survivor]:
        assert close_code(ws) == 1001
        ws.close()
    assert "Traceback" not in proc.output
    assert not psutil.pid_exists(newcomer) or psutil.Process(newcomer).status() == psutil.STATUS_ZOMBIE


def test_workers_crashing_at_start_make_the_supervisor_give_up() -> None:
    res = run_cli("serve", "tests.integration.crash_in_worker:handler", "--workers", "2", "--port", str(free_port()), timeout=45)
    out = res.stderr
    assert res.returncode == 1, out
    assert re.search(r"worker \d \(pid \d+\) crashed at start \(exit status 3\); restarting it in", out), out
    assert "workers keep crashing at start (5 times in a row, last: exit status 3); stopping" in out, out
    assert "refuses to load in a worker" in out  # each worker said why
    assert " serving " not in out  # never announced: no worker ever listened


def test_workers_port_taken_is_a_one_line_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        res = run_cli("serve", "--workers", "2", "--port", str(busy.getsockname()[1]))
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fastws: error: cannot listen"), res.stderr


# -- a socket passed by a process manager (--fd) ------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_fd_serves_an_inherited_listening_socket(cli_process: Any, workers: int) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        port = listener.getsockname()[1]
        fd = listener.fileno()
        proc: CliProcess = cli_process(
            "tests.integration.apps:WhichWorker", "--fd", str(fd), "--workers", str(workers), "--log-level", "debug",
            pass_fds=(fd,),
        )  # fmt: skip
        assert f"on ws://127.0.0.1:{port} (workers {workers}," in proc.output, proc.output
        if workers > 1:
            proc.wait_for(r"worker \d \(pid \d+\) is listening", timeout=20, count=workers)
        pids = set()
        for _ in range(12 * workers):
            with ws_connect(f"ws://127.0.0.1:{port}/") as ws:
                pids.add(served_by(ws))
                assert_echo(ws)
    # The test closed its copy: the server's copies still serve.
    with ws_connect(f"ws://127.0.0.1:{port}/") as ws:
        pids.add(served_by(ws))
    expected = workers_of(proc) if workers > 1 else {proc.proc.pid}  # type: ignore[union-attr]
    assert pids == expected, (pids, expected)
    assert proc.stop(signal.SIGTERM) == 0, proc.output


@pytest.mark.parametrize("fd", ["99", "0"], ids=["closed", "not-a-socket"])
def test_fd_that_is_not_a_socket_is_a_one_line_error(fd: str) -> None:
    res = run_cli("serve", "--fd", fd)
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"fastws: error: --fd {fd}"), res.stderr


# -- graceful drain -------------------------------------------------------------------


@pytest.mark.parametrize("target", ["tests.integration.apps:Burst", "tests.integration.apps:burst"], ids=["callback", "coroutine"])
def test_sigterm_delivers_everything_sent_before_the_close(cli_process: Any, target: str) -> None:
    """The handler queued 4 MiB the client has not read yet when SIGTERM
    comes: the client still gets every message, in order, then 1001."""
    proc: CliProcess = cli_process(target, "--no-access-log")
    # max_queue=1: the client stops reading after one message, so the rest
    # waits in the server's buffers (and the kernel's) when the signal comes.
    ws = connect(proc.url, max_size=None, max_queue=1, open_timeout=unit(5), **LEGACY)
    try:
        ws.send("burst 64")
        first = ws.recv(timeout=unit(5))
        time.sleep(unit(0.3))
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGTERM)
        got = [first]
        with pytest.raises(ConnectionClosed) as info:
            while True:
                got.append(ws.recv(timeout=unit(10)))
        assert [bytes(m[:8]) for m in got] == [b"%08d" % i for i in range(64)]
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    finally:
        ws.close()
    assert proc.proc.wait(unit(15)) == 0, proc.output


def silent_client(port: int) -> socket.socket:
    """Upgraded, then never reads or answers: the server's close waits."""
    sock = raw_connect(port)
    handshake(sock, UPGRADE)
    return sock


def test_drain_waits_for_the_graceful_timeout_then_exits_0(cli_process: Any) -> None:
    proc: CliProcess = cli_process("--timeout-graceful-shutdown", "2")
    sock = silent_client(proc.port)
    try:
        assert proc.proc is not None
        started = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        proc.wait_for("SIGTERM received: closing connections with 1001 \\(1 open; waiting up to 2.0s\\)")
        # No new connection is accepted while draining (the listener closes
        # right after that line).
        deadline = time.monotonic() + unit(1)
        with pytest.raises(ConnectionRefusedError):
            while time.monotonic() < deadline:
                socket.create_connection(("127.0.0.1", proc.port), timeout=unit(2)).close()
                time.sleep(0.05)
        assert proc.proc.poll() is None  # still draining
        assert proc.proc.wait(unit(15)) == 0, proc.output
        took = time.monotonic() - started
        assert 1.8 <= took < 2.0 + unit(4), took
    finally:
        sock.close()


def test_a_second_signal_exits_at_once(cli_process: Any) -> None:
    proc: CliProcess = cli_process("--timeout-graceful-shutdown", "30")
    sock = silent_client(proc.port)
    try:
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGTERM)
        proc.wait_for("SIGTERM received")
        started = time.monotonic()
        proc.proc.send_signal(signal.SIGINT)
        assert proc.proc.wait(unit(5)) == 1, proc.output
        assert time.monotonic() - started < unit(3)
        assert "second SIGINT: exiting now" in proc.output
    finally:
        sock.close()


def test_workers_drain_with_1012_and_exit_0(cli_process: Any) -> None:
    port = free_port()
    proc: CliProcess = cli_process(
        "--workers", "2", "--port", str(port), "--log-level", "debug", "--shutdown-close-code", "1012"
    )
    proc.wait_for(r"worker \d \(pid \d+\) is listening", timeout=20, count=2)
    clients = [ws_connect(f"ws://127.0.0.1:{port}/", retry_for=5) for _ in range(6)]
    for ws in clients:
        assert_echo(ws)
    assert proc.stop(signal.SIGTERM) == 0, proc.output
    assert [close_code(ws) for ws in clients] == [1012] * 6
    assert "died" not in proc.output and "Traceback" not in proc.output


# -- --log-config ----------------------------------------------------------------------

FORMAT = "CUSTOM|%(levelname)s|%(name)s|%(message)s"


def write_log_config(folder: Path, kind: str, logfile: Path) -> Path:
    if kind == "ini":
        path = folder / "logging.ini"
        path.write_text(
            "[loggers]\nkeys=root\n\n[handlers]\nkeys=file,stderr\n\n[formatters]\nkeys=custom\n\n"
            "[logger_root]\nlevel=INFO\nhandlers=file,stderr\n\n"
            f"[handler_file]\nclass=FileHandler\nformatter=custom\nargs=({str(logfile)!r},)\n\n"
            "[handler_stderr]\nclass=StreamHandler\nformatter=custom\nargs=(sys.stderr,)\n\n"
            f"[formatter_custom]\nformat={FORMAT}\n"
        )
        return path
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"custom": {"format": FORMAT}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": str(logfile), "formatter": "custom"},
            "stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "custom"},
        },
        "loggers": {"fastws": {"level": "INFO", "handlers": ["file", "stderr"]}},
    }
    if kind == "json":
        path = folder / "logging.json"
        path.write_text(json.dumps(config))
    else:
        import yaml

        path = folder / "logging.yaml"
        path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("kind", ["json", "yaml", "ini"])
def test_log_config_file(cli_process: Any, tmp_path: Path, kind: str) -> None:
    logfile = tmp_path / "fastws.log"
    proc: CliProcess = cli_process("--log-config", str(write_log_config(tmp_path, kind, logfile)))
    # The start line went to the configured handlers, in their format.
    assert re.search(r"^CUSTOM\|INFO\|fastws\|fastws \S+ serving ", proc.output, re.M), proc.output
    assert "CUSTOM|INFO|fastws|fastws " in logfile.read_text()
    with ws_connect(proc.url + "/logged") as ws:
        assert_echo(ws)
        ws.close(4000, "bye")
    assert proc.stop() == 0
    lines = logfile.read_text().splitlines()
    opened = [line for line in lines if line.startswith("CUSTOM|INFO|fastws.access|conn ") and '"GET /logged" 101' in line]
    closed = [line for line in lines if line.startswith("CUSTOM|INFO|fastws.access|conn ") and "closed 4000 'bye' after" in line]
    assert opened and closed, lines
    # Access and close lines carry the same connection id.
    assert opened[0].split("|")[3].split()[1] == closed[0].split("|")[3].split()[1]


def test_bad_log_config_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1, "handlers": {"h": {"class": "no.such.Handler"}}}')
    res = run_cli("serve", "--log-config", str(bad))
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"fastws: error: --log-config {bad}"), res.stderr


def test_sigterm_to_every_process_drains_once(cli_process: Any) -> None:
    """systemd's default KillMode=control-group signals the supervisor and
    every worker at once: each worker then gets SIGTERM twice (directly and
    forwarded), and must still drain, not take it for "exit now"."""
    port = free_port()
    proc: CliProcess = cli_process("--workers", "2", "--port", str(port), "--timeout-graceful-shutdown", "2", "--log-level", "debug")
    socks = [silent_client(port) for _ in range(6)]
    try:
        assert proc.proc is not None
        started = time.monotonic()
        for p in [psutil.Process(proc.proc.pid), *(psutil.Process(pid) for pid in workers_of(proc))]:
            p.send_signal(signal.SIGTERM)
        assert proc.proc.wait(unit(15)) == 0, proc.output
        assert time.monotonic() - started >= 1.8  # the workers waited for their silent clients
        assert "SIGTERM again: already draining" in proc.output
        assert "exiting now" not in proc.output and "died" not in proc.output
    finally:
        for sock in socks:
            sock.close()
