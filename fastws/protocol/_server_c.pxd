# Compiled build of fastws/protocol/_server_py.py: _server_c.py is a link to
# it, and this file gives its ServerProtocol typed fields and C-level methods
# (the way aiohttp compiles reader_py.py as reader_c). One source, two
# builds: FASTWS_NO_EXTENSIONS=1 runs the .py, the wheel runs this. The
# connection cimports ServerProtocol and calls the per-message methods
# through the vtable.

cimport cython

from fastws.codec._frame cimport FrameReader, FrameWriter

# Opcodes and states as C ints, so event dispatch compares machine integers.
cdef int OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG
cdef int FLAG_RSV1
cdef int CONNECTING, OPEN, CLOSING, CLOSED
cdef int PENDING_NONE, PENDING_CLOSE, PENDING_FAIL
cdef Py_ssize_t SPLIT_ABOVE


@cython.final
cdef class Stats:
    cdef public unsigned long long text_in, binary_in, text_bytes_in, binary_bytes_in
    cdef public unsigned long long text_out, binary_out, text_bytes_out, binary_bytes_out
    cdef public unsigned long long write_pauses, slow_readers_dropped, rtt_count
    cdef public double rtt_sum
    cdef public dict handshakes, close_sent, close_rcvd, paths
    cdef public list rtt_buckets



@cython.final
cdef class ServerProtocol:
    cdef readonly object config          #: the server's frozen Config
    cdef readonly Stats stats            #: the server's counters, None when metrics are off
    cdef int _out_opcode                 #: opcode of the fragmented message being sent (stats)
    cdef readonly Py_ssize_t num         #: connection number in log lines
    cdef public object peer              #: the peer's address (the real client's behind a trusted proxy), for log lines
    cdef readonly int state              #: CONNECTING, OPEN, CLOSING or CLOSED (fastws.State values)
    cdef readonly object request
    cdef object _response                #: the Response sent, or None until asked for (then parsed from _head)
    cdef bytes _head                     #: the prepared 101
    cdef readonly object subprotocol
    cdef readonly object close_rcvd      #: Close received, or None
    cdef readonly object close_sent      #: Close sent, or None
    cdef readonly object close_rcvd_then_sent
    cdef readonly double deadline        #: when timeout() is due, in the caller's clock; 0 for none
    cdef readonly bint should_close      #: close TCP once `out` is written
    cdef readonly bint should_abort      #: drop TCP now
    cdef readonly list out               #: bytes to send, in order
    cdef readonly Py_ssize_t out_size    #: bytes in `out`
    cdef readonly object deflate         #: compression.PerMessageDeflate once agreed, else None (the only test on the uncompressed path)
    cdef readonly str reject_reason
    cdef object _parser                  #: httptools parser, handshake phase only
    cdef Py_ssize_t _hs_size
    cdef bint _hs_done
    cdef bytes _url
    cdef list _headers
    cdef bytes _rest                     #: bytes after the request head, fed to the reader on open
    cdef FrameReader _reader             #: frame phase only (None before)
    cdef FrameWriter _writer
    cdef object _subprotocols
    cdef object _origins
    cdef int _pending                    #: PENDING_*: what complete_close() will act on
    cdef bytes _pending_payload          #: the peer's close payload (PENDING_CLOSE)
    cdef object _fail_code               #: close code of the protocol error (PENDING_FAIL)
    cdef str _fail_reason
    cdef bint _held                      #: hold_close() was called; timeout() completes it
    cdef bint _stopped                   #: no more events: after a close, an error or abort

    # The per-message path: C calls from the connection, typed locals.
    cpdef receive_data(self, bytes data)
    @cython.locals(reader=FrameReader, event=tuple, opcode=int, stats=Stats, payload=bytes)
    cpdef object next_event(self)
    @cython.locals(opcode=int, frame=bytes, size=Py_ssize_t, stats=Stats)
    cpdef send_message(self, object data, object text=*)
    cpdef bint send_encoded(self, bytes frame)
    cpdef _append(self, bytes data)
    cpdef output_written(self)
