"""Clients that abuse the opening handshake: too slow, too many, too big.

Each attack runs against a server subprocess whose RSS is measured before,
during (peak) and after; another client must still be served meanwhile.
"""

from __future__ import annotations

import errno
import select
import socket
import time

from tests.conftest import UPGRADE, unit
from tests.hostile.conftest import RssSampler, echo_works, report_rss, settle_rss

# The handshake request, one byte per second, would take this long.
assert len(UPGRADE) > 100


def _closed(sock: socket.socket) -> bool:
    """True if the peer closed (FIN or RST); the socket must be readable."""
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True
    except BlockingIOError:
        return False


def test_slow_handshake_closed_by_open_timeout(start_server):
    """One byte per second: the handshake never completes, and the server
    drops the connection once ``--open-timeout 1`` has passed."""
    server = start_server("--open-timeout", "1")
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t0 = time.monotonic()
    sent = 0
    closed_at = None
    try:
        while time.monotonic() - t0 < unit(5):
            try:
                sock.sendall(UPGRADE[sent : sent + 1])
                sent += 1
            except (BrokenPipeError, ConnectionResetError):
                closed_at = time.monotonic() - t0
                break
            r, _, _ = select.select([sock], [], [], 1.0)
            if r:
                got = b""
                try:
                    got = sock.recv(4096)
                except ConnectionResetError:
                    pass
                assert not got.startswith(b"HTTP/1.1 101"), got
                closed_at = time.monotonic() - t0
                break
    finally:
        sock.close()
    assert closed_at is not None, "server did not close a handshake trickling for 5 s"
    # Closed by the timer, not at once: at 1 s, after one or two bytes.
    assert closed_at >= 0.9, closed_at
    assert sent <= 3, sent
    echo_works(server.port)


def test_500_slow_handshakes_do_not_block_others(start_server):
    """500 sockets trickle their handshakes at once; a new client still
    connects and gets its echo, and the server drops all 500 at the open
    timeout, returning to its baseline of file descriptors."""
    server = start_server("--open-timeout", "3")
    echo_works(server.port)
    fds_before = server.num_fds()
    before = settle_rss(server, 0.1)
    socks: list[socket.socket] = []
    try:
        with RssSampler(server) as sampler:
            t0 = time.monotonic()
            for _ in range(500):
                s = socket.create_connection(("127.0.0.1", server.port), timeout=unit(5))
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.sendall(UPGRADE[:1])
                socks.append(s)
            for i in range(1, 3):
                time.sleep(0.5)
                for s in socks:
                    s.sendall(UPGRADE[i : i + 1])
                # Meanwhile, an honest client is served at once.
                echo_works(server.port)
            assert time.monotonic() - t0 < 3, "the trickle outlived the open timeout; the test proves nothing"
            # All 500 are dropped by the open timeout (3 s after connecting).
            pending = {s.fileno(): s for s in socks}
            for s in socks:
                s.setblocking(False)
            deadline = time.monotonic() + unit(10)
            while pending and time.monotonic() < deadline:
                r, _, _ = select.select(list(pending.values()), [], [], 0.5)
                for s in r:
                    if _closed(s):
                        del pending[s.fileno()]
            assert not pending, f"{len(pending)} of 500 slow handshakes still open"
            closed_after = time.monotonic() - t0
            assert closed_after >= 2.5, closed_after
        after = settle_rss(server)
    finally:
        for s in socks:
            s.close()
    echo_works(server.port)
    deadline = time.monotonic() + unit(5)
    while server.num_fds() > fds_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.num_fds() <= fds_before
    report_rss("500 slow handshakes", "compiled", before, after, sampler.peak, connections=500)


def _flood(port: int, head: bytes, chunk: bytes, limit: int = 8 << 20) -> tuple[int, bytes]:
    """Send ``head`` then ``chunk`` forever (up to ``limit`` bytes) while
    reading; return bytes sent and the response, once the server closes."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    sent = 0
    data = head or chunk
    response = b""
    deadline = time.monotonic() + unit(10)
    try:
        while time.monotonic() < deadline:
            want_write = [sock] if sent < limit and data else []
            r, w, _ = select.select([sock], want_write, [], 0.5)
            if r:
                try:
                    got = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not got:
                    break
                response += got
            if w:
                try:
                    sent += sock.send(data)
                except BlockingIOError:
                    pass
                except OSError as exc:
                    if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                        raise
                    data = b""  # the server is gone; read what it said
                else:
                    data = chunk
    finally:
        sock.close()
    return sent, response


FLOODS = {
    "endless-header-lines": (b"GET / HTTP/1.1\r\nHost: x\r\n", b"X-Flood: aaaaaaaaaaaaaaaaaaaaaaa\r\n" * 64),
    "endless-header-value": (b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: ", b"a" * 4096),
    "endless-url": (b"GET /", b"a" * 4096),
    "endless-blank-lines": (b"", b"\r\n" * 2048),
    "upgrade-then-endless-headers": (UPGRADE[:-2], b"X-Flood: aaaaaaaaaaaaaaaaaaaaaaa\r\n" * 64),
}


def test_header_flood_431(start_server):
    """Endless header lines (or one endless line) get 431 once the request
    head passes max_header_size (16 KiB), then the connection is closed."""
    server = start_server()
    before = settle_rss(server, 0.1)
    with RssSampler(server) as sampler:
        for name, (head, chunk) in FLOODS.items():
            sent, response = _flood(server.port, head, chunk)
            assert response.startswith(b"HTTP/1.1 431 "), (name, response[:200])
            assert b"\r\nConnection: close\r\n" in response, (name, response)
            # The server stopped reading at 16 KiB; what we managed to send
            # beyond that sat in kernel buffers (bounded by them).
            assert sent < 8 << 20, (name, sent)
    after = settle_rss(server)
    echo_works(server.port)
    report_rss("header flood x5", "compiled", before, after, sampler.peak)
