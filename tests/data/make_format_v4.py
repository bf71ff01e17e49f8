"""Writes ``tests/data/format_v4/``: a checkpoint in format version 4, kept to prove that
newer readers still open it (``tests/test_format_compat.py``).

The same history as ``make_format_v1.py`` (so the same answers are expected of both);
it only produces a version-4 checkpoint when run with resumelog at or before commit
3fa4afd (the last one writing version 4), and is kept to document how the data was made.
"""

from __future__ import annotations

from make_format_v1 import write_fixture

if __name__ == "__main__":
    write_fixture(4, "3fa4afd")
