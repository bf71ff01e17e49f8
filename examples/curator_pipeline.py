"""A Curator-style stage pipeline, rerun until every source completes exactly once.

Source → Flaky → Filter → Sink, with :mod:`resumelog.curator`'s runner:

* **Source** reads a "document" per source id (a few paragraphs of seeded random words);
* **Flaky** passes a document on, or fails it at random (a ``FailedTask``, seeded):
  the source stays pending and is retried by the next attempt;
* **Filter** splits a document into paragraphs (a fan-out) and filters out short ones
  (``None`` = a filtered slot); a document whose paragraphs are all short completes
  with no output at all;
* **Sink** writes each paragraph to its own file, ``outputs/<source>/<n>.txt`` (so a
  rewrite would overwrite, never duplicate), and logs every write.

Each attempt is a new run (a new run id) on the same checkpoint: it skips the sources
completed by earlier attempts and redoes the failed ones from scratch. Attempts repeat
until every source is complete; a last attempt then finds nothing to do. Finally the
script checks the write log: every expected paragraph file was written exactly once.

Usage::

    python examples/curator_pipeline.py --sources 20 --fail-rate 0.3
    python examples/curator_pipeline.py --workdir /tmp/cp --max-attempts 1   # one attempt per invocation
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import zlib
from collections import Counter
from pathlib import Path
from typing import cast

import resumelog
from resumelog.curator import FailedTask, Pipeline, RunResult, SourceStage, Stage, Task

WORDS = "the of and to in is was it for on with as by at from this that be are an".split()


def make_document(source: str, seed: int) -> list[str]:
    """A source's content: 1-4 paragraphs of 1-9 words, the same in every run."""
    rng = random.Random(zlib.crc32(f"{seed}:{source}".encode()))
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, 9))) for _ in range(rng.randint(1, 4))]


def expected_outputs(source: str, seed: int, min_words: int) -> set[str]:
    """Paragraph ids the sink must write for ``source`` (the paragraphs the filter keeps)."""
    return {f"{source}/{i}" for i, p in enumerate(make_document(source, seed)) if len(p.split()) >= min_words}


def build(work: Path, sources: list[str], args: argparse.Namespace, rng: random.Random) -> list[object]:
    """The four stages (the first is the source stage)."""
    out = work / "outputs"
    write_log = work / "writes.log"

    def flaky(batch: list[Task]) -> list[object]:
        return [FailedTask("", data="unlucky") if rng.random() < args.fail_rate else t.data for t in batch]

    def split_and_filter(batch: list[Task]) -> list[object]:
        (doc,) = batch  # batch size 1: a fan-out, one output slot per paragraph
        assert isinstance(doc.data, list)
        return [(i, p) if len(p.split()) >= args.min_words else None for i, p in enumerate(doc.data)]

    def sink(batch: list[Task]) -> list[object]:
        for t in batch:
            i, text = cast(tuple[int, str], t.data)
            d = out / str(t.source_id)
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{i}.txt").write_text(text + "\n")
            with write_log.open("a") as log:
                log.write(f"{t.source_id}/{i}\n")
        return [t.data for t in batch]

    return [
        SourceStage(sources, lambda s: make_document(s, args.seed)),
        Stage(flaky, name="flaky"),
        Stage(split_and_filter, name="filter"),
        Stage(sink, name="sink", batch_size=4),
    ]


def attempt(work: Path, sources: list[str], args: argparse.Namespace) -> RunResult:
    """One run of the pipeline on the checkpoint (a new run id per open).

    Flaky's failures are seeded with ``--seed`` and the number of earlier runs, so an
    attempt is reproducible and the next attempt draws differently.
    """
    ckpt = resumelog.open(str(work / "checkpoint"))
    rng = random.Random(f"{args.seed}:{len(ckpt.status().runs)}")
    return Pipeline(build(work, sources, args, rng), checkpoint=ckpt).run()  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    """Run attempts until every source is complete; check the outputs."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=None, help="default: a new temporary directory")
    ap.add_argument("--sources", type=int, default=20)
    ap.add_argument("--fail-rate", type=float, default=0.3, help="probability that Flaky fails a document")
    ap.add_argument("--min-words", type=int, default=3, help="Filter drops shorter paragraphs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-attempts", type=int, default=30)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    work: Path = args.workdir or Path(tempfile.mkdtemp(prefix="resumelog-curator-"))
    work.mkdir(parents=True, exist_ok=True)
    sources = [f"doc-{k:04d}" for k in range(args.sources)]

    complete = False
    for n in range(1, args.max_attempts + 1):
        res = attempt(work, sources, args)
        print(f"attempt {n} (run {res.run_id}): {res.summary()}")
        if res.failed:
            print(f"  failed, will rerun: {' '.join(res.failed)}")
        if res.nothing_to_do:
            complete = True
            break
        if not res.failed:
            complete = True
            final = attempt(work, sources, args)  # shows that a finished pipeline does nothing
            print(f"rerun (run {final.run_id}): {final.summary()}")
            break
    if not complete:
        print(f"not every source completed after {args.max_attempts} attempts; run again to continue")
        return 1

    writes = Counter((work / "writes.log").read_text().split()) if (work / "writes.log").exists() else Counter()
    expected = set().union(*(expected_outputs(s, args.seed, args.min_words) for s in sources))
    dupes = sorted(k for k, c in writes.items() if c > 1)
    missing = sorted(expected - set(writes))
    extra = sorted(set(writes) - expected)
    empty = sum(1 for s in sources if not expected_outputs(s, args.seed, args.min_words))
    print(
        f"outputs: {len(writes)} paragraph files for {len(sources)} sources "
        f"({empty} sources filtered out entirely); duplicates {len(dupes)}, missing {len(missing)}, extra {len(extra)}"
    )
    if dupes or missing or extra:
        print(f"ERROR duplicates={dupes} missing={missing} extra={extra}")
        return 1
    print("every source completed exactly once; every output written exactly once")
    return 0


if __name__ == "__main__":
    sys.exit(main())
