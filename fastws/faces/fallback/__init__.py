"""The HTTP fallback: WebSocket sessions for clients that cannot upgrade.

The server hands every request under ``/_fastws/`` to :class:`Fallback`
(``Connection.hand_over``: the TCP connection leaves the WebSocket protocol
after the request head). Each request is one :class:`_Exchange`: it reads
the body (``Content-Length``, at most ``fallback_max_body``), then opens a
session, streams it (SSE), polls it, uploads to it, or closes it, and
answers with ``Connection: close``. Sessions (``session.py``) are the
transports of ordinary connections, so the user's handler serves them as it
serves WebSockets. The wire format is in docs/fallback.md; ``fastws.js``
(served at ``/fastws.js``) is the browser client.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import os
import secrets
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from ...connection import Connection
from ...protocol.http import Request, Response, make_response
from ...types import CloseCode
from .session import Message, Session

__all__ = ["Fallback", "PREFIX", "Session", "script"]

logger = logging.getLogger("fastws.fallback")

#: Where the fallback's endpoints live.
PREFIX = "/_fastws/"
#: A comment that pushes a buffering proxy's first flush, then "ready".
_SSE_PREAMBLE = b":" + b" " * 2048 + b"\n\nevent: ready\ndata: \n\n"
#: An SSE response ends after this long or this many bytes (the client
#: opens the next one with its last id), so no proxy holds one forever.
SSE_MAX_SECONDS = 60.0
SSE_MAX_BYTES = 2**20
#: Comment heartbeat on an SSE stream, and the longest long poll.
HEARTBEAT = 15.0
POLL_SECONDS = 25.0
# Request headers that belong to the HTTP exchange, not to the session's
# WebSocket-like request.
_HOP = {
    "connection", "upgrade", "content-length", "content-type", "transfer-encoding", "keep-alive",
    "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol",
}  # fmt: skip


def script() -> bytes:
    """``fastws.js``, the browser client (packaged beside this module)."""
    return resources.files(__package__).joinpath("fastws.js").read_bytes()


def _json(status: int, body: Any) -> Response:
    response = make_response(status, json.dumps(body, separators=(",", ":")), content_type="application/json")
    response.headers["Cache-Control"] = "no-cache"
    return response


class Fallback:
    """A server's fallback sessions and endpoints; see the module."""

    def __init__(self, context: Any, node: bytes) -> None:
        self._ctx = context  # the ServerContext: connections of sessions use it
        self.config = context.config
        #: Session ids start with this process's id (a request for a session
        #: of another process is told so: 421).
        self.node = node.hex()
        self.sessions: dict[str, Session] = {}

    def take(self, conn: "Connection", request: Request) -> Response | None:
        """A request under ``/_fastws/``: taken over (None), or refused."""
        name = request.path[len(PREFIX) :].partition("?")[0]
        allowed = {"open": "POST", "send": "POST", "close": "POST", "sse": "GET", "poll": "GET"}.get(name)
        if allowed is None:
            return _json(404, {"error": f"no fallback endpoint {name!r}"})
        if request.method != allowed:
            response = _json(405, {"error": f"{name} takes {allowed}"})
            response.headers["Allow"] = allowed
            return response
        if allowed == "POST":
            if "chunked" in request.headers.get("Transfer-Encoding", "").lower() or "Content-Length" not in request.headers:
                return _json(411, {"error": "a body needs Content-Length"})
            try:
                length = int(request.headers["Content-Length"])
            except ValueError:
                return _json(400, {"error": "bad Content-Length"})
            if length > self.config.fallback_max_body:
                return _json(413, {"error": f"body over fallback_max_body ({self.config.fallback_max_body} bytes)"})
        else:
            length = 0
        exchange = _Exchange(self, name, request, length, conn.remote_address)
        exchange.rest = conn.hand_over(exchange)
        exchange.started()
        return None

    def find(self, query: dict[str, list[str]]) -> tuple[Session | None, Response | None]:
        """The session a request names, or the answer that refuses it."""
        sid = query.get("s", [""])[0]
        token = query.get("t", [""])[0]
        if not sid or not token:
            return None, _json(400, {"error": "missing s (session) or t (token)"})
        session = self.sessions.get(sid)
        if session is None:
            if not sid.startswith(self.node):
                return None, _json(421, {
                    "error": "this session lives in another fastws process: the fallback needs sticky sessions "
                    "(every request of a client to the same process; docs/fallback.md)",
                })  # fmt: skip
            return None, _json(404, {"error": "unknown session (expired or closed): open a new one"})
        if not hmac.compare_digest(session.token, token):
            return None, _json(403, {"error": "wrong token"})
        session.touch()
        return session, None

    def _gone(self, session: Session) -> None:
        self.sessions.pop(session.id, None)

    async def open(self, exchange: "_Exchange", body: Any) -> Response | bytes:
        if not isinstance(body, dict):
            return _json(400, {"error": "open takes a JSON object"})
        path = body.get("path", "/")
        kind = body.get("transport", "sse")
        if not isinstance(path, str) or not path.startswith("/") or path.startswith(PREFIX) or any(c in path for c in "\r\n "):
            return _json(400, {"error": "path must be the WebSocket URL's path (and query)"})
        if kind not in ("sse", "polling"):
            return _json(400, {"error": "transport must be sse or polling"})
        sid = self.node + secrets.token_urlsafe(12)
        token = secrets.token_urlsafe(24)
        transport = exchange.transport
        assert transport is not None
        extra = {name: transport.get_extra_info(name) for name in ("peername", "sockname", "sslcontext")}
        session = Session(sid, token, kind, self.config, extra, self._gone)
        conn = Connection(self._ctx)
        session.conn = conn
        conn.connection_made(session)  # type: ignore[arg-type]
        # The session opens as a WebSocket would: the same request, the
        # same checks and hooks, a 101 or a refusal.
        request = exchange.request
        lines = [f"GET {path} HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in request.headers.raw_items() if k.lower() not in _HOP]
        key = base64.b64encode(os.urandom(16)).decode()
        lines += ["Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        lines += [f"X-FastWS-Transport: {kind}"]
        conn.data_received(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        try:
            answer = await asyncio.wait_for(asyncio.shield(session.opened), (self.config.open_timeout or 10.0) + 1)
        except asyncio.TimeoutError:
            session.abort()
            return _json(503, {"error": "the session did not open in time"})
        if not answer.startswith(b"HTTP/1.1 101"):
            session.forget()
            return answer  # the refusal (403 origin, process_request's answer...), as it is
        self.sessions[sid] = session
        logger.debug("session %s opened (%s) for %s", sid, kind, path)
        return _json(200, {
            "session": sid, "token": token, "timeout": self.config.fallback_timeout,
            "max_body": self.config.fallback_max_body, "heartbeat": HEARTBEAT,
        })  # fmt: skip

    async def send(self, session: Session, body: Any) -> Response:
        if not isinstance(body, dict) or not isinstance(body.get("seq", 1), int) or not isinstance(body.get("messages", []), list):
            return _json(400, {"error": 'send takes {"seq": N, "messages": [...], "ack": A}'})
        messages = body.get("messages", [])
        for item in messages:
            if not (isinstance(item, list) and len(item) == 2 and item[0] in ("t", "b") and isinstance(item[1], str)):
                return _json(400, {"error": 'a message is ["t", text] or ["b", base64]'})
        ack = body.get("ack")
        if isinstance(ack, int):
            session.ack(ack)
        if not messages:
            # An ack alone goes through even while an upload waits: that
            # upload may wait for a handler that waits for this ack.
            return _json(200, {"received": session.received})
        if session.posting:
            return _json(409, {"error": "another POST of this session is in progress"})
        session.posting = True
        try:
            received = await session.upload(int(body.get("seq", 1)), messages)
        except (ValueError, UnicodeError) as exc:
            return _json(400, {"error": f"bad message: {exc}"})
        finally:
            session.posting = False
            session.touch()
        return _json(200, {"received": received})

    def close(self, session: Session, body: Any) -> Response:
        code = body.get("code", CloseCode.NORMAL_CLOSURE) if isinstance(body, dict) else CloseCode.NORMAL_CLOSURE
        reason = body.get("reason", "") if isinstance(body, dict) else ""
        if not isinstance(code, int) or not isinstance(reason, str):
            return _json(400, {"error": 'close takes {"code": N, "reason": "..."}'})
        session.client_close(code, reason)
        return _json(200, {})


class _Exchange(asyncio.Protocol):
    """One request under ``/_fastws/`` and its answer (then the TCP
    connection closes)."""

    def __init__(self, fallback: Fallback, name: str, request: Request, length: int, peer: Any) -> None:
        self.fallback = fallback
        self.name = name
        self.request = request
        self.peer = peer
        self.length = length
        self.rest = b""
        self.body = bytearray()
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self.task: asyncio.Task[None] | None = None
        self.done = False
        # SSE / poll state
        self.sent = 0  # the last sequence number written on this stream
        self.written = 0
        self.timer: asyncio.TimerHandle | None = None
        self.ends_at = 0.0

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def started(self) -> None:
        """After hand_over: the bytes behind the head are in ``rest``."""
        self.data_received(self.rest)

    def data_received(self, data: bytes) -> None:
        if self.task is not None or self.done:
            return  # nothing more is read (one request per connection)
        self.body += data
        if len(self.body) >= self.length:
            del self.body[self.length :]
            self.task = asyncio.ensure_future(self._run())

    def connection_lost(self, exc: Exception | None) -> None:
        self.done = True
        self._detach()
        if self.task is not None and not self.task.done():
            self.task.cancel()

    # -- the request -----------------------------------------------------------

    async def _run(self) -> None:
        fallback = self.fallback
        try:
            body: Any = None
            if self.length:
                try:
                    body = json.loads(self.body)
                except ValueError:
                    self.answer(_json(400, {"error": "the body is not JSON"}))
                    return
            if self.name == "open":
                self.answer(await fallback.open(self, body))
                return
            query = parse_qs(self.request.path.partition("?")[2])
            session, refusal = fallback.find(query)
            if session is None:
                assert refusal is not None
                self.answer(refusal)
                return
            if self.name == "send":
                self.answer(await fallback.send(session, body))
            elif self.name == "close":
                self.answer(fallback.close(session, body))
            else:
                last = self._last(query)
                if last is None:
                    self.answer(_json(400, {"error": "last must be a number"}))
                    return
                session.ack(last)
                self.sent = last
                self._attach(session)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("fallback %s failed", self.name)
            self.answer(_json(500, {"error": "internal error"}))

    def _last(self, query: dict[str, list[str]]) -> int | None:
        value = query.get("last", [None])[0] or self.request.headers.get("Last-Event-ID") or "0"
        try:
            return max(0, int(value))
        except ValueError:
            return None

    def answer(self, response: Response | bytes) -> None:
        """Write the whole answer and close."""
        t = self.transport
        if t is None or self.done:
            return
        self.done = True
        if isinstance(response, Response):
            server = self.fallback.config.server_header
            if server and "Server" not in response.headers:
                response.headers["Server"] = server
            if response.headers.get("Connection") != "close":
                response.headers["Connection"] = "close"
            data = response.serialize()
        else:
            data = response
        t.write(data)
        t.close()

    # -- streams: SSE and long polls ----------------------------------------------

    def _attach(self, session: Session) -> None:
        previous = session.stream
        session.stream = self
        self.session = session
        # A client may switch (SSE that a proxy buffers, then polling).
        session.use("polling" if self.name == "poll" else "sse")
        if previous is not None:
            previous.end()  # one stream per session: the newer wins
        loop = asyncio.get_running_loop()
        if self.name == "sse":
            self.ends_at = loop.time() + SSE_MAX_SECONDS
            assert self.transport is not None
            head = (
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                "X-Accel-Buffering: no\r\nConnection: close\r\n"
            )
            server = self.fallback.config.server_header
            if server:
                head += f"Server: {server}\r\n"
            self.transport.write(head.encode("latin-1") + b"\r\n" + _SSE_PREAMBLE)
            self.timer = loop.call_later(HEARTBEAT, self._heartbeat)
        else:
            self.timer = loop.call_later(POLL_SECONDS, self.end)
        self.deliver(session)

    def deliver(self, session: Session) -> None:
        """The session has messages (or its end) to send."""
        if self.done or self.transport is None:
            return
        pending = session.after(self.sent)
        closing = session.close_event
        if self.name == "poll":
            if pending or closing is not None:
                self.sent = pending[-1][0] if pending else self.sent
                self._finish_poll(pending, closing)
            return
        chunks = [_sse(m) for m in pending]
        if pending:
            self.sent = pending[-1][0]
        if closing is not None and not session.after(self.sent):
            chunks.append(b"event: close\ndata: " + json.dumps(closing).encode() + b"\n\n")
        if chunks:
            data = b"".join(chunks)
            self.written += len(data)
            self.transport.write(data)
        if closing is not None and not session.after(self.sent):
            self._end_stream(final=True)
        elif self.written >= SSE_MAX_BYTES or asyncio.get_running_loop().time() >= self.ends_at:
            self.end()

    def _finish_poll(self, pending: list[Message], closing: dict[str, Any] | None) -> None:
        session = self.session
        self.answer(_json(200, {"messages": [list(m) for m in pending], "close": closing}))
        self._detach()
        if closing is not None and session is not None and not session.after(self.sent):
            session.forget()

    def _heartbeat(self) -> None:
        if self.done or self.transport is None:
            return
        if asyncio.get_running_loop().time() >= self.ends_at:
            self.end()
            return
        self.transport.write(b": hb\n\n")
        self.timer = asyncio.get_running_loop().call_later(HEARTBEAT, self._heartbeat)

    def end(self) -> None:
        """End this stream or poll (time is up, or a newer one took over)."""
        if self.name == "poll":
            if not self.done:
                self.answer(_json(200, {"messages": [], "close": None}))
            self._detach()
        else:
            self._end_stream(final=False)

    def _end_stream(self, final: bool) -> None:
        session = self.session
        if not self.done and self.transport is not None:
            if not final:
                self.transport.write(b"event: recycle\ndata: \n\n")
            self.done = True
            self.transport.close()
        self._detach()
        if final and session is not None:
            session.forget()

    def _detach(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        session = self.session
        if session is not None and session.stream is self:
            session.stream = None
            session.touch()


def _sse(message: Message) -> bytes:
    seq, kind, data = message
    return b"id: %d\ndata: %s\n\n" % (seq, json.dumps([kind, data]).encode())
