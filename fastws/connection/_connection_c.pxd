# Compiled build of fastws/connection/_connection_py.py: _connection_c.py is a
# link to it, and this file makes its Connection an extension type with typed
# fields. The protocol below is cimported, so the per-message calls
# (receive_data, next_event, send_message) go through its vtable.

cimport cython

from fastws.protocol._server_c cimport ServerProtocol, Stats

# Opcodes, states and pause reasons as C ints.
cdef int OP_TEXT, OP_BINARY, OP_PING, OP_PONG
cdef int CONNECTING, OPEN, CLOSING, CLOSED
cdef int PAUSE_WRITE_BUFFER, PAUSE_USER, PAUSE_HANDSHAKE


@cython.final
cdef class Connection:
    cdef object _ctx                     #: the ServerContext of the server that accepted it
    cdef readonly object config          #: the server's frozen Config
    cdef readonly Py_ssize_t num         #: connection number in log lines
    cdef object _uuid
    cdef object _transport
    cdef object _loop
    cdef ServerProtocol _proto           #: the sans-I/O protocol (None before connection_made)
    cdef double _started                 #: loop time of connection_made
    cdef public object remote_address
    cdef public object local_address
    cdef object _scheme                  #: set from a trusted proxy's headers; None: from the transport
    cdef bint _tls                       #: the transport is TLS (join batches into one record)
    cdef public object username          #: set by basic_auth
    cdef readonly object public          #: what user code sees: self, or the face's object
    cdef object _on_open                 #: the face's callbacks (attach)
    cdef object _on_message
    cdef object _on_close
    cdef object _on_ping
    cdef object _on_pong
    cdef object _on_drain
    cdef object _pending
    cdef object _process_request
    cdef bint _opened                    #: the 101 was sent, so on_close will be called
    cdef int _read_paused                #: PauseReason bits; reading resumes at 0
    cdef bint _write_paused              #: write buffer above write_limit
    cdef object _timer
    cdef double _timer_at                #: the deadline _timer is armed for, 0 if none
    cdef bint _batching                  #: sends stay in the protocol's `out` until _flush
    cdef Py_ssize_t _write_limit
    cdef object _lost_waiter
    cdef Stats _stats                    #: the server's counters, None when metrics are off
    cdef public double latency           #: round trip of the last ping answered (s)
    cdef object _ka_timer
    cdef object _ka_payload
    cdef double _ka_sent
    cdef unsigned long long _received    #: messages received (idle_timeout compares it)
    cdef unsigned long long _idle_seen
    cdef int _idle_quiet
    cdef object _idle_timer

    # The per-message path: C calls between these, typed locals.
    @cython.locals(corked=list, conn=Connection)
    cpdef _process(self)
    cpdef bint _join_cork(self)
    @cython.locals(proto=ServerProtocol, event=tuple, opcode=int)
    cpdef _dispatch(self)
    @cython.locals(proto=ServerProtocol, out=list, n=Py_ssize_t)
    cpdef _write_out(self)
    cpdef _flush(self)
