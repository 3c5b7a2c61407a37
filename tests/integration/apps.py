"""Handlers that the CLI tests serve as ``tests.integration.apps:...``."""

from __future__ import annotations

from fastws import Handler


class Shout(Handler):
    """Callback level: answer every message upper-cased, same type."""

    def on_connect(self, ws):  # type: ignore[no-untyped-def]
        ws.send("welcome " + ws.request.path)

    def on_message(self, ws, data, is_text):  # type: ignore[no-untyped-def]
        ws.send(data.upper(), is_text)


async def reverse(ws):  # type: ignore[no-untyped-def]
    """Coroutine level: answer every message reversed."""
    async for message in ws:
        await ws.send(message[::-1])


#: Not a handler: serving it must fail with a usage error.
NOT_A_HANDLER = 42
