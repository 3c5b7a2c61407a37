"""Exceptions raised by fastws, named like the ``websockets`` library's."""

from __future__ import annotations

__all__ = [
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
]


class WebSocketException(Exception):
    """Base class for every exception fastws raises on purpose."""


class ConnectionClosed(WebSocketException):
    """Raised when using a connection that is closed or closing.

    ``rcvd_code``/``rcvd_reason`` are what the peer sent in its close frame
    (``None`` if it sent none); ``sent_code``/``sent_reason`` what we sent.
    ``code`` and ``reason`` are the close code and reason of the connection
    as a whole: 1006 when no close frame was received.
    """

    def __init__(
        self,
        rcvd_code: int | None,
        rcvd_reason: str | None,
        sent_code: int | None = None,
        sent_reason: str | None = None,
    ) -> None:
        self.rcvd_code = rcvd_code
        self.rcvd_reason = rcvd_reason
        self.sent_code = sent_code
        self.sent_reason = sent_reason
        super().__init__(rcvd_code, rcvd_reason)

    @property
    def code(self) -> int:
        """The close code: the received one, or 1006 (abnormal closure)."""
        return 1006 if self.rcvd_code is None else self.rcvd_code

    @property
    def reason(self) -> str:
        """The received close reason, or ``""``."""
        return self.rcvd_reason or ""

    def __str__(self) -> str:
        if self.rcvd_code is None:
            received = "no close frame received"
        else:
            received = f"received {self.rcvd_code} ({self.rcvd_reason or ''})"
        if self.sent_code is None:
            sent = "no close frame sent"
        else:
            sent = f"sent {self.sent_code} ({self.sent_reason or ''})"
        return f"{received}; {sent}"


class ConnectionClosedOK(ConnectionClosed):
    """The connection closed normally (1000 or 1001 in both directions)."""


class ConnectionClosedError(ConnectionClosed):
    """The connection closed with an error code or without a close handshake."""


class InvalidHandshake(WebSocketException):
    """The opening handshake was rejected; ``status`` is the HTTP status sent."""

    status: int = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class InvalidUpgrade(InvalidHandshake):
    """The ``Upgrade`` or ``Connection`` header is missing or wrong."""


class InvalidHeader(InvalidHandshake):
    """A handshake header is missing, repeated or malformed."""


class InvalidHeaderValue(InvalidHeader):
    """A handshake header has a value the server does not accept."""


class InvalidOrigin(InvalidHeader):
    """The ``Origin`` header is not in the allowed list (HTTP 403)."""

    status = 403


class NegotiationError(InvalidHandshake):
    """Subprotocol or extension negotiation failed."""


class PayloadTooBig(WebSocketException):
    """A message exceeded ``max_size`` (close code 1009)."""


class ConcurrencyError(WebSocketException, RuntimeError):
    """Two coroutines called ``recv()`` (or the same ping) at once."""
