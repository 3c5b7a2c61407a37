"""Pure-Python twin of :mod:`fastws.codec._handshake`: the opening-handshake helpers.

Same names, same behaviour, same exceptions as the compiled module; it is used
when the extension is not built (or ``FASTWS_NO_EXTENSIONS=1``) and as the
oracle the tests compare the compiled module against.
"""

from __future__ import annotations

import base64
import hashlib

__all__ = ["GUID", "accept_key", "build_101", "is_valid_key"]

GUID: bytes = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
"""The magic string RFC 6455 section 1.3 appends to ``Sec-WebSocket-Key``."""

_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

_STATUS_101 = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: "
)


def _type_error(name: str, expected: str, value: object) -> TypeError:
    return TypeError(f"{name} must be {expected}, not {type(value).__name__}")


def accept_key(key: bytes | str) -> bytes:
    """Return ``Sec-WebSocket-Accept`` for ``key``: base64(SHA-1(key + GUID)).

    ``key`` is used exactly as given (the caller strips surrounding
    whitespace); a ``str`` is encoded as UTF-8. The result is 28 ASCII bytes.
    Raises ``TypeError`` for anything but ``bytes`` or ``str``.
    """
    if isinstance(key, str):
        key = key.encode("utf-8")
    elif not isinstance(key, bytes):
        raise _type_error("key", "bytes or str", key)
    # SHA-1 here is a fixed protocol transform, not security: say so, or a
    # FIPS-mode OpenSSL refuses it.
    digest = hashlib.sha1(key + GUID, usedforsecurity=False).digest()
    return base64.b64encode(digest)


def is_valid_key(key: bytes | str) -> bool:
    """Whether ``key`` is a well-formed ``Sec-WebSocket-Key`` (RFC 6455 4.2.1).

    True exactly when ``len(base64.b64decode(key, validate=True)) == 16``,
    which is the check websockets makes: 22 characters of the standard base64
    alphabet followed by ``==``. Like websockets this is lenient about the
    four padding bits of the 22nd character (``...R==`` is accepted although
    only ``A``, ``Q``, ``g``, ``w`` are canonical there). A ``str`` that is
    not ASCII is never valid (False, no exception). Raises ``TypeError`` for
    anything but ``bytes`` or ``str``.
    """
    if isinstance(key, str):
        if not key.isascii():
            return False
        key = key.encode("ascii")
    elif not isinstance(key, bytes):
        raise _type_error("key", "bytes or str", key)
    # translate(None, alphabet) deletes every alphabet byte: empty means all were.
    return len(key) == 24 and key[22:] == b"==" and not key[:22].translate(None, _B64_ALPHABET)


def build_101(accept: bytes, extra_headers: bytes = b"") -> bytes:
    """Return the complete ``101 Switching Protocols`` response.

    ``accept`` is the ``Sec-WebSocket-Accept`` value (see :func:`accept_key`);
    ``extra_headers`` is zero or more already-formatted ``Name: value\\r\\n``
    lines (subprotocol, extensions, ``Server``), inserted verbatim before the
    blank line that ends the head. Raises ``TypeError`` unless both are
    ``bytes``.
    """
    if not isinstance(accept, bytes):
        raise _type_error("accept", "bytes", accept)
    if not isinstance(extra_headers, bytes):
        raise _type_error("extra_headers", "bytes", extra_headers)
    return b"".join((_STATUS_101, accept, b"\r\n", extra_headers, b"\r\n"))
