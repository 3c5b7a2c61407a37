#!/usr/bin/env python
"""Graceful shutdown on SIGTERM: messages a client already sent are processed.

On SIGTERM the server stops accepting connections and closes open ones with
1001 (going away). A handler's ``async for`` still yields the messages that
arrived before the close, and ``wait_closed()`` returns once every handler
is done, so nothing a client sent is lost. Each message takes a little work
and is printed as ``processed <message>``.
"""

import asyncio
import signal

from websockets.asyncio.server import serve

WORK = 0.05  # seconds per message, e.g. writing it to a database


async def handler(websocket):
    async for message in websocket:
        await asyncio.sleep(WORK)
        print(f"processed {message}", flush=True)
    print(f"connection closed: {websocket.close_code}", flush=True)


async def main(host="localhost", port=8765):
    async with serve(handler, host, port) as server:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, server.close)
        await server.wait_closed()
    print("server stopped", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
