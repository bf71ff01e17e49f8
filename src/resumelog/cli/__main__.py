"""``python -m resumelog.cli``: the ``resumelog`` console script."""

from __future__ import annotations

import sys

from resumelog.cli._main import main

if __name__ == "__main__":
    sys.exit(main())
