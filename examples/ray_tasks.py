"""Ray tasks: each worker records its own completions; one worker crashes; the rerun finishes.

The driver opens a checkpoint and submits one Ray task per source that is not complete
yet (``resumelog.ray.submit_pending``). Each task writes its output file and returns;
``@resumelog.ray.completes`` then records the source complete in *its worker's own*
journal (one writer per worker process, reused across tasks, no central actor) and
flushes before the task's result is returned, so a result the driver sees is durable.

Phase 1: the task of one source (``--crash-at``) kills its worker process midway
(``os._exit``, like an OOM kill). That task fails (``max_retries=0`` here, so that the
crash is final; in production let Ray retry); the completions its worker had recorded
for earlier tasks are durable and survive. Phase 2 is the rerun (a new run, as if the
command ran again): it skips every completed source and submits only the rest.
Running the script again on the same ``--workdir`` skips everything.

Usage::

    python examples/ray_tasks.py --workdir /tmp/ray-tasks --sources 24 --crash-at 6
    python examples/ray_tasks.py --workdir /tmp/ray-tasks          # skips all 24
    python examples/ray_tasks.py --checkpoint s3://bucket/ckpt     # any fsspec URL

It prints, per phase, what it skipped, submitted, completed and what failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import ray

import resumelog
import resumelog.ray
from resumelog.testing.ray import init_local_ray


@ray.remote(max_retries=0)  # a worker crash fails the task for good: the rerun redoes it
@resumelog.ray.completes("handle", source="source")  # after a successful return: complete + flush
def convert(source: str, handle: resumelog.WriterHandle, outdir: str, crash_on: str, delay: float) -> int:
    """The work for one source: write its output file; return the worker's pid."""
    time.sleep(delay)
    if source == crash_on:
        Path(outdir, "crashed.pid").write_text(str(os.getpid()))
        os._exit(1)  # the worker process dies mid-task: nothing of this task is recorded
    Path(outdir, f"{source}.out").write_text(f"{source} converted by pid {os.getpid()}\n")
    return os.getpid()


def run_phase(name: str, url: str, sources: list[str], outdir: Path, crash_on: str, delay: float) -> list[str]:
    """Open the checkpoint (a new run), submit the pending sources, wait; return the failed ones."""
    ckpt = resumelog.open(url)
    refs = resumelog.ray.submit_pending(
        ckpt, sources, convert, handle=ckpt.handle(), outdir=str(outdir), crash_on=crash_on, delay=delay
    )
    skipped = len(sources) - len(refs)
    print(f"{name}: skipped {skipped} already complete, submitted {len(refs)}: {' '.join(refs) or '-'}")
    pids: dict[str, int] = {}
    failed: list[str] = []
    for src, ref in refs.items():
        try:
            pids[src] = ray.get(ref)
        except ray.exceptions.RayError as exc:  # WorkerCrashedError here
            failed.append(src)
            print(f"{name}: {src} failed: {type(exc).__name__}")
    ckpt.refresh()  # see what the workers recorded
    done = len(sources) - len(ckpt.pending(sources))
    print(f"{name}: completed {done}/{len(sources)}; failed {len(failed)}: {' '.join(failed) or '-'}")
    crashed = outdir / "crashed.pid"
    if failed and crashed.exists():
        pid = int(crashed.read_text())
        before = [s for s, p in pids.items() if p == pid]
        kept = [s for s in before if ckpt.is_completed(s)]
        print(f"{name}: the crashed worker (pid {pid}) had finished {len(before)} sources; {len(kept)} are recorded")
        crashed.unlink()
    return failed


def main(argv: list[str] | None = None) -> int:
    """Run phase 1 (one worker crashes) and phase 2 (the rerun); returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=None, help="default: a new temporary directory")
    ap.add_argument("--checkpoint", default=None, help="checkpoint URL or path (default: <workdir>/checkpoint)")
    ap.add_argument("--sources", type=int, default=24)
    ap.add_argument("--crash-at", type=int, default=6, help="index of the source whose task crashes (-1: none)")
    ap.add_argument("--delay", type=float, default=0.05, help="seconds of 'work' per source")
    ap.add_argument("--num-cpus", type=int, default=2, help="Ray workers of the local cluster")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    work: Path = args.workdir or Path(tempfile.mkdtemp(prefix="resumelog-ray-tasks-"))
    outdir = work / "outputs"
    outdir.mkdir(parents=True, exist_ok=True)
    url = args.checkpoint or str(work / "checkpoint")
    sources = [f"src-{k:04d}" for k in range(args.sources)]
    crash_on = sources[args.crash_at] if 0 <= args.crash_at < len(sources) else ""

    init_local_ray(num_cpus=args.num_cpus, log_to_driver=False)  # ray.init(address="local", ...)
    try:
        failed = run_phase("phase 1", url, sources, outdir, crash_on, args.delay)
        if failed:
            run_phase("phase 2 (rerun)", url, sources, outdir, "", args.delay)
    finally:
        ray.shutdown()

    missing = resumelog.open(url).pending(sources)
    outputs = sum(1 for s in sources if (outdir / f"{s}.out").exists())
    print(f"complete {len(sources) - len(missing)}/{len(sources)}, outputs {outputs}/{len(sources)}")
    return 0 if not missing else 1


if __name__ == "__main__":
    sys.exit(main())
