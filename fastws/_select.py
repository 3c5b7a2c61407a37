"""Pick each compiled module or its pure-Python twin, once, at import.

Owns one decision: compiled or pure. Each layer's package asks for its module
by name (``pick("fastws.codec._frame", "fastws.codec._frame_py")``); this
module imports nothing else of fastws, so it can sit under every layer
without making an import circle.

``FASTWS_NO_EXTENSIONS=1`` forces the twins (as ``AIOHTTP_NO_EXTENSIONS``
does for aiohttp). A missing build falls back to the twins with one warning,
so a source checkout without a compiler still runs, only slower. The choice
is all or nothing, made before anything is imported: a compiled layer
declares the compiled types of the layer below it and cannot drive a twin.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from types import ModuleType

__all__ = ["COMPILED_MODULES", "NO_EXTENSIONS", "compiled", "pick"]

logger = logging.getLogger("fastws")

#: True when the environment asked for the pure-Python twins.
NO_EXTENSIONS: bool = os.environ.get("FASTWS_NO_EXTENSIONS", "") not in ("", "0")

#: Every compiled module, as a path under the package without the suffix.
#: All or none are used: a compiled layer declares the compiled types of the
#: layer below it and cannot drive a twin.
COMPILED_MODULES = (
    "codec/_frame",
    "codec/_handshake",
    "protocol/_server_c",
    "connection/_connection_c",
    "bench/_echo",
)

_HERE = os.path.dirname(os.path.abspath(__file__))


def _missing_builds() -> list[str]:
    return [
        "fastws." + rel.replace("/", ".")
        for rel in COMPILED_MODULES
        if not any(os.path.exists(os.path.join(_HERE, rel + suffix)) for suffix in EXTENSION_SUFFIXES)
    ]


_use_compiled = not NO_EXTENSIONS
if _use_compiled:
    _missing = _missing_builds()
    if _missing:
        _use_compiled = False
        logger.warning(
            "fastws: compiled modules not built (%s); using the pure-Python twins, which are "
            "much slower. Reinstall with a C compiler to fix.",
            ", ".join(_missing),
        )
_picked: dict[str, bool] = {}


def pick(compiled_name: str, twin_name: str) -> ModuleType:
    """The compiled module ``compiled_name``, or ``twin_name`` if it cannot be used."""
    global _use_compiled
    if _use_compiled:
        try:
            module = importlib.import_module(compiled_name)
            # A compiled build of a .py twin has a .py link beside its .pxd;
            # without the extension, that link imports as plain Python.
            if not str(getattr(module, "__file__", "")).endswith(tuple(EXTENSION_SUFFIXES)):
                sys.modules.pop(compiled_name, None)
                raise ImportError(f"{compiled_name} is not built (found only {module.__file__})")
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
