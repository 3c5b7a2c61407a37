"""The codec layer: bytes <-> frames, the accept key, permessage-deflate.

Owns everything that runs per byte (frame parsing, unmasking, UTF-8
validation, framing) and per handshake hash. Sans-I/O: nothing here touches
a socket or the event loop. ``frame`` and ``handshake`` are the compiled
modules (``_frame.pyx``, ``_handshake.pyx``) or their pure-Python twins
(``_frame_py.py``, ``_handshake_py.py``), picked once by ``fastws._select``;
``compression`` is per-connection zlib state and stays Python.
"""

from __future__ import annotations

from types import ModuleType

from .._select import pick

__all__ = ["frame", "handshake"]

frame: ModuleType = pick("fastws.codec._frame", "fastws.codec._frame_py")
handshake: ModuleType = pick("fastws.codec._handshake", "fastws.codec._handshake_py")
