"""Writes ``tests/data/format_v5/``: a checkpoint in format version 5, kept to prove that
newer readers still open it (``tests/test_format_compat.py``).

The same history as ``make_format_v1.py`` (so the same answers are expected of both),
written with ``layers.MIN_LAYER = 1`` so that snapshot 2 names two layers (hash-ordered
version-5 layers stacked, as a big checkpoint's are). It only produces a version-5
checkpoint when run with resumelog at or before commit 89aef73 (the last one writing
version 5), and is kept to document how the data was made.
"""

from __future__ import annotations

from make_format_v1 import write_fixture

from resumelog import layers

if __name__ == "__main__":
    layers.MIN_LAYER = 1
    write_fixture(5, "89aef73")
