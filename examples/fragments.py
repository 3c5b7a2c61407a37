#!/usr/bin/env python
"""Fragmented messages: one message sent as several frames.

Send ``list`` to get a text message sent from a list of strings, ``agen``
to get a binary message streamed from an async generator, ``big N`` to get
N KiB of binary streamed in 1 KiB fragments.
"""

import asyncio

from websockets.asyncio.server import serve


async def chunks(count, size):
    for i in range(count):
        yield bytes([i % 256]) * size
        await asyncio.sleep(0)


async def handler(websocket):
    async for message in websocket:
        if message == "list":
            await websocket.send(["frag", "ment", "ed"])
        elif message == "agen":
            await websocket.send(chunks(3, 4))
        elif message.startswith("big "):
            await websocket.send(chunks(int(message[4:]), 1024))
        else:
            await websocket.send(message)


async def main(host="localhost", port=8765):
    async with serve(handler, host, port) as server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
