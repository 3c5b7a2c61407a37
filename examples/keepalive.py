#!/usr/bin/env python
"""Keepalive: a client that stops answering pings is dropped within ~0.4 s.

The server pings every 0.2 s and gives up when a pong takes over 0.2 s.
Every connection's end is recorded in ``ENDED`` as (close code, exception
class name); it is also logged.
"""

import asyncio
import logging

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosedError

PING_INTERVAL = 0.2
PING_TIMEOUT = 0.2
ENDED = []


async def handler(websocket):
    ending = None
    try:
        async for message in websocket:
            await websocket.send(message)
    except ConnectionClosedError as exc:
        ending = type(exc).__name__
        logging.info("%s dropped: %s", websocket.remote_address, exc)
    finally:
        ENDED.append((websocket.close_code, ending))


async def main(host="localhost", port=8765):
    async with serve(
        handler, host, port, ping_interval=PING_INTERVAL, ping_timeout=PING_TIMEOUT
    ) as server:
        await server.serve_forever()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main())
