#!/usr/bin/env python
"""An idle timeout in the handler: ``recv()`` under ``asyncio.wait_for``.

Every message is answered with ``got <message>``. A client that says
nothing for ``IDLE`` seconds is closed with code 4000 and reason ``bye``.
"""

import asyncio

from websockets.asyncio.server import serve

IDLE = 0.3  # seconds


async def handler(websocket):
    while True:
        try:
            message = await asyncio.wait_for(websocket.recv(), IDLE)
        except TimeoutError:
            await websocket.close(4000, "bye")
            return
        await websocket.send(f"got {message}")


async def main(host="localhost", port=8765):
    async with serve(handler, host, port) as server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
