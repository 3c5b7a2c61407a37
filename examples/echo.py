#!/usr/bin/env python
"""Echo server: every message comes back as it was sent (text or binary).

Written for ``websockets``; ``from fastws import serve`` runs it on fastws.
"""

import asyncio

from websockets.asyncio.server import serve


async def echo(websocket):
    async for message in websocket:
        await websocket.send(message)


async def main(host="localhost", port=8765):
    async with serve(echo, host, port) as server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
