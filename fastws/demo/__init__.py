"""The bundled demo: echo every message, and a small page at ``/``.

``fastws serve`` with no target runs :class:`EchoHandler`. Open
http://127.0.0.1:8000/ in a browser: the page connects back over WebSocket
and shows what the server echoes.
"""

from __future__ import annotations

from importlib import resources

from ..connection import Connection
from ..faces.callback import Handler
from ..protocol.http import Request, Response, make_response, parse_tokens

__all__ = ["EchoHandler", "index_html"]


def index_html() -> bytes:
    """The demo page (packaged as ``fastws/demo/index.html``)."""
    return resources.files(__package__).joinpath("index.html").read_bytes()


class EchoHandler(Handler):
    """Echo text as text and binary as binary, on any path."""

    def on_message(self, ws: Connection, data: bytes, is_text: bool) -> None:
        ws.send(data, is_text)

    def process_request(self, ws: Connection, request: Request) -> Response | None:
        """Serve the page at ``/`` to plain HTTP; let upgrades through."""
        if "websocket" in parse_tokens(request.headers.get_all("Upgrade")):
            return None
        if request.method in ("GET", "HEAD") and request.path.split("?", 1)[0] in ("/", "/index.html"):
            return make_response(200, index_html(), content_type="text/html; charset=utf-8")
        if request.path.split("?", 1)[0] == "/healthz":
            return make_response(200, "OK\n")
        return make_response(404, "Not found. This is the fastws echo demo: open / or connect a WebSocket to any path.\n")
