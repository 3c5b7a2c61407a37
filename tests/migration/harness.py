"""Helpers of the migration suite: load a program for either library, run it.

The migration this suite proves is the one ``docs/migration.md`` describes:
in a program written for ``websockets``, the lines

    from websockets.asyncio.server import ...
    from websockets.exceptions import ...

become ``from fastws import ...`` and nothing else changes. :func:`migrate`
does exactly that to the source text, and :func:`load` executes the result
in a fresh module, so each example runs twice from the same file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import time
import types
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..conftest import ROOT, unit

LIBS = ["websockets", "fastws"]
EXAMPLES = os.path.join(ROOT, "examples")

_IMPORT = re.compile(r"^from websockets\.(?:asyncio\.server|exceptions) import ", re.M)
_ANY_WEBSOCKETS_IMPORT = re.compile(r"^\s*(?:from|import)\s+websockets\b", re.M)


def migrate(source: str) -> str:
    """The migration: point the ``websockets`` server imports at ``fastws``."""
    migrated, count = _IMPORT.subn("from fastws import ", source)
    assert count >= 1, "the program imports nothing from websockets.asyncio.server"
    leftover = _ANY_WEBSOCKETS_IMPORT.search(migrated)
    assert leftover is None, f"import left pointing at websockets: {leftover.group(0)!r}"
    return migrated


def load(name: str, lib: str) -> types.ModuleType:
    """``examples/<name>.py`` as a fresh module, importing from ``lib``."""
    path = os.path.join(EXAMPLES, f"{name}.py")
    with open(path, encoding="utf-8") as f:
        source = f.read()
    if lib == "fastws":
        source = migrate(source)
    else:
        assert lib == "websockets", lib
    module = types.ModuleType(f"example_{name}_{lib}")
    module.__file__ = path
    exec(compile(source, path, "exec"), module.__dict__)
    return module


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_listening(port: int, task: "asyncio.Task[Any] | None" = None, timeout: float = 5.0) -> None:
    """Wait until something accepts TCP connections on ``port``."""
    deadline = time.monotonic() + unit(timeout)
    while True:
        if task is not None and task.done():
            task.result()  # the program died: show why
            raise AssertionError("the program returned before listening")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listening on port {port} after {timeout}s") from None
            await asyncio.sleep(0.01)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


@contextlib.asynccontextmanager
async def running(module: types.ModuleType, **kwargs: Any) -> AsyncIterator[str]:
    """Run ``module.main(host, port)`` on 127.0.0.1 and a free port.

    Yields the server's ``ws://`` URL. On exit the task is cancelled, which
    is how ``serve_forever()`` is stopped, and it must end cancelled.
    """
    port = free_port()
    task = asyncio.create_task(module.main("127.0.0.1", port, **kwargs))
    try:
        await wait_listening(port, task)
        yield f"ws://127.0.0.1:{port}"
    finally:
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=unit(15))
        assert done, "the program did not stop within 15 s of being cancelled"
        assert task.cancelled() or isinstance(task.exception(), asyncio.CancelledError), task


async def eventually(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "") -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` (scaled)."""
    deadline = time.monotonic() + unit(timeout)
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.005)


def server_api(lib: str) -> types.SimpleNamespace:
    """The names a program imports, from ``websockets`` or from ``fastws``."""
    if lib == "websockets":
        from websockets import exceptions as exc
        from websockets.asyncio import server as srv

        return types.SimpleNamespace(
            serve=srv.serve,
            unix_serve=srv.unix_serve,
            broadcast=srv.broadcast,
            ServerConnection=srv.ServerConnection,
            Server=srv.Server,
            ConnectionClosed=exc.ConnectionClosed,
            ConnectionClosedOK=exc.ConnectionClosedOK,
            ConnectionClosedError=exc.ConnectionClosedError,
            logger_name="websockets.server",
        )
    import fastws

    return types.SimpleNamespace(
        serve=fastws.serve,
        unix_serve=fastws.unix_serve,
        broadcast=fastws.broadcast,
        ServerConnection=fastws.ServerConnection,
        Server=fastws.Server,
        ConnectionClosed=fastws.ConnectionClosed,
        ConnectionClosedOK=fastws.ConnectionClosedOK,
        ConnectionClosedError=fastws.ConnectionClosedError,
        logger_name="fastws",
    )


def queued(ws: Any) -> int:
    """Messages (fastws) or frames (websockets) waiting for ``recv()``."""
    if hasattr(ws, "recv_messages"):
        return len(ws.recv_messages.frames.queue)
    return len(ws._messages)


@contextlib.asynccontextmanager
async def serving(api: types.SimpleNamespace, handler: Any, **options: Any) -> AsyncIterator[tuple[Any, str]]:
    """``async with serve(handler, "127.0.0.1", 0, ...)`` -> (server, url)."""
    async with asyncio.timeout(unit(30)):
        async with api.serve(handler, "127.0.0.1", 0, **options) as server:
            port = next(s.getsockname()[1] for s in server.sockets)
            yield server, f"ws://127.0.0.1:{port}"


async def echo(ws: Any) -> None:
    """The coroutine-level echo handler, as the websockets docs write it."""
    async for message in ws:
        await ws.send(message)
