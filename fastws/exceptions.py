"""Exceptions raised by fastws, named like the ``websockets`` library's."""

from __future__ import annotations

from .types import Close, CloseCode

__all__ = [
    "Close",
    "ProtocolError",
    "WebSocketException",
    "ConnectionClosed",
    "ConnectionClosedOK",
    "ConnectionClosedError",
    "InvalidHandshake",
    "InvalidUpgrade",
    "InvalidHeader",
    "InvalidHeaderValue",
    "InvalidOrigin",
    "NegotiationError",
    "PayloadTooBig",
    "ConcurrencyError",
    "HistoryGap",
]


class WebSocketException(Exception):
    """Base class for every exception fastws raises on purpose."""


class ConnectionClosed(WebSocketException):
    """Raised when using a connection that is closed or closing.

    ``rcvd`` is the close frame the peer sent (``None`` if none), ``sent`` the
    one we sent, ``rcvd_then_sent`` whether the peer closed first. ``code``
    and ``reason`` are the connection's: the received ones, or 1006 / ``""``.
    """

    def __init__(self, rcvd: Close | None, sent: Close | None, rcvd_then_sent: bool | None = None) -> None:
        self.rcvd = rcvd
        self.sent = sent
        self.rcvd_then_sent = rcvd_then_sent
        super().__init__(rcvd, sent, rcvd_then_sent)

    @property
    def rcvd_code(self) -> int | None:
        return None if self.rcvd is None else self.rcvd.code

    @property
    def rcvd_reason(self) -> str | None:
        return None if self.rcvd is None else self.rcvd.reason

    @property
    def sent_code(self) -> int | None:
        return None if self.sent is None else self.sent.code

    @property
    def sent_reason(self) -> str | None:
        return None if self.sent is None else self.sent.reason

    @property
    def code(self) -> int:
        """The close code: the received one, or 1006 (abnormal closure)."""
        return CloseCode.ABNORMAL_CLOSURE if self.rcvd is None else self.rcvd.code

    @property
    def reason(self) -> str:
        """The received close reason, or ``""``."""
        return "" if self.rcvd is None else self.rcvd.reason

    def __str__(self) -> str:
        if self.rcvd is None:
            if self.sent is None:
                return "no close frame received or sent"
            return f"sent {self.sent}; no close frame received"
        if self.sent is None:
            return f"received {self.rcvd}; no close frame sent"
        if self.rcvd_then_sent:
            return f"received {self.rcvd}; then sent {self.sent}"
        return f"sent {self.sent}; then received {self.rcvd}"


class ConnectionClosedOK(ConnectionClosed):
    """The connection closed normally (1000 or 1001 in both directions)."""


class ConnectionClosedError(ConnectionClosed):
    """The connection closed with an error code or without a close handshake."""


class InvalidHandshake(WebSocketException):
    """The opening handshake was rejected; ``status`` is the HTTP status sent."""

    status: int = 400

    def __init__(self, message: str = "", status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class InvalidHeader(InvalidHandshake):
    """A handshake header is missing, repeated or malformed."""


class InvalidUpgrade(InvalidHeader):
    """The ``Upgrade`` or ``Connection`` header is missing or wrong."""


class InvalidHeaderValue(InvalidHeader):
    """A handshake header has a value the server does not accept."""


class InvalidOrigin(InvalidHeader):
    """The ``Origin`` header is not in the allowed list (HTTP 403)."""

    status = 403


class NegotiationError(InvalidHandshake):
    """Subprotocol or extension negotiation failed."""


class PayloadTooBig(WebSocketException):
    """A message exceeded ``max_size`` (close code 1009)."""


class ProtocolError(WebSocketException):
    """The peer broke RFC 6455 (or RFC 7692); the connection must be failed.

    ``code`` is the close code to fail it with: 1002 (protocol error), 1007
    (invalid UTF-8) or 1009 (message too big). ``str(exc)`` names the rule.
    Both builds of the codec raise this one class.
    """

    code: int

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class ConcurrencyError(WebSocketException, RuntimeError):
    """Two coroutines called ``recv()`` (or the same ping) at once."""


class HistoryGap(WebSocketException, LookupError):
    """``subscribe(room, since=offset)`` cannot give everything after
    ``offset``: the room's history was reset (its epoch changed) or has
    already dropped messages after it. The member is subscribed from now
    on; the application should tell its client to reload the room's state.
    """

    def __init__(self, room: str, offset: str, why: str) -> None:
        super().__init__(f"room {room!r}: cannot resume after {offset!r}: {why}")
        self.room = room
        self.offset = offset
        self.why = why
