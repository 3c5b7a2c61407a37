"""Compiled reply checking and timing for ``fastws bench`` (see ``_echo.pyx``);
:mod:`fastws.bench._echo_py` is the pure-Python twin with the same interface."""

from typing import Any, Final

__all__ = [
    "EV_CLOSED",
    "EV_CONTROL",
    "EV_DEFLATED",
    "EV_ERROR",
    "EV_MISMATCH",
    "HANDSHAKE_ERRORS",
    "MAX_VALUE",
    "EchoStream",
    "Histogram",
    "handshake_loop",
    "now_ns",
    "ping",
    "pong",
]

MAX_VALUE: Final[int]
"""Values above this (2**40 - 1 ns) are counted as this; ``max`` keeps the exact one."""
EV_CONTROL: Final[str]
"""``("control", opcode, payload)``: a ping, pong or close frame."""
EV_MISMATCH: Final[str]
"""``("mismatch", opcode, text)``: a reply that was not the message sent (opcode -1: no message was in flight)."""
EV_ERROR: Final[str]
"""``("error", close code, text)``: a protocol error; the stream takes nothing more."""
EV_DEFLATED: Final[str]
"""``("deflated", opcode, payload)``: a compressed message, to inflate and :meth:`EchoStream.settle`."""
EV_CLOSED: Final[str]
HANDSHAKE_ERRORS: Final[tuple[str, ...]]
"""The error kinds of :func:`handshake_loop`, in the order of its counts."""

def now_ns() -> int:
    """CLOCK_MONOTONIC in nanoseconds (``time.monotonic_ns()``)."""

class Histogram:
    """Counts of nanosecond values in buckets at most 0.8 % wide (HdrHistogram's
    layout, 2 significant digits): 35 KiB whatever the run's length; the exact
    minimum and maximum are kept."""

    def __init__(self) -> None: ...
    @property
    def total(self) -> int:
        """How many values were counted."""
    @property
    def min(self) -> int:
        """The smallest value counted (0 if none)."""
    @property
    def max(self) -> int:
        """The largest value counted, exactly (0 if none)."""
    def record(self, value: int, count: int = 1) -> None:
        """Count ``value`` (ns, negative as 0) ``count`` times."""
    def record_run(self, now: int, first: int, step: int, count: int) -> None:
        """Count round trips of ``count`` messages sent at ``first``, ``first + step``, ..., all answered at ``now``."""
    def merge(self, other: Histogram) -> None:
        """Add ``other``'s counts to these."""
    def quantiles(self, qs: list[float]) -> list[int]:
        """The value at each quantile (0 < q <= 1), within [min, max]; 0s when empty."""
    def buckets(self) -> list[tuple[int, int]]:
        """``(highest value, count)`` of each non-empty bucket, in order."""
    def to_bytes(self) -> bytes:
        """Total, min, max and every bucket as little-endian uint64s."""
    @staticmethod
    def from_bytes(data: bytes) -> Histogram:
        """The histogram :meth:`to_bytes` wrote."""

class EchoStream:
    """The replies of one connection: parsed, compared with the message sent
    and timed, with no Python object per message."""

    recording: bool
    """Round trips go to the histogram only while this is true."""
    @property
    def matched(self) -> int:
        """Replies that were the message sent."""
    @property
    def mismatches(self) -> int:
        """Replies that were not (wrong bytes or opcode, or no message in flight)."""
    @property
    def in_flight(self) -> int:
        """Messages sent and not yet answered (echo mode)."""
    @property
    def closed(self) -> bool:
        """A close frame came; nothing more is parsed."""
    @property
    def failed(self) -> bool:
        """A protocol error came; nothing more is parsed."""
    @property
    def lag_max(self) -> int:
        """run_blocking with a step: the most a write came after its due time (ns)."""
    @property
    def events(self) -> list[tuple[Any, ...]]:
        """What needs the caller, oldest first; the caller empties it."""
    def __init__(
        self,
        opcode: int,
        payload: bytes,
        histogram: Histogram,
        *,
        stamped: bool = False,
        deflate: bool = False,
        max_deflated: int = ...,
    ) -> None: ...
    def sent(self, n: int, first: int, step: int = 0) -> None:
        """``n`` messages were written, the first at ``first`` (ns), one every ``step`` ns."""
    def settle(self, ok: bool, now: int) -> bool:
        """Count a message the caller checked itself (an inflated one); False if it was wrong."""
    def feed(self, data: bytes | bytearray | memoryview, now: int) -> int:
        """Parse ``data`` received at ``now`` (ns); the number of replies that matched."""
    def run_blocking(self, fd: int, frame: bytes, window_start: int, window_end: int, end: int, step: int = 0) -> str | None:
        """The ``rr`` loop on a blocking socket, GIL released: None when the run is
        over, ``"events"`` when :attr:`events` needs the caller, or a socket error."""

def handshake_loop(
    host: str | bytes,
    port: int,
    request: bytes,
    accept: bytes,
    close_frame: bytes,
    histogram: Histogram,
    window_start: int,
    window_end: int,
    end: int,
    timeout: float,
) -> tuple[int, list[int], str | None]:
    """Cycle connect, upgrade, close until ``end`` with the GIL released:
    ``(cycles in the window, error counts by HANDSHAKE_ERRORS, first error)``."""

def ping(fd: int, n: int, gap_ns: int, histogram: Histogram) -> str | None:
    """Wake-up probe, side A: ``n`` one-byte round trips, ``gap_ns`` apart, into ``histogram``."""

def pong(fd: int, n: int) -> str | None:
    """Wake-up probe, side B: echo ``n`` bytes one at a time."""
