"""Settings of the fuzz targets.

Short in CI: ``FASTWS_FUZZ_EXAMPLES`` examples per target (300 by default).
Run longer by hand, e.g.::

    FASTWS_FUZZ_EXAMPLES=100000 python -m pytest tests/fuzz -p no:timeout

Hypothesis keeps failing examples in ``.hypothesis/`` and replays them first.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("FASTWS_FUZZ_EXAMPLES", "300"))

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
