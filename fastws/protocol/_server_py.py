"""The sans-I/O server protocol of one WebSocket connection.

Owns every protocol decision, and nothing else: request bytes in, the
handshake decision out (a 101, or the HTTP response that refuses the
request); then frame bytes in, events out (message, ping, pong, close) and
bytes to send out. It holds the state machine (CONNECTING, OPEN, CLOSING,
CLOSED), the close handshake, the timeouts as a ``deadline`` it reports (the
caller runs the timer and calls :meth:`ServerProtocol.timeout`), and the one
place where protocol errors become close codes. It never touches a socket or
the event loop, so a test is "feed bytes, check events and bytes out".

One source, two builds: ``_server_c.py`` is a link to this file, compiled
with the types of ``_server_c.pxd``; this file is the pure-Python twin.
``fastws.protocol`` picks one. Both import the public classes (``State``,
``CloseCode``, exceptions) from pure modules, so they exist once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import httptools

from ..codec import frame as _frame
from ..codec import handshake as _handshake
from ..codec.compression import negotiate as _negotiate_deflate
from ..exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidHeader,
    InvalidOrigin,
    NegotiationError,
    ProtocolError,
)
from ..types import OK_CLOSE_CODES, Close, CloseCode
from .http import (
    Headers,
    Request,
    Response,
    check_request,
    error_response,
    format_address,
    make_response,
    upgrade_required,
)

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["RTT_BUCKETS", "ServerProtocol", "Stats"]

logger = logging.getLogger("fastws")

_close_payload = _frame.close_payload
_parse_close = _frame.parse_close
FLAG_RSV1: int = _frame.FLAG_RSV1
OP_TEXT: int = _frame.OP_TEXT
OP_BINARY: int = _frame.OP_BINARY
OP_CLOSE: int = _frame.OP_CLOSE
OP_PING: int = _frame.OP_PING
OP_PONG: int = _frame.OP_PONG

# State values as plain ints, so the compiled build compares C ints; they
# equal fastws.State's members.
CONNECTING: int = 0
OPEN: int = 1
CLOSING: int = 2
CLOSED: int = 3

# What next_event() reported and complete_close() will act on.
PENDING_NONE: int = 0
PENDING_CLOSE: int = 1  # the peer's close frame
PENDING_FAIL: int = 2  # a protocol error: fail the connection

#: The event next_event() returns when the peer closed or broke the protocol:
#: the caller decides when to act on it (complete_close, or hold_close first).
CLOSE_EVENT: tuple[int, bytes] = (OP_CLOSE, b"")

SelectSubprotocol = Callable[[Sequence[str]], "str | None"]


#: Upper bounds (seconds) of the ping round-trip histogram's buckets.
#: Distinct request paths counted; a client cannot grow the table further.
MAX_PATHS = 1024
#: A bytes message this large is queued as its header and itself (no copy).
SPLIT_ABOVE = 65536
RTT_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Stats:
    """Counters of one server process, shared by all its connections.

    Present only when metrics are on (``Config.metrics`` or the dashboard):
    the protocol and the connection test ``stats is not None`` and do
    nothing more when they are off. Message counters are C integers in the
    compiled build, bumped where a message is parsed or framed. Bytes are
    payload bytes on the wire (compressed, with permessage-deflate).
    """

    def __init__(self) -> None:
        self.text_in = 0
        self.binary_in = 0
        self.text_bytes_in = 0
        self.binary_bytes_in = 0
        self.text_out = 0
        self.binary_out = 0
        self.text_bytes_out = 0
        self.binary_bytes_out = 0
        #: Times a connection's write buffer went over write_limit.
        self.write_pauses = 0
        #: Connections dropped for letting more than max_write_buffer pile up.
        self.slow_readers_dropped = 0
        #: Handshake answers by HTTP status (101 = opened).
        self.handshakes: dict[int, int] = {}
        #: Close codes of connections that ended, sent and received (1006:
        #: none received).
        self.close_sent: dict[int, int] = {}
        self.close_rcvd: dict[int, int] = {}
        #: Opened connections by request path.
        self.paths: dict[str, int] = {}
        #: Ping round trips: count per RTT_BUCKETS bucket (+ one for +Inf).
        self.rtt_buckets: list[int] = [0] * (len(RTT_BUCKETS) + 1)
        self.rtt_count = 0
        self.rtt_sum = 0.0

    def opened(self, path: str) -> None:
        """A connection opened (101) on ``path`` (query left out; at most
        MAX_PATHS distinct paths, the rest count as "(other)")."""
        self.handshakes[101] = self.handshakes.get(101, 0) + 1
        path = path.partition("?")[0]
        paths = self.paths
        if path not in paths and len(paths) >= MAX_PATHS:
            path = "(other)"
        paths[path] = paths.get(path, 0) + 1

    def refused(self, status: int) -> None:
        """A handshake answered over HTTP with ``status``."""
        self.handshakes[status] = self.handshakes.get(status, 0) + 1

    def observe_rtt(self, seconds: float) -> None:
        """A ping's round trip."""
        i = 0
        n = len(RTT_BUCKETS)
        while i < n and seconds > RTT_BUCKETS[i]:
            i += 1
        self.rtt_buckets[i] += 1
        self.rtt_count += 1
        self.rtt_sum += seconds


class ServerProtocol:
    """Sans-I/O server side of one WebSocket connection.

    Handshake: :meth:`receive_request` until it returns the
    :class:`~fastws.Request`; :meth:`accept` decides; :meth:`send_response`
    sends the 101 (or any response) and opens, or refuses and closes.

    Frames: :meth:`receive_data`, then :meth:`next_event` until it returns
    None. Events are ``(opcode, payload)``: ``OP_TEXT`` / ``OP_BINARY``
    messages (inflated if they were compressed), ``OP_PING`` (the pong is
    already queued), ``OP_PONG``, and :data:`CLOSE_EVENT` when the peer
    closed or broke the protocol; act on that one with
    :meth:`complete_close`, now or after :meth:`hold_close`.

    Output: every byte to send is appended to ``out`` (``out_size`` bytes);
    after writing them call :meth:`output_written` (or use
    :meth:`data_to_send`). ``should_close`` means "close TCP once ``out`` is
    written"; ``should_abort``, "drop TCP now". ``deadline`` is the time
    (in the caller's clock) at which :meth:`timeout` must be called; 0 for
    none.
    """

    def __init__(
        self,
        config: "Config",
        num: int = 0,
        peer: Any = None,
        subprotocols: Sequence[str] | None = None,
        origins: Sequence[str | re.Pattern[str] | None] | None = None,
        now: float = 0.0,
        stats: "Stats | None" = None,
    ) -> None:
        self.config = config
        #: The server's counters, or None when metrics are off.
        self.stats = stats
        #: Connection number used in log lines.
        self.num = num
        #: The peer's address, for log lines.
        self.peer = peer
        self.state = CONNECTING
        self.request: Request | None = None
        self._response: Response | None = None
        self._head = b""
        self.subprotocol: str | None = None
        self.close_rcvd: Close | None = None
        self.close_sent: Close | None = None
        self.close_rcvd_then_sent: bool | None = None
        timeout = config.open_timeout
        self.deadline = now + timeout if timeout is not None else 0.0
        self.should_close = False
        self.should_abort = False
        self.out: list[bytes] = []
        self.out_size = 0
        #: permessage-deflate state (fastws.codec.compression) once agreed.
        self.deflate: Any = None
        #: Why the handshake was refused (for the access log), "" if it was not.
        self.reject_reason = ""
        self._parser: Any = httptools.HttpRequestParser(self)
        self._hs_size = 0
        self._hs_done = False
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._rest = b""
        self._reader: Any = None
        self._writer: Any = _frame.FrameWriter()
        self._subprotocols = list(subprotocols) if subprotocols else None
        self._origins = origins
        self._pending = PENDING_NONE
        self._pending_payload = b""
        self._fail_code: int = CloseCode.PROTOCOL_ERROR
        self._fail_reason = ""
        self._held = False
        self._stopped = False
        self._out_opcode = OP_BINARY  #: opcode of the fragmented message being sent (stats)

    # -- handshake ------------------------------------------------------

    def receive_request(self, data: bytes) -> Request | None:
        """Parse request bytes; the :class:`Request` once its head is complete.

        A malformed request (400) or a header block over
        ``max_header_size`` (431) is answered here: the response is in
        ``out``, the state is CLOSED and ``should_close`` is set.
        """
        parser = self._parser
        if parser is None:
            self._rest += data
            return None
        rest = b""
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            rest = data[exc.args[0]:]
        except httptools.HttpParserError as exc:
            self._reject(make_response(400, f"Malformed HTTP request: {exc}.\n"), "malformed")
            return None
        self._hs_size += len(data) - len(rest)
        limit = self.config.max_header_size
        if self._hs_size > limit:
            self._reject(
                make_response(431, f"Request header block is larger than {limit} bytes.\n"),
                "headers too large",
            )
            return None
        if not self._hs_done:
            return None
        self._parser = None
        self._rest += rest  # after any body bytes on_body kept
        request = Request(
            self._url.decode("latin-1"),
            Headers._from_wire(self._headers),
            parser.get_method().decode("latin-1"),
            parser.get_http_version(),
        )
        self._headers = []
        self.request = request
        return request

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._hs_done = True

    def on_body(self, body: bytes) -> None:
        # A plain HTTP request's body (an upgrade has none): kept for
        # hand_over, and not counted against max_header_size.
        self._rest += body
        self._hs_size -= len(body)

    def hand_over(self) -> bytes:
        """The connection leaves the WebSocket protocol after a request head
        (another HTTP face takes it): the state is CLOSED, nothing more is
        sent; returns the bytes read behind the head (the start of a body)."""
        rest = self._rest
        self._rest = b""
        self._parser = None
        self.state = CLOSED
        self.deadline = 0.0
        return rest

    def accept(self, request: Request, select_subprotocol: SelectSubprotocol | None = None) -> Response | None:
        """Decide on ``request``: None to accept it, else the refusal.

        On None the 101 is prepared (``response`` shows it) and sent by
        ``send_response(None)``. A refusal is an HTTP response: 426 for a
        plain HTTP request, 400/403/405/426 for a bad upgrade, 500 when
        ``select_subprotocol`` (user code) raised.
        """
        try:
            key, is_upgrade = check_request(request)
            if not is_upgrade:
                self.reject_reason = "not an upgrade"
                return upgrade_required(request)
            extra = self._negotiate(request, select_subprotocol)
        except InvalidHandshake as exc:
            self.reject_reason = str(exc)
            return error_response(exc)
        except Exception:
            logger.exception("conn %d: error in select_subprotocol", self.num)
            self.reject_reason = "select_subprotocol failed"
            return make_response(500, "Internal server error.\n")
        self._head = _handshake.build_101(key, extra)
        self._response = None
        return None

    def _negotiate(self, request: Request, select: SelectSubprotocol | None) -> bytes:
        """Origin, subprotocol and extensions: the extra header lines of the 101."""
        headers = request.headers
        origins = self._origins
        if origins is not None:
            values = headers.get_all("Origin")
            if len(values) > 1:
                raise InvalidHeader("repeated Origin header")
            origin = values[0] if values else None
            for allowed in origins:
                if allowed == origin or (
                    isinstance(allowed, re.Pattern) and origin is not None and allowed.fullmatch(origin)
                ):
                    break
            else:
                raise InvalidOrigin(f"origin {origin!r} is not allowed")
        server = self.config.server_header
        extra = f"Server: {server}\r\n".encode("latin-1") if server else b""
        # Subprotocol names are case-sensitive, unlike the tokens of
        # parse_tokens, so the raw values are split here.
        offered = [
            p.strip() for value in headers.get_all("Sec-WebSocket-Protocol") for p in value.split(",") if p.strip()
        ]
        chosen: str | None = None
        if select is not None:
            chosen = select(offered)
            if chosen is not None and chosen not in offered:
                raise NegotiationError(f"select_subprotocol chose {chosen!r}, which the client did not offer")
        elif self._subprotocols:
            if not offered:
                raise NegotiationError("missing subprotocol")
            for candidate in self._subprotocols:
                if candidate in offered:
                    chosen = candidate
                    break
            else:
                raise NegotiationError("invalid subprotocol; expected one of " + ", ".join(self._subprotocols))
        self.subprotocol = chosen
        if chosen is not None:
            extra += f"Sec-WebSocket-Protocol: {chosen}\r\n".encode("latin-1")
        self.deflate = None
        if self.config.compression is not None:
            offers = headers.get_all("Sec-WebSocket-Extensions")
            if offers:
                agreed = _negotiate_deflate(offers, self.config)
                if agreed is not None:
                    self.deflate = agreed[1]
                    extra += f"Sec-WebSocket-Extensions: {agreed[0]}\r\n".encode("latin-1")
        return extra

    @property
    def response(self) -> Response | None:
        """The handshake response: the prepared or sent 101, or the refusal."""
        if self._response is None and self._head:
            self._response = Response.parse_head(self._head)
        return self._response

    def send_response(self, response: Response | None, why: str | None = None) -> None:
        """Send the prepared 101 (``None``) or ``response``.

        A 101 opens the connection; any other status refuses the handshake
        (``why`` is kept in ``reject_reason``, default the reason
        :meth:`accept` gave) and closes. Does nothing unless CONNECTING.
        """
        if self.state != CONNECTING or self.should_close:
            return
        if response is None:
            head = self._head
        elif response.status_code == 101:
            # A 101 from process_response is sent as the hook left it (the
            # prepared one had the Server header; deleting it is allowed).
            self._response = response
            head = response.serialize()
            if self.deflate is not None and "permessage-deflate" not in ",".join(
                response.headers.get_all("Sec-WebSocket-Extensions")
            ):
                # A 101 without the extension: the client will not inflate,
                # so nothing may be compressed.
                self.deflate = None
        else:
            self._reject(response, self.reject_reason if why is None else why)
            return
        self._append(head)
        self.state = OPEN
        self.deadline = 0.0
        config = self.config
        if self.deflate is None:
            self._reader = _frame.FrameReader(max_message_size=config.max_message_size)
        else:
            # The reader limits what arrives on the wire; deflate may expand
            # a message, so it gets room for that, and the message itself is
            # held to max_message_size after inflating (or, uncompressed, in
            # next_event).
            self._reader = _frame.FrameReader(max_message_size=self.deflate.wire_limit, rsv1_allowed=True)
        if self._rest:
            self._reader.feed_data(self._rest)
            self._rest = b""

    def _add_server_header(self, response: Response) -> None:
        server = self.config.server_header
        if server and "Server" not in response.headers:
            response.headers["Server"] = server

    def _reject(self, response: Response, why: str) -> None:
        """Answer over HTTP and close: the WebSocket never opens."""
        self._response = response
        self.reject_reason = why
        self._add_server_header(response)
        if "Connection" not in response.headers:
            response.headers["Connection"] = "close"
        data = response.serialize()
        request = self.request
        if request is not None and request.method == "HEAD":
            # RFC 9110 section 9.3.2: same headers as GET, no content.
            data = data[: len(data) - len(response.body)]
        self._append(data)
        self.state = CLOSED
        self.deadline = 0.0
        self.should_close = True
        self._parser = None

    # -- frames ---------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; events come out of :meth:`next_event`."""
        if self._reader is not None:
            if not self._stopped:
                self._reader.feed_data(data)
        elif self.state == CONNECTING:
            self.receive_request(data)

    def next_event(self) -> tuple[int, bytes] | None:
        """The next event, or None until more bytes arrive."""
        if self._stopped:
            return None
        reader = self._reader
        while True:
            try:
                event: "tuple[int, bytes] | None" = reader.next_event()
            except ProtocolError as exc:
                return self._failed(exc.code, str(exc))
            if event is None:
                return None
            opcode = event[0]
            if opcode == OP_TEXT or opcode == OP_BINARY:
                # Messages the peer sent before it saw our close frame are
                # delivered too (RFC 6455 forbids sending data after a close,
                # not receiving it; websockets does the same).
                if self.state == OPEN or self.state == CLOSING:
                    if self.deflate is not None and len(event[1]) > self.deflate.max_size:
                        # The reader's limit has room for deflate's expansion
                        # (see send_response); an uncompressed message gets none.
                        return self._failed(
                            CloseCode.MESSAGE_TOO_BIG, f"message of {len(event[1])} bytes exceeds max_message_size"
                        )
                    stats = self.stats
                    if stats is not None:
                        payload = event[1]
                        if opcode == OP_TEXT:
                            stats.text_in += 1
                            stats.text_bytes_in += len(payload)
                        else:
                            stats.binary_in += 1
                            stats.binary_bytes_in += len(payload)
                    return event
            elif opcode == OP_PING:
                # Answered until the peer's close arrives, ours sent or not
                # (RFC 6455 section 5.5.2); the reader stops at that close.
                if self.state == OPEN or self.state == CLOSING:
                    self._append(self._writer.frame(OP_PONG, event[1]))
                    return event
            elif opcode == OP_PONG:
                return event
            elif opcode == OP_CLOSE:
                self._pending = PENDING_CLOSE
                self._pending_payload = event[1]
                self._stopped = True
                return CLOSE_EVENT
            elif opcode & FLAG_RSV1 and self.deflate is not None:
                # A compressed message (the reader lets RSV1 through only
                # when permessage-deflate was agreed). Off the branches
                # above, so uncompressed messages never test for it.
                if self.state == OPEN or self.state == CLOSING:
                    is_text = opcode == OP_TEXT | FLAG_RSV1
                    stats = self.stats
                    if stats is not None:
                        payload = event[1]
                        if is_text:
                            stats.text_in += 1
                            stats.text_bytes_in += len(payload)
                        else:
                            stats.binary_in += 1
                            stats.binary_bytes_in += len(payload)
                    try:
                        data = self.deflate.inflate(event[1], is_text)
                    except ProtocolError as exc:
                        return self._failed(exc.code, str(exc))
                    return (OP_TEXT if is_text else OP_BINARY, data)
            else:
                return self._failed(CloseCode.PROTOCOL_ERROR, f"unexpected frame opcode {opcode:#x}")

    def _failed(self, code: int, reason: str) -> tuple[int, bytes]:
        """Report a protocol error as CLOSE_EVENT; complete_close() fails."""
        self._pending = PENDING_FAIL
        self._fail_code = code
        self._fail_reason = reason
        self._stopped = True
        return CLOSE_EVENT

    @property
    def close_pending(self) -> bool:
        """True between a CLOSE_EVENT and :meth:`complete_close`."""
        return self._pending != PENDING_NONE

    def hold_close(self, now: float) -> None:
        """Act on the CLOSE_EVENT later (the handler has messages to take).

        The close waits until :meth:`complete_close` or :meth:`close`, or at
        most ``close_timeout`` (then :meth:`timeout` completes it).
        """
        if self._pending == PENDING_NONE:
            return
        self._held = True
        timeout = self.config.close_timeout
        self.deadline = now + timeout if timeout is not None else 0.0

    def complete_close(self, now: float = 0.0) -> None:
        """Act on the CLOSE_EVENT: answer the peer's close, or fail."""
        pending = self._pending
        self._pending = PENDING_NONE
        self._held = False
        if pending == PENDING_CLOSE:
            self._close_received(self._pending_payload)
        elif pending == PENDING_FAIL:
            self.fail(self._fail_code, self._fail_reason)

    def _close_received(self, payload: bytes) -> None:
        code, reason = _parse_close(payload)
        self.close_rcvd = Close(code, reason)
        if self.state == OPEN:
            self.close_rcvd_then_sent = True
            # Echo the code (RFC 6455 section 5.5.1); 1005 means "none", so
            # an empty close is answered with an empty close.
            self._send_close(code, "")
            self.state = CLOSING
        # The server closes TCP first (RFC 6455 section 7.1.1).
        self.deadline = 0.0
        self.should_close = True

    def fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 section 7.1.7): close frame, then TCP."""
        logger.info("conn %d %s: closing with %d: %s", self.num, format_address(self.peer), code, reason)
        if self.state == OPEN:
            self._send_close(code, reason)
        if self.state != CLOSED:
            self.state = CLOSING
        self._stopped = True
        self._pending = PENDING_NONE
        self._held = False
        self.deadline = 0.0
        self.should_close = True

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "", now: float = 0.0) -> None:
        """Start the closing handshake (does nothing unless OPEN or CONNECTING).

        Everything queued before is sent before the close frame. TCP closes
        when the peer answers, or at ``deadline`` (``close_timeout``).
        While CONNECTING, a request that hooks are still deciding on is
        answered 503; without a request the connection just closes.
        """
        if self.state == OPEN:
            pending = self._pending
            if pending == PENDING_FAIL:
                # A protocol error was read (and held): its code wins.
                self.complete_close(now)
                return
            if pending == PENDING_CLOSE:
                # The peer's close was read (and held): ours answers it.
                self._pending = PENDING_NONE
                self._held = False
                rcvd_code, rcvd_reason = _parse_close(self._pending_payload)
                self.close_rcvd = Close(rcvd_code, rcvd_reason)
                self._send_close(code, reason)
                self.state = CLOSING
                self.deadline = 0.0
                self.should_close = True
                return
            self._send_close(code, reason)
            self.state = CLOSING
            timeout = self.config.close_timeout
            self.deadline = now + timeout if timeout is not None else 0.0
        elif self.state == CONNECTING:
            if self.request is not None and not self.should_close:
                # The request is in (hooks are deciding): answer it, as
                # websockets does when its server closes mid-handshake.
                self._reject(make_response(503, "Server is shutting down.\n"), "server closing")
            else:
                self.should_close = True

    def abort(self) -> None:
        """The connection is being dropped: nothing more is sent or read."""
        if self.state == OPEN:
            self.state = CLOSING
        self._stopped = True
        self.deadline = 0.0
        self.should_abort = True

    def timeout(self, now: float) -> None:
        """``deadline`` has passed: finish a held close, or drop the peer."""
        self.deadline = 0.0
        if self._held:
            self.complete_close(now)
        elif self.state == CONNECTING:
            logger.info(
                "conn %d %s: opening handshake not complete after %ss; closing",
                self.num,
                format_address(self.peer),
                self.config.open_timeout,
            )
            self.should_abort = True
        elif self.state == CLOSING:
            logger.info(
                "conn %d %s: no close frame from the peer after %ss; dropping",
                self.num,
                format_address(self.peer),
                self.config.close_timeout,
            )
            self.should_abort = True

    def connection_lost(self) -> None:
        """TCP is closed: the state is CLOSED."""
        self.state = CLOSED
        self.deadline = 0.0
        self._stopped = True

    def _send_close(self, code: int, reason: str) -> None:
        try:
            payload = _close_payload(code, reason)
        except ValueError:
            if len(reason.encode("utf-8")) <= 123:
                raise  # the code itself may not be sent: nothing is
            # A reason over 123 bytes: cut it at a character boundary.
            payload = _close_payload(code, reason.encode("utf-8")[:123].decode("utf-8", "ignore"))
        self.close_sent = Close(code, reason)
        if self.close_rcvd_then_sent is None:
            self.close_rcvd_then_sent = self.close_rcvd is not None
        self._append(self._writer.frame(OP_CLOSE, payload))

    # -- sending --------------------------------------------------------

    def send_message(self, data: str | bytes | bytearray | memoryview, text: "bool | None" = None) -> None:
        """Queue one message: ``str`` as text, bytes-like as binary.

        ``text`` overrides the frame type. Compressed when
        permessage-deflate was agreed (unless shorter than
        ``deflate_min_size``). Raises :class:`ConnectionClosed` unless OPEN.
        """
        if self.state != OPEN:
            raise self.close_exc
        if text is None:
            opcode = OP_TEXT if isinstance(data, str) else OP_BINARY
        else:
            opcode = OP_TEXT if text else OP_BINARY
        if self.deflate is not None:
            frame = self.deflate.frame(opcode, data)
            self.out.append(frame)
            size = len(frame)
        elif type(data) is bytes and len(data) >= SPLIT_ABOVE:
            # Header and payload go out as two buffers of one writev: a
            # large payload is not copied into a frame (bytes do not change,
            # so holding it until the write is safe).
            frame = self._writer.header(opcode, len(data))
            self.out.append(frame)
            self.out.append(data)
            size = len(frame) + len(data)
        else:
            frame = self._writer.frame(opcode, data)
            self.out.append(frame)
            size = len(frame)
        self.out_size += size
        stats = self.stats
        if stats is not None:
            # Payload bytes: the frame minus the server's unmasked header.
            size -= 2 if size < 128 else 4 if size < 65540 else 10
            if opcode == OP_TEXT:
                stats.text_out += 1
                stats.text_bytes_out += size
            else:
                stats.binary_out += 1
                stats.binary_bytes_out += size

    def send_frame(self, opcode: int, data: str | bytes | bytearray | memoryview, fin: bool = True) -> None:
        """Queue one data frame of a fragmented message (0 = continuation).

        With permessage-deflate the fragments of a message are compressed
        as one deflate stream (RSV1 on the first frame).
        """
        if self.state != OPEN:
            raise self.close_exc
        if self.deflate is None:
            frame = self._writer.frame(opcode, data, fin)
        else:
            frame = self.deflate.fragment(opcode, data, fin)
        self._append(frame)
        if self.stats is not None:
            if opcode:
                self._out_opcode = opcode
            self._count_out(self._out_opcode, len(frame), fin)

    def send_ping(self, data: str | bytes = b"") -> None:
        """Queue a ping. Raises :class:`ConnectionClosed` unless OPEN."""
        if self.state != OPEN:
            raise self.close_exc
        self._append(self._writer.frame(OP_PING, data))

    def send_pong(self, data: str | bytes = b"") -> None:
        """Queue an unsolicited pong. Raises :class:`ConnectionClosed` unless OPEN."""
        if self.state != OPEN:
            raise self.close_exc
        self._append(self._writer.frame(OP_PONG, data))

    def send_encoded(self, frame: bytes) -> bool:
        """Queue a frame encoded once for many connections (broadcast).

        Returns False, queueing nothing, unless OPEN.
        """
        if self.state != OPEN:
            return False
        self.out.append(frame)
        self.out_size += len(frame)
        if self.stats is not None:
            self._count_out(frame[0] & 0x0F, len(frame), True)
        return True

    def _count_out(self, opcode: int, frame_size: int, message: bool) -> None:
        """Count a data frame sent by send_frame or send_encoded (the hot
        send_message counts inline); ``message``: the last of its message."""
        stats = self.stats
        assert stats is not None
        size = frame_size - (2 if frame_size < 128 else 4 if frame_size < 65540 else 10)
        if opcode == OP_TEXT:
            stats.text_bytes_out += size
            if message:
                stats.text_out += 1
        else:
            stats.binary_bytes_out += size
            if message:
                stats.binary_out += 1

    def _append(self, data: bytes) -> None:
        self.out.append(data)
        self.out_size += len(data)

    def output_written(self) -> None:
        """The caller wrote everything in ``out``: forget it."""
        self.out.clear()
        self.out_size = 0

    def data_to_send(self) -> bytes:
        """Everything queued to send, as one bytes object; forgets it."""
        data = b"".join(self.out)
        self.output_written()
        return data

    @property
    def close_exc(self) -> ConnectionClosed:
        """The ConnectionClosed subclass that describes how this one ended."""
        rcvd = self.close_rcvd
        sent = self.close_sent
        if rcvd is not None and sent is not None:
            ok = rcvd.code in OK_CLOSE_CODES and sent.code in OK_CLOSE_CODES
            return (ConnectionClosedOK if ok else ConnectionClosedError)(rcvd, sent, self.close_rcvd_then_sent)
        return ConnectionClosedError(rcvd, sent, None)

