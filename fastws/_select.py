"""Pick each compiled module or its pure-Python twin, once, at import.

Owns one decision: compiled or pure. Each layer's package asks for its module
by name (``pick("fastws.codec._frame", "fastws.codec._frame_py")``); this
module imports nothing else of fastws, so it can sit under every layer
without making an import circle.

``FASTWS_NO_EXTENSIONS=1`` forces the twins (as ``AIOHTTP_NO_EXTENSIONS``
does for aiohttp). A missing build falls back to the twins with one warning,
so a source checkout without a compiler still runs, only slower. The
fallback is sticky: once one module is a twin, every later pick is too,
because a compiled layer declares the compiled types of the layer below it
and cannot drive a twin.
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType

__all__ = ["NO_EXTENSIONS", "compiled", "pick"]

logger = logging.getLogger("fastws")

#: True when the environment asked for the pure-Python twins.
NO_EXTENSIONS: bool = os.environ.get("FASTWS_NO_EXTENSIONS", "") not in ("", "0")

_use_compiled = not NO_EXTENSIONS
_picked: dict[str, bool] = {}


def pick(compiled_name: str, twin_name: str) -> ModuleType:
    """The compiled module ``compiled_name``, or ``twin_name`` if it cannot be used."""
    global _use_compiled
    if _use_compiled:
        try:
            module = importlib.import_module(compiled_name)
        except ImportError as exc:
            _use_compiled = False
            logger.warning(
                "fastws: compiled module %s not available (%s); using the pure-Python "
                "twins, which are much slower. Reinstall with a C compiler to fix.",
                compiled_name,
                exc,
            )
        else:
            _picked[compiled_name] = True
            return module
    _picked[compiled_name] = False
    return importlib.import_module(twin_name)


def compiled() -> bool:
    """True when every module picked so far is the compiled one."""
    return bool(_picked) and all(_picked.values())
