"""Quickstart: make a plain loop over files resumable with three lines.

The loop counts the words of each input file into an output file and records the file
as complete (``w.complete(path)``) once its output is written. Run it twice: the
second run skips every file. Interrupt the first run (``--stop-after 2`` simulates
that) and the rerun does only the files that were not finished.

Usage::

    python examples/quickstart.py --workdir /tmp/quickstart --stop-after 2
    python examples/quickstart.py --workdir /tmp/quickstart     # does the other 3
    python examples/quickstart.py --workdir /tmp/quickstart     # skips all 5

It prints what it skipped and what it processed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import resumelog

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()


def make_inputs(inputs: Path, n: int) -> list[Path]:
    """Create ``n`` small text files (once) and return their paths, sorted."""
    inputs.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        p = inputs / f"doc-{i:03d}.txt"
        if not p.exists():
            p.write_text(" ".join(WORDS[: 1 + (i * 3) % len(WORDS)]) + "\n")
    return sorted(inputs.glob("doc-*.txt"))[:n]


def count_words(src: Path, dst: Path) -> int:
    """The work: write the word count of ``src`` to ``dst``; return it."""
    n = len(src.read_text().split())
    dst.write_text(f"{n}\n")
    return n


def main(argv: list[str] | None = None) -> int:
    """Run the example; returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=None, help="default: a new temporary directory")
    ap.add_argument("--num-files", type=int, default=5)
    ap.add_argument("--stop-after", type=int, default=None, help="stop after N files (simulates an interruption)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    work: Path = args.workdir or Path(tempfile.mkdtemp(prefix="resumelog-quickstart-"))
    files = make_inputs(work / "inputs", args.num_files)
    out = work / "outputs"
    out.mkdir(exist_ok=True)

    ckpt = resumelog.open(str(work / "checkpoint"))
    sources = [f.name for f in files]  # source ids: stable names, not absolute paths
    todo = ckpt.pending(sources)
    skipped = [s for s in sources if s not in set(todo)]
    print(f"skipped {len(skipped)} already complete: {' '.join(skipped) or '-'}")
    if not todo:
        logging.warning("every file is already complete; nothing to do")

    processed: list[str] = []
    with ckpt.writer() as w:
        for name in todo:
            if args.stop_after is not None and len(processed) >= args.stop_after:
                print(f"stopping early after {len(processed)} files (--stop-after)")
                break
            count_words(work / "inputs" / name, out / f"{name}.count")  # write the output first,
            w.complete(name)  # then record completion (a crash in between means redo, never loss)
            processed.append(name)
    print(f"processed {len(processed)}: {' '.join(processed) or '-'}")
    done = resumelog.open(str(work / "checkpoint")).pending(sources)
    print(f"complete {len(sources) - len(done)}/{len(sources)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
