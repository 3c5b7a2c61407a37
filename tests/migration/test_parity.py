"""websockets 17 parity: the ten items of the parity issue, on both libraries.

Each test runs the same server code on ``websockets`` and on fastws (the
``lib`` parameter; ``parity_api`` gives the names a program imports from
either) and drives both with the ``websockets`` client, or with raw bytes
where the case needs them, asserting the same observable result:

1. ``Headers`` is a full mapping like ``websockets.datastructures.Headers``
   (a table of operations run on both classes; request headers in a handler;
   ``process_response`` edits reaching the client);
2. ``create_connection=`` takes a wrapper function as well as a subclass;
3. any callable returning an awaitable is a coroutine-level handler (lambda,
   ``functools.partial``, ``async def __call__``, a plain-``def`` decorator);
4. exceptions in handshake hooks answer over HTTP: ``NegotiationError`` in
   ``select_subprotocol`` 400, anything else 500; TCP is never just dropped;
5. ``server.close()`` with a client message in flight: the handler still
   ``recv()``s it and ``wait_closed()`` waits for the handler;
6. ``server.close()`` during an opening handshake answers 503;
7. ``open_timeout`` covers the TLS handshake;
8. ``ws.state is State.OPEN`` with the ``State`` the library exports;
9. usage errors raise the exception types websockets raises;
10. ``logger=`` is used: ``server.logger`` and ``ws.logger`` log through it.

The last section runs the examples added with these items
(``response_headers.py``, ``rooms.py``, ``graceful_shutdown.py``).

``bug()`` marks the fastws case of a test as a known bug (strict xfail).
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import dataclasses
import functools
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import types
from collections.abc import Callable
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedOK, InvalidStatus

from ..conftest import ROOT, UPGRADE, unit
from .harness import (
    EXAMPLES,
    LIBS,
    echo,
    eventually,
    free_port,
    load,
    migrate,
    queued,
    running,
    server_api,
    serving,
    wait_listening,
)

pytestmark = pytest.mark.timeout(60)


def bug(reason: str) -> Any:
    """Marks the fastws case of a parametrized test as a known bug."""
    return pytest.param("fastws", marks=pytest.mark.xfail(strict=True, reason=f"bug: {reason}"))


def parity_api(lib: str) -> types.SimpleNamespace:
    """``harness.server_api`` plus the names these items need."""
    api = server_api(lib)
    if lib == "websockets":
        from websockets.asyncio.server import basic_auth
        from websockets.datastructures import Headers
        from websockets.exceptions import NegotiationError
        from websockets.protocol import State
    else:
        from fastws import Headers, NegotiationError, State, basic_auth
    api.lib = lib
    api.basic_auth = basic_auth
    api.Headers = Headers
    api.NegotiationError = NegotiationError
    api.State = State
    return api


@pytest.fixture(params=LIBS)
def api(request: pytest.FixtureRequest) -> types.SimpleNamespace:
    return parity_api(str(request.param))


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


# -- 1. Headers ------------------------------------------------------------------


def sample(H: Any) -> Any:
    """Headers with a repeated name (``X-Multi``, in two spellings)."""
    return H([("Host", "example.com"), ("X-Multi", "1"), ("Content-Type", "text/plain"), ("x-multi", "2")])


def single(H: Any) -> Any:
    """Headers where every name appears once."""
    return H([("Host", "example.com"), ("Content-Type", "text/plain"), ("X-One", "a")])


def _copy(H: Any) -> Any:
    h = sample(H)
    c = h.copy()
    c["X-New"] = "n"
    del c["host"]
    return type(c) is H, list(c.raw_items()), list(h.raw_items()), c == h, h.copy() == h


def _setitem(H: Any) -> Any:
    h = single(H)
    h["HOST"] = "other"
    return h.get_all("host"), list(h.raw_items()), len(h)


def _delitem(H: Any) -> Any:
    h = sample(H)
    del h["X-MULTI"]
    return list(h.raw_items()), len(h), "x-multi" in h


def _delitem_missing(H: Any) -> Any:
    del sample(H)["nope"]


def _pop(H: Any) -> Any:
    h = sample(H)
    return h.pop("HOST"), list(h.raw_items())


def _pop_missing(H: Any) -> Any:
    h = sample(H)
    return h.pop("nope", None), h.pop("nope", "d"), len(h)


def _pop_repeated(H: Any) -> Any:
    h = sample(H)
    try:
        h.pop("x-multi")
    except LookupError as exc:
        return type(exc).__name__, list(h.raw_items())
    return "no error"


def _setdefault(H: Any) -> Any:
    h = single(H)
    return h.setdefault("HOST", "z"), h.setdefault("X-New", "n"), list(h.raw_items())


def _clear(H: Any) -> Any:
    h = sample(H)
    h.clear()
    return len(h), list(h), list(h.raw_items()), bool(h), h.get_all("host")


def _popitem(H: Any) -> Any:
    h = single(H)
    first = h.popitem()
    return first, list(h.raw_items())


def _update(H: Any) -> Any:
    h = H([("A", "0")])
    h.update({"B": "1"}, [("C", "2"), ("c", "3")], D="4")
    h.update(sample(H))  # another Headers: every value, as received
    return list(h.raw_items()), len(h)


def _constructor(H: Any) -> Any:
    return (
        list(H().raw_items()),
        list(H({"A": "1"}).raw_items()),
        list(H([("A", "1"), ("a", "2")]).raw_items()),
        list(H(A="1").raw_items()),
        list(H(sample(H), Extra="x").raw_items()),
    )


def _equality(H: Any) -> Any:
    return (
        H([("A", "1")]) == H([("a", "1")]),
        H([("A", "1"), ("B", "2")]) == H([("B", "2"), ("A", "1")]),
        H([("A", "1"), ("A", "2")]) == H([("A", "2"), ("A", "1")]),
        H([("A", "1")]) == H([("A", "2")]),
        H([("A", "1")]) != H([("A", "1")]),
        H([("A", "1")]) == {"a": "1"},
    )


def _raw_items(H: Any) -> Any:
    items = sample(H).raw_items()
    return isinstance(items, collections.abc.Iterator), list(items)


def _mapping(H: Any) -> Any:
    h = sample(H)
    return isinstance(h, collections.abc.MutableMapping), bool(h), bool(H())


HEADER_OPS = [
    pytest.param(lambda H: len(sample(H)), id="len is distinct names"),
    pytest.param(lambda H: list(sample(H)), id="iter"),
    pytest.param(lambda H: list(sample(H).keys()), id="keys"),
    pytest.param(lambda H: list(single(H).values()), id="values"),
    pytest.param(lambda H: list(sample(H).values()), id="values with a repeated name"),
    pytest.param(lambda H: list(single(H).items()), id="items"),
    pytest.param(lambda H: list(sample(H).items()), id="items with a repeated name"),
    pytest.param(lambda H: dict(single(H)), id="dict"),
    pytest.param(lambda H: dict(sample(H)), id="dict with a repeated name"),
    pytest.param(lambda H: (sample(H)["HOST"], sample(H)["content-type"]), id="getitem"),
    pytest.param(lambda H: sample(H)["nope"], id="getitem missing"),
    pytest.param(lambda H: sample(H)["X-MULTI"], id="getitem repeated"),
    pytest.param(lambda H: (sample(H).get("nope"), sample(H).get("nope", "d"), sample(H).get("Host")), id="get"),
    pytest.param(lambda H: sample(H).get("x-multi"), id="get repeated"),
    pytest.param(lambda H: (sample(H).get_all("X-MULTI"), sample(H).get_all("nope")), id="get_all"),
    pytest.param(_raw_items, id="raw_items"),
    pytest.param(lambda H: ("HOST" in sample(H), "nope" in sample(H), 42 in sample(H)), id="contains"),
    pytest.param(_copy, id="copy"),
    pytest.param(_setitem, id="setitem adds a value"),
    pytest.param(_delitem, id="delitem"),
    pytest.param(_delitem_missing, id="delitem missing"),
    pytest.param(_pop, id="pop"),
    pytest.param(_pop_missing, id="pop missing"),
    pytest.param(lambda H: sample(H).pop("nope"), id="pop missing no default"),
    pytest.param(_pop_repeated, id="pop repeated"),
    pytest.param(_setdefault, id="setdefault"),
    pytest.param(lambda H: sample(H).setdefault("x-multi", "z"), id="setdefault repeated"),
    pytest.param(_clear, id="clear"),
    pytest.param(_popitem, id="popitem"),
    pytest.param(lambda H: H([("X-M", "1"), ("X-M", "2")]).popitem(), id="popitem repeated"),
    pytest.param(lambda H: H().popitem(), id="popitem empty"),
    pytest.param(_update, id="update"),
    pytest.param(_constructor, id="constructor"),
    pytest.param(_equality, id="equality"),
    pytest.param(lambda H: hash(H()), id="unhashable"),
    pytest.param(_mapping, id="mutable mapping"),
    pytest.param(lambda H: str(sample(H)), id="str"),
]


def outcome(op: Callable[[Any], Any], H: Any) -> tuple[Any, ...]:
    """What ``op(H)`` returns, or the exception it raises, comparably."""
    try:
        value = op(H)
    except Exception as exc:
        return (
            "raises",
            type(exc).__name__,
            [c.__name__ for c in type(exc).__mro__],
            str(exc),
        )
    return ("returns", value)


@pytest.mark.parametrize("op", HEADER_OPS)
def test_headers_operation(op: Callable[[Any], Any]) -> None:
    """The same operation on ``websockets.datastructures.Headers`` and on
    ``fastws.Headers`` returns the same value or raises the same exception
    (name, class tree and message)."""
    from websockets.datastructures import Headers as Theirs

    from fastws import Headers as Ours

    assert outcome(op, Ours) == outcome(op, Theirs)


@pytest.mark.parametrize("lib", LIBS)
def test_multiple_values_error(lib: str) -> None:
    """``MultipleValuesError`` is importable, a ``LookupError`` but not a
    ``KeyError`` (so ``headers.get()`` raises it), and what ``[]`` raises."""
    if lib == "websockets":
        from websockets.datastructures import Headers, MultipleValuesError
    else:
        from fastws import Headers, MultipleValuesError  # type: ignore[attr-defined]
    assert issubclass(MultipleValuesError, LookupError)
    assert not issubclass(MultipleValuesError, KeyError)
    headers = sample(Headers)
    for read in (lambda: headers["x-multi"], lambda: headers.get("x-multi")):
        with pytest.raises(MultipleValuesError):
            read()


async def test_request_headers_in_handler(api: types.SimpleNamespace) -> None:
    """The handler's ``ws.request.headers``, with a header the client sent
    twice: names as received in ``raw_items``, lower-cased in ``keys``."""
    seen: list[dict[str, Any]] = []

    async def handler(ws: Any) -> None:
        h = ws.request.headers
        try:
            repeated: Any = h.get("x-rep")
        except LookupError as exc:
            repeated = (type(exc).__name__, isinstance(exc, KeyError))
        c = h.copy()
        c["X-New"] = "n"
        seen.append(
            {
                "is Headers": isinstance(h, api.Headers),
                "get_all": h.get_all("X-REP"),
                "raw_items": [(n, v) for n, v in h.raw_items() if n.lower().startswith("x-")],
                "keys": sorted(k for k in h.keys() if k.startswith("x-")),  # noqa: SIM118
                "getitem": h["x-one"],
                "get repeated": repeated,
                "len": len(h) == len({n.lower() for n, _ in h.raw_items()}),
                "copy": ("x-new" in c, "x-new" in h, c.get_all("x-rep")),
            }
        )
        await ws.send("ok")

    async with serving(api, handler) as (_, url):
        headers = [("X-Rep", "1"), ("x-rep", "2"), ("X-One", "a")]
        async with connect(url, additional_headers=headers) as ws:
            assert await ws.recv() == "ok"
    assert seen == [
        {
            "is Headers": True,
            "get_all": ["1", "2"],
            "raw_items": [("X-Rep", "1"), ("x-rep", "2"), ("X-One", "a")],
            "keys": ["x-one", "x-rep"],
            "getitem": "a",
            "get repeated": ("MultipleValuesError", False),
            "len": True,
            "copy": (True, False, ["1", "2"]),
        }
    ]


def _set(response: Any) -> None:
    response.headers["X-A"] = "1"


def _copy_assign(response: Any) -> None:
    h = response.headers.copy()
    h["X-A"] = "1"
    response.headers = h


def _copy_replace(response: Any) -> Any:
    h = response.headers.copy()
    h["X-A"] = "1"
    return dataclasses.replace(response, headers=h)


def _update_header(response: Any) -> None:
    response.headers.update({"X-A": "1"})


def _setdefault_header(response: Any) -> None:
    response.headers.setdefault("X-A", "1")


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(_set, id="set"),
        pytest.param(_copy_assign, id="copy and assign"),
        pytest.param(_copy_replace, id="copy and return a new response"),
        pytest.param(_update_header, id="update"),
        pytest.param(_setdefault_header, id="setdefault"),
    ],
)
async def test_process_response_edits_headers(api: types.SimpleNamespace, edit: Callable[[Any], Any]) -> None:
    """What ``process_response`` does to the 101's headers is what the
    client gets, and the connection then works."""

    def process_response(connection: Any, request: Any, response: Any) -> Any:
        return edit(response)

    async with serving(api, echo, process_response=process_response) as (_, url):
        async with connect(url) as ws:
            assert ws.response.headers.get_all("X-A") == ["1"]
            assert ws.response.headers.get_all("Server") == [server_header(api)]
            await ws.send("still a websocket")
            assert await ws.recv() == "still a websocket"


def server_header(api: types.SimpleNamespace) -> str:
    if api.lib == "websockets":
        from websockets.asyncio.server import SERVER

        return SERVER
    return "fastws"


@pytest.mark.parametrize("lib", LIBS)
async def test_process_response_deletes_server_header(lib: str) -> None:
    """``del response.headers["Server"]`` in ``process_response`` removes
    the header (websockets adds it before calling the hook)."""
    api = parity_api(lib)

    def process_response(connection: Any, request: Any, response: Any) -> None:
        del response.headers["Server"]

    async with serving(api, echo, process_response=process_response) as (_, url):
        async with connect(url) as ws:
            assert "Server" not in ws.response.headers
            await ws.send("still a websocket")
            assert await ws.recv() == "still a websocket"


# -- 2. create_connection= a wrapper ---------------------------------------------


@pytest.mark.parametrize("lib", LIBS)
async def test_create_connection_wrapper(lib: str) -> None:
    """websockets documents ``create_connection`` as "a wrapper or a
    subclass"; the subclass is in test_server_api.py."""
    api = parity_api(lib)
    made: list[Any] = []

    def make(*args: Any, **kwargs: Any) -> Any:
        c = api.ServerConnection(*args, **kwargs)
        c.tag = "x"
        made.append(c)
        return c

    async def handler(ws: Any) -> None:
        await ws.send(f"tag {ws.tag} {ws in made} {isinstance(ws, api.ServerConnection)}")

    async with serving(api, handler, create_connection=make) as (_, url):
        async with connect(url) as ws:
            assert await ws.recv() == "tag x True True"


# -- 3. any callable returning an awaitable is a handler ----------------------------


async def room_handler(ws: Any, room: str) -> None:
    await ws.send(f"welcome to {room}")
    async for message in ws:
        await ws.send(f"{room}: {message}")


class Room:
    def __init__(self, room: str) -> None:
        self.room = room

    async def __call__(self, ws: Any) -> None:
        await room_handler(ws, self.room)

    async def handle(self, ws: Any) -> None:
        await room_handler(ws, self.room)


def in_room(room: str) -> Callable[[Callable[..., Any]], Callable[[Any], Any]]:
    """A decorator whose wrapper is a plain ``def`` returning the coroutine."""

    def decorate(func: Callable[..., Any]) -> Callable[[Any], Any]:
        def wrapper(ws: Any) -> Any:
            return func(ws, room)

        return wrapper

    return decorate


def in_room_wraps(room: str) -> Callable[[Callable[..., Any]], Callable[[Any], Any]]:
    """The same with ``functools.wraps`` (``__wrapped__`` is the coroutine function)."""

    def decorate(func: Callable[..., Any]) -> Callable[[Any], Any]:
        @functools.wraps(func)
        def wrapper(ws: Any) -> Any:
            return func(ws, room)

        return wrapper

    return decorate


def passing_through(func: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator whose wrapper takes ``*args, **kwargs``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper


HANDLERS: dict[str, Callable[[], Any]] = {
    "lambda": lambda: lambda ws: room_handler(ws, "lobby"),
    "partial": lambda: functools.partial(room_handler, room="lobby"),
    "async __call__": lambda: Room("lobby"),
    "bound method": lambda: Room("lobby").handle,
    "decorator": lambda: in_room("lobby")(room_handler),
    "decorator with wraps": lambda: in_room_wraps("lobby")(room_handler),
    "decorator (*args, **kwargs)": lambda: passing_through(functools.partial(room_handler, room="lobby")),
}


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("kind", list(HANDLERS))
async def test_callable_handler(kind: str, lib: str) -> None:
    api = parity_api(lib)
    async with serving(api, HANDLERS[kind]()) as (_, url):
        async with connect(url) as ws:
            assert await ws.recv() == "welcome to lobby"
            await ws.send("hi")
            assert await ws.recv() == "lobby: hi"
        assert ws.close_code == 1000


# -- 4. exceptions in handshake hooks answer over HTTP ---------------------------


def raw_status_line(port: int, request: bytes) -> bytes:
    """Send ``request`` on a raw socket; the status line that comes back
    (``b""`` if the server closed TCP without answering)."""
    with socket.create_connection(("127.0.0.1", port), timeout=unit(5)) as sock:
        sock.sendall(request)
        head = b""
        while b"\r\n" not in head:
            try:
                chunk = sock.recv(4096)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            head += chunk
        return head.split(b"\r\n", 1)[0]


OFFERING_CHAT = UPGRADE.replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Protocol: chat\r\n\r\n")


def _raising(where: str, exc: Callable[[types.SimpleNamespace], BaseException], asynchronous: bool = False) -> Any:
    def make(api: types.SimpleNamespace) -> dict[str, Any]:
        if asynchronous:

            async def hook(*args: Any) -> Any:
                await asyncio.sleep(0)
                raise exc(api)

        else:

            def hook(*args: Any) -> Any:
                raise exc(api)

        return {where: hook}

    return make


HOOK_ERRORS = [
    pytest.param(_raising("select_subprotocol", lambda api: api.NegotiationError()), 400, id="select_subprotocol NegotiationError()"),
    pytest.param(_raising("select_subprotocol", lambda api: api.NegotiationError("no")), 400, id="select_subprotocol NegotiationError('no')"),
    pytest.param(_raising("select_subprotocol", lambda api: RuntimeError("oops")), 500, id="select_subprotocol RuntimeError"),
    pytest.param(_raising("process_request", lambda api: RuntimeError("oops")), 500, id="process_request RuntimeError"),
    pytest.param(_raising("process_request", lambda api: RuntimeError("oops"), True), 500, id="async process_request RuntimeError"),
    pytest.param(_raising("process_request", lambda api: api.NegotiationError("no")), 500, id="process_request NegotiationError"),
    pytest.param(_raising("process_response", lambda api: RuntimeError("oops")), 500, id="process_response RuntimeError"),
    pytest.param(_raising("process_response", lambda api: RuntimeError("oops"), True), 500, id="async process_response RuntimeError"),
]  # fmt: skip


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("hook, status", HOOK_ERRORS)
async def test_handshake_hook_error_answers_http(
    hook: Callable[[types.SimpleNamespace], dict[str, Any]], status: int, lib: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception in user code during the handshake gets an HTTP answer
    (raw socket: a status line comes back, TCP is not just dropped), and
    the websockets client sees the same status."""
    api = parity_api(lib)
    caplog.set_level(logging.CRITICAL)  # both log the traceback; not the point here
    async with serving(api, echo, **hook(api)) as (_, url):
        line = await asyncio.to_thread(raw_status_line, port_of(url), OFFERING_CHAT)
        assert line.startswith(f"HTTP/1.1 {status} ".encode()), line
        with pytest.raises(InvalidStatus) as info:
            async with connect(url, subprotocols=["chat"]):  # type: ignore[list-item]
                pass
        assert info.value.response.status_code == status


# -- 5. server.close() with a message in flight ------------------------------------


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("when", ["received", "in flight"])
async def test_server_close_delivers_the_last_message(when: str, lib: str) -> None:
    """The client sends "last", then the server closes: either after the
    server has read it ("received") or right after the client wrote it
    ("in flight"). The handler, held until after the close, still gets it
    from ``recv()``, and ``wait_closed()`` waits for the handler."""
    api = parity_api(lib)
    connected: list[Any] = []
    got: list[Any] = []
    finished: list[bool] = []
    release = asyncio.Event()

    async def handler(ws: Any) -> None:
        connected.append(ws)
        await release.wait()
        try:
            got.append(await ws.recv())
        except api.ConnectionClosed as exc:
            got.append(type(exc).__name__)
        await asyncio.sleep(0.05)  # cleanup that wait_closed() must wait for
        finished.append(True)

    async with asyncio.timeout(unit(20)):
        server = await api.serve(handler, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        async with connect(url) as ws:
            await eventually(lambda: connected)
            await ws.send("last")
            if when == "received":
                await eventually(lambda: queued(connected[0]) >= 1, what="the server to read the message")
            server.close()
            with pytest.raises(ConnectionClosedOK):
                await ws.recv()
            assert ws.close_code == 1001
        closed = asyncio.ensure_future(server.wait_closed())
        await asyncio.sleep(0.1)
        assert not closed.done(), "wait_closed() returned while a handler was running"
        release.set()
        await closed
    assert got == ["last"]
    assert finished == [True]


# -- 6. server.close() during the opening handshake ---------------------------------


@pytest.mark.parametrize("lib", LIBS)
async def test_server_close_during_handshake_answers_503(lib: str) -> None:
    """A connection whose async ``process_request`` is still running when
    the server closes is answered 503 (websockets: "Server is shutting
    down"). The hook is released after the close: websockets answers when
    it returns (a hook that never returns would be cut by open_timeout)."""
    api = parity_api(lib)
    entered, release = asyncio.Event(), asyncio.Event()

    async def process_request(connection: Any, request: Any) -> None:
        entered.set()
        await release.wait()

    async def opening(url: str) -> Any:
        try:
            async with connect(url):
                return "opened"
        except InvalidStatus as exc:
            return exc.response.status_code
        except Exception as exc:
            return type(exc).__name__

    async with asyncio.timeout(unit(20)):
        server = await api.serve(echo, "127.0.0.1", 0, process_request=process_request)
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        client = asyncio.create_task(opening(url))
        await entered.wait()
        server.close()
        await asyncio.sleep(0.05)
        release.set()
        assert await client == 503
        await server.wait_closed()


# -- 7. open_timeout covers the TLS handshake ---------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for localhost: (cert.pem, key.pem)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    openssl = shutil.which("openssl")
    if openssl is not None:
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
             "-days", "1", "-subj", "/CN=localhost"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        return cert, key
    try:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        pytest.skip("neither the openssl command nor the cryptography package is available")
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(private, hashes.SHA256())
    )
    with open(cert, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(key, "wb") as f:
        f.write(
            private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return cert, key


def silent_tcp_client(port: int, patience: float) -> tuple[str, float]:
    """Connect, send nothing; how the connection ended and after how long."""
    with socket.create_connection(("127.0.0.1", port), timeout=patience) as sock:
        start = time.monotonic()
        try:
            data = sock.recv(100)
        except ConnectionResetError:
            return "reset", time.monotonic() - start
        except TimeoutError:
            return "still open", time.monotonic() - start
        return ("closed" if data == b"" else f"got {data!r}"), time.monotonic() - start


@pytest.mark.parametrize("lib", LIBS)
async def test_open_timeout_covers_tls_handshake(lib: str, certificate: tuple[str, str]) -> None:
    """``serve(..., ssl=ctx, open_timeout=0.5)``: a TCP client that never
    starts TLS is disconnected within seconds (asyncio's own TLS handshake
    timeout is 60 s); a TLS client still gets in."""
    api = parity_api(lib)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(*certificate)
    client_ctx = ssl.create_default_context()
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    async with serving(api, echo, ssl=server_ctx, open_timeout=0.5) as (_, url):
        port = port_of(url)
        async with connect(f"wss://127.0.0.1:{port}", ssl=client_ctx) as ws:
            await ws.send("over TLS")
            assert await ws.recv() == "over TLS"
        how, took = await asyncio.to_thread(silent_tcp_client, port, unit(8))
        assert how in ("closed", "reset"), (how, took)
        assert took < unit(5), took


# -- 8. ws.state is the library's State ----------------------------------------------


async def test_state_is_the_exported_enum(api: types.SimpleNamespace) -> None:
    seen: list[tuple[str, bool]] = []

    def process_request(connection: Any, request: Any) -> None:
        seen.append(("process_request CONNECTING", connection.state is api.State.CONNECTING))

    async def handler(ws: Any) -> None:
        seen.append(("handler OPEN", ws.state is api.State.OPEN))
        await ws.wait_closed()
        seen.append(("after close CLOSED", ws.state is api.State.CLOSED))

    async with serving(api, handler, process_request=process_request) as (_, url):
        async with connect(url):
            await eventually(lambda: len(seen) == 2)
        await eventually(lambda: len(seen) == 3)
    assert seen == [("process_request CONNECTING", True), ("handler OPEN", True), ("after close CLOSED", True)]


# -- 9. usage errors ---------------------------------------------------------------------


# (make(api, a listening socket), raises at "call" or "await", the type
# websockets 17.4 raises, words its message has)
USAGE_ERRORS = {
    "basic_auth with both": (
        lambda api, sock: api.basic_auth(credentials=("u", "p"), check_credentials=lambda u, p: True),
        "call", ValueError, ("credentials", "check_credentials"),
    ),
    "basic_auth with neither": (
        lambda api, sock: api.basic_auth(), "call", ValueError, ("credentials", "check_credentials"),
    ),
    "sock with host and port": (
        lambda api, sock: api.serve(echo, "127.0.0.1", 0, sock=sock), "await", ValueError, ("sock",),
    ),
    "subprotocols a str": (
        lambda api, sock: api.serve(echo, "127.0.0.1", 0, subprotocols="chat"), "call", TypeError, ("subprotocols",),
    ),
    "unknown compression": (
        lambda api, sock: api.serve(echo, "127.0.0.1", 0, compression="br"), "call", ValueError, ("compression",),
    ),
    "unix_serve without path or sock": (
        lambda api, sock: api.unix_serve(echo), "await", ValueError, ("path", "sock"),
    ),
}  # fmt: skip


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("case", list(USAGE_ERRORS))
async def test_usage_error_type(case: str, lib: str) -> None:
    """The exception type websockets raises, at the point it raises it
    (``serve(...)`` itself, or ``await serve(...)``)."""
    api = parity_api(lib)
    make, when, expected, words = USAGE_ERRORS[case]
    with socket.create_server(("127.0.0.1", 0)) as sock, pytest.raises(Exception) as info:
        made = make(api, sock)
        if when == "await":
            server = await made
            server.close()
            await server.wait_closed()
    assert type(info.value) is expected, repr(info.value)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


# -- 10. logger= ----------------------------------------------------------------------------


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def my_logger(request: pytest.FixtureRequest) -> Any:
    """A logger of the application's, with a handler that keeps its records."""
    logger = logging.getLogger(f"my.app.{request.node.name}")
    records = Records()
    logger.addHandler(records)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, records.records
    logger.removeHandler(records)


def underlying(logger: Any) -> Any:
    while isinstance(logger, logging.LoggerAdapter):
        logger = logger.logger
    return logger


@pytest.mark.parametrize("lib", LIBS)
async def test_logger_option(lib: str, my_logger: Any) -> None:
    """``server.logger`` is the logger given (or an adapter over it), and
    ``ws.logger`` logs through it."""
    api = parity_api(lib)
    logger, records = my_logger
    loggers: list[Any] = []

    async def handler(ws: Any) -> None:
        loggers.append(ws.logger)
        ws.logger.info("hello from %s", "the handler")
        await ws.send("logged")

    async with serving(api, handler, logger=logger) as (server, url):
        assert underlying(server.logger) is logger
        async with connect(url) as ws:
            assert await ws.recv() == "logged"
    assert underlying(loggers[0]) is logger
    assert "hello from the handler" in [r.getMessage() for r in records]


@pytest.mark.parametrize("lib", LIBS)
async def test_logger_option_gets_handler_errors(lib: str, my_logger: Any) -> None:
    """A handler's exception is logged, with its traceback, to the logger
    given (websockets: through ``ws.logger``)."""
    api = parity_api(lib)
    logger, records = my_logger

    async def handler(ws: Any) -> None:
        raise RuntimeError("boom in handler")

    async with serving(api, handler, logger=logger) as (_, url):
        async with connect(url) as ws:
            with contextlib.suppress(Exception):
                await ws.recv()
        await eventually(lambda: any(r.exc_info for r in records), timeout=2, what="the traceback on my logger")
    failed = [r for r in records if r.exc_info and isinstance(r.exc_info[1], RuntimeError)]
    assert len(failed) == 1 and failed[0].levelno == logging.ERROR


# -- the examples added with these items --------------------------------------------------


@pytest.mark.parametrize("lib", LIBS)
async def test_example_response_headers(lib: str) -> None:
    module = load("response_headers", lib)
    async with asyncio.timeout(unit(20)):
        async with running(module) as url:
            async with connect(url, additional_headers={"X-Request-Id": "abc-123"}) as ws:
                headers = ws.response.headers
                assert abs(float(headers["X-Server-Time"]) - time.time()) < unit(5)
                assert headers["X-Request-Id"] == "abc-123"
                # The handler sees the response as sent.
                assert await ws.recv() == f"server time {headers['X-Server-Time']}"
                await ws.send("echo")
                assert await ws.recv() == "echo"
            async with connect(url) as ws:
                assert "X-Server-Time" in ws.response.headers
                assert "X-Request-Id" not in ws.response.headers


@pytest.mark.parametrize("lib", LIBS)
async def test_example_rooms(lib: str) -> None:
    module = load("rooms", lib)
    async with asyncio.timeout(unit(20)), contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(running(module))
        lobby1 = await stack.enter_async_context(connect(url + "/"))
        lobby2 = await stack.enter_async_context(connect(url + "/lobby"))
        games = await stack.enter_async_context(connect(url + "/games"))
        await eventually(
            lambda: {room: len(members) for room, members in module.ROOMS.items()} == {"lobby": 2, "games": 1},
            what="three clients in their rooms",
        )
        await lobby1.send("hi")
        assert [await lobby1.recv(), await lobby2.recv()] == ["lobby: hi", "lobby: hi"]
        await games.send("gg")
        # Had the lobby's message leaked into games, it would come first.
        assert await games.recv() == "games: gg"
        await lobby2.send("bye")
        assert [await lobby1.recv(), await lobby2.recv()] == ["lobby: bye", "lobby: bye"]
        for ws in (lobby1, lobby2, games):
            await ws.close()
        await eventually(lambda: not module.ROOMS, what="every room emptied")


# Runs an example's main(host, port) in a subprocess, so that SIGTERM is real.
_RUN_MAIN = (
    "import asyncio, runpy, sys\n"
    "module = runpy.run_path(sys.argv[1], run_name='example')\n"
    "asyncio.run(module['main']('127.0.0.1', int(sys.argv[2])))\n"
)


def start_main(name: str, lib: str, port: int, folder: str) -> subprocess.Popen[str]:
    """``examples/<name>.py`` (migrated for fastws) serving on ``port`` in a
    subprocess, stdout and stderr piped."""
    script = os.path.join(EXAMPLES, f"{name}.py")
    if lib == "fastws":
        with open(script, encoding="utf-8") as f:
            migrated = migrate(f.read())
        script = os.path.join(folder, f"{name}.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(migrated)
    return subprocess.Popen(
        [sys.executable, "-c", _RUN_MAIN, script, str(port)],
        env=dict(os.environ, PYTHONPATH=ROOT),
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM handler: Unix only")
@pytest.mark.parametrize("lib", LIBS)
async def test_example_graceful_shutdown(lib: str, tmp_path: Any) -> None:
    """SIGTERM while the handler is still working through the messages a
    client sent: every message is processed, the client gets 1001, the
    program exits 0."""
    port = free_port()
    proc = start_main("graceful_shutdown", lib, port, str(tmp_path))
    try:
        async with asyncio.timeout(unit(20)):
            await wait_listening(port, timeout=10)
            async with connect(f"ws://127.0.0.1:{port}") as ws:
                for i in range(10):
                    await ws.send(f"m{i}")
                proc.send_signal(signal.SIGTERM)
                with pytest.raises(ConnectionClosedOK):
                    await ws.recv()
                assert ws.close_code == 1001
        out, err = await asyncio.to_thread(proc.communicate, timeout=unit(15))
    finally:
        if proc.poll() is None:
            proc.kill()
            print("program output:", *proc.communicate(), sep="\n")
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert [line for line in lines if line.startswith("processed ")] == [f"processed m{i}" for i in range(10)], (out, err)
    assert lines[-2:] == ["connection closed: 1001", "server stopped"], (out, err)
