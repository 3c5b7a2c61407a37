"""Raw-bytes client for the conformance and hostile suites.

Frames are built by hand here (not with ``fastws.codec._frame``) so that malformed
ones — reserved bits and opcodes, non-minimal lengths, oversized or fragmented
control frames — can be written, and so that the code under test is not its
own oracle. The server's replies are parsed by a small parser of our own.

A test case is a :class:`Case`: the bytes a client sends after the opening
handshake, the frames the server must answer with, and the close code it
must end with. :func:`run_case` sends them whole or one byte per TCP write,
reads until the server closes the TCP connection, and compares.
"""

from __future__ import annotations

import dataclasses
import errno
import select
import socket
import time
from collections.abc import Iterable, Sequence

from tests.conftest import UPGRADE, handshake, raw_connect, unit

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MASK = b"\x37\xfa\x21\x3d"


def _xor(data: bytes, key: bytes) -> bytes:
    n = len(data)
    if not n:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def frame(
    opcode: int,
    payload: bytes | str = b"",
    *,
    fin: bool = True,
    rsv1: bool = False,
    rsv2: bool = False,
    rsv3: bool = False,
    mask: bytes | None = MASK,
    length: int | None = None,
    form: int | None = None,
) -> bytes:
    """One client frame, masked by default; anything may be set, even wrong.

    ``length`` overrides the declared payload length (the payload itself is
    still ``payload``); ``form`` forces the length encoding: 7, 16 or 64 bits
    (non-minimal encodings are legal to send).
    """
    data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    n = len(data) if length is None else length
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | (0x20 if rsv2 else 0) | (0x10 if rsv3 else 0) | opcode
    mbit = 0x80 if mask is not None else 0
    if form is None:
        form = 7 if n < 126 else 16 if n < 65536 else 64
    if form == 7:
        head = bytes((b0, mbit | n))
    elif form == 16:
        head = bytes((b0, mbit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((b0, mbit | 127)) + n.to_bytes(8, "big")
    if mask is None:
        return head + data
    return head + mask + _xor(data, mask)


def text(payload: bytes | str, **kw: object) -> bytes:
    return frame(TEXT, payload, **kw)  # type: ignore[arg-type]


def binary(payload: bytes, **kw: object) -> bytes:
    return frame(BINARY, payload, **kw)  # type: ignore[arg-type]


def cont(payload: bytes | str, **kw: object) -> bytes:
    return frame(CONT, payload, **kw)  # type: ignore[arg-type]


def ping(payload: bytes = b"", **kw: object) -> bytes:
    return frame(PING, payload, **kw)  # type: ignore[arg-type]


def pong(payload: bytes = b"", **kw: object) -> bytes:
    return frame(PONG, payload, **kw)  # type: ignore[arg-type]


def close(code: int | None = 1000, reason: bytes | str = b"", **kw: object) -> bytes:
    """A close frame; ``code=None`` for an empty payload."""
    if isinstance(reason, str):
        reason = reason.encode("utf-8")
    payload = b"" if code is None else code.to_bytes(2, "big") + reason
    return frame(CLOSE, payload, **kw)  # type: ignore[arg-type]


def fragments(opcode: int, parts: Sequence[bytes | str]) -> bytes:
    """A message split into ``parts``: first frame ``opcode``, then continuations."""
    out = b""
    last = len(parts) - 1
    for i, part in enumerate(parts):
        out += frame(opcode if i == 0 else CONT, part, fin=i == last)
    return out


# -- server replies -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Frame:
    """A frame the server sent (servers never mask)."""

    opcode: int
    payload: bytes
    fin: bool = True
    rsv: int = 0

    @property
    def close_code(self) -> int | None:
        """The close code, None for an empty close payload."""
        assert self.opcode == CLOSE
        return int.from_bytes(self.payload[:2], "big") if self.payload else None

    def brief(self) -> tuple[object, ...]:
        """What a table row compares: close frames by code only."""
        if self.opcode == CLOSE:
            return ("close", self.close_code)
        return (self.opcode, self.payload)


def parse_frames(buf: bytearray) -> list[Frame]:
    """Pop every complete server frame off the front of ``buf``."""
    out = []
    while len(buf) >= 2:
        b0, b1 = buf[0], buf[1]
        assert not b1 & 0x80, f"server frame is masked: {bytes(buf[:2])!r}"
        n = b1 & 0x7F
        pos = 2
        if n == 126:
            if len(buf) < 4:
                break
            n = int.from_bytes(buf[2:4], "big")
            pos = 4
        elif n == 127:
            if len(buf) < 10:
                break
            n = int.from_bytes(buf[2:10], "big")
            pos = 10
        if len(buf) < pos + n:
            break
        out.append(Frame(b0 & 0x0F, bytes(buf[pos : pos + n]), bool(b0 & 0x80), (b0 >> 4) & 7))
        del buf[: pos + n]
    return out


@dataclasses.dataclass
class Reply:
    frames: list[Frame]
    #: How the server ended the TCP connection: "eof" (FIN), "reset" (RST,
    #: e.g. it closed with our unread bytes in its buffer) or "timeout".
    ending: str
    rest: bytes = b""


def read_until_closed(sock: socket.socket, timeout: float | None = None, buf: bytes = b"") -> Reply:
    """Read frames until the server closes the TCP connection or ``timeout``."""
    deadline = time.monotonic() + (unit(5) if timeout is None else timeout)
    data = bytearray(buf)
    frames: list[Frame] = []
    ending = "timeout"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 16)
        except socket.timeout:
            break
        except ConnectionResetError:
            ending = "reset"
            break
        if not chunk:
            ending = "eof"
            break
        data += chunk
        frames += parse_frames(data)
    frames += parse_frames(data)
    return Reply(frames, ending, bytes(data))


# -- connections ------------------------------------------------------------


def open_ws(port: int, request: bytes = UPGRADE) -> tuple[socket.socket, bytes]:
    """TCP connect and complete the opening handshake.

    Returns the socket and any bytes read past the response head.
    """
    sock = raw_connect(port)
    _, _, rest = handshake(sock, request).partition(b"\r\n\r\n")
    return sock, rest


def send_bytewise(sock: socket.socket, wire: bytes) -> int:
    """Send one byte per TCP segment (Nagle off); stop if the server is gone.

    Returns how many bytes were sent. A server that fails the connection
    halfway closes its socket, and our next writes then fail: that is fine.
    """
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sent = 0
    for i in range(len(wire)):
        try:
            sock.sendall(wire[i : i + 1])
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                break
            raise
        sent += 1
    return sent


def send_whole(sock: socket.socket, wire: bytes) -> None:
    try:
        sock.sendall(wire)
    except (BrokenPipeError, ConnectionResetError):
        # The server may fail the connection before it has read everything.
        pass


# -- tables -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """One row: send ``wire`` after the handshake; expect ``replies`` then a
    close frame with ``code`` (None: an empty close), then the TCP close.

    With ``append_close`` the client sends a normal close (1000) after
    ``wire``, so a row that expects only echoes still ends cleanly.
    """

    id: str
    wire: bytes
    replies: tuple[tuple[object, ...], ...]
    code: int | None
    append_close: bool = False
    #: Sent again as one byte per TCP write (the "representative subset").
    bytewise: bool = True

    def expected(self) -> list[tuple[object, ...]]:
        return [*self.replies, ("close", self.code)]

    def full_wire(self) -> bytes:
        return self.wire + close(1000) if self.append_close else self.wire


def echo(id: str, wire: bytes, *replies: tuple[object, ...], bytewise: bool = True) -> Case:
    """The server answers ``replies``; then our close 1000 is echoed."""
    return Case(id, wire, tuple(replies), 1000, append_close=True, bytewise=bytewise)


def fails(id: str, wire: bytes, code: int | None, *replies: tuple[object, ...], bytewise: bool = True) -> Case:
    """The server answers ``replies``, then closes with ``code``."""
    return Case(id, wire, tuple(replies), code, bytewise=bytewise)


def T(payload: bytes | str) -> tuple[object, ...]:
    """An expected text message."""
    return (TEXT, payload.encode() if isinstance(payload, str) else payload)


def B(payload: bytes) -> tuple[object, ...]:
    """An expected binary message."""
    return (BINARY, payload)


def P(payload: bytes) -> tuple[object, ...]:
    """An expected pong."""
    return (PONG, payload)


def run_case(port: int, case: Case, mode: str = "whole", timeout: float | None = None) -> Reply:
    """Play ``case`` against the server on ``port`` and assert the outcome."""
    sock, rest = open_ws(port)
    try:
        wire = case.full_wire()
        if mode == "bytewise":
            send_bytewise(sock, wire)
        else:
            send_whole(sock, wire)
        reply = read_until_closed(sock, timeout, rest)
    finally:
        sock.close()
    got = [f.brief() for f in reply.frames]
    assert got == case.expected(), f"{case.id} ({mode}): got {_short(got)}, expected {_short(case.expected())}"
    for f in reply.frames:
        assert f.fin and f.rsv == 0, f"{case.id}: server frame with fin={f.fin} rsv={f.rsv}"
        if f.opcode == CLOSE and len(f.payload) > 2:
            f.payload[2:].decode("utf-8")  # the reason must be valid UTF-8
    assert reply.ending in ("eof", "reset"), f"{case.id} ({mode}): server did not close TCP: {reply.ending}"
    assert not reply.rest, f"{case.id}: trailing bytes after the last frame: {reply.rest[:40]!r}"
    return reply


def _short(items: Iterable[tuple[object, ...]]) -> list[object]:
    out: list[object] = []
    for item in items:
        if item[0] != "close" and isinstance(item[1], bytes) and len(item[1]) > 40:
            out.append((item[0], item[1][:20] + b"..." + f"({len(item[1])} bytes)".encode()))
        else:
            out.append(item)
    return out


def wait_readable(sock: socket.socket, timeout: float) -> bool:
    r, _, _ = select.select([sock], [], [], timeout)
    return bool(r)
