"""Compiled reply checking and timing for ``fastws bench``.

The per-message work of the load generator: every frame a server sends back
is parsed here (header through pointers, payload compared with ``memcmp``
against the message sent, as it streams in, so a 1 MiB echo is never
copied), each matching reply pops its send time from a ring of runs and its
round trip goes into a :class:`Histogram` of fixed size. No Python object is
made per message; Python sees a read's count of good replies, and an event
only for what is unusual (a ping, a close, a wrong echo, a protocol error,
a compressed message to inflate).

:meth:`EchoStream.run_blocking` is the latency-bound loop of the ``rr``
scenario: blocking ``write``/``read`` on a socket with the GIL released, one
thread per connection, no event loop in the round trip; :func:`handshake_loop`
does the same for ``handshakes``. :mod:`fastws.bench._echo_py` is the
pure-Python twin: the same results, bytes for bytes.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport EINTR, errno
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset, strerror
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.unistd cimport close, read, write

from fastws.types import CloseCode

__all__ = [
    "EV_CLOSED",
    "EV_CONTROL",
    "EV_DEFLATED",
    "EV_ERROR",
    "EV_MISMATCH",
    "EchoStream",
    "Histogram",
    "MAX_VALUE",
    "HANDSHAKE_ERRORS",
    "handshake_loop",
    "now_ns",
    "ping",
    "pong",
]

cdef extern from *:
    """
    #include <sys/socket.h>
    #include <netdb.h>
    #include <netinet/in.h>
    #include <netinet/tcp.h>
    #include <time.h>
    static int fastws_clz64(unsigned long long v) { return __builtin_clzll(v); }
    """
    int fastws_clz64(unsigned long long v) nogil
    struct addrinfo:
        int ai_family
        int ai_socktype
        int ai_protocol
        void *ai_addr
        unsigned int ai_addrlen
        addrinfo *ai_next
    int getaddrinfo(const char *node, const char *service, const addrinfo *hints, addrinfo **res) nogil
    void freeaddrinfo(addrinfo *res) nogil
    const char *gai_strerror(int errcode) nogil
    int socket(int domain, int type, int protocol) nogil
    int connect(int fd, const void *addr, unsigned int addrlen) nogil
    int setsockopt(int fd, int level, int name, const void *value, unsigned int length) nogil
    int SOCK_STREAM
    int IPPROTO_TCP
    int TCP_NODELAY
    int AF_UNSPEC
    int TIMER_ABSTIME
    int clock_nanosleep(int clock_id, int flags, const timespec *request, timespec *remain) nogil
    struct timeval:
        long tv_sec
        long tv_usec
    int SOL_SOCKET
    int SO_RCVTIMEO
    int SO_SNDTIMEO
    void *memmem(const void *haystack, size_t hlen, const void *needle, size_t nlen) nogil
    int strncasecmp(const char *a, const char *b, size_t n) nogil

# -- the histogram -----------------------------------------------------------

# Values are nanoseconds. Below 256 every value has its own bucket; above,
# each power of two is cut into 128 buckets, so a bucket is at most 1/128
# (0.8 %) of its values wide: HdrHistogram's layout with 2 significant
# digits. 2**40 ns (18 minutes) and above share the last bucket; the exact
# maximum is kept beside.
cdef enum:
    SUB = 256
    HALF = 128
    TOP_BITS = 40
    NBUCKETS = SUB + (TOP_BITS - 8) * HALF

cdef uint64_t C_MAX_VALUE = ((<uint64_t>1) << TOP_BITS) - 1
#: Values above this (2**40 - 1 ns) are counted as this; max keeps the exact one.
MAX_VALUE = C_MAX_VALUE

cdef inline int _index(uint64_t v) noexcept nogil:
    cdef int shift
    if v < SUB:
        return <int>v
    if v > C_MAX_VALUE:
        v = C_MAX_VALUE
    shift = (63 - fastws_clz64(v)) - 7
    return SUB + (shift - 1) * HALF + <int>((v >> shift) - HALF)

cdef inline uint64_t _highest(int i) noexcept nogil:
    """The largest value that lands in bucket ``i``."""
    cdef int shift
    if i < SUB:
        return <uint64_t>i
    shift = (i - SUB) // HALF + 1
    return ((<uint64_t>((i - SUB) % HALF + HALF)) << shift) + ((<uint64_t>1) << shift) - 1


@cython.final
cdef class Histogram:
    """Counts of nanosecond values in buckets 0.8 % wide: fixed memory
    (35 KiB) whatever the run's length, percentiles within 0.8 %, the
    exact minimum and maximum kept."""

    cdef uint64_t counts[NBUCKETS]
    cdef uint64_t _total
    cdef uint64_t _min
    cdef uint64_t _max

    def __cinit__(self):
        memset(self.counts, 0, sizeof(self.counts))
        self._total = 0
        self._min = 0
        self._max = 0

    cdef inline void add(self, uint64_t value, uint64_t n) noexcept nogil:
        if n == 0:
            return
        self.counts[_index(value)] += n
        if self._total == 0 or value < self._min:
            self._min = value
        if value > self._max:
            self._max = value
        self._total += n

    cdef inline void add_run(self, int64_t now, int64_t first, int64_t step, uint64_t n) noexcept nogil:
        """``n`` values ``now - first - i * step``, i = 0 .. n-1 (none below 0)."""
        cdef uint64_t i
        cdef int64_t v
        if step == 0:
            self.add(<uint64_t>(now - first) if now > first else 0, n)
            return
        for i in range(n):
            v = now - first - <int64_t>i * step
            self.add(<uint64_t>v if v > 0 else 0, 1)

    def record(self, value, count=1):
        """Count ``value`` (ns, negative as 0) ``count`` times."""
        cdef int64_t v = value
        cdef int64_t c = count
        if c < 0:
            raise ValueError("count must be at least 0")
        self.add(<uint64_t>v if v > 0 else 0, <uint64_t>c)

    def record_run(self, now, first, step, count):
        """Count the ``count`` round trips of messages sent at ``first``,
        ``first + step``, ... whose replies all came at ``now``."""
        cdef int64_t c = count
        if c < 0:
            raise ValueError("count must be at least 0")
        self.add_run(now, first, step, <uint64_t>c)

    @property
    def total(self):
        """How many values were counted."""
        return self._total

    @property
    def min(self):
        """The smallest value counted (0 if none)."""
        return self._min

    @property
    def max(self):
        """The largest value counted, exactly (0 if none)."""
        return self._max

    def merge(self, Histogram other not None):
        """Add ``other``'s counts to these."""
        cdef int i
        if other._total == 0:
            return
        for i in range(NBUCKETS):
            self.counts[i] += other.counts[i]
        if self._total == 0 or other._min < self._min:
            self._min = other._min
        if other._max > self._max:
            self._max = other._max
        self._total += other._total

    def quantiles(self, qs):
        """The value at each quantile in ``qs`` (0 < q <= 1): the highest
        value of the bucket holding that rank, within [min, max]; an empty
        histogram gives 0 for each."""
        out = []
        for q in qs:
            out.append(self._quantile(q))
        return out

    cdef uint64_t _quantile(self, double q) noexcept:
        cdef uint64_t rank, seen = 0, v
        cdef int i
        if self._total == 0:
            return 0
        if q <= 0:
            return self._min
        rank = <uint64_t>(q * <double>self._total + 0.9999999)
        if rank < 1:
            rank = 1
        if rank > self._total:
            rank = self._total
        for i in range(NBUCKETS):
            seen += self.counts[i]
            if seen >= rank:
                v = _highest(i)
                if v > self._max:
                    v = self._max
                if v < self._min:
                    v = self._min
                return v
        return self._max

    def buckets(self):
        """``(highest value, count)`` of each non-empty bucket, in order."""
        cdef int i
        out = []
        for i in range(NBUCKETS):
            if self.counts[i]:
                out.append((min(_highest(i), self._max), self.counts[i]))
        return out

    def to_bytes(self):
        """Total, min, max, then every bucket: little-endian uint64s (the
        form processes exchange, the same from both implementations)."""
        cdef bytes out = PyBytes_FromStringAndSize(NULL, (3 + NBUCKETS) * 8)
        cdef uint64_t *p = <uint64_t *>PyBytes_AS_STRING(out)
        p[0] = self._total
        p[1] = self._min
        p[2] = self._max
        memcpy(&p[3], self.counts, sizeof(self.counts))
        return out

    @staticmethod
    def from_bytes(data):
        """The histogram :meth:`to_bytes` wrote."""
        cdef bytes raw = bytes(data)
        cdef Histogram h = Histogram()
        cdef const uint64_t *p
        if PyBytes_GET_SIZE(raw) != (3 + NBUCKETS) * 8:
            raise ValueError(f"a histogram is {(3 + NBUCKETS) * 8} bytes, not {len(raw)}")
        p = <const uint64_t *>PyBytes_AS_STRING(raw)
        h._total = p[0]
        h._min = p[1]
        h._max = p[2]
        memcpy(h.counts, &p[3], sizeof(h.counts))
        return h


cdef inline int64_t _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


def now_ns():
    """CLOCK_MONOTONIC in nanoseconds (``time.monotonic_ns()``, which every
    process on the machine shares)."""
    return _now()


cdef inline int _write_all(int fd, const char *p, Py_ssize_t n) noexcept nogil:
    """Write all ``n`` bytes (a blocking socket); 0, or the errno."""
    cdef Py_ssize_t done = 0
    cdef ssize_t r
    while done < n:
        r = write(fd, p + done, n - done)
        if r < 0:
            if errno == EINTR:
                continue
            return errno
        done += r
    return 0


# -- the reply stream --------------------------------------------------------

# What a parse step stopped for (besides running out of bytes).
cdef enum:
    ST_MORE = 0
    ST_CONTROL = 1
    ST_MISMATCH = 2
    ST_ERROR = 3
    ST_DEFLATED = 4
    ST_CLOSED = 5

# Event kinds Python sees, first item of each event tuple.
EV_CONTROL = "control"
EV_MISMATCH = "mismatch"
EV_ERROR = "error"
EV_DEFLATED = "deflated"
EV_CLOSED = "closed"

cdef enum:
    OPC_CONT = 0
    OPC_TEXT = 1
    OPC_BINARY = 2
    OPC_CLOSE = 8
    OPC_PING = 9
    OPC_PONG = 10
    RBUF = 262144

cdef int CLOSE_PROTOCOL = CloseCode.PROTOCOL_ERROR
cdef int CLOSE_TOO_BIG = CloseCode.MESSAGE_TOO_BIG


@cython.final
cdef class EchoStream:
    """The replies of one connection, checked and timed.

    Echo mode: each data message must equal ``payload`` with ``opcode``;
    :meth:`sent` notes the send times of the messages written, and each
    matching reply takes the oldest (servers echo in order). Stamped mode
    (``stamped=True``, for broadcasts): the first 8 bytes of each message
    are its send time (little-endian signed ``now_ns``), the rest must equal
    ``payload[8:]``. ``deflate``: RSV1 messages are handed to Python to
    inflate (:data:`EV_DEFLATED`) and settled with :meth:`settle`.
    Round trips go to ``histogram`` while :attr:`recording` is true.
    """

    cdef const uint8_t *exp
    cdef Py_ssize_t exp_len
    cdef bytes expected
    cdef int opcode
    cdef bint stamped
    cdef bint deflate
    cdef Histogram hist
    #: Round trips are counted in the histogram only while this is true.
    cdef public bint recording
    #: Replies that matched, and that did not (wrong bytes or opcode, or
    #: more replies than messages sent).
    cdef readonly uint64_t matched
    cdef readonly uint64_t mismatches
    cdef readonly int64_t in_flight
    cdef readonly bint closed
    cdef readonly bint failed
    cdef readonly list events
    # Runs of messages sent: run i is run_n[i] messages, the first at
    # run_t[i], one every run_step[i] ns; a ring, oldest at run_head.
    cdef int64_t *run_n
    cdef int64_t *run_t
    cdef int64_t *run_step
    cdef Py_ssize_t run_cap, run_head, run_len
    # Frame parser: a header that arrived in pieces, the payload bytes left
    # in the current frame, and the state of the message in progress.
    cdef uint8_t hdr[14]
    cdef int hdr_len
    cdef uint64_t remaining
    cdef int frame_op
    cdef bint frame_fin
    cdef bint in_frame
    cdef int msg_op
    cdef uint64_t msg_pos
    cdef bint msg_ok
    cdef bint msg_deflated
    cdef uint8_t stamp[8]
    cdef uint8_t ctrl[125]
    cdef int ctrl_len
    cdef uint8_t *dbuf
    cdef Py_ssize_t dbuf_len, dbuf_cap, max_deflated
    # What the last stop was about (for the event tuple).
    cdef int ev_op
    cdef uint64_t ev_len
    cdef int err_code
    cdef int err_kind
    # run_blocking's read buffer, what of it is parsed, when it was read,
    # and when its next message is due
    cdef uint8_t *rbuf
    cdef Py_ssize_t rpos, rlen
    cdef int64_t rnow, due
    #: run_blocking with a step: the most a write came after its due time (ns).
    cdef readonly int64_t lag_max

    def __cinit__(self, int opcode, payload, Histogram histogram not None, *, bint stamped=False, bint deflate=False,
                  Py_ssize_t max_deflated=64 * 2**20):
        self.expected = bytes(payload)
        self.exp = <const uint8_t *>PyBytes_AS_STRING(self.expected)
        self.exp_len = PyBytes_GET_SIZE(self.expected)
        if opcode != OPC_TEXT and opcode != OPC_BINARY:
            raise ValueError(f"opcode must be 1 (text) or 2 (binary), not {opcode}")
        if stamped and self.exp_len < 8:
            raise ValueError("a stamped message has at least 8 bytes")
        if stamped and deflate:
            raise ValueError("stamped and deflate do not go together (a compressed message's stamp is not read)")
        self.opcode = opcode
        self.stamped = stamped
        self.deflate = deflate
        self.max_deflated = max_deflated
        self.hist = histogram
        self.recording = False
        self.events = []
        self.run_cap = 64
        self.run_n = <int64_t *>malloc(self.run_cap * sizeof(int64_t))
        self.run_t = <int64_t *>malloc(self.run_cap * sizeof(int64_t))
        self.run_step = <int64_t *>malloc(self.run_cap * sizeof(int64_t))
        if self.run_n is NULL or self.run_t is NULL or self.run_step is NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.run_n)
        free(self.run_t)
        free(self.run_step)
        free(self.dbuf)
        free(self.rbuf)

    # -- sending side

    cdef int _sent(self, int64_t n, int64_t first, int64_t step) except -1 nogil:
        cdef Py_ssize_t i, j, cap
        cdef int64_t *a
        cdef int64_t *b
        cdef int64_t *c
        if n <= 0:
            return 0
        if self.run_len == self.run_cap:
            cap = self.run_cap * 2
            a = <int64_t *>malloc(cap * sizeof(int64_t))
            b = <int64_t *>malloc(cap * sizeof(int64_t))
            c = <int64_t *>malloc(cap * sizeof(int64_t))
            if a is NULL or b is NULL or c is NULL:
                free(a)
                free(b)
                free(c)
                with gil:
                    raise MemoryError()
            for i in range(self.run_len):
                j = (self.run_head + i) % self.run_cap
                a[i] = self.run_n[j]
                b[i] = self.run_t[j]
                c[i] = self.run_step[j]
            free(self.run_n)
            free(self.run_t)
            free(self.run_step)
            self.run_n, self.run_t, self.run_step = a, b, c
            self.run_head = 0
            self.run_cap = cap
        j = (self.run_head + self.run_len) % self.run_cap
        self.run_n[j] = n
        self.run_t[j] = first
        self.run_step[j] = step
        self.run_len += 1
        self.in_flight += n
        return 0

    def sent(self, n, first, step=0):
        """``n`` messages were written, the first at ``first`` (ns), one
        every ``step`` ns (0: all at once)."""
        self._sent(n, first, step)

    cdef bint _consume(self, int64_t now, bint ok) noexcept nogil:
        """One reply came at ``now``: take the oldest message in flight (and
        time it if the reply was right); False when none was in flight."""
        cdef Py_ssize_t j
        if self.run_len == 0:
            return False
        j = self.run_head
        if ok and self.recording:
            self.hist.add(<uint64_t>(now - self.run_t[j]) if now > self.run_t[j] else 0, 1)
        self.run_n[j] -= 1
        self.run_t[j] += self.run_step[j]
        if self.run_n[j] == 0:
            self.run_head = (self.run_head + 1) % self.run_cap
            self.run_len -= 1
        self.in_flight -= 1
        return True

    cdef int _settle(self, bint ok, int64_t now) noexcept nogil:
        """A whole data message arrived: count it; ST_MISMATCH if it was wrong."""
        cdef int64_t stamp
        cdef int k
        if self.stamped:
            if ok:
                stamp = 0
                for k in range(8):
                    stamp |= (<int64_t>self.stamp[k]) << (8 * k)
                if self.recording:
                    self.hist.add(<uint64_t>(now - stamp) if now > stamp else 0, 1)
                self.matched += 1
                return ST_MORE
            self.mismatches += 1
            return ST_MISMATCH
        if not self._consume(now, ok):
            self.mismatches += 1
            self.ev_op = -1  # more replies than messages sent
            return ST_MISMATCH
        if ok:
            self.matched += 1
            return ST_MORE
        self.mismatches += 1
        return ST_MISMATCH

    def settle(self, bint ok, now):
        """Count a message Python checked itself (an inflated one)."""
        return self._settle(ok, now) == ST_MORE

    # -- receiving side

    cdef inline void _chunk(self, const uint8_t *p, uint64_t n) noexcept nogil:
        """``n`` payload bytes of the data message in progress."""
        cdef uint64_t pos = self.msg_pos
        cdef uint64_t k
        if self.msg_deflated:
            return
        if self.stamped:
            while n and pos < 8:
                self.stamp[pos] = p[0]
                p += 1
                n -= 1
                pos += 1
            if n == 0:
                self.msg_pos = pos
                return
        if self.msg_ok:
            if pos + n > <uint64_t>self.exp_len or memcmp(p, self.exp + pos, n) != 0:
                self.msg_ok = False
        self.msg_pos = pos + n

    cdef int _parse(self, const uint8_t *data, Py_ssize_t size, Py_ssize_t *used, int64_t now) noexcept nogil:
        """Parse from ``data`` until the bytes run out (ST_MORE) or something
        needs Python; ``used`` is how many bytes were taken."""
        cdef Py_ssize_t pos = 0, need, k
        cdef uint64_t length, take
        cdef uint8_t b0, b1
        cdef int op, st
        cdef bint ok
        cdef uint8_t *grown
        while True:
            if self.closed:
                used[0] = size  # after the close frame: nothing more is read
                return ST_MORE
            if not self.in_frame:
                # gather the header: 2 bytes, then the length's extra bytes
                need = 2
                while True:
                    if self.hdr_len >= 2:
                        b1 = self.hdr[1] & 0x7F
                        need = 2 + (2 if b1 == 126 else 8 if b1 == 127 else 0) + (4 if self.hdr[1] & 0x80 else 0)
                    if self.hdr_len >= need:
                        break
                    if pos >= size:
                        used[0] = pos
                        return ST_MORE
                    self.hdr[self.hdr_len] = data[pos]
                    self.hdr_len += 1
                    pos += 1
                b0 = self.hdr[0]
                b1 = self.hdr[1]
                self.hdr_len = 0
                op = b0 & 0x0F
                if b1 & 0x80:
                    self.err_code = CLOSE_PROTOCOL
                    self.err_kind = 1
                    used[0] = pos
                    return ST_ERROR
                length = b1 & 0x7F
                if length == 126:
                    length = (<uint64_t>self.hdr[2] << 8) | self.hdr[3]
                elif length == 127:
                    length = 0
                    for k in range(8):
                        length = (length << 8) | self.hdr[2 + k]
                    if length >> 63:
                        self.err_code = CLOSE_PROTOCOL
                        self.err_kind = 2
                        used[0] = pos
                        return ST_ERROR
                if op >= 8:
                    if not (b0 & 0x80) or length > 125 or (op != OPC_CLOSE and op != OPC_PING and op != OPC_PONG) or (b0 & 0x70):
                        self.err_code = CLOSE_PROTOCOL
                        self.err_kind = 3
                        used[0] = pos
                        return ST_ERROR
                    self.ctrl_len = 0
                elif op == OPC_CONT:
                    if b0 & 0x70:
                        self.err_code = CLOSE_PROTOCOL
                        self.err_kind = 9
                        used[0] = pos
                        return ST_ERROR
                    if self.msg_op == 0:
                        self.err_code = CLOSE_PROTOCOL
                        self.err_kind = 4
                        used[0] = pos
                        return ST_ERROR
                elif op == OPC_TEXT or op == OPC_BINARY:
                    if self.msg_op != 0:
                        self.err_code = CLOSE_PROTOCOL
                        self.err_kind = 5
                        used[0] = pos
                        return ST_ERROR
                    if (b0 & 0x30) or ((b0 & 0x40) and not self.deflate):
                        self.err_code = CLOSE_PROTOCOL
                        self.err_kind = 6
                        used[0] = pos
                        return ST_ERROR
                    self.msg_op = op
                    self.msg_pos = 0
                    self.msg_ok = op == self.opcode
                    self.msg_deflated = (b0 & 0x40) != 0
                    self.dbuf_len = 0
                else:
                    self.err_code = CLOSE_PROTOCOL
                    self.err_kind = 7
                    used[0] = pos
                    return ST_ERROR
                self.frame_op = op
                self.frame_fin = (b0 & 0x80) != 0
                self.remaining = length
                self.in_frame = True
            # the payload
            take = self.remaining
            if take > <uint64_t>(size - pos):
                take = <uint64_t>(size - pos)
            if take:
                if self.frame_op >= 8:
                    memcpy(&self.ctrl[self.ctrl_len], data + pos, take)
                    self.ctrl_len += <int>take
                elif self.msg_deflated:
                    if self.dbuf_len + <Py_ssize_t>take > self.max_deflated:
                        self.err_code = CLOSE_TOO_BIG
                        self.err_kind = 8
                        used[0] = pos
                        return ST_ERROR
                    if self.dbuf_len + <Py_ssize_t>take > self.dbuf_cap:
                        k = max(self.dbuf_cap * 2, self.dbuf_len + <Py_ssize_t>take, 4096)
                        grown = <uint8_t *>realloc(self.dbuf, k)
                        if grown is NULL:
                            self.err_code = CLOSE_TOO_BIG
                            self.err_kind = 8
                            used[0] = pos
                            return ST_ERROR
                        self.dbuf = grown
                        self.dbuf_cap = k
                    memcpy(self.dbuf + self.dbuf_len, data + pos, take)
                    self.dbuf_len += <Py_ssize_t>take
                else:
                    self._chunk(data + pos, take)
                pos += <Py_ssize_t>take
                self.remaining -= take
            if self.remaining:
                used[0] = pos
                return ST_MORE
            # a whole frame
            self.in_frame = False
            if self.frame_op >= 8:
                self.ev_op = self.frame_op
                if self.frame_op == OPC_CLOSE:
                    self.closed = True
                used[0] = pos
                return ST_CONTROL
            if not self.frame_fin:
                continue
            op = self.msg_op
            self.msg_op = 0
            self.ev_op = op
            self.ev_len = self.msg_pos
            if self.msg_deflated:
                used[0] = pos
                return ST_DEFLATED
            ok = self.msg_ok and self.msg_pos == <uint64_t>self.exp_len
            st = self._settle(ok, now)
            if st != ST_MORE:
                used[0] = pos
                return st

    cdef object _event(self, int st):
        """The event tuple of stop ``st``."""
        if st == ST_CONTROL:
            return (EV_CONTROL, self.ev_op, PyBytes_FromStringAndSize(<char *>self.ctrl, self.ctrl_len))
        if st == ST_MISMATCH:
            if self.ev_op == -1:
                return (EV_MISMATCH, -1, "a reply came with no message in flight")
            if self.ev_op != self.opcode:
                return (EV_MISMATCH, self.ev_op, f"reply has opcode {self.ev_op:#x}, sent {self.opcode:#x}")
            return (EV_MISMATCH, self.ev_op, f"reply differs from the message sent ({self.ev_len} bytes, sent {self.exp_len})")
        if st == ST_DEFLATED:
            return (EV_DEFLATED, self.ev_op, PyBytes_FromStringAndSize(<char *>self.dbuf, self.dbuf_len))
        self.failed = True
        return (EV_ERROR, self.err_code, _ERRORS[self.err_kind])

    def feed(self, data, now):
        """Parse ``data`` received at ``now`` (ns); return how many replies
        matched. Anything else is appended to :attr:`events` as a tuple:
        ``("control", opcode, payload)``, ``("mismatch", opcode, text)``,
        ``("deflated", opcode, payload)``, ``("error", close code, text)``;
        after an error the stream takes nothing more."""
        cdef Py_buffer view
        cdef Py_ssize_t off = 0, used
        cdef uint64_t before = self.matched
        cdef int st
        cdef int64_t t = now
        if self.failed:
            return 0
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            while True:
                used = 0
                st = self._parse(<const uint8_t *>view.buf + off, view.len - off, &used, t)
                off += used
                if st == ST_MORE:
                    break
                self.events.append(self._event(st))
                if st == ST_ERROR:
                    break
        finally:
            PyBuffer_Release(&view)
        return self.matched - before

    def run_blocking(self, int fd, frame, int64_t window_start, int64_t window_end, int64_t end, int64_t step=0):
        """The ``rr`` loop on a blocking socket: write ``frame``, read until
        its reply, again, until ``end`` (ns). Round trips are recorded for
        the messages sent in [window_start, window_end). With ``step`` (ns)
        a message is due every ``step`` ns from the first call, and each is
        timed from when it was due, so a late send does not hide the wait.

        Runs with the GIL released. Returns None when the run is over,
        ``"events"`` when :attr:`events` needs the caller (answer a ping,
        stop on a close or an error; call again to go on), or the text of a
        socket error (``"EOF"`` when the server hung up)."""
        cdef bytes fb = bytes(frame)
        cdef const char *fp = PyBytes_AS_STRING(fb)
        cdef Py_ssize_t flen = PyBytes_GET_SIZE(fb), done, used
        cdef ssize_t r
        cdef int64_t now
        cdef int st = ST_MORE, err = 0
        cdef timespec ts
        if self.rbuf is NULL:
            self.rbuf = <uint8_t *>malloc(RBUF)
            if self.rbuf is NULL:
                raise MemoryError()
        if self.due == 0:
            self.due = _now()
        with nogil:
            while not self.failed and not self.closed:
                if self.rpos < self.rlen:
                    # the rest of a read (after an event, or several replies)
                    used = 0
                    st = self._parse(self.rbuf + self.rpos, self.rlen - self.rpos, &used, self.rnow)
                    self.rpos += used
                    if st != ST_MORE:
                        break
                    continue
                if self.in_flight > 0:
                    r = read(fd, self.rbuf, RBUF)
                    if r < 0 and errno == EINTR:
                        continue
                    if r <= 0:
                        err = errno if r < 0 else -1
                        break
                    self.rnow = _now()
                    self.rpos = 0
                    self.rlen = r
                    continue
                now = _now()
                if now >= end:
                    break
                # Recorded if written in the window; timed from when it was
                # due, so a server that falls behind shows its whole delay.
                self.recording = window_start <= now < window_end
                if step:
                    if now < self.due:
                        ts.tv_sec = self.due // 1000000000
                        ts.tv_nsec = self.due % 1000000000
                        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL)
                    elif now - self.due > self.lag_max:
                        self.lag_max = now - self.due
                    now = self.due
                    self.due += step
                err = _write_all(fd, fp, flen)
                if err:
                    break
                self._sent(1, now, 0)
        if err:
            self.recording = False
            return "EOF" if err == -1 else strerror(err).decode()
        if st != ST_MORE:
            self.events.append(self._event(st))
            return "events"  # recording stays as it was: the reply in flight is still timed
        self.recording = False
        return None


# -- the handshake loop --------------------------------------------------------

cdef enum:
    HS_OK = 0
    HS_CONNECT = 1
    HS_IO = 2
    HS_STATUS = 3
    HS_ACCEPT = 4
    HS_NO_CLOSE = 5
    HS_HEAD_MAX = 16384

#: handshake_loop's error kinds, in the order of its counts.
HANDSHAKE_ERRORS = ("refused", "failed", "bad_status", "bad_accept", "no_close")


cdef int _one_handshake(const addrinfo *ai, const char *req, Py_ssize_t req_len, const char *accept,
                        Py_ssize_t accept_len, const char *close_frame, Py_ssize_t close_len, double timeout,
                        char *head, int *err) noexcept nogil:
    """Connect, upgrade, close, wait for EOF: HS_OK or what went wrong."""
    cdef int fd, one = 1, result = HS_OK
    cdef timeval tv
    cdef Py_ssize_t got = 0, done
    cdef ssize_t r
    cdef const char *end
    cdef const char *p
    cdef const char *line_end
    cdef bint closed = False
    fd = socket(ai.ai_family, SOCK_STREAM, 0)
    if fd < 0:
        err[0] = errno
        return HS_CONNECT
    tv.tv_sec = <long>timeout
    tv.tv_usec = <long>((timeout - <double>tv.tv_sec) * 1e6)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv))  # also bounds connect()
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
    if connect(fd, ai.ai_addr, ai.ai_addrlen) < 0:
        err[0] = errno
        close(fd)
        return HS_CONNECT
    err[0] = _write_all(fd, req, req_len)
    if err[0]:
        close(fd)
        return HS_IO
    # the response head
    end = NULL
    while end is NULL:
        if got >= HS_HEAD_MAX - 1:
            close(fd)
            return HS_STATUS
        r = read(fd, head + got, HS_HEAD_MAX - 1 - got)
        if r < 0 and errno == EINTR:
            continue
        if r <= 0:
            err[0] = errno if r < 0 else 0
            close(fd)
            return HS_IO
        got += r
        end = <const char *>memmem(head, got, b"\r\n\r\n", 4)
    if got < 12 or memcmp(head, b"HTTP/1.1 101", 12) != 0:
        close(fd)
        return HS_STATUS
    # Sec-WebSocket-Accept, any case, value trimmed
    result = HS_ACCEPT
    p = head
    while p < end:
        line_end = <const char *>memmem(p, end + 2 - p, b"\r\n", 2)
        if line_end is NULL:
            break
        if line_end - p > 21 and strncasecmp(p, b"sec-websocket-accept:", 21) == 0:
            p += 21
            while p < line_end and (p[0] == 32 or p[0] == 9):
                p += 1
            while line_end > p and ((line_end - 1)[0] == 32 or (line_end - 1)[0] == 9):
                line_end -= 1
            if line_end - p == accept_len and memcmp(p, accept, accept_len) == 0:
                result = HS_OK
            break
        p = line_end + 2
    if result != HS_OK:
        close(fd)
        return result
    # our close frame, then the server's close frame and EOF
    err[0] = _write_all(fd, close_frame, close_len)
    if err[0]:
        close(fd)
        return HS_IO
    p = end + 4
    got = got - (p - head)
    if got > 0:
        closed = (<const uint8_t *>p)[0] == 0x88
    while True:
        r = read(fd, head, HS_HEAD_MAX)
        if r < 0 and errno == EINTR:
            continue
        if r < 0:
            err[0] = errno
            close(fd)
            return HS_IO
        if r == 0:
            break
        if got <= 0:
            closed = (<const uint8_t *>head)[0] == 0x88
            got = r
    close(fd)
    return HS_OK if closed else HS_NO_CLOSE


def handshake_loop(host, int port, request, accept, close_frame, Histogram histogram not None,
                   int64_t window_start, int64_t window_end, int64_t end, double timeout):
    """Cycle connect, upgrade (the 101 and its ``Sec-WebSocket-Accept``
    checked), close frame, the server's close frame and EOF, until ``end``
    (ns), with the GIL released. Cycles that start and end inside
    [window_start, window_end) are timed into ``histogram``. Returns
    ``(cycles in the window, error counts in the order of HANDSHAKE_ERRORS,
    the first error's text or None)``."""
    cdef bytes h = host.encode() if isinstance(host, str) else bytes(host)
    cdef bytes service = str(port).encode()
    cdef bytes req = bytes(request)
    cdef bytes acc = bytes(accept)
    cdef bytes cf = bytes(close_frame)
    cdef const char *req_p = PyBytes_AS_STRING(req)
    cdef const char *acc_p = PyBytes_AS_STRING(acc)
    cdef const char *cf_p = PyBytes_AS_STRING(cf)
    cdef Py_ssize_t req_len = len(req), acc_len = len(acc), cf_len = len(cf)
    cdef addrinfo hints
    cdef addrinfo *res = NULL
    cdef int rc, kind, err = 0, first_kind = -1, first_err = 0
    cdef int64_t t0, t1
    cdef uint64_t in_window = 0
    cdef uint64_t counts[6]
    cdef char status_line[120]
    cdef Py_ssize_t status_len = 0
    cdef const char *eol
    cdef char *head = <char *>calloc(1, HS_HEAD_MAX)
    cdef timespec pause
    if head is NULL:
        raise MemoryError()
    memset(&hints, 0, sizeof(hints))
    memset(counts, 0, sizeof(counts))
    hints.ai_family = AF_UNSPEC
    hints.ai_socktype = SOCK_STREAM
    cdef const char *h_p = PyBytes_AS_STRING(h)
    cdef const char *service_p = PyBytes_AS_STRING(service)
    with nogil:
        rc = getaddrinfo(h_p, service_p, &hints, &res)
    if rc != 0:
        free(head)
        raise OSError(f"cannot resolve {host!r}: {gai_strerror(rc).decode()}")
    try:
        with nogil:
            while True:
                t0 = _now()
                if t0 >= end:
                    break
                err = 0
                kind = _one_handshake(res, req_p, req_len, acc_p, acc_len, cf_p, cf_len, timeout, head, &err)
                t1 = _now()
                if kind == HS_OK:
                    if t0 >= window_start and t1 <= window_end:
                        histogram.add(<uint64_t>(t1 - t0), 1)
                        in_window += 1
                    continue
                counts[kind] += 1
                if first_kind < 0:
                    first_kind = kind
                    first_err = err
                    if kind == HS_STATUS:
                        # the head is still in the buffer: keep its first line
                        eol = <const char *>memmem(head, HS_HEAD_MAX, b"\r\n", 2)
                        status_len = min(<Py_ssize_t>(eol - head) if eol is not NULL else 0, 120)
                        memcpy(status_line, head, status_len)
                pause.tv_sec = 0
                pause.tv_nsec = 10000000  # a refused connect is not retried in a tight loop
                clock_nanosleep(CLOCK_MONOTONIC, 0, &pause, NULL)
    finally:
        freeaddrinfo(res)
        free(head)
    sample = None
    if first_kind >= 0:
        sample = HANDSHAKE_ERRORS[first_kind - 1]
        if first_err:
            sample += ": " + strerror(first_err).decode()
        elif first_kind == HS_STATUS:
            line = PyBytes_FromStringAndSize(status_line, status_len).decode("latin-1")
            sample += f": server answered {line!r} instead of 101"
        elif first_kind == HS_ACCEPT:
            sample += ": Sec-WebSocket-Accept missing or wrong"
        elif first_kind == HS_NO_CLOSE:
            sample += ": the server sent no close frame before EOF"
        elif first_kind == HS_IO:
            sample += ": the server hung up"
    return in_window, [counts[i] for i in range(1, 6)], sample


# -- the wake-up probe -----------------------------------------------------------


def ping(int fd, int n, int64_t gap_ns, Histogram histogram not None):
    """Side A of the wake-up probe: ``n`` times, wait ``gap_ns`` (so the
    other side's CPU goes idle), write one byte and read it back; each round
    trip goes into ``histogram``. GIL released; returns an error text or None."""
    cdef char b = 120
    cdef int i
    cdef ssize_t r
    cdef int64_t t0
    cdef timespec ts
    cdef int err = 0
    with nogil:
        for i in range(n):
            ts.tv_sec = gap_ns // 1000000000
            ts.tv_nsec = gap_ns % 1000000000
            clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, NULL)
            t0 = _now()
            r = write(fd, &b, 1)
            if r == 1:
                r = read(fd, &b, 1)
            if r != 1:
                err = errno if r < 0 else -1
                break
            histogram.add(<uint64_t>(_now() - t0), 1)
    if err:
        return "EOF" if err == -1 else strerror(err).decode()
    return None


def pong(int fd, int n):
    """Side B of the wake-up probe: ``n`` times, read one byte and write it
    back. GIL released; returns an error text or None."""
    cdef char b
    cdef int i
    cdef ssize_t r
    cdef int err = 0
    with nogil:
        for i in range(n):
            r = read(fd, &b, 1)
            if r == 1:
                r = write(fd, &b, 1)
            if r != 1:
                err = errno if r < 0 else -1
                break
    if err:
        return "EOF" if err == -1 else strerror(err).decode()
    return None


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
