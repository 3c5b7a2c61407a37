"""``python -m fastws serve`` in subprocesses: start, serve, stop, fail well.

The console script ``fastws`` may not be on PATH, so everything runs as
``sys.executable -m fastws``. Clients are websockets' sync clients, whose
own thread answers the server's close while the test waits on the process.
"""

from __future__ import annotations

import inspect
import re
import signal
import socket
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK
from websockets.sync.client import ClientConnection, connect, unix_connect

import fastws

from ..conftest import UPGRADE, handshake, raw_connect, unit
from .conftest import CliProcess, FrameStream, cli_codec, free_port, run_cli

pytestmark = pytest.mark.timeout(45)

START_LINE = re.compile(
    r"fastws (?P<version>\S+) serving (?P<target>\S+) on ws://127\.0\.0\.1:(?P<port>\d+) "
    r"\(workers (?P<workers>\d+), loop (?P<loop>uvloop|asyncio), codec (?P<codec>compiled|pure-python)\)"
)


# websockets >= 17.1 wants connect(..., legacy=True) to return a connection
# outside a with-block; older versions lack the flag.
LEGACY = {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}


def ws_connect(url: str, retry_for: float = 0.0) -> ClientConnection:
    """A sync websockets client; retry refused connections for a while
    (worker processes may still be starting)."""
    deadline = time.monotonic() + unit(retry_for)
    while True:
        try:
            return connect(url, open_timeout=unit(5), close_timeout=unit(5), **LEGACY)
        except (ConnectionRefusedError, ConnectionResetError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def assert_echo(ws: ClientConnection) -> None:
    ws.send("h\u00e9llo")
    assert ws.recv(timeout=unit(5)) == "h\u00e9llo"
    ws.send(b"\x00\xff" * 1000)
    assert ws.recv(timeout=unit(5)) == b"\x00\xff" * 1000


# -- the default target --------------------------------------------------------


def test_serve_logs_one_start_line_echoes_and_stops_on_sigterm(cli_process) -> None:
    proc: CliProcess = cli_process()
    starts = [line for line in proc.output.splitlines() if " serving " in line]
    assert len(starts) == 1, proc.output
    m = START_LINE.search(starts[0])
    assert m, starts[0]
    assert m["version"] == fastws.__version__
    assert m["target"] == "fastws.demo:EchoHandler"
    assert int(m["port"]) == proc.port
    assert m["workers"] == "1"
    assert m["codec"] == ("compiled" if cli_codec() == "compiled" else "pure-python")
    with ws_connect(proc.url + "/anything?x=1") as ws:
        assert_echo(ws)
    # Access log on by default: one line for the 101 and one for the close.
    proc.wait_for(r'"GET /anything\?x=1" 101')
    proc.wait_for(r"closed 1000")
    assert proc.stop(signal.SIGTERM) == 0, proc.output
    out = proc.output
    assert "SIGTERM received" in out
    assert out.rstrip().splitlines()[-1].endswith("stopped"), out
    assert "Traceback" not in out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_closes_open_clients_with_1001(cli_process, sig: signal.Signals) -> None:
    proc: CliProcess = cli_process("--no-access-log")
    ws = ws_connect(proc.url)
    try:
        assert_echo(ws)
        started = time.monotonic()
        assert proc.stop(sig) == 0, proc.output
        # The client answered the close at once: no waiting for close_timeout.
        assert time.monotonic() - started < unit(5)
        with pytest.raises(ConnectionClosedOK) as info:
            ws.recv(timeout=unit(5))
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    finally:
        ws.close()
    out = proc.output
    assert f"{sig.name} received" in out
    assert re.search(r"\bstopped\s*$", out), out
    assert "Traceback" not in out


def test_shutdown_close_code_1012(cli_process) -> None:
    """--shutdown-close-code 1012: clients are told "service restart" (and
    may reconnect soon) instead of 1001."""
    proc: CliProcess = cli_process("--no-access-log", "--shutdown-close-code", "1012")
    ws = ws_connect(proc.url)
    try:
        assert_echo(ws)
        assert proc.stop(signal.SIGTERM) == 0, proc.output
        with pytest.raises(ConnectionClosedError) as info:  # 1012 is not an "OK" code
            ws.recv(timeout=unit(5))
        assert info.value.rcvd is not None and info.value.rcvd.code == 1012
    finally:
        ws.close()
    assert "closing connections with 1012" in proc.output


def test_shutdown_close_code_must_be_a_shutdown_code() -> None:
    res = run_cli("serve", "--shutdown-close-code", "1002")
    assert res.returncode == 2
    assert "--shutdown-close-code" in res.stderr.strip().splitlines()[-1]


def test_version_and_help() -> None:
    res = run_cli("--version")
    assert res.returncode == 0
    assert res.stdout.strip() == f"fastws {fastws.__version__}"
    res = run_cli("serve", "--help")
    assert res.returncode == 0
    for flag in ("--host", "--port", "--uds", "--workers", "--max-message-size", "--log-level"):
        assert flag in res.stdout


# -- usage errors ------------------------------------------------------------


@pytest.mark.parametrize(
    "args,words",
    [
        (["nosuchmodule:x"], ["nosuchmodule"]),
        (["nosuchpackage.sub:x"], ["nosuchpackage"]),
        (["tests.integration.apps:missing"], ["missing"]),
        (["tests.integration.apps:Shout.nope"], ["Shout.nope"]),
        (["notatarget"], ["module:attribute"]),
        ([":handler"], ["module:attribute"]),
        (["tests.integration.apps:"], ["module:attribute"]),
        (["tests.integration.apps:NOT_A_HANDLER"], ["handler"]),
        (["--workers", "0"], ["workers"]),
        (["--workers", "2", "--port", "0"], ["port"]),
    ],
    ids=[
        "no-module",
        "no-package",
        "no-attribute",
        "no-dotted-attribute",
        "no-colon",
        "no-module-name",
        "no-attribute-name",
        "not-a-handler",
        "zero-workers",
        "workers-port-0",
    ],
)
def test_bad_target_is_one_line_error_status_2(args: list[str], words: list[str]) -> None:
    res = run_cli("serve", *args)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("fastws: error:"), res.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert "Traceback" not in res.stderr + res.stdout
    assert res.stdout == ""


def test_port_in_use_is_one_line_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = run_cli("serve", "--port", str(port))
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fastws: error:"), res.stderr
    assert "Traceback" not in res.stderr


# -- user modules -------------------------------------------------------------


@pytest.mark.parametrize("loop", ["auto", "asyncio"])
def test_serve_callback_handler_from_user_module(cli_process, loop: str) -> None:
    proc: CliProcess = cli_process("tests.integration.apps:Shout", "--loop", loop)
    m = START_LINE.search(proc.output)
    assert m and m["target"] == "tests.integration.apps:Shout", proc.output
    if loop == "asyncio":
        assert m["loop"] == "asyncio"
    with ws_connect(proc.url + "/room") as ws:
        assert ws.recv(timeout=unit(5)) == "welcome /room"
        ws.send("hello")
        assert ws.recv(timeout=unit(5)) == "HELLO"
        ws.send(b"bytes")
        assert ws.recv(timeout=unit(5)) == b"BYTES"
    assert proc.stop() == 0, proc.output


def test_serve_coroutine_handler_from_user_module(cli_process) -> None:
    proc: CliProcess = cli_process("tests.integration.apps:reverse", "--no-access-log")
    with ws_connect(proc.url) as ws:
        ws.send("abc")
        assert ws.recv(timeout=unit(5)) == "cba"
        ws.send(b"\x01\x02\x03")
        assert ws.recv(timeout=unit(5)) == b"\x03\x02\x01"
    # An idle client is closed with 1001 on shutdown at the coroutine level too.
    ws = ws_connect(proc.url)
    try:
        assert proc.stop(signal.SIGTERM) == 0, proc.output
        with pytest.raises(ConnectionClosedOK) as info:
            ws.recv(timeout=unit(5))
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    finally:
        ws.close()


# -- options ------------------------------------------------------------------


def test_max_message_size_flag(cli_process) -> None:
    proc: CliProcess = cli_process("--max-message-size", "10", "--no-access-log")
    with ws_connect(proc.url) as ws:
        ws.send("0123456789")
        assert ws.recv(timeout=unit(5)) == "0123456789"
        ws.send("0123456789A")
        with pytest.raises(ConnectionClosedError) as info:
            ws.recv(timeout=unit(5))
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009


def test_max_message_size_with_unit(cli_process) -> None:
    proc: CliProcess = cli_process("--ws-max-size", "2KiB", "--no-access-log")
    with ws_connect(proc.url) as ws:
        ws.send(b"x" * 2048)
        assert ws.recv(timeout=unit(5)) == b"x" * 2048
        ws.send(b"x" * 2049)
        with pytest.raises(ConnectionClosedError) as info:
            ws.recv(timeout=unit(5))
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009


def test_two_workers_share_the_port(cli_process) -> None:
    port = free_port()
    proc: CliProcess = cli_process("--workers", "2", "--port", str(port), "--log-level", "debug")
    m = START_LINE.search(proc.output)
    assert m and m["workers"] == "2" and int(m["port"]) == port, proc.output
    parent = psutil.Process(proc.proc.pid)
    # Each worker says it is serving (debug level) once it listens.
    proc.wait_for(r"worker \d+ serving on", timeout=15, count=2)
    # (multiprocessing's resource tracker is a child too; workers are spawned.)
    workers = [c for c in parent.children() if "spawn_main" in " ".join(c.cmdline())]
    assert len(workers) == 2, [c.cmdline() for c in parent.children()]
    worker_pids = {w.pid for w in workers}
    for i in range(16):
        with ws_connect(f"ws://127.0.0.1:{port}/c{i}", retry_for=5) as ws:
            ws.send(f"n{i}")
            assert ws.recv(timeout=unit(5)) == f"n{i}"
    # The access log line of each connection carries its worker's PID.
    for i in range(16):
        proc.wait_for(rf'"GET /c{i}" 101')
    served_by = {
        int(m.group(1)) for m in re.finditer(r"\[(\d+)\] INFO fastws.access: conn \d+ \S+ \"GET /c\d+\" 101", proc.output)
    }
    assert served_by <= worker_pids, (served_by, worker_pids)
    # SO_REUSEPORT spreads connections by hash: 16 all on one of two
    # workers happens with probability 2**-15.
    assert served_by == worker_pids, proc.output
    assert proc.stop(signal.SIGTERM) == 0, proc.output
    assert re.search(r"\bstopped\s*$", proc.output), proc.output
    assert "Traceback" not in proc.output
    for w in workers:
        assert not w.is_running() or w.status() == psutil.STATUS_ZOMBIE


def test_unix_socket(cli_process) -> None:
    directory = tempfile.mkdtemp(prefix="fastws-", dir="/tmp")
    path = str(Path(directory) / "ws.sock")
    proc: CliProcess = cli_process("--uds", path)
    assert f"on unix:{path} " in proc.output, proc.output
    with unix_connect(path, uri="ws://localhost/unix", open_timeout=unit(5)) as ws:
        assert_echo(ws)
    assert proc.stop() == 0, proc.output
    Path(path).unlink(missing_ok=True)
    Path(directory).rmdir()


def test_workers_stop_cleanly_on_ctrl_c(cli_process) -> None:
    # A terminal's Ctrl-C signals the whole process group: the parent and
    # every worker get SIGINT, and the parent forwards SIGTERM too.
    port = free_port()
    proc: CliProcess = cli_process(
        "--workers", "2", "--port", str(port), "--log-level", "debug", "--timeout-graceful-shutdown", "2"
    )
    proc.wait_for(r"worker \d+ serving on", timeout=15, count=2)
    # Clients that do not answer the close: each worker has to wait for them.
    socks = []
    for _ in range(8):
        sock = raw_connect(port)
        handshake(sock, UPGRADE)
        socks.append(sock)
    try:
        # The server shares the test runner's process group, so its
        # processes are signalled one by one, as the terminal would.
        for p in [psutil.Process(proc.proc.pid), *psutil.Process(proc.proc.pid).children()]:
            p.send_signal(signal.SIGINT)
        assert proc.proc.wait(unit(15)) == 0, proc.output
        for sock in socks:
            assert FrameStream(sock).expect_close()[0] == 1001
    finally:
        for sock in socks:
            sock.close()
    assert "exiting now" not in proc.output
