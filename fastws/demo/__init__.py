"""The bundled demo: echo every message, a chat room, and a page at ``/``.

``fastws serve`` with no target runs :class:`EchoHandler`. Open
http://127.0.0.1:8000/ in a browser: the page (``index.html``) connects back
to ``/demo`` with ``fastws.js`` (which the server serves at ``/fastws.js``):
over WebSocket, or over the HTTP fallback with ``--fallback`` (SSE or long
polling; ``?transport=sse`` on the page forces one, see docs/fallback.md).
It shows the transport, the round-trip time of an echoed ``rtt:<ms>``
message, an echo box, and a chat between every tab open on the page.

Every connection, on any path, joins the room ``demo-chat``; a text message
``chat:<text>`` is published to that room (every member gets it, the sender
too) instead of echoed. Everything else is echoed as it came, text as text
and binary as binary.
"""

from __future__ import annotations

from importlib import resources

from ..connection import Connection
from ..faces.callback import Handler
from ..protocol.http import Request, Response, make_response, parse_tokens

__all__ = ["CHAT_ROOM", "EchoHandler", "index_html"]

#: The room of the demo's chat: every connection joins it.
CHAT_ROOM = "demo-chat"


def index_html() -> bytes:
    """The demo page (packaged as ``fastws/demo/index.html``)."""
    return resources.files(__package__).joinpath("index.html").read_bytes()


class EchoHandler(Handler):
    """Echo text as text and binary as binary, on any path; publish text
    ``chat:...`` to the room :data:`CHAT_ROOM`, which every connection joins."""

    def on_connect(self, ws: Connection) -> None:
        ws.subscribe(CHAT_ROOM)

    def on_message(self, ws: Connection, data: bytes, is_text: bool) -> None:
        if is_text and data.startswith(b"chat:"):
            ws.publish(CHAT_ROOM, data, text=True)
        else:
            ws.send(data, is_text)

    def process_request(self, ws: Connection, request: Request) -> Response | None:
        """Serve the page at ``/`` to plain HTTP; let upgrades through (a
        fallback session opens as an upgrade request too)."""
        if "websocket" in parse_tokens(request.headers.get_all("Upgrade")):
            return None
        if request.method in ("GET", "HEAD") and request.path.split("?", 1)[0] in ("/", "/index.html"):
            return make_response(200, index_html(), content_type="text/html; charset=utf-8")
        if request.path.split("?", 1)[0] == "/healthz":
            return make_response(200, "OK\n")
        return make_response(404, "Not found. This is the fastws echo demo: open / or connect a WebSocket to any path.\n")
