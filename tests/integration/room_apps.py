"""Room handlers driven by their clients, for the rooms tests
(``tests.integration.room_apps:Rooms`` and ``...:rooms_coroutine``).

A client sends text commands; the handler answers so that a test knows when
each took effect on this node:

- ``join <room> [member]``: subscribe (``member``: its presence name);
  answers ``joined <room>``.
- ``resume <room> <offset>``: subscribe with ``since=offset``; once the
  replay is done answers ``resumed <n>`` (n messages replayed) or
  ``gap <why>`` (:class:`fastws.exceptions.HistoryGap`). A malformed offset
  answers ``error <what>``.
- ``leave <room>``: unsubscribe; answers ``left <room>`` (``left <room> no``
  if the connection was not a member).
- ``pub <room> <text>``: publish ``text`` to the room as a text message;
  no answer (publishers send thousands).
- ``rooms``: answers ``rooms <room> <room> ...`` (sorted).
- ``ping``: answers ``pong`` (everything sent before is handled).

Anything else answers ``error ...``. Room messages reach the client as they
are published (``"<offset> <text>"`` with ``room_history``).

With a Redis broker ``joined`` means the node's hub has the member; the
node's SUBSCRIBE to Redis may still be on its way, so tests wait for
``PUBSUB NUMSUB`` before they publish.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastws import Handler
from fastws.exceptions import HistoryGap
from fastws.types import State

__all__ = ["Rooms", "rooms_coroutine"]


def _resume_answer(future: asyncio.Future[int]) -> str | None:
    """What ``resume`` answers once ``subscribe(since=...)`` is done
    (None: cancelled, the client left meanwhile)."""
    if future.cancelled():
        return None
    exc = future.exception()
    if exc is None:
        return f"resumed {future.result()}"
    if isinstance(exc, HistoryGap):
        return f"gap {exc.why}"
    return f"error {type(exc).__name__}: {exc}"


def _split(text: str) -> tuple[str, str, str]:
    command, _, rest = text.partition(" ")
    room, _, arg = rest.partition(" ")
    return command, room, arg


class Rooms(Handler):
    """Callback level: the commands above."""

    def on_message(self, ws: Any, data: bytes, is_text: bool) -> None:
        command, room, arg = _split(data.decode("utf-8", "replace"))
        if command == "pub":
            ws.publish(room, arg)
        elif command == "join":
            ws.subscribe(room, member=arg or None)
            ws.send(f"joined {room}")
        elif command == "resume":
            try:
                future = ws.subscribe(room, since=arg)
            except ValueError as exc:
                ws.send(f"error {exc}")
                return

            def answer(future: asyncio.Future[int]) -> None:
                reply = _resume_answer(future)
                if reply is not None and ws.state is State.OPEN:
                    ws.send(reply)

            future.add_done_callback(answer)
        elif command == "leave":
            ws.send(f"left {room}" if ws.unsubscribe(room) else f"left {room} no")
        elif command == "rooms":
            ws.send(" ".join(["rooms", *sorted(ws.rooms)]))
        elif command == "ping":
            ws.send("pong")
        else:
            ws.send(f"error unknown command {command!r}")


async def rooms_coroutine(ws: Any) -> None:
    """Coroutine level: the same commands."""
    async for message in ws:
        text = message if isinstance(message, str) else message.decode("utf-8", "replace")
        command, room, arg = _split(text)
        if command == "pub":
            ws.publish(room, arg)
        elif command == "join":
            ws.subscribe(room, member=arg or None)
            await ws.send(f"joined {room}")
        elif command == "resume":
            try:
                future = ws.subscribe(room, since=arg)
            except ValueError as exc:
                await ws.send(f"error {exc}")
                continue
            # Replayed messages are written by the hub while this waits.
            await asyncio.wait([future])
            reply = _resume_answer(future)
            if reply is not None:
                await ws.send(reply)
        elif command == "leave":
            await ws.send(f"left {room}" if ws.unsubscribe(room) else f"left {room} no")
        elif command == "rooms":
            await ws.send(" ".join(["rooms", *sorted(ws.rooms)]))
        elif command == "ping":
            await ws.send("pong")
        else:
            await ws.send(f"error unknown command {command!r}")
