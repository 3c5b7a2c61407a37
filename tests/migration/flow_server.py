#!/usr/bin/env python
"""A server for the flow-control tests, run in a subprocess so that its
memory (RSS) can be measured alone.

Written for ``websockets``; the test runs it as is and migrated to fastws
(the import line changed), like the examples. Usage:
``python flow_server.py`` prints ``listening PORT`` once it accepts
connections on 127.0.0.1 (a free port), then serves:

- ``/bulk?n=N``: sends N messages of 1 MiB (``await send`` each) and then
  ``done``; prints ``sent K`` after each message;
- ``/slow?for=S``: receives messages, sleeping 10 ms between ``recv()`` for
  the first S seconds, until it gets ``end``; then answers ``COUNT PEAK``:
  the messages received and the longest receive queue it saw.
"""

import asyncio
import os
import sys
import urllib.parse

from websockets.asyncio.server import serve

PAYLOAD = os.urandom(2**20)  # incompressible, in case deflate is negotiated


def queued(ws):
    """Messages (fastws) or frames (websockets) waiting for ``recv()``."""
    if hasattr(ws, "recv_messages"):
        return len(ws.recv_messages.frames.queue)
    return len(ws._messages)


async def bulk(ws, count):
    for k in range(1, count + 1):
        await ws.send(PAYLOAD)
        print(f"sent {k}", flush=True)
    await ws.send("done")


async def slow(ws, seconds):
    loop = asyncio.get_running_loop()
    start = loop.time()
    count = peak = 0
    while True:
        peak = max(peak, queued(ws))
        message = await ws.recv()
        if message == "end":
            break
        count += 1
        if loop.time() - start < seconds:
            await asyncio.sleep(0.01)
    await ws.send(f"{count} {peak}")


async def handler(ws):
    url = urllib.parse.urlparse(ws.request.path)
    query = dict(urllib.parse.parse_qsl(url.query))
    if url.path == "/bulk":
        await bulk(ws, int(query.get("n", "100")))
    elif url.path == "/slow":
        await slow(ws, float(query.get("for", "1")))


async def main():
    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"listening {port}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    asyncio.run(main())
