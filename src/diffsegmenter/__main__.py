"""``python -m diffsegmenter``: the same as the ``diffsegmenter`` command (see :mod:`diffsegmenter.cli`)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
