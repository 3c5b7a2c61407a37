"""A real ``redis-server`` (and a real Redis Cluster) for the tests.

:class:`RedisServer` runs ``redis-server`` as a child process of the test run
(never daemonized) on 127.0.0.1 and a free port, with everything it writes
(log, AOF, cluster config) under a directory of its own. It can be killed
with SIGKILL and restarted on the same port and directory, so a test can check
what survives a crash (with ``appendonly=True`` every write is fsynced before
it is acknowledged).

:class:`RedisCluster` is three such servers in cluster mode, joined by
``redis-cli --cluster create`` into a cluster with all 16384 slots covered.

No process is left behind: ``stop()``/``close()`` and the context managers
stop the servers; every server still running when the interpreter exits is
killed by an ``atexit`` hook; and on Linux a server started from the main
thread also gets SIGKILL if the test run itself dies (``PR_SET_PDEATHSIG``).

Readiness is checked with a raw RESP ``PING`` so this module does not need
redis-py; only :meth:`RedisServer.client` and :meth:`RedisCluster.client`
import it.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

from ..conftest import unit
from .conftest import free_port

if TYPE_CHECKING:
    import redis
    import redis.cluster

log = logging.getLogger(__name__)

HOST = "127.0.0.1"

#: How long ``start()`` waits for ``PING`` to answer ``PONG`` (scaled).
START_TIMEOUT = 10.0
#: How long ``stop()`` waits after SIGTERM before it sends SIGKILL (scaled).
STOP_GRACE = 5.0
#: How long ``restart()`` keeps retrying while the port is still in use (scaled).
REBIND_TIMEOUT = 5.0
#: How long ``RedisCluster.start()`` waits for ``cluster_state:ok`` (scaled).
CLUSTER_TIMEOUT = 20.0

#: In cluster mode the bus listens on PORT + 10000, so PORT must be at most this.
CLUSTER_MAX_PORT = 55535

_LOG_TAIL_LINES = 40
_ADDRESS_IN_USE = "Address already in use"


class RedisServiceError(RuntimeError):
    """A redis-server (or the cluster) could not be started."""


class RedisReplyError(Exception):
    """Redis answered a raw command with an error reply (``-ERR ...``)."""


# -- process bookkeeping ------------------------------------------------------

#: Every redis-server process started here and not yet reaped.
_LIVE: set[subprocess.Popen[bytes]] = set()
#: Directories made here (not given by the caller) and not yet removed.
_OWNED_DIRS: set[Path] = set()
_LIVE_LOCK = threading.Lock()


def _kill_leftovers() -> None:
    """``atexit``: SIGKILL every server still running, remove made directories."""
    with _LIVE_LOCK:
        procs = list(_LIVE)
        _LIVE.clear()
        dirs = list(_OWNED_DIRS)
        _OWNED_DIRS.clear()
    for proc in procs:
        if proc.poll() is None:
            log.warning("killing leftover redis-server pid %d", proc.pid)
            proc.kill()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    for directory in dirs:
        shutil.rmtree(directory, ignore_errors=True)


atexit.register(_kill_leftovers)


def _death_signal_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` making the child get SIGKILL when this process dies.

    Linux only, and only from the main thread: the kernel sends the signal
    when the *thread* that forked exits, so a server started from a worker
    thread (``asyncio.to_thread``) would die with that thread.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    pr_set_pdeathsig = 1
    sigkill = int(signal.SIGKILL)

    def hook() -> None:
        prctl(pr_set_pdeathsig, sigkill, 0, 0, 0)

    return hook


def _bindable(port: int) -> bool:
    """True if ``port`` on 127.0.0.1 can be bound right now."""
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def cluster_port() -> int:
    """A free port P for a cluster node: P <= 55535, P and its bus port
    P + 10000 both free (Redis refuses larger ports in cluster mode).

    Ports are drawn at random from below the kernel's ephemeral range when it
    leaves room, so the kernel is unlikely to hand them out meanwhile.
    """
    low, high = 20000, CLUSTER_MAX_PORT
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        if ephemeral_low - 10000 > low + 1000:
            high = min(high, ephemeral_low - 10000 - 1)
    except (OSError, ValueError, IndexError):
        pass
    for _ in range(200):
        port = random.randint(low, high)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RedisServiceError(f"no free port pair P, P+10000 with P in {low}..{high}")


# -- a minimal RESP client, for readiness checks --------------------------------


def command(port: int, *args: str, host: str = HOST, timeout: float = 1.0) -> str | int | None:
    """Send one command over a fresh connection; return its (simple) reply.

    Handles the replies ``PING``, ``CLUSTER INFO`` and the like give: simple
    strings, integers, bulk strings and nil. An error reply raises
    :class:`RedisReplyError`; a connection problem raises ``OSError``.
    """
    payload = f"*{len(args)}\r\n".encode()
    for arg in args:
        data = arg.encode()
        payload += b"$%d\r\n%s\r\n" % (len(data), data)
    with socket.create_connection((host, port), timeout=timeout) as sock, sock.makefile("rb") as reader:
        sock.sendall(payload)
        line = reader.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError(f"truncated reply from {host}:{port}: {line!r}")
        kind, body = line[:1], line[1:-2].decode(errors="replace")
        if kind == b"+":
            return body
        if kind == b"-":
            raise RedisReplyError(body)
        if kind == b":":
            return int(body)
        if kind == b"$":
            size = int(body)
            if size < 0:
                return None
            return reader.read(size + 2)[:-2].decode(errors="replace")
        raise ConnectionError(f"unexpected reply from {host}:{port}: {line!r}")


# -- one server -----------------------------------------------------------------


class RedisServer:
    """``redis-server`` as a child process on 127.0.0.1 and a free port.

    ``directory`` holds the log (``redis.log``), the AOF and the cluster
    config; when it is not given a temporary one is made, and removed by
    :meth:`close` (or leaving the ``with`` block). ``port`` defaults to a free
    one. ``appendonly=True`` turns on the AOF with ``appendfsync always``;
    ``cluster=True`` starts the server in cluster mode; ``extra`` is appended
    to the command line as is (``["--maxmemory", "10mb"]``).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        appendonly: bool = False,
        cluster: bool = False,
        extra: Sequence[str] = (),
        binary: str | None = None,
    ) -> None:
        self.binary = binary or shutil.which("redis-server") or "redis-server"
        self.appendonly = appendonly
        self.cluster = cluster
        self.extra = list(extra)
        self._port_given = port is not None
        self._port = port if port is not None else self._pick_port()
        self._owns_dir = directory is None
        if directory is None:
            self.dir = Path(tempfile.mkdtemp(prefix="fastws-redis-"))
            with _LIVE_LOCK:
                _OWNED_DIRS.add(self.dir)
        else:
            self.dir = Path(directory).resolve()
        self.proc: subprocess.Popen[bytes] | None = None

    def _pick_port(self) -> int:
        return cluster_port() if self.cluster else free_port()

    # -- addresses --

    @property
    def port(self) -> int:
        """The TCP port; the same across :meth:`restart`."""
        return self._port

    @property
    def host(self) -> str:
        return HOST

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{HOST}:{self._port}/0"

    @property
    def log_path(self) -> Path:
        return self.dir / "redis.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def argv(self) -> list[str]:
        """The full ``redis-server`` command line for the current port."""
        args = [
            self.binary,
            "--port", str(self._port),
            "--bind", HOST,
            "--dir", str(self.dir),
            "--save", "",
            "--protected-mode", "no",
            "--daemonize", "no",
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        if self.cluster:
            args += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.dir / f"nodes-{self._port}.conf"),
                "--cluster-node-timeout", "2000",
            ]  # fmt: skip
        return args + self.extra

    # -- life cycle --

    def start(self, timeout: float = START_TIMEOUT) -> RedisServer:
        """Start the server; return once ``PING`` answers ``PONG``.

        If the port turns out to be taken (another process grabbed the free
        port first) a port chosen here is replaced by a fresh one; a port that
        was given, or one kept by :meth:`restart`, is retried for a few
        seconds instead. Raises :class:`RedisServiceError` with the end of the
        server's log if it does not come up within ``timeout`` (scaled).
        """
        self._start(timeout, keep_port=self._port_given)
        return self

    def restart(self, timeout: float = START_TIMEOUT) -> RedisServer:
        """Start the server again on the same port and directory.

        A running server is stopped first (SIGTERM; use :meth:`kill` before to
        simulate a crash). With ``appendonly=True`` the data acknowledged
        before the stop or kill is loaded back from the AOF.
        """
        if self.running:
            self.stop()
        self._start(timeout, keep_port=True)
        return self

    def _start(self, timeout: float, keep_port: bool) -> None:
        if self.running:
            raise RedisServiceError(f"redis-server on port {self._port} is already running")
        self.dir.mkdir(parents=True, exist_ok=True)
        rebind_deadline = time.monotonic() + unit(REBIND_TIMEOUT)
        fresh_ports = 3
        while True:
            try:
                self._spawn_and_wait(timeout)
                return
            except _PortInUse:
                if not keep_port and fresh_ports > 0:
                    fresh_ports -= 1
                    old, self._port = self._port, self._pick_port()
                    log.info("port %d was taken; retrying redis-server on port %d", old, self._port)
                elif keep_port and time.monotonic() < rebind_deadline:
                    log.info("port %d still in use; retrying redis-server", self._port)
                    time.sleep(0.2)
                else:
                    raise RedisServiceError(
                        f"redis-server could not bind {HOST}:{self._port}:\n{self.log_tail()}"
                    ) from None

    def _spawn_and_wait(self, timeout: float) -> None:
        offsets = self._log_sizes()
        argv = self.argv()
        log.info("starting redis-server on %s:%d in %s", HOST, self._port, self.dir)
        log.debug("command line: %s", argv)
        # Messages written before the log file is opened (bad arguments) go to
        # stderr; keep them next to the log.
        with open(self.dir / "redis.stderr", "ab") as stderr:
            proc = subprocess.Popen(
                argv,
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                preexec_fn=_death_signal_hook(),  # noqa: PLW1509 -- one prctl call, no Python locks
            )
        with _LIVE_LOCK:
            _LIVE.add(proc)
        self.proc = proc
        deadline = time.monotonic() + unit(timeout)
        last_error = "no answer yet"
        while True:
            if proc.poll() is not None:
                self._reap()
                if _ADDRESS_IN_USE in self._logged_since(offsets):
                    raise _PortInUse()
                raise RedisServiceError(
                    f"redis-server on port {self._port} exited with code {proc.returncode}:\n{self.log_tail()}"
                )
            try:
                reply = command(self._port, "PING", timeout=0.5)
                if reply != "PONG":
                    last_error = f"PING answered {reply!r}"
                # Make sure it is our server that answers, not another one
                # that holds the port (ours then exits: "Address already in use").
                elif f"process_id:{proc.pid}\r\n" in str(command(self._port, "INFO", "server", timeout=0.5)):
                    log.info("redis-server pid %d answers on port %d", proc.pid, self._port)
                    return
                else:
                    last_error = f"another redis-server answers on port {self._port}"
            except RedisReplyError as exc:  # -LOADING while the AOF is read back
                last_error = str(exc)
            except OSError as exc:
                last_error = repr(exc)
            if time.monotonic() > deadline:
                self.kill()
                raise RedisServiceError(
                    f"redis-server on port {self._port} did not answer PING within "
                    f"{unit(timeout):.0f} s ({last_error}):\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the server (a crash) and wait for it; no-op if not running."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            log.info("killing redis-server pid %d (port %d)", self.proc.pid, self._port)
            self.proc.kill()
        self.proc.wait()
        self._reap()

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM the server; SIGKILL it if it is still there after ``grace`` s.

        The directory is kept, so :meth:`restart` can start it again.
        """
        if self.proc is None:
            return
        if self.proc.poll() is None:
            log.info("stopping redis-server pid %d (port %d)", self.proc.pid, self._port)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=unit(grace))
            except subprocess.TimeoutExpired:
                log.warning("redis-server pid %d ignored SIGTERM; killing it", self.proc.pid)
                self.proc.kill()
                self.proc.wait()
        self._reap()

    def close(self) -> None:
        """:meth:`stop`, then remove the directory if it was made here."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            with _LIVE_LOCK:
                _OWNED_DIRS.discard(self.dir)

    def _reap(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            with _LIVE_LOCK:
                _LIVE.discard(self.proc)

    # -- clients and diagnostics --

    def client(self, **kwargs: object) -> redis.Redis:
        """A sync ``redis.Redis`` for this server (``decode_responses=True``
        and test-sized timeouts unless given). The caller closes it."""
        import redis

        kwargs.setdefault("decode_responses", True)
        kwargs.setdefault("socket_timeout", unit(5))
        kwargs.setdefault("socket_connect_timeout", unit(5))
        return redis.Redis(host=HOST, port=self._port, **kwargs)  # type: ignore[arg-type]

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server's log and stderr."""
        parts = []
        for path in self._log_files():
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            if text.strip():
                tail = "\n".join(text.rstrip("\n").splitlines()[-lines:])
                parts.append(f"--- {path.name}:\n{tail}")
        return "\n".join(parts) or f"(nothing in {self.log_path})"

    def _log_files(self) -> tuple[Path, Path]:
        return self.log_path, self.dir / "redis.stderr"

    def _log_sizes(self) -> tuple[int, ...]:
        return tuple(path.stat().st_size if path.exists() else 0 for path in self._log_files())

    def _logged_since(self, offsets: tuple[int, ...]) -> str:
        """What the log and stderr got after ``offsets`` (from :meth:`_log_sizes`)."""
        text = ""
        for path, offset in zip(self._log_files(), offsets):
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    text += f.read().decode(errors="replace")
            except OSError:
                pass
        return text

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<RedisServer {HOST}:{self._port} {state} dir={self.dir}>"


class _PortInUse(Exception):
    """redis-server exited because its port was taken."""


# -- a cluster ----------------------------------------------------------------------


class RedisCluster:
    """A Redis Cluster of ``masters`` (3) :class:`RedisServer` nodes, no replicas.

    ``start()`` starts the nodes in subdirectories of ``directory`` (made if
    not given), joins them with ``redis-cli --cluster create`` and waits until
    every node reports ``cluster_state:ok``.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        masters: int = 3,
        extra: Sequence[str] = (),
        cli: str | None = None,
    ) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self._owns_dir = directory is None
        if directory is None:
            self.dir = Path(tempfile.mkdtemp(prefix="fastws-redis-cluster-"))
            with _LIVE_LOCK:
                _OWNED_DIRS.add(self.dir)
        else:
            self.dir = Path(directory).resolve()
        self.cli = cli or shutil.which("redis-cli") or "redis-cli"
        self.servers = [RedisServer(self.dir / f"node-{i}", cluster=True, extra=extra) for i in range(masters)]

    @property
    def nodes(self) -> list[tuple[str, int]]:
        """``[(host, port), ...]`` of the masters."""
        return [(server.host, server.port) for server in self.servers]

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:P1/``: one startup node is enough."""
        host, port = self.nodes[0]
        return f"redis+cluster://{host}:{port}/"

    def start(self, timeout: float = CLUSTER_TIMEOUT) -> RedisCluster:
        """Start the nodes, create the cluster, wait for ``cluster_state:ok``.

        On any failure the nodes started so far are stopped before raising.
        """
        try:
            for server in self.servers:
                server.start()
            self._create()
            self._wait_ok(timeout)
        except BaseException:
            self.stop()
            raise
        log.info("redis cluster ok on ports %s", [port for _, port in self.nodes])
        return self

    def _create(self) -> None:
        argv = [
            self.cli, "--cluster", "create",
            *(f"{host}:{port}" for host, port in self.nodes),
            "--cluster-replicas", "0", "--cluster-yes",
        ]  # fmt: skip
        log.info("creating the cluster: %s", " ".join(argv))
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
                text=True,
                timeout=unit(30),
            )
        except subprocess.TimeoutExpired as exc:
            raise RedisServiceError(f"redis-cli --cluster create timed out:\n{exc.stdout!r}") from None
        log.debug("redis-cli --cluster create:\n%s%s", done.stdout, done.stderr)
        if done.returncode != 0:
            raise RedisServiceError(
                f"redis-cli --cluster create failed ({done.returncode}):\n{done.stdout}{done.stderr}"
            )

    def _wait_ok(self, timeout: float) -> None:
        deadline = time.monotonic() + unit(timeout)
        states: dict[int, str] = {}
        while True:
            for server in self.servers:
                try:
                    info = command(server.port, "CLUSTER", "INFO", timeout=1.0)
                    state = next(
                        (line.split(":", 1)[1].strip() for line in str(info).splitlines()
                         if line.startswith("cluster_state:")),
                        "?",
                    )  # fmt: skip
                except (OSError, RedisReplyError) as exc:
                    state = repr(exc)
                states[server.port] = state
            if all(state == "ok" for state in states.values()):
                return
            if time.monotonic() > deadline:
                tails = "\n".join(f"node {s.port}:\n{s.log_tail(15)}" for s in self.servers)
                raise RedisServiceError(f"cluster not ok after {unit(timeout):.0f} s: {states}\n{tails}")
            time.sleep(0.1)

    def client(self, **kwargs: object) -> redis.cluster.RedisCluster:
        """A sync ``redis.cluster.RedisCluster`` started from the first node
        (``decode_responses=True`` and test-sized timeouts unless given)."""
        from redis.cluster import RedisCluster as ClusterClient

        host, port = self.nodes[0]
        kwargs.setdefault("decode_responses", True)
        kwargs.setdefault("socket_timeout", unit(5))
        kwargs.setdefault("socket_connect_timeout", unit(5))
        return ClusterClient(host=host, port=port, **kwargs)  # type: ignore[arg-type]

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after the grace period)."""
        for server in self.servers:
            server.stop()

    def close(self) -> None:
        """:meth:`stop`, then remove the directory if it was made here."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            with _LIVE_LOCK:
                _OWNED_DIRS.discard(self.dir)

    def __enter__(self) -> Self:
        if not any(server.running for server in self.servers):
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RedisCluster {self.nodes} dir={self.dir}>"


__all__ = [
    "HOST",
    "RedisCluster",
    "RedisReplyError",
    "RedisServer",
    "RedisServiceError",
    "cluster_port",
    "command",
    "free_port",
]
