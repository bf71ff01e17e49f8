"""Writes ``tests/data/format_v1/``: a checkpoint in format version 1, kept to prove that
newer readers still open it (``tests/test_format_compat.py``).

It only produces a version-1 checkpoint when run with resumelog at or before commit
3c839ee (the last one writing version 1); it is kept to document how the data was made.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import resumelog
from resumelog import format as fmt

HERE = Path(__file__).parent / "format_v1"


def lineage(w: resumelog.Writer, src: str, sinks: int = 3) -> None:
    w.record(f"0_{src}", src, +1, emission=True)
    w.record(f"0_{src}_0", src, sinks - 1)
    for j in range(sinks):
        w.record(f"0_{src}_{j}_0", src, -1)


def write_fixture(version: int, last_commit: str) -> None:
    """Write ``format_v<version>/`` with :func:`write_history`, if the installed resumelog
    writes that version (it did up to ``last_commit``)."""
    if fmt.FORMAT_VERSION != version:
        sys.exit(f"needs resumelog writing format version {version} (commit {last_commit} or earlier)")
    here = Path(__file__).parent / f"format_v{version}"
    shutil.rmtree(here, ignore_errors=True)
    write_history(here)


def main() -> None:
    if fmt.FORMAT_VERSION != 1:
        sys.exit("needs resumelog writing format version 1 (commit 3c839ee or earlier)")
    shutil.rmtree(HERE, ignore_errors=True)
    write_history(HERE)


def write_history(root: Path) -> None:
    """The history every format fixture holds (``make_format_v2.py`` reuses it)."""
    with resumelog.open(root, run_id="run0") as ck, ck.writer("w0") as w:
        for i in range(3):
            lineage(w, f"old{i}")
        w.complete("oldsimple")
    resumelog.open(root, run_id="run0").compact()
    with resumelog.open(root, run_id="run1") as ck:
        with ck.writer("w1") as w:
            for i in range(10):
                lineage(w, f"s{i}")
            for i in range(5):
                w.complete(f"c{i}")
            w.record("0_p0", "p0", +1, emission=True)
            w.record("0_p0_0", "p0", +2)
            w.record("0_p0_0_0", "p0", -1)  # p0 stays pending: two sinks missing
            lineage(w, "ü-unicode", sinks=1)
        ck.compact()
        with ck.writer("w2") as w:  # after the last snapshot: folded from the journal
            lineage(w, "s20")
            w.record("0_p0_1_0", "p0", -1)


if __name__ == "__main__":
    main()
