"""Build the Cython extensions of fastws.

Metadata lives in ``pyproject.toml``; this file only describes the compiled
modules. Build knobs (all environment variables, read once here):

- ``FASTWS_NO_EXTENSIONS=1``  build nothing; the pure-Python twins are used.
- ``FASTWS_ANNOTATE=1``       write ``cython -a`` HTML next to each ``.pyx``.
- ``FASTWS_DEBUG=1``          ``-O0 -g``, Cython's bounds/wraparound/initialized
                              checks, and the ``assert`` invariant checks in the
                              compiled modules (the frame reader's buffer
                              bookkeeping after every event); a release build
                              compiles the asserts out.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup

NO_EXTENSIONS = os.environ.get("FASTWS_NO_EXTENSIONS", "") not in ("", "0")
ANNOTATE = os.environ.get("FASTWS_ANNOTATE", "") not in ("", "0")
DEBUG = os.environ.get("FASTWS_DEBUG", "") not in ("", "0")

# Cython sources, each with a hand-written pure-Python twin (<name>_py.py).
MODULES = ["codec/_frame", "codec/_handshake", "bench/_echo"]
# Pure-Python sources also compiled as they are, with the types of their
# .pxd: <name>.py is a link to the twin <layer>/_..._py.py, so the twin stays
# importable beside the compiled module (as aiohttp does with reader_c).
COMPILED_PY = ["protocol/_server_c", "connection/_connection_c"]


def extensions() -> list[Extension]:
    if NO_EXTENSIONS:
        return []
    from Cython.Build import cythonize

    if DEBUG:
        cflags = ["-O0", "-g3", "-UNDEBUG"]
    else:
        cflags = ["-O3", "-DCYTHON_WITHOUT_ASSERTIONS"]
    if sys.platform != "win32":
        cflags += ["-fno-strict-aliasing"]
    exts = [
        Extension("fastws." + name.replace("/", "."), [f"fastws/{name}.pyx"], extra_compile_args=cflags)
        for name in MODULES
    ] + [
        Extension("fastws." + name.replace("/", "."), [f"fastws/{name}.py"], extra_compile_args=cflags)
        for name in COMPILED_PY
    ]
    # Directives are set once, here, for every module (STYLE.md item 11).
    directives = {
        "language_level": 3,
        "boundscheck": DEBUG,
        "wraparound": DEBUG,
        "initializedcheck": DEBUG,
        "cdivision": True,
        "embedsignature": True,
    }
    return cythonize(
        exts,
        compiler_directives=directives,
        annotate=ANNOTATE,
    )


setup(ext_modules=extensions())
