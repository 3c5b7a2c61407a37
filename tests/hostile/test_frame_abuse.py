"""Clients that abuse the frame phase: huge lengths, endless fragments, and
pings whose pongs they never read.

Each runs against a server subprocess (both codecs where it is cheap) whose
RSS is measured before, during (peak) and after.
"""

from __future__ import annotations

import select
import socket
import time

import pytest

from tests.conformance.wire import (
    BINARY,
    PONG,
    TEXT,
    B,
    T,
    binary,
    close,
    cont,
    frame,
    open_ws,
    parse_frames,
    ping,
    read_until_closed,
    text,
)
from tests.conftest import CODECS, unit
from tests.hostile.conftest import MIB, RssSampler, echo_works, report_rss, settle_rss


@pytest.mark.parametrize("codec", CODECS)
def test_declared_100mb_frame_1009_at_once(start_server, codec):
    """A header announcing 100 MB gets 1009 on the header alone: no payload
    is sent, none is buffered."""
    server = start_server(codec=codec)
    echo_works(server.port)
    before = settle_rss(server, 0.1)
    with RssSampler(server) as sampler:
        for wire in (binary(b"", length=100 * MIB), text(b"", length=100 * MIB, form=64)):
            sock, rest = open_ws(server.port)
            try:
                sock.sendall(wire)
                reply = read_until_closed(sock, unit(2), rest)
            finally:
                sock.close()
            assert [f.brief() for f in reply.frames] == [("close", 1009)]
            assert reply.ending in ("eof", "reset")
        # The same, with the client streaming payload behind the header:
        # the server does not wait for it.
        sock, rest = open_ws(server.port)
        try:
            sock.sendall(binary(b"", length=100 * MIB))
            sock.settimeout(unit(5))
            try:
                for _ in range(64):
                    sock.sendall(b"\0" * 65536)
            except (BrokenPipeError, ConnectionResetError):
                pass
            reply = read_until_closed(sock, unit(2), rest)
        finally:
            sock.close()
        assert [f.brief() for f in reply.frames] == [("close", 1009)]
    after = settle_rss(server)
    echo_works(server.port)
    report_rss("declared 100 MB frame", codec, before, after, sampler.peak)
    # Nothing near 100 MB was allocated and touched.
    assert max(after, sampler.peak) - before < 32 * MIB


N_FRAGMENTS = 100_000


def _one_byte_fragments(opcode: int, n: int) -> bytes:
    first = frame(opcode, b"a", fin=False)
    middle = cont(b"a", fin=False)
    return first + middle * (n - 2) + cont(b"a")


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("opcode", [TEXT, BINARY], ids=["text", "binary"])
def test_100k_one_byte_fragments_echoed(start_server, codec, opcode):
    """100,000 one-byte fragments of one message, under max_message_size:
    the message is reassembled and echoed whole."""
    server = start_server("--max-message-size", "200000", codec=codec)
    before = settle_rss(server, 0.1)
    wire = _one_byte_fragments(opcode, N_FRAGMENTS)
    with RssSampler(server) as sampler:
        sock, rest = open_ws(server.port)
        try:
            sock.sendall(wire + close(1000))
            reply = read_until_closed(sock, unit(30), rest)
        finally:
            sock.close()
    expected = T(b"a" * N_FRAGMENTS) if opcode == TEXT else B(b"a" * N_FRAGMENTS)
    assert [f.brief() for f in reply.frames] == [expected, ("close", 1000)]
    after = settle_rss(server)
    echo_works(server.port)
    report_rss(f"100k one-byte fragments ({'text' if opcode == TEXT else 'binary'}), echoed", codec, before, after, sampler.peak)


@pytest.mark.parametrize("codec", CODECS)
def test_100k_one_byte_fragments_over_max_1009(start_server, codec):
    """The same message with max_message_size 50,000: 1009 (the server
    may close before it has read the rest; our write then fails: fine)."""
    server = start_server("--max-message-size", "50000", codec=codec)
    before = settle_rss(server, 0.1)
    with RssSampler(server) as sampler:
        sock, rest = open_ws(server.port)
        try:
            try:
                sock.sendall(_one_byte_fragments(TEXT, N_FRAGMENTS))
            except (BrokenPipeError, ConnectionResetError):
                pass  # failed before it had read all: fine
            reply = read_until_closed(sock, unit(30), rest)
        finally:
            sock.close()
    assert [f.brief() for f in reply.frames] == [("close", 1009)]
    assert reply.ending in ("eof", "reset")
    after = settle_rss(server)
    echo_works(server.port)
    report_rss("100k one-byte fragments over a 50 kB max, 1009", codec, before, after, sampler.peak)


FLOOD_PAYLOAD = bytes(range(125))
#: What a flooding client sends (131 bytes on the wire) and the opcode of
#: the 127-byte answer it never reads: pings get pongs, messages echoes.
FLOODS = {"ping": (ping(FLOOD_PAYLOAD), PONG), "echo": (binary(FLOOD_PAYLOAD), BINARY)}
#: If this much is accepted, the server never stopped reading.
FLOOD_LIMIT = 256 * MIB


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("kind", list(FLOODS))
def test_flood_of_a_client_that_never_reads(start_server, codec, kind):
    """A client sends pings (or messages to echo) as fast as it can and
    never reads the answers.

    The server's write buffer passes write_limit (64 KiB), so it stops
    reading from that client: the client's writes stall after the kernel
    buffers fill, the server's memory stays bounded, other clients are
    served. When the client finally reads, every request has its answer, in
    order: bounded, but nothing lost.
    """
    request, answer = FLOODS[kind]
    server = start_server(codec=codec)
    echo_works(server.port)
    before = settle_rss(server, 0.1)
    sock, rest = open_ws(server.port)
    assert not rest
    sock.setblocking(False)
    burst = request * 500
    sent = 0
    stalled_for = 0.0
    try:
        with RssSampler(server) as sampler:
            last_progress = time.monotonic()
            while sent < FLOOD_LIMIT:
                _, w, _ = select.select([], [sock], [], 0.2)
                if w:
                    try:
                        n = sock.send(burst[sent % len(burst) :] if sent % len(burst) else burst)
                    except BlockingIOError:
                        n = 0
                    if n:
                        sent += n
                        last_progress = time.monotonic()
                        continue
                stalled_for = time.monotonic() - last_progress
                if stalled_for > 1.0:
                    break
            assert sent < FLOOD_LIMIT, "the server kept reading from a client that never reads"
            peak_while_stalled = server.rss()
            # The server is responsive to everyone else meanwhile.
            echo_works(server.port)
            echo_works(server.port)
            # Now read: every pong arrives, in order, and the server, its
            # buffer drained, reads the rest of our pings. The last ping may
            # be cut short where the flood stalled: finish it first.
            tail = request[sent % len(request) :] if sent % len(request) else b""
            n_pings = (sent + len(tail)) // len(request)
            pongs = _drain_answers(sock, tail + close(1000), n_pings, answer)
        after = settle_rss(server)
    finally:
        sock.close()
    assert pongs == n_pings
    report_rss(
        f"{kind} flood, client never reads",
        codec,
        before,
        after,
        max(sampler.peak, peak_while_stalled),
        flood_accepted_mib=round(sent / MIB, 1),
    )
    echo_works(server.port)


def _drain_answers(sock: socket.socket, to_send: bytes, expected: int, opcode: int) -> int:
    """Read answers (frames of ``opcode``, payload checked) while sending
    ``to_send``, until the server's close; return how many arrived."""
    sock.setblocking(False)
    buf = bytearray()
    pongs = 0
    closed = False
    deadline = time.monotonic() + unit(60)
    while time.monotonic() < deadline and not closed:
        want = [sock] if to_send else []
        r, w, _ = select.select([sock], want, [], 0.5)
        if w:
            try:
                n = sock.send(to_send)
                to_send = to_send[n:]
            except BlockingIOError:
                pass
        if r:
            try:
                got = sock.recv(1 << 20)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                break
            if not got:
                break
            buf += got
            for f in parse_frames(buf):
                if f.opcode == opcode:
                    assert f.payload == FLOOD_PAYLOAD, f.payload[:20]
                    pongs += 1
                else:
                    assert f.brief() == ("close", 1000), f.brief()
                    assert pongs == expected, (pongs, expected)
                    closed = True
    assert closed, f"no close after {pongs} of {expected} pongs"
    return pongs
