"""``python -m fastws serve ...`` is ``fastws serve ...``."""

import sys

from .cli import main

sys.exit(main())
