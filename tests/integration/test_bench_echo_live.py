"""``handshake_loop`` of the bench reply checker (compiled and pure twin)
against a real ``fastws serve``: good cycles, a wrong accept value, an
answer that is not 101, a closed port; and against a scripted server (a
thread) for every other kind of error, the twins compared. The rest of ``fastws.bench._echo``
is tested offline in ``tests/unit/test_bench_echo.py``."""

from __future__ import annotations

import base64
import socket
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Self

import pytest

from fastws.codec._frame_py import encode_frame
from fastws.codec._handshake_py import accept_key

from ..conftest import NO_EXTENSIONS, ServerProcess, import_module_or_fail, unit

TWIN, COMPILED = "fastws.bench._echo_py", "fastws.bench._echo"

KEY = base64.b64encode(b"bench echo live!")  # 16 bytes, as a client sends
CLOSE_FRAME = encode_frame(8, b"\x03\xe8", mask=b"abcd")


@pytest.fixture(scope="module", params=[TWIN, COMPILED], ids=["py", "c"])
def echo(request: pytest.FixtureRequest) -> ModuleType:
    return import_module_or_fail(request.param)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess("--no-access-log", codec="pure" if NO_EXTENSIONS else "compiled") as proc:
        yield proc


def upgrade(port: int, *, websocket: bool = True) -> bytes:
    lines = [b"GET / HTTP/1.1", b"Host: 127.0.0.1:%d" % port]
    if websocket:
        lines += [b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Key: " + KEY, b"Sec-WebSocket-Version: 13"]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def loop(echo: ModuleType, port: int, request: bytes, accept: bytes, seconds: float = 0.5) -> tuple[int, list[int], str | None, object]:
    """Run for ``seconds``; every cycle started is in the window."""
    h = echo.Histogram()
    t = echo.now_ns()
    end = t + int(seconds * 1e9)
    cycles, counts, sample = echo.handshake_loop("127.0.0.1", port, request, accept, CLOSE_FRAME, h, t, t + 10**11, end, unit(2.0))
    return cycles, counts, sample, h


def test_good_cycles(echo: ModuleType, server: ServerProcess) -> None:
    cycles, counts, sample, h = loop(echo, server.port, upgrade(server.port), accept_key(KEY))
    assert (counts, sample) == ([0, 0, 0, 0, 0], None)
    assert cycles > 0 and h.total == cycles  # type: ignore[attr-defined]
    assert 0 < h.min <= h.max < unit(2) * 1e9  # type: ignore[attr-defined]


def test_only_cycles_in_the_window_are_timed(echo: ModuleType, server: ServerProcess) -> None:
    h = echo.Histogram()
    t = echo.now_ns()
    cycles, counts, sample = echo.handshake_loop(b"127.0.0.1", server.port, upgrade(server.port), accept_key(KEY),
                                                 CLOSE_FRAME, h, t + 10**10, t + 2 * 10**10, t + 200_000_000, unit(2.0))  # fmt: skip
    assert (cycles, counts, sample, h.total) == (0, [0, 0, 0, 0, 0], None, 0)


def test_a_wrong_accept_value(echo: ModuleType, server: ServerProcess) -> None:
    cycles, counts, sample, h = loop(echo, server.port, upgrade(server.port), b"x" * 28, seconds=0.3)
    assert cycles == 0 and counts[1:] == [0, 0, counts[3], 0] and counts[0] == 0
    assert counts[3] > 0
    assert sample == "bad_accept: Sec-WebSocket-Accept missing or wrong"
    assert h.total == 0  # type: ignore[attr-defined]


def test_an_answer_that_is_not_101(echo: ModuleType, server: ServerProcess) -> None:
    cycles, counts, sample, _h = loop(echo, server.port, upgrade(server.port, websocket=False), accept_key(KEY), seconds=0.3)
    assert cycles == 0 and counts[2] > 0 and counts[0] == counts[1] == counts[3] == counts[4] == 0
    assert sample == "bad_status: server answered 'HTTP/1.1 200 OK' instead of 101"


def test_a_closed_port(echo: ModuleType) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cycles, counts, sample, _h = loop(echo, port, upgrade(port), accept_key(KEY), seconds=0.2)
    assert cycles == 0 and counts[0] > 0 and counts[1:] == [0, 0, 0, 0]
    assert counts[0] <= 0.2 / 0.01 + 1  # 10 ms between refused connects
    assert sample == "refused: Connection refused"


def test_an_unknown_host(echo: ModuleType) -> None:
    h = echo.Histogram()
    with pytest.raises(OSError, match="cannot resolve"):
        echo.handshake_loop("no-such-host.invalid", 80, b"", b"", b"", h, 0, 0, 0, 1.0)


# -- against a scripted server ---------------------------------------------------

ACCEPT = accept_key(KEY)
SERVER_CLOSE = b"\x88\x02\x03\xe8"


def response(accept_line: bytes = b"Sec-WebSocket-Accept: " + ACCEPT) -> bytes:
    return b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" + accept_line + b"\r\n\r\n"


class Scripted(threading.Thread):
    """A loopback server that answers every connection the same way: read
    the request head, send ``head``, read the client's close frame, send
    ``after``, hang up. ``head=None``: hang up at once."""

    def __init__(self, head: bytes | None, after: bytes = b"") -> None:
        super().__init__(daemon=True)
        self.head, self.after = head, after
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.served = 0

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(unit(2))
                try:
                    got = b""
                    while b"\r\n\r\n" not in got:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        got += chunk
                    self.served += 1
                    if self.head is None:
                        continue
                    conn.sendall(self.head)
                    conn.recv(64)  # the client's close frame
                    if self.after:
                        conn.sendall(self.after)
                except OSError:
                    pass  # the client gave up first

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.join(unit(5))
        self.listener.close()


SCRIPTS = {
    "close in its own write": (response(), SERVER_CLOSE, 0, None),
    "close with the 101": (response() + SERVER_CLOSE, b"", 0, None),
    "accept in any case, padded": (response(b"sec-websocket-ACCEPT: \t " + ACCEPT + b" \t"), SERVER_CLOSE, 0, None),
    "no close frame": (response(), b"", 5, "no_close: the server sent no close frame before EOF"),
    "a text frame, not a close": (response(), b"\x81\x02hi", 5, "no_close: the server sent no close frame before EOF"),
    "no accept header": (response(b"X-Other: 1"), SERVER_CLOSE, 4, "bad_accept: Sec-WebSocket-Accept missing or wrong"),
    "accept of another key": (response(b"Sec-WebSocket-Accept: " + accept_key(b"x" * 24)), SERVER_CLOSE, 4,
                              "bad_accept: Sec-WebSocket-Accept missing or wrong"),
    "hang up after the request": (None, b"", 2, "failed: the server hung up"),
    "a 403": (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", b"", 3,
              "bad_status: server answered 'HTTP/1.1 403 Forbidden' instead of 101"),
    "HTTP/1.0 101": (b"HTTP/1.0 101 Switching Protocols\r\n\r\n", b"", 3,
                     "bad_status: server answered 'HTTP/1.0 101 Switching Protocols' instead of 101"),
}  # fmt: skip


@pytest.mark.parametrize("head, after, kind, sample", SCRIPTS.values(), ids=SCRIPTS.keys())
def test_scripted_servers(echo: ModuleType, head: bytes | None, after: bytes, kind: int, sample: str | None) -> None:
    with Scripted(head, after) as server:
        cycles, counts, got_sample, h = loop(echo, server.port, upgrade(server.port), ACCEPT, seconds=0.15)
    assert got_sample == sample
    if kind == 0:
        assert cycles > 0 and counts == [0] * 5 and h.total == cycles  # type: ignore[attr-defined]
    else:
        assert cycles == 0 and counts[kind - 1] > 0 and sum(counts) == counts[kind - 1], counts


def test_a_head_too_large_is_named_alike() -> None:
    twin, compiled = import_module_or_fail(TWIN), import_module_or_fail(COMPILED)
    head = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"p" * 20000 + b"\r\n\r\n"
    out = []
    with Scripted(head) as server:
        for mod in (twin, compiled):
            cycles, counts, sample, _h = loop(mod, server.port, upgrade(server.port), ACCEPT, seconds=0.05)
            out.append((cycles, counts[2] > 0, sum(counts) == counts[2], sample))
    assert out[0] == out[1]
