#!/usr/bin/env python
"""Authentication in ``process_request``, and a health check on the same port.

``ws://localhost:8765/?token=s3cr3t`` is let in and greeted by name; any
other WebSocket request gets HTTP 401. ``GET /healthz`` gets ``200 OK``.
"""

import asyncio
import http
import urllib.parse

from websockets.asyncio.server import serve

TOKENS = {"s3cr3t": "alice", "hunter2": "bob"}


def process_request(connection, request):
    if request.path == "/healthz":
        return connection.respond(http.HTTPStatus.OK, "OK\n")
    query = urllib.parse.urlparse(request.path).query
    token = urllib.parse.parse_qs(query).get("token", [None])[0]
    if token not in TOKENS:
        return connection.respond(http.HTTPStatus.UNAUTHORIZED, "Missing or invalid token.\n")
    # The handler receives this same connection object.
    connection.username = TOKENS[token]


async def handler(websocket):
    await websocket.send(f"Hello {websocket.username}!")
    async for message in websocket:
        await websocket.send(f"{websocket.username}: {message}")


async def main(host="localhost", port=8765):
    async with serve(handler, host, port, process_request=process_request) as server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
