# Declarations of the compiled WebSocket frame codec (fastws/_frame.pyx), for
# modules that cimport the reader and for the helpers' signatures.

from libc.stdint cimport uint32_t


cdef enum:
    # Opcodes (RFC 6455 section 5.2) under C names: the Python-level OP_*
    # constants of the module are built from these.
    OPCODE_CONT = 0x0
    OPCODE_TEXT = 0x1
    OPCODE_BINARY = 0x2
    OPCODE_CLOSE = 0x8
    OPCODE_PING = 0x9
    OPCODE_PONG = 0xA
    # OR'd into a message event's opcode when its first frame had RSV1.
    EVENT_RSV1 = 0x40

cdef enum:
    # States of the UTF-8 DFA that callers look at; the others mean "inside
    # a multi-byte sequence". Values are pre-multiplied row offsets.
    UTF8_ACCEPT = 0
    UTF8_REJECT = 12

cdef enum:
    # What is wrong with a close frame payload (RFC 6455 section 5.5.1).
    CLOSE_OK = 0
    CLOSE_BAD_LENGTH = 1    # a single byte: half a status code
    CLOSE_BAD_CODE = 2      # a code that may not appear on the wire
    CLOSE_BAD_REASON = 3    # reason is not UTF-8


# XOR n bytes of src with the 4-byte key into dst (dst may equal src); src[0]
# is payload byte `offset`, so the key is rotated to match.
cdef void _unmask_into(unsigned char* dst, const unsigned char* src, Py_ssize_t n,
                       const unsigned char* key, Py_ssize_t offset) noexcept nogil

# Copy a payload out of the input, unmasking (key != NULL) all but its first
# `done` bytes, which were already unmasked in place.
cdef void _copy_payload(unsigned char* dst, const unsigned char* src, Py_ssize_t n,
                        const unsigned char* key, Py_ssize_t done) noexcept nogil

# Run the UTF-8 DFA over n bytes from `state`; returns the new state, which is
# UTF8_REJECT as soon as no valid text can follow.
cdef uint32_t _utf8_feed(uint32_t state, const unsigned char* s, Py_ssize_t n) noexcept nogil

# CLOSE_OK if the close payload is valid, else one of the CLOSE_BAD_* kinds.
cdef int _close_payload_error(const unsigned char* p, Py_ssize_t n) noexcept nogil

cdef bint _close_code_ok(unsigned int code) noexcept nogil


cdef class FrameReader:
    cdef:
        # Input is parsed either straight out of the caller's last bytes
        # object (zero-copy) or out of _buf, never both: the fast path is only
        # taken when _buf is empty, and leftovers move to _buf.
        bytes _data                    #: caller's bytes being parsed in place, None if not
        const unsigned char* _data_ptr
        Py_ssize_t _data_len
        Py_ssize_t _data_pos           #: first unparsed byte of _data
        unsigned char* _buf            #: malloc'd input that straddles feed_data calls
        Py_ssize_t _buf_cap
        Py_ssize_t _buf_start          #: first unparsed byte of _buf
        Py_ssize_t _buf_end            #: one past the last byte of _buf
        Py_ssize_t _frame_done         #: payload bytes of the partial text frame at _buf_start already unmasked in place and UTF-8 checked
        unsigned char* _msg            #: malloc'd reassembly of a fragmented message
        Py_ssize_t _msg_len
        Py_ssize_t _msg_cap
        int _msg_opcode                #: opcode | EVENT_RSV1 of the fragmented message in progress, -1 if none
        uint32_t _utf8_state           #: DFA state of the text message being checked
        long long _max_size            #: max_message_size, -1 for no limit
        bint _require_mask             #: server side: frames must be masked; client side: must not be
        bint _rsv1_allowed             #: permessage-deflate negotiated
        bint _finished                 #: after a ProtocolError or the close frame
        Py_ssize_t _consumed           #: out-value of _parse_frame: bytes of the frame it consumed, 0 if it needs more
        bytes _big                     #: a large one-frame message filled in place as it arrives, None if none
        Py_ssize_t _big_pos            #: bytes of _big filled so far
        int _big_opcode                #: its event opcode (| EVENT_RSV1)
        unsigned char _big_key[4]      #: its mask key
        bint _big_masked
        bint _big_text                 #: check its UTF-8 as it fills
        bint _big_bad                  #: its UTF-8 failed: next_event raises
        bint _big_ready                #: filled: next_event returns it

    # cpdef: the compiled protocol calls these straight through the vtable.
    cpdef feed_data(self, data)
    cpdef object next_event(self)
    cdef object _parse_frame(self, const unsigned char* p, Py_ssize_t avail, bint in_buf)
    cdef int _fail(self, object code, str message) except -1
    cdef int _check_invariants(self) except -1
    cdef int _stash_data(self) except -1
    cdef bint _buf_append(self, const unsigned char* src, Py_ssize_t n) noexcept
    cdef Py_ssize_t _big_fill(self, const unsigned char* src, Py_ssize_t n) noexcept
    cdef int _msg_reserve(self, Py_ssize_t extra) except -1
    cdef void _buf_emptied(self) noexcept
    cdef void _release_all(self) noexcept


cpdef bytes encode_frame(int opcode, object payload, bint fin=*, bint rsv1=*, object mask=*)


cdef class FrameWriter:
    cpdef bytes frame(self, int opcode, object payload, bint fin=*)
    cpdef bytes header(self, int opcode, Py_ssize_t length, bint fin=*)
