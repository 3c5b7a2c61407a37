#!/usr/bin/env python
"""Chat rooms: the handler takes the room as a second argument.

``serve()`` gets a lambda that picks the room from the path and calls
``chat(websocket, room)``: ``ws://localhost:8765/games`` joins ``games``,
``/`` joins ``lobby``. (``functools.partial(chat, room="lobby")`` would do
for a single room.) A message goes to everyone in the sender's room only.
"""

import asyncio

from websockets.asyncio.server import broadcast, serve

ROOMS = {}


async def chat(websocket, room):
    members = ROOMS.setdefault(room, set())
    members.add(websocket)
    try:
        async for message in websocket:
            broadcast(members, f"{room}: {message}")
    finally:
        members.remove(websocket)
        if not members:
            del ROOMS[room]


def room_of(websocket):
    return websocket.request.path.strip("/") or "lobby"


async def main(host="localhost", port=8765):
    async with serve(lambda websocket: chat(websocket, room_of(websocket)), host, port) as server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
