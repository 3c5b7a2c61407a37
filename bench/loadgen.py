"""The load generator moved into the package: :mod:`fastws.bench.loadgen`
(``fastws bench``). Kept so ``python -m bench.loadgen`` still runs it."""

from __future__ import annotations

import sys

from fastws.bench.loadgen import *  # noqa: F403
from fastws.bench.loadgen import main

if __name__ == "__main__":
    sys.exit(main())
