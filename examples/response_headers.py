#!/usr/bin/env python
"""Extra response headers: ``process_response`` edits the 101 before it is sent.

Every accepted connection gets ``X-Server-Time`` (the server's clock, in
seconds since the epoch); a client that sends ``X-Request-Id`` gets it back.
The handler reads the response as sent and tells the client the time, then
echoes.
"""

import asyncio
import time

from websockets.asyncio.server import serve


def process_response(connection, request, response):
    response.headers["X-Server-Time"] = f"{time.time():.3f}"
    request_id = request.headers.get("X-Request-Id")
    if request_id is not None:
        response.headers["X-Request-Id"] = request_id


async def handler(websocket):
    await websocket.send(f"server time {websocket.response.headers['X-Server-Time']}")
    async for message in websocket:
        await websocket.send(message)


async def main(host="localhost", port=8765):
    async with serve(handler, host, port, process_response=process_response) as server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
