#!/usr/bin/env python
"""A handler that sends and receives at the same time.

The producer sends ``tick 1``, ``tick 2``, ... every few milliseconds; the
consumer answers every message in upper case.
"""

import asyncio

from websockets.asyncio.server import serve

TICK = 0.005  # seconds between ticks


async def consumer(websocket):
    async for message in websocket:
        await websocket.send(message.upper())


async def producer(websocket):
    count = 0
    while True:
        count += 1
        await websocket.send(f"tick {count}")
        await asyncio.sleep(TICK)


async def handler(websocket):
    await asyncio.gather(consumer(websocket), producer(websocket))


async def main(host="localhost", port=8765):
    async with serve(handler, host, port) as server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
