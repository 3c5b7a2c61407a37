#!/usr/bin/env python
"""Subprotocol selection: the server prefers ``chat.v2`` over ``chat.v1``.

The handler tells the client which one was chosen; a client that offers
neither is refused with HTTP 400.
"""

import asyncio

from websockets.asyncio.server import serve


async def handler(websocket):
    await websocket.send(f"subprotocol: {websocket.subprotocol}")
    async for message in websocket:
        await websocket.send(message)


async def main(host="localhost", port=8765):
    async with serve(handler, host, port, subprotocols=["chat.v2", "chat.v1"]) as server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
