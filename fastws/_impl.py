"""Pick the compiled codec or its pure-Python twin, once, at import.

``FASTWS_NO_EXTENSIONS=1`` forces the twins (as ``AIOHTTP_NO_EXTENSIONS`` does
for aiohttp); a missing build falls back to them with one warning, so a
source checkout without a compiler still runs, only slower.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import TYPE_CHECKING

logger = logging.getLogger("fastws")

NO_EXTENSIONS: bool = os.environ.get("FASTWS_NO_EXTENSIONS", "") not in ("", "0")

frame: ModuleType
handshake: ModuleType
COMPILED: bool

if NO_EXTENSIONS:
    from . import _frame_py as frame
    from . import _handshake_py as handshake

    COMPILED = False
else:
    try:
        from . import _frame as frame
        from . import _handshake as handshake

        COMPILED = True
    except ImportError as exc:  # pragma: no cover - depends on the build
        from . import _frame_py as frame
        from . import _handshake_py as handshake

        COMPILED = False
        logger.warning(
            "fastws: compiled codec not available (%s); using the pure-Python "
            "twin, which is much slower. Reinstall with a C compiler to fix.",
            exc,
        )

CODEC_NAME: str = "compiled" if COMPILED else "pure-python"

# The protocol's Connection: the compiled copy of protocol.py (see
# _protocol_c.pxd) when the extensions are in use, else protocol.py itself.
# Imported last: both import this module for `frame`, set above.
if TYPE_CHECKING:
    from .protocol import Connection as Connection
elif COMPILED:
    try:
        from ._protocol_c import Connection
    except ImportError as exc:  # pragma: no cover - depends on the build
        from .protocol import Connection

        logger.warning("fastws: compiled protocol not available (%s); using protocol.py", exc)
else:
    from .protocol import Connection
