#!/usr/bin/env python
"""Chat room: every message is broadcast to everyone connected.

Joining and leaving are announced as ``users: N``.
"""

import asyncio

from websockets.asyncio.server import broadcast, serve

CONNECTIONS = set()


async def chat(websocket):
    CONNECTIONS.add(websocket)
    broadcast(CONNECTIONS, f"users: {len(CONNECTIONS)}")
    try:
        async for message in websocket:
            broadcast(CONNECTIONS, message)
    finally:
        CONNECTIONS.remove(websocket)
        broadcast(CONNECTIONS, f"users: {len(CONNECTIONS)}")


async def main(host="localhost", port=8765):
    async with serve(chat, host, port) as server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
