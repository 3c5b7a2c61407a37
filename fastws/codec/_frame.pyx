"""Compiled WebSocket frame codec (RFC 6455 section 5, RFC 7692 RSV1).

The hot path of the server: every byte a peer sends goes through
:meth:`FrameReader.next_event`. Per event it creates exactly one payload
``bytes`` object (unmasked while it is filled) and one tuple; headers are read
through pointers, UTF-8 is checked by a table-driven DFA with an ASCII fast
path. :mod:`fastws.codec._frame_py` is the pure-Python twin with the same behaviour,
down to the point in a byte stream where an error is raised.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy, memmove

# One exception class for both implementations, so that `except
# ProtocolError` does not depend on which one is loaded.
from fastws.exceptions import ProtocolError
from fastws.types import CloseCode

__all__ = [
    "FLAG_RSV1",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "FrameReader",
    "ProtocolError",
    "close_payload",
    "encode_frame",
    "parse_close",
    "validate_utf8",
]

OP_CONT = OPCODE_CONT
OP_TEXT = OPCODE_TEXT
OP_BINARY = OPCODE_BINARY
OP_CLOSE = OPCODE_CLOSE
OP_PING = OPCODE_PING
OP_PONG = OPCODE_PONG
FLAG_RSV1 = EVENT_RSV1

cdef extern from "Python.h":
    const Py_ssize_t PY_SSIZE_T_MAX

# Buffer sizing: grow freely while a big frame arrives, but give the memory
# back once it is parsed so that thousands of idle connections stay small.
cdef enum:
    BUF_MIN = 16384
    BUF_SHRINK_ABOVE = 262144
    # A one-frame message this large whose bytes are still on their way is
    # unmasked straight into its event's bytes object as they arrive, never
    # buffered (one copy instead of two or three of a megabyte).
    DIRECT_MIN = 262144
    MAX_HEADER = 14

cdef str _MSG_UTF8 = "text message is not valid UTF-8 (RFC 6455 section 8.1)"


# -- UTF-8 ------------------------------------------------------------------
#
# A DFA in the style of Bjoern Hoehrmann's decoder, tables derived here from
# Table 3-7 "Well-Formed UTF-8 Byte Sequences" of the Unicode Standard:
#
#   U+0000..U+007F     00..7F
#   U+0080..U+07FF     C2..DF  80..BF
#   U+0800..U+0FFF     E0      A0..BF  80..BF
#   U+1000..U+CFFF     E1..EC  80..BF  80..BF
#   U+D000..U+D7FF     ED      80..9F  80..BF     (ED A0.. would be a surrogate)
#   U+E000..U+FFFF     EE..EF  80..BF  80..BF
#   U+10000..U+3FFFF   F0      90..BF  80..BF  80..BF
#   U+40000..U+FFFFF   F1..F3  80..BF  80..BF  80..BF
#   U+100000..U+10FFFF F4      80..8F  80..BF  80..BF
#
# Bytes fall into 12 classes that the table distinguishes; a state is a row
# offset (index * 12), so a step is one add and one load. Every sequence is
# rejected at its first byte that no valid text can contain, which is what
# RFC 6455's "fail fast" on invalid text needs.

cdef enum:
    C_ASCII = 0     # 00..7F
    C_80_8F = 1     # continuation bytes, split where lead bytes restrict them
    C_90_9F = 2
    C_A0_BF = 3
    C_BAD = 4       # C0 C1 (overlong 2-byte forms), F5..FF (beyond U+10FFFF)
    C_C2_DF = 5
    C_E0 = 6
    C_E1_EF = 7     # E1..EC and EE..EF
    C_ED = 8
    C_F0 = 9
    C_F1_F3 = 10
    C_F4 = 11
    N_CLASSES = 12

cdef enum:
    # UTF8_ACCEPT = 0 and UTF8_REJECT = 12 come from the .pxd.
    S_TAIL1 = 24    # one continuation byte 80..BF to go
    S_TAIL2 = 36    # two to go
    S_TAIL3 = 48    # three to go
    S_E0 = 60       # after E0: A0..BF, else overlong
    S_ED = 72       # after ED: 80..9F, else a surrogate
    S_F0 = 84       # after F0: 90..BF, else overlong
    S_F4 = 96       # after F4: 80..8F, else beyond U+10FFFF
    N_STATES_X_CLASSES = 108

cdef unsigned char _UTF8_CLASS[256]
cdef unsigned char _UTF8_NEXT[N_STATES_X_CLASSES]


cdef void _utf8_edges(int state, int first, int last, int target) noexcept:
    cdef int c
    for c in range(first, last + 1):
        _UTF8_NEXT[state + c] = <unsigned char>target


cdef void _utf8_build_tables() noexcept:
    cdef int b, c
    for b in range(256):
        if b < 0x80:
            c = C_ASCII
        elif b < 0x90:
            c = C_80_8F
        elif b < 0xA0:
            c = C_90_9F
        elif b < 0xC0:
            c = C_A0_BF
        elif b < 0xC2:
            c = C_BAD
        elif b < 0xE0:
            c = C_C2_DF
        elif b == 0xE0:
            c = C_E0
        elif b == 0xED:
            c = C_ED
        elif b < 0xF0:
            c = C_E1_EF
        elif b == 0xF0:
            c = C_F0
        elif b < 0xF4:
            c = C_F1_F3
        elif b == 0xF4:
            c = C_F4
        else:
            c = C_BAD
        _UTF8_CLASS[b] = <unsigned char>c
    for b in range(N_STATES_X_CLASSES):
        _UTF8_NEXT[b] = UTF8_REJECT
    # Lead bytes (the rows of Table 3-7).
    _utf8_edges(UTF8_ACCEPT, C_ASCII, C_ASCII, UTF8_ACCEPT)
    _utf8_edges(UTF8_ACCEPT, C_C2_DF, C_C2_DF, S_TAIL1)
    _utf8_edges(UTF8_ACCEPT, C_E0, C_E0, S_E0)
    _utf8_edges(UTF8_ACCEPT, C_E1_EF, C_E1_EF, S_TAIL2)
    _utf8_edges(UTF8_ACCEPT, C_ED, C_ED, S_ED)
    _utf8_edges(UTF8_ACCEPT, C_F0, C_F0, S_F0)
    _utf8_edges(UTF8_ACCEPT, C_F1_F3, C_F1_F3, S_TAIL3)
    _utf8_edges(UTF8_ACCEPT, C_F4, C_F4, S_F4)
    # Second bytes with a narrowed range.
    _utf8_edges(S_E0, C_A0_BF, C_A0_BF, S_TAIL1)
    _utf8_edges(S_ED, C_80_8F, C_90_9F, S_TAIL1)
    _utf8_edges(S_F0, C_90_9F, C_A0_BF, S_TAIL2)
    _utf8_edges(S_F4, C_80_8F, C_80_8F, S_TAIL2)
    # Any continuation byte 80..BF.
    _utf8_edges(S_TAIL3, C_80_8F, C_A0_BF, S_TAIL2)
    _utf8_edges(S_TAIL2, C_80_8F, C_A0_BF, S_TAIL1)
    _utf8_edges(S_TAIL1, C_80_8F, C_A0_BF, UTF8_ACCEPT)


_utf8_build_tables()


cdef inline uint32_t _utf8_feed(uint32_t state, const unsigned char* s, Py_ssize_t n) noexcept nogil:
    cdef const unsigned char* end = s + n
    cdef uint64_t w0, w1
    while s < end:
        if state == UTF8_ACCEPT and s[0] < 0x80:
            # Between characters, at ASCII: skip it 16, then 8, then 1 byte
            # at a time. memcpy compiles to one unaligned load.
            s += 1
            while end - s >= 16:
                memcpy(&w0, s, 8)
                memcpy(&w1, s + 8, 8)
                if (w0 | w1) & 0x8080808080808080ULL:
                    break
                s += 16
            if end - s >= 8:
                memcpy(&w0, s, 8)
                if not (w0 & 0x8080808080808080ULL):
                    s += 8
            while s < end and s[0] < 0x80:
                s += 1
            continue
        # A multi-byte sequence: run the DFA to its end (states above
        # UTF8_REJECT are "inside a sequence").
        state = _UTF8_NEXT[state + _UTF8_CLASS[s[0]]]
        s += 1
        while state > UTF8_REJECT and s < end:
            state = _UTF8_NEXT[state + _UTF8_CLASS[s[0]]]
            s += 1
        if state == UTF8_REJECT:
            break
    return state


# -- masking ----------------------------------------------------------------

cdef inline void _unmask_into(unsigned char* dst, const unsigned char* src, Py_ssize_t n,
                              const unsigned char* key, Py_ssize_t offset) noexcept nogil:
    cdef unsigned char k[8]
    cdef uint64_t word, key64
    cdef Py_ssize_t i
    # The key as bytes, rotated so k[0] applies to src[0], twice: a 64-bit
    # word built this way is right whatever the byte order of the machine.
    for i in range(8):
        k[i] = key[(offset + i) & 3]
    memcpy(&key64, k, 8)
    i = 0
    while n - i >= 32:
        # Four independent words per round keep the loads in flight.
        memcpy(&word, src + i, 8)
        word ^= key64
        memcpy(dst + i, &word, 8)
        memcpy(&word, src + i + 8, 8)
        word ^= key64
        memcpy(dst + i + 8, &word, 8)
        memcpy(&word, src + i + 16, 8)
        word ^= key64
        memcpy(dst + i + 16, &word, 8)
        memcpy(&word, src + i + 24, 8)
        word ^= key64
        memcpy(dst + i + 24, &word, 8)
        i += 32
    while n - i >= 8:
        memcpy(&word, src + i, 8)
        word ^= key64
        memcpy(dst + i, &word, 8)
        i += 8
    while i < n:
        dst[i] = src[i] ^ k[i & 3]
        i += 1


cdef inline void _copy_payload(unsigned char* dst, const unsigned char* src, Py_ssize_t n,
                               const unsigned char* key, Py_ssize_t done) noexcept nogil:
    if key == NULL:
        memcpy(dst, src, n)
    else:
        memcpy(dst, src, done)
        _unmask_into(dst + done, src + done, n - done, key, done)


# -- close frames -----------------------------------------------------------

cdef inline bint _close_code_ok(unsigned int code) noexcept nogil:
    # RFC 6455 section 7.4.1 defines 1000-1003 and 1007-1011; IANA registered
    # 1012-1014 since. 1004-1006 and 1015 are reserved and must never appear
    # on the wire; 3000-4999 belong to libraries and applications.
    return ((1000 <= code <= 1003) or (1007 <= code <= 1014)
            or (3000 <= code <= 4999))


cdef inline int _close_payload_error(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    if n == 0:
        return CLOSE_OK
    if n == 1:
        return CLOSE_BAD_LENGTH
    if not _close_code_ok((<unsigned int>p[0] << 8) | p[1]):
        return CLOSE_BAD_CODE
    if _utf8_feed(UTF8_ACCEPT, p + 2, n - 2) != UTF8_ACCEPT:
        return CLOSE_BAD_REASON
    return CLOSE_OK


cdef object _close_error(int kind, const unsigned char* p):
    if kind == CLOSE_BAD_LENGTH:
        return ProtocolError(CloseCode.PROTOCOL_ERROR, "close frame payload of 1 byte (RFC 6455 section 5.5.1)")
    if kind == CLOSE_BAD_CODE:
        return ProtocolError(
            CloseCode.PROTOCOL_ERROR, f"invalid close code {(p[0] << 8) | p[1]} (RFC 6455 section 7.4)")
    return ProtocolError(CloseCode.INVALID_DATA, "close reason is not valid UTF-8 (RFC 6455 section 5.5.1)")


# -- reader -----------------------------------------------------------------

@cython.final
@cython.no_gc
@cython.final
cdef class FrameReader:
    """Incremental parser of the frames a WebSocket peer sends.

    Feed it bytes with :meth:`feed_data`, pull events with :meth:`next_event`
    until that returns None. Events are ``(opcode, payload)`` tuples: complete
    TEXT/BINARY messages (fragments reassembled; ``| FLAG_RSV1`` if
    compressed), PING/PONG frames and finally CLOSE. The first rule the peer
    breaks raises :class:`ProtocolError`; after that, or after the CLOSE
    event, the reader is finished and ignores everything.
    """

    def __cinit__(self):
        self._data = None
        self._big = None
        self._big_pos = 0
        self._big_ready = False
        self._big_bad = False
        self._msg_opcode = -1
        self._utf8_state = UTF8_ACCEPT
        self._max_size = 1048576
        self._require_mask = True

    def __init__(self, *, max_message_size=1048576, bint require_mask=True,
                 bint rsv1_allowed=False):
        self.max_message_size = max_message_size
        self._require_mask = require_mask
        self._rsv1_allowed = rsv1_allowed

    def __dealloc__(self):
        free(self._buf)
        free(self._msg)

    @property
    def max_message_size(self):
        """Largest message payload accepted, in bytes; None for no limit."""
        return None if self._max_size < 0 else self._max_size

    @max_message_size.setter
    def max_message_size(self, value):
        cdef long long size
        if value is None:
            self._max_size = -1
            return
        if not isinstance(value, int):
            raise TypeError(f"max_message_size must be an int or None, not {type(value).__name__}")
        size = value
        if size < 0:
            raise ValueError("max_message_size must be >= 0 or None")
        self._max_size = size

    @property
    def buffered(self):
        """Bytes held by the reader: unparsed input plus the partial message."""
        cdef Py_ssize_t n = self._buf_end - self._buf_start + self._msg_len + self._big_pos
        if self._data is not None:
            n += self._data_len - self._data_pos
        return n

    cpdef feed_data(self, data):
        """Append bytes received from the peer; ignored once finished.

        A ``bytes`` object that arrives while nothing is buffered is parsed
        in place (a reference is kept until it is used up); anything else,
        mutable buffers included, is copied since the caller may reuse it.
        """
        cdef Py_buffer view
        cdef bint ok
        cdef Py_ssize_t taken
        if self._finished:
            return
        if self._big is not None and not self._big_ready:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            try:
                taken = self._big_fill(<const unsigned char*>view.buf, view.len)
                if taken == view.len:
                    return
                if type(data) is not bytes:
                    ok = self._buf_append(<const unsigned char*>view.buf + taken, view.len - taken)
                    if not ok:
                        raise MemoryError()
                    return
            finally:
                PyBuffer_Release(&view)
            # the rest of a bytes object: parsed in place, like any other
            self._data = <bytes>data
            self._data_ptr = <const unsigned char*>PyBytes_AS_STRING(data) + taken
            self._data_len = PyBytes_GET_SIZE(data) - taken
            self._data_pos = 0
            return
        if type(data) is bytes and self._data is None and self._buf_end == self._buf_start:
            if PyBytes_GET_SIZE(data) == 0:
                return
            self._data = <bytes>data
            self._data_ptr = <const unsigned char*>PyBytes_AS_STRING(data)
            self._data_len = PyBytes_GET_SIZE(data)
            self._data_pos = 0
            return
        if self._data is not None:
            self._stash_data()
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        ok = self._buf_append(<const unsigned char*>view.buf, view.len)
        PyBuffer_Release(&view)
        if not ok:
            raise MemoryError()

    cpdef object next_event(self):
        """Return the next complete event, or None until more data arrives.

        Raises :class:`ProtocolError` at the first violation; the reader is
        finished after it, as after the close event.
        """
        cdef object event
        cdef Py_ssize_t used
        if self._big is not None and not self._finished:
            if self._big_bad:
                self._fail(CloseCode.INVALID_DATA, _MSG_UTF8)
            if not self._big_ready:
                return None
            event = (self._big_opcode, self._big)
            self._big = None
            self._big_ready = False
            self._big_pos = 0
            self._check_invariants()
            return event
        while not self._finished:
            if self._data is not None:
                event = self._parse_frame(self._data_ptr + self._data_pos,
                                          self._data_len - self._data_pos, False)
                used = self._consumed
                if used == 0:
                    # A partial frame: keep its bytes, drop the caller's.
                    self._stash_data()
                    continue
                self._data_pos += used
                if self._data_pos == self._data_len:
                    self._data = None
            else:
                event = self._parse_frame(self._buf + self._buf_start,
                                          self._buf_end - self._buf_start, True)
                used = self._consumed
                if used == 0:
                    return None
                self._buf_start += used
                if self._buf_start == self._buf_end:
                    self._buf_emptied()
            if event is not None:
                if self._finished:
                    self._release_all()
                self._check_invariants()
                return event
            if self._big is not None:
                return None  # everything read went into the big message
        self._check_invariants()
        return None

    cdef Py_ssize_t _big_fill(self, const unsigned char* src, Py_ssize_t n) noexcept:
        """Unmask up to the rest of the big message from ``src`` into its
        bytes; how many bytes it took."""
        cdef Py_ssize_t size = PyBytes_GET_SIZE(self._big)
        cdef Py_ssize_t take = size - self._big_pos
        cdef unsigned char* dst = <unsigned char*>PyBytes_AS_STRING(self._big) + self._big_pos
        cdef uint32_t state
        if take > n:
            take = n
        if self._big_masked:
            _unmask_into(dst, src, take, self._big_key, self._big_pos)
        else:
            memcpy(dst, src, take)
        if self._big_text and not self._big_bad:
            state = _utf8_feed(self._utf8_state, dst, take)
            self._utf8_state = state
            if state == UTF8_REJECT:
                self._big_bad = True
        self._big_pos += take
        if self._big_pos == size:
            if self._big_text:
                if self._utf8_state != UTF8_ACCEPT:
                    self._big_bad = True
                self._utf8_state = UTF8_ACCEPT
            self._big_ready = True
        return take

    cdef int _check_invariants(self) except -1:
        # The buffer bookkeeping every path above relies on. The asserts are
        # compiled only into a FASTWS_DEBUG=1 build (setup.py defines
        # CYTHON_WITHOUT_ASSERTIONS otherwise), where the test suite runs them
        # after every event.
        assert 0 <= self._buf_start <= self._buf_end <= self._buf_cap, "input buffer bounds"
        assert self._buf != NULL or self._buf_cap == 0, "input buffer capacity without memory"
        assert self._data is None or self._buf_start == self._buf_end, "caller's bytes and the buffer both in use"
        assert self._data is None or 0 <= self._data_pos < self._data_len, "caller's bytes used up but kept"
        assert 0 <= self._msg_len <= self._msg_cap, "message buffer bounds"
        assert self._msg_opcode != -1 or self._msg_len == 0, "message bytes without a message"
        assert 0 <= self._frame_done <= self._buf_end - self._buf_start, "partial frame progress"
        return 0

    cdef object _parse_frame(self, const unsigned char* p, Py_ssize_t avail, bint in_buf):
        # Parse the frame at p. Returns its event, or None with _consumed = 0
        # when more bytes are needed, or None with _consumed > 0 for a frame
        # that yields no event (a non-final fragment). Checks run in the order
        # the header bytes arrive, so an error is raised as soon as it can be
        # known whatever the split of the input (the twin does the same).
        cdef unsigned int b0, b1, opcode
        cdef bint fin, rsv1, masked, check_text
        cdef uint64_t length
        cdef long long room
        cdef Py_ssize_t hlen, n, have, done
        cdef const unsigned char* key = NULL
        cdef const unsigned char* src
        cdef unsigned char* dst
        cdef uint32_t state
        cdef int kind, event_opcode
        cdef bytes payload

        self._consumed = 0
        if avail < 1:
            return None
        b0 = p[0]
        fin = (b0 & 0x80) != 0
        rsv1 = (b0 & 0x40) != 0
        opcode = b0 & 0x0F
        if b0 & 0x30:
            self._fail(CloseCode.PROTOCOL_ERROR, "RSV2/RSV3 bit set but no extension defines it (RFC 6455 section 5.2)")
        if opcode >= 8:
            if opcode > OPCODE_PONG:
                self._fail(CloseCode.PROTOCOL_ERROR, f"reserved opcode 0x{opcode:X} (RFC 6455 section 5.2)")
            if rsv1:
                self._fail(CloseCode.PROTOCOL_ERROR, "RSV1 bit set on a control frame (RFC 7692 section 6)")
            if not fin:
                self._fail(CloseCode.PROTOCOL_ERROR, "fragmented control frame (RFC 6455 section 5.5)")
        elif opcode > OPCODE_BINARY:
            self._fail(CloseCode.PROTOCOL_ERROR, f"reserved opcode 0x{opcode:X} (RFC 6455 section 5.2)")
        elif opcode == OPCODE_CONT:
            if self._msg_opcode < 0:
                self._fail(CloseCode.PROTOCOL_ERROR, "continuation frame without a message to continue (RFC 6455 section 5.4)")
            if rsv1:
                self._fail(CloseCode.PROTOCOL_ERROR, "RSV1 bit set on a continuation frame (RFC 7692 section 6)")
        else:
            if self._msg_opcode >= 0:
                self._fail(CloseCode.PROTOCOL_ERROR, "new data frame before the fragmented message was finished "
                                 "(RFC 6455 section 5.4)")
            if rsv1 and not self._rsv1_allowed:
                self._fail(CloseCode.PROTOCOL_ERROR, "RSV1 bit set but permessage-deflate was not negotiated "
                                 "(RFC 6455 section 5.2)")
        if avail < 2:
            return None
        b1 = p[1]
        masked = (b1 & 0x80) != 0
        if masked != self._require_mask:
            if masked:
                self._fail(CloseCode.PROTOCOL_ERROR, "server frame is masked (RFC 6455 section 5.1)")
            self._fail(CloseCode.PROTOCOL_ERROR, "client frame is not masked (RFC 6455 section 5.1)")
        length = b1 & 0x7F
        # Lengths need not use the shortest encoding: RFC 6455 section 5.2
        # says "must", but rejecting a peer over it buys nothing (also for
        # control frames: their limit applies to the decoded length).
        hlen = 2
        if length == 126:
            if avail < 4:
                return None
            length = (<uint64_t>p[2] << 8) | p[3]
            hlen = 4
        elif length == 127:
            if avail < 10:
                return None
            length = ((<uint64_t>p[2] << 56) | (<uint64_t>p[3] << 48) | (<uint64_t>p[4] << 40)
                      | (<uint64_t>p[5] << 32) | (<uint64_t>p[6] << 24) | (<uint64_t>p[7] << 16)
                      | (<uint64_t>p[8] << 8) | <uint64_t>p[9])
            if length >> 63:
                self._fail(CloseCode.PROTOCOL_ERROR, "64-bit payload length has the most significant bit set "
                                 "(RFC 6455 section 5.2)")
            hlen = 10
        if opcode >= 8 and length > 125:
            self._fail(CloseCode.PROTOCOL_ERROR, "control frame payload longer than 125 bytes (RFC 6455 section 5.5)")
        # Refuse an oversized message on its header, before buffering it.
        if opcode < 8 and self._max_size >= 0:
            room = self._max_size - self._msg_len
            if room < 0 or length > <uint64_t>room:
                self._fail(CloseCode.MESSAGE_TOO_BIG, f"message of {self._msg_len + length} bytes exceeds "
                                 f"max_message_size={self._max_size} (RFC 6455 section 7.4.1)")
        if length > <uint64_t>(PY_SSIZE_T_MAX - MAX_HEADER):
            self._fail(CloseCode.MESSAGE_TOO_BIG, "frame length does not fit in memory (RFC 6455 section 7.4.1)")
        n = <Py_ssize_t>length
        if masked:
            hlen += 4
            if avail < hlen:
                return None
            key = p + hlen - 4
        elif avail < hlen:
            return None
        src = p + hlen
        have = avail - hlen
        done = self._frame_done
        check_text = not rsv1 and (opcode == OPCODE_TEXT or
                                   (opcode == OPCODE_CONT and self._msg_opcode == OPCODE_TEXT))

        if have < n and n >= DIRECT_MIN and fin and opcode < 8 and opcode != OPCODE_CONT:
            # A large whole message still arriving: its bytes object now,
            # filled (and text checked) as the rest comes in.
            payload = PyBytes_FromStringAndSize(NULL, n)
            dst = <unsigned char*>PyBytes_AS_STRING(payload)
            _copy_payload(dst, src, have, key, done)
            if check_text and have > done:
                state = _utf8_feed(self._utf8_state, dst + done, have - done)
                if state == UTF8_REJECT:
                    self._fail(CloseCode.INVALID_DATA, _MSG_UTF8)
                self._utf8_state = state
            self._big = payload
            self._big_pos = have
            self._big_opcode = (opcode | EVENT_RSV1) if rsv1 else opcode
            self._big_text = check_text
            self._big_masked = key != NULL
            if key != NULL:
                memcpy(self._big_key, key, 4)
            self._consumed = avail
            self._frame_done = 0
            return None

        if have < n:
            # Partial frame. Check the text received so far, so that garbage
            # fails now and not after the peer has sent megabytes more. Only
            # in _buf (the caller's bytes are immutable): its bytes are
            # unmasked in place and _frame_done remembers how far.
            if in_buf and check_text and have > done:
                dst = <unsigned char*>src
                if key != NULL:
                    _unmask_into(dst + done, src + done, have - done, key, done)
                state = _utf8_feed(self._utf8_state, src + done, have - done)
                if state == UTF8_REJECT:
                    self._fail(CloseCode.INVALID_DATA, _MSG_UTF8)
                self._utf8_state = state
                self._frame_done = have
            return None

        self._consumed = hlen + n
        self._frame_done = 0

        if opcode >= 8:
            payload = PyBytes_FromStringAndSize(NULL, n)
            _copy_payload(<unsigned char*>PyBytes_AS_STRING(payload), src, n, key, done)
            if opcode == OPCODE_CLOSE:
                kind = _close_payload_error(<const unsigned char*>PyBytes_AS_STRING(payload), n)
                if kind != CLOSE_OK:
                    self._finished = True
                    self._release_all()
                    raise _close_error(kind, <const unsigned char*>PyBytes_AS_STRING(payload))
                self._finished = True
            return (opcode, payload)

        event_opcode = (opcode | EVENT_RSV1) if rsv1 else opcode
        if fin and self._msg_opcode < 0:
            # A whole message in one frame, the common case: unmask straight
            # into the event's bytes.
            payload = PyBytes_FromStringAndSize(NULL, n)
            dst = <unsigned char*>PyBytes_AS_STRING(payload)
            _copy_payload(dst, src, n, key, done)
            if check_text:
                state = _utf8_feed(self._utf8_state, dst + done, n - done)
                self._utf8_state = UTF8_ACCEPT
                if state != UTF8_ACCEPT:
                    self._fail(CloseCode.INVALID_DATA, _MSG_UTF8)
            return (event_opcode, payload)

        # A fragment: reassemble in _msg.
        if self._msg_opcode < 0:
            self._msg_opcode = event_opcode
        self._msg_reserve(n)
        dst = self._msg + self._msg_len
        _copy_payload(dst, src, n, key, done)
        if check_text:
            state = _utf8_feed(self._utf8_state, dst + done, n - done)
            if state == UTF8_REJECT or (fin and state != UTF8_ACCEPT):
                self._fail(CloseCode.INVALID_DATA, _MSG_UTF8)
            self._utf8_state = state
        self._msg_len += n
        if not fin:
            return None
        payload = PyBytes_FromStringAndSize(<char*>self._msg, self._msg_len)
        event_opcode = self._msg_opcode
        self._msg_len = 0
        self._msg_opcode = -1
        self._utf8_state = UTF8_ACCEPT
        if self._msg_cap > BUF_SHRINK_ABOVE:
            free(self._msg)
            self._msg = NULL
            self._msg_cap = 0
        return (event_opcode, payload)

    cdef int _fail(self, object code, str message) except -1:
        self._finished = True
        self._release_all()
        raise ProtocolError(code, message)

    cdef int _stash_data(self) except -1:
        # Move the unparsed tail of the caller's bytes into _buf (which is
        # empty whenever _data is set) and let go of the caller's object.
        cdef bytes data = self._data
        cdef Py_ssize_t rest = self._data_len - self._data_pos
        self._data = None
        if rest and not self._buf_append(self._data_ptr + self._data_pos, rest):
            raise MemoryError()
        return 0

    cdef bint _buf_append(self, const unsigned char* src, Py_ssize_t n) noexcept:
        # False when out of memory; the caller raises once it has cleaned up.
        cdef Py_ssize_t used = self._buf_end - self._buf_start
        cdef Py_ssize_t cap
        cdef unsigned char* grown
        if n <= 0:
            return True
        if self._buf_cap - self._buf_end < n:
            if self._buf_start:
                memmove(self._buf, self._buf + self._buf_start, used)
                self._buf_start = 0
                self._buf_end = used
            if self._buf_cap - used < n:
                cap = self._buf_cap * 2
                if cap < used + n:
                    cap = used + n
                if cap < BUF_MIN:
                    cap = BUF_MIN
                grown = <unsigned char*>realloc(self._buf, cap)
                if grown == NULL:
                    return False
                self._buf = grown
                self._buf_cap = cap
        memcpy(self._buf + self._buf_end, src, n)
        self._buf_end += n
        return True

    cdef int _msg_reserve(self, Py_ssize_t extra) except -1:
        cdef Py_ssize_t cap
        cdef unsigned char* grown
        if self._msg_cap - self._msg_len >= extra:
            return 0
        cap = self._msg_cap * 2
        if cap < self._msg_len + extra:
            cap = self._msg_len + extra
        if cap < BUF_MIN:
            cap = BUF_MIN
        grown = <unsigned char*>realloc(self._msg, cap)
        if grown == NULL:
            raise MemoryError()
        self._msg = grown
        self._msg_cap = cap
        return 0

    cdef void _buf_emptied(self) noexcept:
        self._buf_start = 0
        self._buf_end = 0
        if self._buf_cap > BUF_SHRINK_ABOVE:
            # Give back what a big frame needed (it is reallocated on demand).
            # free(), not realloc() to BUF_MIN: glibc shrinks an mmap'd block
            # in place, so every big frame would mmap and page-fault afresh
            # (6x slower for 1 MiB frames), while free() lets malloc's
            # dynamic mmap threshold adapt and recycle the memory.
            free(self._buf)
            self._buf = NULL
            self._buf_cap = 0

    cdef void _release_all(self) noexcept:
        # A finished reader parses nothing more: drop every byte it holds.
        self._data = None
        self._big = None
        self._big_pos = 0
        self._big_ready = False
        self._big_bad = False
        free(self._buf)
        self._buf = NULL
        self._buf_cap = 0
        self._buf_start = 0
        self._buf_end = 0
        self._frame_done = 0
        free(self._msg)
        self._msg = NULL
        self._msg_cap = 0
        self._msg_len = 0


# -- encoding ---------------------------------------------------------------

cdef inline void _put_length(unsigned char* out, Py_ssize_t n) noexcept nogil:
    """The payload length of a frame header, from out[1] on (mask bit clear):
    7 bits, or 126 and 16 bits, or 127 and 64 bits (RFC 6455 section 5.2)."""
    cdef int i
    if n < 126:
        out[1] = <unsigned char>n
    elif n < 65536:
        out[1] = 126
        out[2] = <unsigned char>(n >> 8)
        out[3] = <unsigned char>n
    else:
        out[1] = 127
        for i in range(8):
            out[2 + i] = <unsigned char>((<uint64_t>n) >> (56 - 8 * i))


cdef bytes _encode(int opcode, const unsigned char* data, Py_ssize_t n, bint fin, bint rsv1,
                   const unsigned char* key):
    cdef Py_ssize_t hlen
    cdef bytes frame
    cdef unsigned char* out
    if opcode >= 8 and n > 125:
        raise ValueError("control frame payload longer than 125 bytes (RFC 6455 section 5.5)")
    hlen = 2 if n < 126 else (4 if n < 65536 else 10)
    if key != NULL:
        hlen += 4
    frame = PyBytes_FromStringAndSize(NULL, hlen + n)
    out = <unsigned char*>PyBytes_AS_STRING(frame)
    out[0] = <unsigned char>((0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode)
    _put_length(out, n)
    if key == NULL:
        memcpy(out + hlen, data, n)
    else:
        out[1] |= 0x80
        memcpy(out + hlen - 4, key, 4)
        _unmask_into(out + hlen, data, n, key, 0)
    return frame


cpdef bytes encode_frame(int opcode, object payload, bint fin=True, bint rsv1=False, object mask=None):
    """Build one frame; ``mask`` (4 bytes) masks it, as a client must."""
    cdef Py_buffer view
    cdef const unsigned char* data
    cdef const unsigned char* key = NULL
    cdef unsigned char key_bytes[4]
    cdef Py_ssize_t n

    if opcode >= 8:
        if opcode > OPCODE_PONG:
            raise ValueError(f"invalid opcode 0x{opcode:X} (RFC 6455 section 5.2)")
        if not fin:
            raise ValueError("control frames cannot be fragmented (RFC 6455 section 5.5)")
        if rsv1:
            raise ValueError("RSV1 cannot be set on a control frame (RFC 7692 section 6)")
    elif opcode < 0 or opcode > OPCODE_BINARY:
        raise ValueError(f"invalid opcode {opcode} (RFC 6455 section 5.2)")
    elif rsv1 and opcode == OPCODE_CONT:
        raise ValueError("RSV1 cannot be set on a continuation frame (RFC 7692 section 6.1)")
    if mask is not None:
        if type(mask) is bytes and PyBytes_GET_SIZE(mask) == 4:
            memcpy(key_bytes, PyBytes_AS_STRING(mask), 4)
        else:
            PyObject_GetBuffer(mask, &view, PyBUF_SIMPLE)
            n = view.len
            if n == 4:
                memcpy(key_bytes, view.buf, 4)
            PyBuffer_Release(&view)
            if n != 4:
                raise ValueError("mask must be 4 bytes (RFC 6455 section 5.3)")
        key = key_bytes

    if type(payload) is bytes:
        return _encode(opcode, <const unsigned char*>PyBytes_AS_STRING(payload),
                       PyBytes_GET_SIZE(payload), fin, rsv1, key)
    if isinstance(payload, str):
        # The str's cached UTF-8 form: no intermediate bytes object.
        data = <const unsigned char*>PyUnicode_AsUTF8AndSize(payload, &n)
        return _encode(opcode, data, n, fin, rsv1, key)
    PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
    try:
        return _encode(opcode, <const unsigned char*>view.buf, view.len, fin, rsv1, key)
    finally:
        PyBuffer_Release(&view)


@cython.final
cdef class FrameWriter:
    """Frames what the server sends (unmasked), for one connection.

    The compiled protocol holds one and calls :meth:`frame` through the
    vtable; it is where per-connection send state (permessage-deflate) will
    live.
    """

    cpdef bytes frame(self, int opcode, object payload, bint fin=True):
        """One unmasked frame: ``encode_frame(opcode, payload, fin)``."""
        return encode_frame(opcode, payload, fin, False, None)

    cpdef bytes header(self, int opcode, Py_ssize_t length, bint fin=True):
        """The unmasked header of a data frame of ``length`` payload bytes:
        ``header(op, len(p)) + p == frame(op, p)``, so a large payload can
        be written after it without being copied into a frame."""
        cdef Py_ssize_t hlen = 2 if length < 126 else (4 if length < 65536 else 10)
        cdef bytes out
        cdef unsigned char* p
        if opcode < 0 or opcode > OPCODE_BINARY:
            raise ValueError(f"header() is for data frames, not opcode {opcode} (RFC 6455 section 5.2)")
        if length < 0:
            raise ValueError("length must be at least 0")
        out = PyBytes_FromStringAndSize(NULL, hlen)
        p = <unsigned char*>PyBytes_AS_STRING(out)
        p[0] = <unsigned char>((0x80 if fin else 0) | opcode)
        _put_length(p, length)
        return out


def close_payload(int code, str reason=""):
    """Payload of a close frame; ``b""`` for 1005, which means "no status".

    1005 is never sent as a code (RFC 6455 section 7.4.1): an empty close
    frame says it, so ``reason`` is dropped with it.
    """
    cdef Py_ssize_t n
    cdef const char* text
    cdef bytes out
    cdef unsigned char* dst
    if code == CloseCode.NO_STATUS_RCVD:
        return b""
    if code < 0 or not _close_code_ok(<unsigned int>code):
        raise ValueError(f"close code {code} may not be sent (RFC 6455 section 7.4.1)")
    text = PyUnicode_AsUTF8AndSize(reason, &n)
    if n > 123:
        raise ValueError("close reason longer than 123 bytes (RFC 6455 section 5.5)")
    out = PyBytes_FromStringAndSize(NULL, n + 2)
    dst = <unsigned char*>PyBytes_AS_STRING(out)
    dst[0] = <unsigned char>(code >> 8)
    dst[1] = <unsigned char>code
    memcpy(dst + 2, text, n)
    return out


def parse_close(payload):
    """``(code, reason)`` of a close frame payload; ``(1005, "")`` if empty."""
    cdef Py_buffer view
    cdef const unsigned char* p
    cdef int kind
    PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
    try:
        p = <const unsigned char*>view.buf
        kind = _close_payload_error(p, view.len)
        if kind != CLOSE_OK:
            raise _close_error(kind, p)
        if view.len == 0:
            return (CloseCode.NO_STATUS_RCVD, "")
        return ((p[0] << 8) | p[1], (<const char*>p)[2:view.len].decode("utf-8"))
    finally:
        PyBuffer_Release(&view)


def validate_utf8(data):
    """True if ``data`` is well-formed UTF-8 (no overlongs, no surrogates)."""
    cdef Py_buffer view
    cdef uint32_t state
    if type(data) is bytes:
        state = _utf8_feed(UTF8_ACCEPT, <const unsigned char*>PyBytes_AS_STRING(data),
                           PyBytes_GET_SIZE(data))
        return state == UTF8_ACCEPT
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    state = _utf8_feed(UTF8_ACCEPT, <const unsigned char*>view.buf, view.len)
    PyBuffer_Release(&view)
    return state == UTF8_ACCEPT
