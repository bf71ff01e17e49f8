"""Exactly-once outputs: worker processes SIGKILLed mid-output, rerun, every output once.

Each source (a small document) is split into 1 to 3 chunk files. Worker processes write
every chunk through ``w.output(source, root, name=..., record=False)`` (spooled, then
published with put-if-absent under ``<root>/<run>/<source>/~/<name>``) and record the
source complete once all its chunks are published. In the first run, one worker is
SIGKILLed after publishing a chunk but before recording its source, another while
writing a chunk. The second run (a new run id) redoes exactly the unfinished sources.

The reader helper (``ckpt.outputs(root)``) then lists every expected chunk exactly
once: the chunks the killed attempts left behind are in the first run's directory,
invisible, and ``ckpt.gc(outputs=[root])`` deletes them (``--grace 0`` here; 1 hour by
default).

Usage::

    python examples/exactly_once.py --workdir /tmp/eo
    python examples/exactly_once.py --workdir /tmp/eo --outputs s3://bucket/eo-out   # outputs elsewhere
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import resumelog
from resumelog import outputs

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def chunks(i: int) -> list[bytes]:
    """The chunks of document ``i`` (deterministic): 1 to 3 of them."""
    text = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(9))
    n = 1 + i % 3
    words = text.split()
    return [" ".join(words[j::n]).encode() + b"\n" for j in range(n)]


def worker(ckpt_url: str, root: str, run: str, k: int, n_workers: int, n_sources: int, crash: str) -> None:
    """Process sources ``i % n_workers == k`` that are not complete; maybe crash on purpose."""
    ckpt = resumelog.open(ckpt_url, run_id=run, create=False)
    mine = [f"doc-{i:03d}" for i in range(n_sources) if i % n_workers == k]
    todo = ckpt.pending(mine)
    with ckpt.writer(f"worker-{k}") as w:
        for n, src in enumerate(todo):
            parts = chunks(int(src[4:]))
            for j, data in enumerate(parts):
                with w.output(src, root, name=f"chunk-{j}.txt", record=False) as f:
                    f.write(data[: len(data) // 2])
                    if crash == "mid-write" and n == 1:
                        print(f"[worker {k}] SIGKILLed while writing {src} chunk {j}", flush=True)
                        os.kill(os.getpid(), signal.SIGKILL)
                    f.write(data[len(data) // 2 :])
                if crash == "after-publish" and n == 1 and j == len(parts) - 1:
                    print(f"[worker {k}] SIGKILLed after publishing {src}, before recording it", flush=True)
                    os.kill(os.getpid(), signal.SIGKILL)
            w.complete(src)  # after every chunk of the source is published
            w.flush()
        print(f"[worker {k}] run {run}: {len(todo)} sources done, {len(mine) - len(todo)} skipped", flush=True)


def run_job(ckpt_url: str, root: str, run: str, n_workers: int, n_sources: int, crashes: dict[int, str]) -> None:
    procs = []
    for k in range(n_workers):
        argv = ["--worker", ckpt_url, root, run, str(k), str(n_workers), str(n_sources), crashes.get(k, "none")]
        procs.append(subprocess.Popen([sys.executable, __file__, *argv]))
    for p in procs:
        p.wait()


def main(argv: list[str] | None = None) -> int:
    """Run the example; returns the exit code (0: every output exactly once)."""
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--worker":
        a = sys.argv[2:]
        worker(a[0], a[1], a[2], int(a[3]), int(a[4]), int(a[5]), a[6])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=None, help="default: a new temporary directory")
    ap.add_argument("--outputs", default=None, help="outputs root (any fsspec URL); default: <workdir>/outputs")
    ap.add_argument("--sources", type=int, default=12)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--grace", type=float, default=0.0, help="gc grace in seconds")
    args = ap.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="resumelog-eo-"))
    ckpt_url = str(workdir / "checkpoint")
    root = args.outputs or str(workdir / "outputs")
    resumelog.open(ckpt_url, run_id="setup")

    run_job(ckpt_url, root, "run-1", args.workers, args.sources, {0: "after-publish", 1: "mid-write"})
    ckpt = resumelog.open(ckpt_url, run_id="report")
    print(f"phase 1: completed {len(ckpt.completed)}/{args.sources} sources")
    run_job(ckpt_url, root, "run-2", args.workers, args.sources, {})
    ckpt.refresh()
    print(f"phase 2: completed {len(ckpt.completed)}/{args.sources} sources")

    visible = ckpt.outputs(root)
    expected = {(f"doc-{i:03d}", f"chunk-{j}.txt") for i in range(args.sources) for j in range(len(chunks(i)))}
    got = [(o.source, o.name) for o in visible]
    whole = all(outputs.output_store(root).read(o.path) == chunks(int(o.source[4:]))[int(o.name[6])] for o in visible)
    sc = outputs.scan(ckpt, root, grace=args.grace)  # what gc below collects
    print(f"visible outputs: {len(got)} of {len(expected)} expected, duplicates {len(got) - len(set(got))}")
    print(
        f"invisible debris of the killed attempts: {len(sc.orphaned)} orphaned outputs, {len(sc.staging)} spool files"
    )
    res = ckpt.gc(grace=args.grace, outputs=[root])
    g = res.outputs[0]
    print(f"gc removed {g.orphaned} orphaned outputs and {g.staging} spool files ({g.bytes} bytes)")
    left = len(outputs.output_store(root).list(""))
    ok = set(got) == expected and len(got) == len(expected) and whole and left == len(expected)
    print(f"exactly once: {'yes' if ok else 'NO'} ({left} objects left under the outputs root)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
