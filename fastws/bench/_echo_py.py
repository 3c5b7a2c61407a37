"""Pure-Python twin of :mod:`fastws.bench._echo`: the same checks, counts,
events and histogram bytes, at Python speed (used when the extension is not
built, and by the tests as the oracle)."""

from __future__ import annotations

import errno as _errno
import os
import socket
import struct
import time
from array import array
from collections import deque
from typing import Any

from ..types import CloseCode

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

_SUB = 256
_HALF = 128
_TOP_BITS = 40
_NBUCKETS = _SUB + (_TOP_BITS - 8) * _HALF
#: Values above this (2**40 - 1 ns) are counted as this; max keeps the exact one.
MAX_VALUE = (1 << _TOP_BITS) - 1


def _index(v: int) -> int:
    if v < _SUB:
        return v
    v = min(v, MAX_VALUE)
    shift = v.bit_length() - 8
    return _SUB + (shift - 1) * _HALF + ((v >> shift) - _HALF)


def _highest(i: int) -> int:
    if i < _SUB:
        return i
    shift = (i - _SUB) // _HALF + 1
    return (((i - _SUB) % _HALF + _HALF) << shift) + (1 << shift) - 1


class Histogram:
    """Counts of nanosecond values in buckets 0.8 % wide: fixed memory
    whatever the run's length, percentiles within 0.8 %, the exact minimum
    and maximum kept."""

    __slots__ = ("counts", "total", "min", "max")

    def __init__(self) -> None:
        self.counts = array("Q", bytes(8 * _NBUCKETS))
        self.total = 0
        self.min = 0
        self.max = 0

    def _add(self, value: int, n: int) -> None:
        if n == 0:
            return
        self.counts[_index(value)] += n
        if self.total == 0 or value < self.min:
            self.min = value
        self.max = max(self.max, value)
        self.total += n

    def record(self, value: int, count: int = 1) -> None:
        """Count ``value`` (ns, negative as 0) ``count`` times."""
        if not -(2**63) <= value < 2**63 or count >= 2**63:
            raise OverflowError("value and count are 64-bit signed integers")
        if count < 0:
            raise ValueError("count must be at least 0")
        self._add(max(0, value), count)

    def record_run(self, now: int, first: int, step: int, count: int) -> None:
        """Count the ``count`` round trips of messages sent at ``first``,
        ``first + step``, ... whose replies all came at ``now``."""
        if count < 0:
            raise ValueError("count must be at least 0")
        if step == 0:
            self._add(max(0, now - first), count)
            return
        for i in range(count):
            self._add(max(0, now - first - i * step), 1)

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s counts to these."""
        if not other.total:
            return
        for i, c in enumerate(other.counts):
            if c:
                self.counts[i] += c
        if self.total == 0 or other.min < self.min:
            self.min = other.min
        self.max = max(self.max, other.max)
        self.total += other.total

    def quantiles(self, qs: list[float]) -> list[int]:
        """The value at each quantile in ``qs`` (0 < q <= 1): the highest
        value of the bucket holding that rank, within [min, max]; an empty
        histogram gives 0 for each."""
        return [self._quantile(q) for q in qs]

    def _quantile(self, q: float) -> int:
        if not self.total:
            return 0
        if q <= 0:
            return self.min
        rank = min(self.total, max(1, int(q * self.total + 0.9999999)))
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return min(max(_highest(i), self.min), self.max)
        return self.max

    def buckets(self) -> list[tuple[int, int]]:
        """``(highest value, count)`` of each non-empty bucket, in order."""
        return [(min(_highest(i), self.max), c) for i, c in enumerate(self.counts) if c]

    def to_bytes(self) -> bytes:
        """Total, min, max, then every bucket: little-endian uint64s."""
        head = array("Q", [self.total, self.min, self.max])
        return head.tobytes() + self.counts.tobytes()

    @staticmethod
    def from_bytes(data: bytes) -> Histogram:
        """The histogram :meth:`to_bytes` wrote."""
        if len(data) != (3 + _NBUCKETS) * 8:
            raise ValueError(f"a histogram is {(3 + _NBUCKETS) * 8} bytes, not {len(data)}")
        h = Histogram()
        h.total, h.min, h.max = array("Q", data[:24])
        h.counts = array("Q", data[24:])
        return h


def now_ns() -> int:
    """CLOCK_MONOTONIC in nanoseconds (shared by every process on the machine)."""
    return time.monotonic_ns()


EV_CONTROL = "control"
EV_MISMATCH = "mismatch"
EV_ERROR = "error"
EV_DEFLATED = "deflated"
EV_CLOSED = "closed"

_ERRORS = {
    1: "the server masked a frame (RFC 6455 section 5.1 forbids it)",
    2: "frame length over 2**63 (RFC 6455 section 5.2)",
    3: "bad control frame: fragmented, over 125 bytes, reserved bits or unknown opcode (RFC 6455 section 5.5)",
    4: "continuation frame with no message started (RFC 6455 section 5.4)",
    5: "new data frame inside a fragmented message (RFC 6455 section 5.4)",
    6: "reserved bits set with no extension negotiated (RFC 6455 section 5.2)",
    7: "reserved opcode (RFC 6455 section 5.2)",
    8: "compressed message too large to buffer",
    9: "reserved bits set on a continuation frame (RFC 6455 section 5.2, RFC 7692 section 6: RSV1 only on a message's first frame)",
}


class _Stop(Exception):
    def __init__(self, event: tuple[Any, ...]) -> None:
        self.event = event


class EchoStream:
    """The replies of one connection, checked and timed (see the compiled
    module for the whole contract)."""

    def __init__(
        self,
        opcode: int,
        payload: bytes,
        histogram: Histogram,
        *,
        stamped: bool = False,
        deflate: bool = False,
        max_deflated: int = 64 * 2**20,
    ) -> None:
        if opcode not in (1, 2):
            raise ValueError(f"opcode must be 1 (text) or 2 (binary), not {opcode}")
        if stamped and len(payload) < 8:
            raise ValueError("a stamped message has at least 8 bytes")
        if stamped and deflate:
            raise ValueError("stamped and deflate do not go together (a compressed message's stamp is not read)")
        self.expected = bytes(payload)
        self.opcode = opcode
        self.stamped = stamped
        self.deflate = deflate
        self.max_deflated = max_deflated
        self.hist = histogram
        self.recording = False
        self.matched = 0
        self.mismatches = 0
        self.in_flight = 0
        self.closed = False
        self.failed = False
        self.events: list[tuple[Any, ...]] = []
        self._runs: deque[list[int]] = deque()  # [count, first, step]
        self._buf = b""  # unparsed bytes (a header in pieces)
        self._remaining = 0
        self._in_frame = False
        self._frame_op = 0
        self._frame_fin = False
        self._msg_op = 0
        self._msg: list[bytes] = []  # payload of the message in progress
        self._msg_deflated = False
        self._msg_len = 0
        self._ctrl = b""
        self._due = 0
        self.lag_max = 0
        self._pending = b""  # run_blocking: the rest of a read
        self._pending_now = 0

    def sent(self, n: int, first: int, step: int = 0) -> None:
        """``n`` messages were written, the first at ``first`` (ns), one
        every ``step`` ns (0: all at once)."""
        if n > 0:
            self._runs.append([n, first, step])
            self.in_flight += n

    def _consume(self, now: int, ok: bool) -> bool:
        if not self._runs:
            return False
        run = self._runs[0]
        if ok and self.recording:
            self.hist.record(now - run[1])
        run[0] -= 1
        run[1] += run[2]
        if not run[0]:
            self._runs.popleft()
        self.in_flight -= 1
        return True

    def _settle(self, ok: bool, now: int, op: int, length: int) -> tuple[Any, ...] | None:
        if self.stamped:
            if ok:
                if self.recording:
                    self.hist.record(now - self._stamp)
                self.matched += 1
                return None
            self.mismatches += 1
            return self._mismatch(op, length)
        if not self._consume(now, ok):
            self.mismatches += 1
            return (EV_MISMATCH, -1, "a reply came with no message in flight")
        if ok:
            self.matched += 1
            return None
        self.mismatches += 1
        return self._mismatch(op, length)

    def _mismatch(self, op: int, length: int) -> tuple[Any, ...]:
        if op != self.opcode:
            return (EV_MISMATCH, op, f"reply has opcode {op:#x}, sent {self.opcode:#x}")
        return (EV_MISMATCH, op, f"reply differs from the message sent ({length} bytes, sent {len(self.expected)})")

    def settle(self, ok: bool, now: int) -> bool:
        """Count a message Python checked itself (an inflated one)."""
        return self._settle(ok, now, self.opcode, len(self.expected)) is None

    def _error(self, kind: int, code: int = CloseCode.PROTOCOL_ERROR) -> _Stop:
        self.failed = True
        return _Stop((EV_ERROR, int(code), _ERRORS[kind]))

    def _parse(self, data: bytes, now: int) -> int:
        """Parse ``data``; raise _Stop(event) with the bytes used so far in
        ``self._used``."""
        pos = 0
        size = len(data)
        while True:
            self._used = pos
            if self.closed:
                self._used = size
                return size
            if not self._in_frame:
                need = 2
                while True:
                    if len(self._buf) >= 2:
                        b1 = self._buf[1] & 0x7F
                        need = 2 + (2 if b1 == 126 else 8 if b1 == 127 else 0) + (4 if self._buf[1] & 0x80 else 0)
                    if len(self._buf) >= need:
                        break
                    if pos >= size:
                        self._used = pos
                        return pos
                    take = need - len(self._buf)
                    self._buf += data[pos : pos + take]
                    pos = min(size, pos + take)
                hdr, self._buf = self._buf, b""
                self._used = pos
                b0, b1 = hdr[0], hdr[1]
                op = b0 & 0x0F
                if b1 & 0x80:
                    raise self._error(1)
                length = b1 & 0x7F
                if length == 126:
                    length = struct.unpack("!H", hdr[2:4])[0]
                elif length == 127:
                    length = struct.unpack("!Q", hdr[2:10])[0]
                    if length >> 63:
                        raise self._error(2)
                if op >= 8:
                    if not (b0 & 0x80) or length > 125 or op not in (8, 9, 10) or (b0 & 0x70):
                        raise self._error(3)
                    self._ctrl = b""
                elif op == 0:
                    if b0 & 0x70:
                        raise self._error(9)
                    if self._msg_op == 0:
                        raise self._error(4)
                elif op in (1, 2):
                    if self._msg_op != 0:
                        raise self._error(5)
                    if (b0 & 0x30) or ((b0 & 0x40) and not self.deflate):
                        raise self._error(6)
                    self._msg_op = op
                    self._msg = []
                    self._msg_len = 0
                    self._msg_deflated = bool(b0 & 0x40)
                else:
                    raise self._error(7)
                self._frame_op = op
                self._frame_fin = bool(b0 & 0x80)
                self._remaining = length
                self._in_frame = True
            take = min(self._remaining, size - pos)
            if take:
                chunk = data[pos : pos + take]
                if self._frame_op >= 8:
                    self._ctrl += chunk
                else:
                    if self._msg_deflated and self._msg_len + take > self.max_deflated:
                        self._used = pos
                        raise self._error(8, CloseCode.MESSAGE_TOO_BIG)
                    self._msg.append(chunk)
                    self._msg_len += take
                pos += take
                self._remaining -= take
            self._used = pos
            if self._remaining:
                return pos
            self._in_frame = False
            if self._frame_op >= 8:
                if self._frame_op == 8:
                    self.closed = True
                raise _Stop((EV_CONTROL, self._frame_op, self._ctrl))
            if not self._frame_fin:
                continue
            op, self._msg_op = self._msg_op, 0
            message = b"".join(self._msg)
            self._msg = []
            if self._msg_deflated:
                raise _Stop((EV_DEFLATED, op, message))
            if self.stamped:
                self._stamp = int.from_bytes(message[:8], "little", signed=True) if len(message) >= 8 else 0
                ok = op == self.opcode and len(message) == len(self.expected) and message[8:] == self.expected[8:]
            else:
                ok = op == self.opcode and message == self.expected
            event = self._settle(ok, now, op, len(message))
            if event is not None:
                raise _Stop(event)

    def feed(self, data: bytes, now: int) -> int:
        """Parse ``data`` received at ``now`` (ns); return how many replies
        matched; anything else goes to :attr:`events`."""
        if self.failed:
            return 0
        before = self.matched
        data = bytes(data)
        while True:
            try:
                self._parse(data, now)
                break
            except _Stop as stop:
                self.events.append(stop.event)
                if stop.event[0] == EV_ERROR:
                    break
                data = data[self._used :]
        return self.matched - before

    def run_blocking(self, fd: int, frame: bytes, window_start: int, window_end: int, end: int, step: int = 0) -> str | None:
        """The ``rr`` loop on a blocking socket (see the compiled module)."""
        if not self._due:
            self._due = now_ns()
        while not self.failed and not self.closed:
            if self._pending:
                data, self._pending = self._pending, b""
                try:
                    self._parse(data, self._pending_now)
                except _Stop as stop:
                    self._pending = data[self._used :]
                    self.events.append(stop.event)
                    return "events"  # recording stays: the reply in flight is still timed
                continue
            if self.in_flight > 0:
                try:
                    data = os.read(fd, 262144)
                except InterruptedError:
                    continue
                except OSError as exc:
                    self.recording = False
                    return os.strerror(exc.errno or _errno.EIO)
                if not data:
                    self.recording = False
                    return "EOF"
                self._pending, self._pending_now = data, now_ns()
                continue
            now = now_ns()
            if now >= end:
                break
            self.recording = window_start <= now < window_end
            if step:
                if now < self._due:
                    time.sleep((self._due - now) / 1e9)
                else:
                    self.lag_max = max(self.lag_max, now - self._due)
                now = self._due
                self._due += step
            try:
                view = memoryview(frame)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError as exc:
                self.recording = False
                return os.strerror(exc.errno or _errno.EIO)
            self.sent(1, now)
        self.recording = False
        return None


#: handshake_loop's error kinds, in the order of its counts.
HANDSHAKE_ERRORS = ("refused", "failed", "bad_status", "bad_accept", "no_close")


def _one_handshake(
    addr: tuple[Any, ...], request: bytes, accept: bytes, close_frame: bytes, timeout: float, status: list[bytes]
) -> tuple[int, int]:
    """(kind, errno): 0 for a good cycle, else 1 + HANDSHAKE_ERRORS index;
    a response that is not a 101 leaves its first line in ``status``."""
    try:
        sock = socket.socket(addr[0], socket.SOCK_STREAM)
    except OSError as exc:
        return 1, exc.errno or 0
    with sock:
        sock.settimeout(timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.connect(addr[4])
        except OSError as exc:
            return 1, exc.errno or 0
        try:
            sock.sendall(request)
            head = b""
            while b"\r\n\r\n" not in head:
                if len(head) >= 16383:
                    status[:] = [head.split(b"\r\n", 1)[0][:120]]
                    return 3, 0
                chunk = sock.recv(16383 - len(head))
                if not chunk:
                    return 2, 0
                head += chunk
            end = head.index(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                status[:] = [head.split(b"\r\n", 1)[0][:120]]
                return 3, 0
            found = False
            for line in head[:end].split(b"\r\n"):
                if len(line) > 21 and line[:21].lower() == b"sec-websocket-accept:":
                    found = line[21:].strip(b" \t") == accept
                    break
            if not found:
                return 4, 0
            sock.sendall(close_frame)
            rest = head[end + 4 :]
            closed = bool(rest) and rest[0] == 0x88
            while chunk := sock.recv(16384):
                if not rest:
                    rest = chunk
                    closed = chunk[0] == 0x88
        except TimeoutError:
            return 2, _errno.EAGAIN
        except OSError as exc:
            return 2, exc.errno or 0
    return (0, 0) if closed else (5, 0)


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
    """Cycle connect, upgrade, close until ``end`` (see the compiled module)."""
    name = host.decode() if isinstance(host, bytes) else host
    try:
        addr = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host!r}: {exc.strerror}") from None
    in_window = 0
    counts = [0] * 5
    first: tuple[int, int] | None = None
    status: list[bytes] = [b""]
    while True:
        t0 = now_ns()
        if t0 >= end:
            break
        kind, err = _one_handshake(addr, request, accept, close_frame, timeout, status if first is None else [b""])
        t1 = now_ns()
        if kind == 0:
            if t0 >= window_start and t1 <= window_end:
                histogram.record(t1 - t0)
                in_window += 1
            continue
        counts[kind - 1] += 1
        if first is None:
            first = (kind, err)
        time.sleep(0.01)
    sample = None
    if first is not None:
        kind, err = first
        sample = HANDSHAKE_ERRORS[kind - 1]
        if err:
            sample += ": " + os.strerror(err)
        elif kind == 3:
            sample += f": server answered {status[0].decode('latin-1')!r} instead of 101"
        elif kind == 4:
            sample += ": Sec-WebSocket-Accept missing or wrong"
        elif kind == 5:
            sample += ": the server sent no close frame before EOF"
        elif kind == 2:
            sample += ": the server hung up"
    return in_window, counts, sample


def ping(fd: int, n: int, gap_ns: int, histogram: Histogram) -> str | None:
    """Side A of the wake-up probe (see the compiled module)."""
    for _ in range(n):
        time.sleep(gap_ns / 1e9)
        t0 = now_ns()
        try:
            os.write(fd, b"x")
            if not os.read(fd, 1):
                return "EOF"
        except OSError as exc:
            return os.strerror(exc.errno or _errno.EIO)
        histogram.record(now_ns() - t0)
    return None


def pong(fd: int, n: int) -> str | None:
    """Side B of the wake-up probe (see the compiled module)."""
    for _ in range(n):
        try:
            b = os.read(fd, 1)
            if not b:
                return "EOF"
            os.write(fd, b)
        except OSError as exc:
            return os.strerror(exc.errno or _errno.EIO)
    return None
