"""Public enums and value types both builds share: State, CloseCode, Close.

Pure Python and never compiled, so every module (compiled or twin) imports
the one class and ``ws.state is fastws.State.OPEN`` holds in every build.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Close", "CloseCode", "OK_CLOSE_CODES", "PauseReason", "State"]


class State(enum.IntEnum):
    """Connection state (RFC 6455 sections 4 and 7)."""

    CONNECTING = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3


class CloseCode(enum.IntEnum):
    """Close codes of RFC 6455 section 7.4.1 and the IANA registry."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005
    ABNORMAL_CLOSURE = 1006
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014


#: Codes that end a connection "OK" (``ConnectionClosedOK``) when both the
#: sent and the received close carry one of them, as in ``websockets``.
OK_CLOSE_CODES = (CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY, CloseCode.NO_STATUS_RCVD)


class PauseReason(enum.IntFlag):
    """Why reading from a peer is paused; it resumes when no reason is left."""

    #: Our write buffer is above ``write_limit``.
    WRITE_BUFFER = 1
    #: The coroutine level's receive queue is full.
    QUEUE = 2
    #: The handler called ``pause_reading()``.
    USER = 4
    #: ``process_request`` is deciding; nothing more is read until it has.
    HANDSHAKE = 8


@dataclass(frozen=True, slots=True)
class Close:
    """A close frame's content: ``code`` and ``reason`` (as in websockets)."""

    code: int
    reason: str

    def __str__(self) -> str:
        return f"{self.code} ({self.reason})" if self.reason else str(self.code)
