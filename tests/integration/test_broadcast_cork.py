"""A loop-wide cork: what the handlers write to other connections while one
connection's read is dispatched goes out in one write per connection.

A broadcast server (``tests.integration.apps:Broadcast``) gets 50 messages
from one client in one TCP write and sends each to 11 connections. Corked,
that is one ``writev`` per connection (about 11 write calls); uncorked it
would be 550. The server's write calls are counted by the kernel
(``syscw`` in ``/proc/PID/io``).
"""

from __future__ import annotations

import base64
import os
import socket
import time
from pathlib import Path

import pytest

from fastws.codec._frame_py import FrameReader, encode_frame
from fastws.codec._handshake_py import accept_key
from tests.conftest import ServerProcess

LISTENERS = 10
MESSAGES = 50

pytestmark = pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/PID/io")


def _syscw(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    raise AssertionError("no syscw in /proc/PID/io")


def _open(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101") and accept_key(key) in head
    return sock


def _messages(sock: socket.socket, n: int) -> list[bytes]:
    reader = FrameReader(require_mask=False, max_message_size=None)
    got: list[bytes] = []
    deadline = time.monotonic() + 5
    while len(got) < n and time.monotonic() < deadline:
        reader.feed_data(sock.recv(65536))
        while (event := reader.next_event()) is not None:
            got.append(event[1])
    return got


def test_a_broadcast_of_one_read_is_one_write_per_connection() -> None:
    with ServerProcess("tests.integration.apps:Broadcast", "--no-access-log") as server:
        assert server.proc is not None
        sender = _open(server.port)
        listeners = [_open(server.port) for _ in range(LISTENERS)]
        time.sleep(0.2)  # every on_connect has run
        batch = b"".join(encode_frame(2, b"m%03d" % i, mask=b"abcd") for i in range(MESSAGES))
        before = _syscw(server.proc.pid)
        sender.sendall(batch)
        expected = [b"m%03d" % i for i in range(MESSAGES)]
        for sock in [sender, *listeners]:
            assert _messages(sock, MESSAGES) == expected  # all of them, in order
        writes = _syscw(server.proc.pid) - before
        # 11 connections: one write each, with room for a stray log or
        # timer write; without the cork this is 550.
        assert writes <= 3 * (LISTENERS + 1), writes
        for sock in [sender, *listeners]:
            sock.close()


def test_a_listener_that_drops_mid_broadcast_costs_the_others_nothing() -> None:
    """Hostile listeners: one resets its TCP connection (RST) and one stops
    reading while a burst is broadcast; the corked writes skip the closed one
    and every other connection gets every message, in order."""
    import struct

    with ServerProcess("tests.integration.apps:Broadcast", "--no-access-log") as server:
        sender = _open(server.port)
        good = [_open(server.port) for _ in range(3)]
        dropper = _open(server.port)
        silent = _open(server.port)  # never reads
        time.sleep(0.2)
        batches = [b"".join(encode_frame(2, b"b%02d-%03d" % (k, i), mask=b"abcd") for i in range(MESSAGES)) for k in range(4)]
        sender.sendall(batches[0])
        dropper.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        dropper.close()  # RST while the server may still be writing to it
        for batch in batches[1:]:
            sender.sendall(batch)
        expected = [b"b%02d-%03d" % (k, i) for k in range(4) for i in range(MESSAGES)]
        for sock in [sender, *good]:
            assert _messages(sock, len(expected)) == expected
        assert server.proc is not None and server.proc.poll() is None  # still serving
        extra = _open(server.port)  # and still accepting
        extra.close()
        for sock in [sender, *good, silent]:
            sock.close()
