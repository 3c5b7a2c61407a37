# Compiled twin of fastws/protocol.py: _protocol_c.py is a symlink to it, and
# this file turns its Connection into an extension type with typed fields
# (the way aiohttp compiles reader_py.py as reader_c). One source, two
# builds: FASTWS_NO_EXTENSIONS=1 runs the .py, the wheel runs this.

cimport cython

from fastws._frame cimport FrameReader, FrameWriter

# Opcodes as C ints, so the event dispatch compares machine integers.
cdef int OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG
# OR'd into a message event's opcode by the reader when it is compressed.
cdef int FLAG_RSV1


@cython.final
cdef class Connection:
    cdef readonly object _server         #: ServerState shared by the server's connections
    cdef readonly object _config         #: the server's frozen Config
    cdef readonly Py_ssize_t _num        #: connection number in log lines
    cdef object _uuid
    cdef public int _state               #: CONNECTING, OPEN, CLOSING or CLOSED
    cdef readonly object _transport
    cdef double _started
    cdef public object request
    cdef object _response
    cdef bytes _head                     #: the 101 sent (parsed into .response on demand)
    cdef public object remote_address
    cdef public object local_address
    cdef public object subprotocol
    cdef public object close_rcvd        #: (code, reason) received, or None
    cdef public object close_sent        #: (code, reason) sent, or None
    cdef public object close_rcvd_then_sent
    cdef readonly object _handler        #: what make_handler() returned
    cdef object _on_message              #: bound handler callbacks, looked up once
    cdef object _on_pong
    cdef object _on_ping
    cdef object _on_drain
    cdef bint _opened                    #: on_connect was called, so on_close will be
    cdef readonly int _read_paused       #: PAUSE_* bits; reading resumes at 0
    cdef readonly bint _write_paused     #: write buffer above write_limit
    cdef object _timer
    cdef object _parser                  #: httptools parser, handshake phase only
    cdef Py_ssize_t _hs_size
    cdef bint _hs_done
    cdef bytes _url
    cdef list _headers
    cdef FrameReader _reader             #: frame phase only (None before)
    cdef FrameWriter _writer
    cdef public object _deflate          #: compression.PerMessageDeflate once negotiated, else None (send() tests only this)
    cdef bint _batching                  #: sends go to _batch until _flush
    cdef list _batch                     #: frames sent while batching
    cdef list _spare                     #: the other list (see _write_batch)
    cdef Py_ssize_t _batch_size          #: bytes in _batch
    cdef object _loop
    cdef object _lost_waiter
    cdef object _public                  #: what user code sees (self, or the coroutine-level wrapper)
    cdef object _has_pending             #: handler hook: messages not yet taken (coroutine level)
    cdef readonly object _deferred       #: (action, args) of a close held back by _defer, or None

    # The per-message path: C calls between these, typed locals.
    cpdef _frames_received(self, bytes data)
    @cython.locals(reader=FrameReader, event=tuple, opcode=int)
    cpdef _process_frames(self, bytes data)
    cpdef _write(self, bytes data)
    cpdef _write_batch(self)
    cpdef _flush(self)
