"""Opening-handshake helpers, compiled (twin: ``fastws/codec/_handshake_py.py``).

``accept_key`` hashes in C: SHA-1 (FIPS 180-4) and base64 are written out
below rather than borrowed from libcrypto, so the extension needs no OpenSSL
headers to build, and a call allocates nothing but the bytes it returns.
SHA-1 is used here only because RFC 6455 section 4.2.2 fixes it; nothing in
this module is a security primitive.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset, strlen
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DATA, PyUnicode_GET_LENGTH


cdef extern from "Python.h":
    # Not in Cython's cpython/unicode.pxd; a macro in every CPython 3.x.
    bint PyUnicode_IS_ASCII(object o)


__all__ = ["GUID", "accept_key", "build_101", "is_valid_key"]

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

cdef const char* _GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
cdef size_t _GUID_LEN = strlen(_GUID)

cdef const char* _B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

cdef const char* _STATUS_101 = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: "
)
cdef size_t _STATUS_101_LEN = strlen(_STATUS_101)

# A SHA-1 digest is 20 bytes, which base64 turns into 28 characters.
cdef enum:
    _DIGEST_LEN = 20
    _ACCEPT_LEN = 28


# --- SHA-1 ------------------------------------------------------------------

cdef struct _Sha1:
    uint32_t h[5]
    uint64_t nbytes      # message length so far; the padding needs it in bits
    size_t used          # bytes waiting in buf for a full block
    uint8_t buf[64]


cdef inline uint32_t _rotl(uint32_t x, int n) noexcept nogil:
    return (x << n) | (x >> (32 - n))


cdef inline uint32_t _load_be32(const uint8_t* p) noexcept nogil:
    return ((<uint32_t>p[0]) << 24) | ((<uint32_t>p[1]) << 16) | ((<uint32_t>p[2]) << 8) | p[3]


cdef inline void _store_be32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 24)
    p[1] = <uint8_t>(v >> 16)
    p[2] = <uint8_t>(v >> 8)
    p[3] = <uint8_t>v


cdef inline uint32_t _schedule(uint32_t* w, int i) noexcept nogil:
    # The 80-word message schedule kept in a 16-word ring: for i >= 16,
    # W[i] = rotl1(W[i-3] ^ W[i-8] ^ W[i-14] ^ W[i-16]), and i-16 is i's slot.
    cdef uint32_t t
    if i >= 16:
        t = w[(i + 13) & 15] ^ w[(i + 8) & 15] ^ w[(i + 2) & 15] ^ w[i & 15]
        w[i & 15] = _rotl(t, 1)
    return w[i & 15]


cdef void _sha1_block(uint32_t* h, const uint8_t* block) noexcept nogil:
    cdef uint32_t w[16]
    cdef uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], t
    cdef int i
    for i in range(16):
        w[i] = _load_be32(block + 4 * i)
    for i in range(0, 20):
        t = _rotl(a, 5) + ((b & c) | (~b & d)) + e + <uint32_t>0x5A827999u + _schedule(w, i)
        e = d; d = c; c = _rotl(b, 30); b = a; a = t
    for i in range(20, 40):
        t = _rotl(a, 5) + (b ^ c ^ d) + e + <uint32_t>0x6ED9EBA1u + _schedule(w, i)
        e = d; d = c; c = _rotl(b, 30); b = a; a = t
    for i in range(40, 60):
        t = _rotl(a, 5) + ((b & c) | (b & d) | (c & d)) + e + <uint32_t>0x8F1BBCDCu + _schedule(w, i)
        e = d; d = c; c = _rotl(b, 30); b = a; a = t
    for i in range(60, 80):
        t = _rotl(a, 5) + (b ^ c ^ d) + e + <uint32_t>0xCA62C1D6u + _schedule(w, i)
        e = d; d = c; c = _rotl(b, 30); b = a; a = t
    h[0] += a
    h[1] += b
    h[2] += c
    h[3] += d
    h[4] += e


cdef inline void _sha1_init(_Sha1* s) noexcept nogil:
    s.h[0] = 0x67452301u
    s.h[1] = 0xEFCDAB89u
    s.h[2] = 0x98BADCFEu
    s.h[3] = 0x10325476u
    s.h[4] = 0xC3D2E1F0u
    s.nbytes = 0
    s.used = 0


cdef void _sha1_update(_Sha1* s, const uint8_t* p, size_t n) noexcept nogil:
    cdef size_t take
    s.nbytes += n
    if s.used:
        take = 64 - s.used
        if take > n:
            take = n
        memcpy(s.buf + s.used, p, take)
        s.used += take
        p += take
        n -= take
        if s.used < 64:
            return
        _sha1_block(s.h, s.buf)
        s.used = 0
    while n >= 64:
        _sha1_block(s.h, p)
        p += 64
        n -= 64
    if n:
        memcpy(s.buf, p, n)
        s.used = n


cdef void _sha1_final(_Sha1* s, uint8_t* digest) noexcept nogil:
    # Padding (FIPS 180-4 5.1.1): 0x80, zeros up to 56 mod 64, then the
    # message length in bits as a big-endian uint64. A tail of 56..63 bytes
    # leaves no room for the length, so it spills into one more block.
    cdef uint64_t bits = s.nbytes * 8
    cdef int i
    s.buf[s.used] = 0x80
    s.used += 1
    if s.used > 56:
        memset(s.buf + s.used, 0, 64 - s.used)
        _sha1_block(s.h, s.buf)
        s.used = 0
    memset(s.buf + s.used, 0, 56 - s.used)
    for i in range(8):
        s.buf[56 + i] = <uint8_t>(bits >> (56 - 8 * i))
    _sha1_block(s.h, s.buf)
    for i in range(5):
        _store_be32(digest + 4 * i, s.h[i])


# --- base64 -----------------------------------------------------------------

cdef inline void _b64_encode(const uint8_t* src, size_t n, char* out) noexcept nogil:
    # Standard alphabet with "=" padding; out must hold 4 * ceil(n / 3) bytes.
    cdef uint32_t v
    while n >= 3:
        v = ((<uint32_t>src[0]) << 16) | ((<uint32_t>src[1]) << 8) | src[2]
        out[0] = _B64[(v >> 18) & 63]
        out[1] = _B64[(v >> 12) & 63]
        out[2] = _B64[(v >> 6) & 63]
        out[3] = _B64[v & 63]
        src += 3
        n -= 3
        out += 4
    if n == 2:
        v = ((<uint32_t>src[0]) << 16) | ((<uint32_t>src[1]) << 8)
        out[0] = _B64[(v >> 18) & 63]
        out[1] = _B64[(v >> 12) & 63]
        out[2] = _B64[(v >> 6) & 63]
        out[3] = c'='
    elif n == 1:
        v = (<uint32_t>src[0]) << 16
        out[0] = _B64[(v >> 18) & 63]
        out[1] = _B64[(v >> 12) & 63]
        out[2] = c'='
        out[3] = c'='


cdef inline bint _is_b64_char(char ch) noexcept nogil:
    return (
        (c'A' <= ch <= c'Z')
        or (c'a' <= ch <= c'z')
        or (c'0' <= ch <= c'9')
        or ch == c'+'
        or ch == c'/'
    )


cdef inline bint _is_valid_key(const char* p, Py_ssize_t n) noexcept nogil:
    # 16 bytes are 128 bits: 21 full sextets, 2 bits in a 22nd, then "==".
    # The 22nd character's 4 unused bits are not checked, because
    # base64.b64decode(validate=True), and so websockets, does not either.
    cdef Py_ssize_t i
    if n != 24 or p[22] != c'=' or p[23] != c'=':
        return False
    for i in range(22):
        if not _is_b64_char(p[i]):
            return False
    return True


cdef TypeError _type_error(str name, str expected, object value):
    return TypeError(f"{name} must be {expected}, not {type(value).__name__}")


# --- public API ---------------------------------------------------------------

def accept_key(key):
    """Return ``Sec-WebSocket-Accept`` for ``key``: base64(SHA-1(key + GUID)).

    ``key`` is used exactly as given (the caller strips surrounding
    whitespace); a ``str`` is encoded as UTF-8. The result is 28 ASCII bytes.
    Raises ``TypeError`` for anything but ``bytes`` or ``str``.
    """
    cdef const char* p
    cdef Py_ssize_t n
    cdef _Sha1 s
    cdef uint8_t digest[_DIGEST_LEN]
    cdef bytes out
    if isinstance(key, bytes):
        p = PyBytes_AS_STRING(key)
        n = PyBytes_GET_SIZE(key)
    elif isinstance(key, str):
        p = PyUnicode_AsUTF8AndSize(key, &n)
    else:
        raise _type_error("key", "bytes or str", key)
    _sha1_init(&s)
    _sha1_update(&s, <const uint8_t*>p, <size_t>n)
    _sha1_update(&s, <const uint8_t*>_GUID, _GUID_LEN)
    _sha1_final(&s, digest)
    out = PyBytes_FromStringAndSize(NULL, _ACCEPT_LEN)
    _b64_encode(digest, _DIGEST_LEN, PyBytes_AS_STRING(out))
    return out


def is_valid_key(key):
    """Whether ``key`` is a well-formed ``Sec-WebSocket-Key`` (RFC 6455 4.2.1).

    True exactly when ``len(base64.b64decode(key, validate=True)) == 16``,
    which is the check websockets makes: 22 characters of the standard base64
    alphabet followed by ``==``. Like websockets this is lenient about the
    four padding bits of the 22nd character (``...R==`` is accepted although
    only ``A``, ``Q``, ``g``, ``w`` are canonical there). A ``str`` that is
    not ASCII is never valid (False, no exception). Raises ``TypeError`` for
    anything but ``bytes`` or ``str``.
    """
    if isinstance(key, bytes):
        return _is_valid_key(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
    if isinstance(key, str):
        # An ASCII str stores one byte per character, so its data is the key.
        if not PyUnicode_IS_ASCII(key):
            return False
        return _is_valid_key(<const char*>PyUnicode_DATA(key), PyUnicode_GET_LENGTH(key))
    raise _type_error("key", "bytes or str", key)


def build_101(accept, extra_headers=b""):
    """Return the complete ``101 Switching Protocols`` response.

    ``accept`` is the ``Sec-WebSocket-Accept`` value (see :func:`accept_key`);
    ``extra_headers`` is zero or more already-formatted ``Name: value\\r\\n``
    lines (subprotocol, extensions, ``Server``), inserted verbatim before the
    blank line that ends the head. Raises ``TypeError`` unless both are
    ``bytes``.
    """
    cdef Py_ssize_t na, ne
    cdef char* w
    cdef bytes out
    if not isinstance(accept, bytes):
        raise _type_error("accept", "bytes", accept)
    if not isinstance(extra_headers, bytes):
        raise _type_error("extra_headers", "bytes", extra_headers)
    na = PyBytes_GET_SIZE(accept)
    ne = PyBytes_GET_SIZE(extra_headers)
    out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>_STATUS_101_LEN + na + ne + 4)
    w = PyBytes_AS_STRING(out)
    memcpy(w, _STATUS_101, _STATUS_101_LEN)
    w += _STATUS_101_LEN
    memcpy(w, PyBytes_AS_STRING(accept), <size_t>na)
    w += na
    w[0] = c'\r'
    w[1] = c'\n'
    w += 2
    memcpy(w, PyBytes_AS_STRING(extra_headers), <size_t>ne)
    w += ne
    w[0] = c'\r'
    w[1] = c'\n'
    return out
