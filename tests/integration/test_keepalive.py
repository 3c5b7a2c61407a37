"""Keepalive pings, ``ws.latency`` and the idle timeout (issue 11), at both
API levels, against real peers.

- A peer that stops answering pings (a raw socket: it completes the
  handshake, then reads but never answers) is closed with 1011 within
  ``ping_interval + ping_timeout``; in-process, and from the CLI with the
  compiled build and the pure-Python twin.
- A ``websockets`` client, which answers pings by itself, stays open through
  many rounds, and the server side measures ``ws.latency``.
- ``idle_timeout``: a client that sends no message is closed with 1000
  "idle timeout" (pongs do not count); one that talks is left alone.
- The blocked-loop guard: a handler that blocks the event loop right after
  a ping went out does not get a healthy client closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedOK
from websockets.protocol import State as ClientState

from fastws import Handler
from fastws.codec._frame_py import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, parse_close

from ..conftest import NO_EXTENSIONS, ServerProcess, serving, unit
from .conftest import FrameStream, cli_codec, client_frame, open_ws, port_of

pytestmark = pytest.mark.timeout(int(unit(40)))

LEVELS = pytest.mark.parametrize("level", ["callback", "coroutine"])
CLIENT: dict[str, Any] = {"compression": None, "ping_interval": None, "open_timeout": unit(5), "close_timeout": unit(5)}


def echo_handler(level: str, on_open: Callable[[Any], None] | None = None) -> tuple[Any, list[Any]]:
    """An echo handler at ``level`` that records the server side of every
    connection (and calls ``on_open(ws)`` first, if given)."""
    conns: list[Any] = []

    class Echo(Handler):
        def on_connect(self, ws: Any) -> None:
            conns.append(ws)
            if on_open is not None:
                on_open(ws)

        def on_message(self, ws: Any, data: bytes, is_text: bool) -> None:
            ws.send(data, is_text)

    async def echo(ws: Any) -> None:
        conns.append(ws)
        if on_open is not None:
            on_open(ws)
        async for message in ws:
            await ws.send(message)

    return (Echo if level == "callback" else echo), conns


# -- a peer that stops answering ------------------------------------------------------


Outcome = tuple[float, list[tuple[int, bytes]], tuple[int, str], bool]


def until_close(port: int) -> Outcome:
    """A raw client that completes the handshake, then only reads: seconds
    until the close frame, the frames before it, its (code, reason), and
    whether TCP was closed right after it."""
    sock = open_ws(port)
    started = time.monotonic()
    try:
        stream = FrameStream(sock)
        frames: list[tuple[int, bytes]] = []
        while True:
            event = stream.next(timeout=5)
            assert event is not None, f"EOF without a close frame after {frames}"
            if event[0] == OP_CLOSE:
                return time.monotonic() - started, frames, parse_close(event[1]), stream.at_eof(timeout=2)
            frames.append(event)
    finally:
        sock.close()


def assert_closed_for_no_pong(result: Outcome, interval: float, timeout: float) -> None:
    took, frames, close, eof = result
    assert close == (1011, "keepalive ping timeout"), close
    # One ping went out (4 random bytes) and was never answered.
    assert [op for op, _ in frames] == [OP_PING] and len(frames[0][1]) == 4, frames
    assert interval + timeout - 0.05 <= took <= interval + timeout + unit(0.4), took
    assert eof, "TCP not closed after the 1011 (a failed connection is dropped at once)"


@LEVELS
async def test_unanswered_ping_closes_with_1011(level: str, caplog: pytest.LogCaptureFixture) -> None:
    handler, conns = echo_handler(level)
    with caplog.at_level(logging.INFO, logger="fastws"):
        async with serving(handler, ping_interval=0.3, ping_timeout=0.3) as (_, url):
            assert_closed_for_no_pong(await asyncio.to_thread(until_close, port_of(url)), 0.3, 0.3)
    assert len(conns) == 1
    assert any("no pong within 0.3s (ping_timeout)" in r.getMessage() and "closing with 1011" in r.getMessage() for r in caplog.records)


def test_unanswered_ping_closes_with_1011_from_the_cli(codec: str) -> None:
    """The same from ``python -m fastws serve`` (uvloop), with the compiled
    build and with the pure-Python twin (FASTWS_NO_EXTENSIONS=1)."""
    with ServerProcess("--ws-ping-interval", "0.3", "--ws-ping-timeout", "0.3", "--no-access-log", codec=codec) as server:
        assert ("codec compiled" if codec == "compiled" else "codec pure-python") in server.output, server.output
        assert_closed_for_no_pong(until_close(server.port), 0.3, 0.3)
        assert server.stop() == 0, server.output
    assert "no pong within 0.3s (ping_timeout)" in server.output


# -- a healthy client ------------------------------------------------------------------


@LEVELS
async def test_healthy_client_stays_open_and_latency_is_measured(level: str) -> None:
    handler, conns = echo_handler(level)
    async with serving(handler, ping_interval=0.3, ping_timeout=0.3) as (_, url), connect(url, **CLIENT) as ws:
        assert conns[0].latency == 0.0  # no ping answered yet
        await asyncio.sleep(2.0)  # six rounds of pings, answered by the client library
        assert ws.state is ClientState.OPEN
        await ws.send("still here")
        assert await asyncio.wait_for(ws.recv(), unit(5)) == "still here"
        assert 0.0 < conns[0].latency < 0.3, conns[0].latency


# -- idle timeout ------------------------------------------------------------------------


@LEVELS
async def test_client_that_sends_nothing_is_closed_as_idle(level: str) -> None:
    handler, conns = echo_handler(level)
    # Pings every 0.1 s are answered all along: pongs are not messages.
    async with serving(handler, idle_timeout=0.6, ping_interval=0.1, ping_timeout=0.5) as (_, url), connect(url, **CLIENT) as ws:
        started = time.monotonic()
        with pytest.raises(ConnectionClosedOK):
            await asyncio.wait_for(ws.recv(), unit(5))
        took = time.monotonic() - started
        assert ws.close_code == 1000 and ws.close_reason == "idle timeout", (ws.close_code, ws.close_reason)
        # Checked every quarter of the timeout: between 1 and 1.25 times it.
        assert 0.55 <= took <= 0.75 + unit(0.25), took
        assert conns[0].latency > 0  # the pongs came, and did not count


@LEVELS
async def test_client_that_talks_is_not_idle(level: str) -> None:
    handler, _ = echo_handler(level)
    async with serving(handler, idle_timeout=0.6) as (_, url):
        async with connect(url, **CLIENT) as ws:
            for i in range(10):  # 2 s, more than three idle timeouts
                await ws.send(f"tick {i}")
                assert await asyncio.wait_for(ws.recv(), unit(5)) == f"tick {i}"
                await asyncio.sleep(0.2)
            assert ws.state is ClientState.OPEN and ws.close_code is None
        assert ws.close_code == 1000 and ws.close_reason == ""


# -- the blocked-loop guard --------------------------------------------------------------

BLOCK = 1.5


@LEVELS
async def test_a_blocked_loop_does_not_close_a_healthy_client(level: str, caplog: pytest.LogCaptureFixture) -> None:
    """The handler blocks the event loop (``time.sleep``) for 1.5 s, 50 ms
    after the server's first ping went out (ping_interval 0.2 s,
    ping_timeout 0.2 s), before the pong could be read.

    The client is the websockets library on the same loop: like any peer it
    can only be answered when the loop runs again. It pauses reading until
    the block is over, so its pong cannot have reached the server before the
    block began, whatever the exact timing of the loop's turns.

    When the loop runs again, the pong timer (due 0.2 s after the ping) is
    ~1.35 s late and runs before the pong is read. Without the guard in
    ``_keepalive_timeout`` ("late > max(1.0, ping_timeout / 2)": give the
    pong another ping_timeout) the server would close this healthy client
    with 1011 right there, and the ``send`` below would fail. (A block of
    1.0 s would leave the timer only ~0.85 s late, under the guard's 1 s
    floor: the client would be closed, as documented.)
    """

    def block_after_the_first_ping(ws: Any) -> None:
        # The first ping goes 0.2 s after the open, just before this runs.
        asyncio.get_running_loop().call_later(0.25, time.sleep, BLOCK)

    handler, conns = echo_handler(level, on_open=block_after_the_first_ping)
    with caplog.at_level(logging.WARNING, logger="fastws"):
        async with serving(handler, ping_interval=0.2, ping_timeout=0.2) as (_, url), connect(url, **CLIENT) as ws:
            ws.transport.pause_reading()
            started = time.monotonic()
            await asyncio.sleep(0.3)  # returns once the block is over
            assert time.monotonic() - started >= BLOCK
            ws.transport.resume_reading()
            await asyncio.sleep(1.0)  # five more rounds, answered at once
            await ws.send("survived")
            assert await asyncio.wait_for(ws.recv(), unit(5)) == "survived"
            assert ws.state is ClientState.OPEN
            assert 0.0 < conns[0].latency < 0.2, conns[0].latency
    messages = [r.getMessage() for r in caplog.records]
    # The guard is what saved it: it said so, once.
    late = [m for m in messages if "keepalive check ran" in m and "the event loop was blocked; not closing" in m]
    assert len(late) == 1, messages
    assert not any("no pong within" in m for m in messages), messages


# While the loop was blocked a healthy remote peer's pong arrived and waits in
# the socket. asyncio reads sockets before it runs due timers; uvloop (libuv)
# runs timers first, so the pong timer decides before the waiting pong is
# read: a stall between ping_timeout and ping_timeout + max(1 s,
# ping_timeout / 2) after a ping closed a healthy peer with 1011, until a
# late check started looking again once after the loop read its sockets.


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_pong_waiting_in_the_socket_after_a_stall_is_seen(loop: str) -> None:
    """A raw client answers the first ping 0.1 s late, after asking the
    handler (tests.integration.apps:Blocker) to block the loop for 1 s:
    the server is blocked when the pong arrives, and finds it waiting when
    the loop runs again. The pong came 0.1 s after the ping, well within
    ping_timeout: the connection must stay open."""
    pytest.importorskip(loop)
    with ServerProcess(
        "tests.integration.apps:Blocker", "--loop", loop, "--ws-ping-interval", "0.3", "--ws-ping-timeout", "0.3",
        "--no-access-log", codec="pure" if NO_EXTENSIONS else cli_codec(),
    ) as server:  # fmt: skip
        assert f"loop {loop}," in server.output, server.output
        sock = open_ws(server.port)
        try:
            stream = FrameStream(sock)
            event = stream.next(timeout=2)
            assert event is not None and event[0] == OP_PING, event
            sock.sendall(client_frame(OP_TEXT, "block 1.0"))
            time.sleep(0.1)  # the server sleeps now
            sock.sendall(client_frame(OP_PONG, event[1]))
            got: list[bytes] = []
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                event = stream.next(timeout=5)
                assert event is not None, "EOF"
                assert event[0] != OP_CLOSE, f"closed {parse_close(event[1])} after {got}"
                if event[0] == OP_PING:
                    sock.sendall(client_frame(OP_PONG, event[1]))
                elif event[0] == OP_TEXT:
                    got.append(event[1])
                    if event[1] == b"blocked":
                        sock.sendall(client_frame(OP_TEXT, "hello"))
                    elif event[1] == b"hello":
                        break
            assert got == [b"blocked", b"hello"]
        finally:
            sock.close()
        assert server.stop() == 0, server.output
    assert "no pong within" not in server.output, server.output
