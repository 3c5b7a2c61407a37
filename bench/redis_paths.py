"""How much the per-message Redis paths cost: redis-py against hiredis.

The rooms broker publishes and reads pub/sub messages with hiredis directly
and leaves the rest to redis-py (docs/scaling.md); this measures why, on the
machine at hand. It starts its own ``redis-server`` on a free loopback port
and reports, as medians of ``--rounds`` interleaved rounds:

- ``PUBLISH`` pipelined 1,000 at a time through redis-py, and the same bytes
  packed and parsed by hiredis on a plain asyncio connection;
- reading subscribed messages with redis-py's ``PubSub.get_message`` and with
  hiredis on a plain connection (each while one hiredis publisher sends).

    python -m bench.redis_paths [--messages 50000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable

import hiredis
import redis.asyncio as aioredis

PAYLOAD = b"x" * 64
CHANNEL = b"bench"
BATCH = 1_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _raw_publish(port: int, n: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    parser = hiredis.Reader()
    command = hiredis.pack_command((b"PUBLISH", CHANNEL, PAYLOAD))
    for _ in range(0, n, BATCH):
        writer.write(command * BATCH)
        got = 0
        while got < BATCH:
            parser.feed(await reader.read(65536))
            while parser.gets() is not False:
                got += 1
    writer.close()


async def publish_redis_py(port: int, n: int) -> float:
    client = aioredis.Redis(port=port)
    started = time.perf_counter()
    for _ in range(0, n, BATCH):
        pipe = client.pipeline(transaction=False)
        for _ in range(BATCH):
            pipe.publish(CHANNEL, PAYLOAD)
        await pipe.execute()
    elapsed = time.perf_counter() - started
    await client.aclose()
    return elapsed


async def publish_hiredis(port: int, n: int) -> float:
    started = time.perf_counter()
    await _raw_publish(port, n)
    return time.perf_counter() - started


async def read_redis_py(port: int, n: int) -> float:
    client = aioredis.Redis(port=port)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(CHANNEL)
    sender = asyncio.ensure_future(_raw_publish(port, n))
    started = time.perf_counter()
    got = 0
    while got < n:
        if await pubsub.get_message(ignore_subscribe_messages=True, timeout=None) is not None:
            got += 1
    elapsed = time.perf_counter() - started
    await sender
    await pubsub.aclose()
    await client.aclose()
    return elapsed


async def read_hiredis(port: int, n: int) -> float:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[float] = loop.create_future()
    started = [0.0]

    class Subscriber(asyncio.Protocol):
        def __init__(self) -> None:
            self.parser = hiredis.Reader()
            self.got = 0

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transport.write(hiredis.pack_command((b"SUBSCRIBE", CHANNEL)))  # type: ignore[attr-defined]

        def data_received(self, data: bytes) -> None:
            self.parser.feed(data)
            while True:
                reply = self.parser.gets()
                if reply is False:
                    return
                if reply[0] == b"message":
                    self.got += 1
                    if self.got == n and not done.done():
                        done.set_result(time.perf_counter() - started[0])

    transport, _ = await loop.create_connection(Subscriber, "127.0.0.1", port)
    await asyncio.sleep(0.1)  # subscribed
    started[0] = time.perf_counter()
    sender = asyncio.ensure_future(_raw_publish(port, n))
    elapsed = await done
    await sender
    transport.close()
    return elapsed


CASES: list[tuple[str, Callable[[int, int], Awaitable[float]]]] = [
    ("PUBLISH, redis-py pipeline", publish_redis_py),
    ("PUBLISH, hiredis", publish_hiredis),
    ("pub/sub read, redis-py get_message", read_redis_py),
    ("pub/sub read, hiredis", read_hiredis),
]


async def run(port: int, messages: int, rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name, _ in CASES}
    for _ in range(rounds):
        for name, case in CASES:
            times[name].append(await case(port, messages) / messages * 1e6)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.redis_paths", description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=50_000, help="messages per case and round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians are shown)")
    args = p.parse_args(argv)
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="fastws-redis-paths-") as directory:
        proc = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", directory],
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            try:
                import uvloop

                times = uvloop.run(run(port, args.messages, args.rounds))
            except ImportError:
                times = asyncio.run(run(port, args.messages, args.rounds))
        finally:
            proc.terminate()
            proc.wait(10)
    width = max(len(name) for name, _ in CASES)
    print(f"{'path':<{width}}  us/msg (median of {args.rounds})  min-max")
    for name, _ in CASES:
        values = times[name]
        print(f"{name:<{width}}  {statistics.median(values):>8.2f}                {min(values):.2f}-{max(values):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
