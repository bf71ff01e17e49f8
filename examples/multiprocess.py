"""SLURM-array style: N independent processes share one checkpoint; one is SIGKILLed.

The driver starts ``--workers`` copies of this script the way a SLURM job array does:
each gets ``SLURM_ARRAY_TASK_ID`` / ``SLURM_ARRAY_TASK_COUNT`` and takes its slice of
the sources, and all share ``SLURM_ARRAY_JOB_ID``, which resumelog uses as the run id
(``RESUMELOG_RUN_ID`` would do the same). Each process opens its *own* writer (its own
journal on the shared checkpoint: no locks, no central service), writes one output
file per source, records the source complete and flushes every few sources.

Phase 1: midway the driver SIGKILLs one worker. Whatever it had flushed survives;
completions it had not flushed yet are lost, so those sources are *redone* later.
Phase 2 (a new array job): every worker skips the completed sources and processes the
rest. The driver prints, per phase, what was skipped, processed and redone.

Usage::

    python examples/multiprocess.py --workers 4 --sources 40

Run a single array task by hand (what the driver does)::

    SLURM_ARRAY_JOB_ID=7 SLURM_ARRAY_TASK_ID=0 SLURM_ARRAY_TASK_COUNT=4 \\
        python examples/multiprocess.py --worker --workdir /tmp/mp
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import resumelog


def source_ids(n: int) -> list[str]:
    """The sources of the job: ``src-0000``, ``src-0001``, ..."""
    return [f"src-{k:04d}" for k in range(n)]


def worker(work: Path, n_sources: int, delay: float, flush_every: int) -> int:
    """One array task: process this task's slice of the pending sources."""
    task = int(os.environ["SLURM_ARRAY_TASK_ID"])
    count = int(os.environ["SLURM_ARRAY_TASK_COUNT"])
    job = os.environ["SLURM_ARRAY_JOB_ID"]
    ckpt = resumelog.open(str(work / "checkpoint"))  # run id <- $SLURM_ARRAY_JOB_ID
    mine = source_ids(n_sources)[task::count]
    todo = ckpt.pending(mine)
    print(f"[job {job} task {task}] skipped {len(mine) - len(todo)} already complete, {len(todo)} to do", flush=True)
    out = work / "outputs"
    out.mkdir(exist_ok=True)
    ledger = work / f"ledger-{job}-{task}.txt"  # what this task processed, for the driver's report
    with ckpt.writer(f"array-task-{task}") as w, ledger.open("a", buffering=1) as led:
        for i, s in enumerate(todo, 1):
            time.sleep(delay)  # the "work"
            (out / f"{s}.out").write_text(f"{s} done by job {job}\n")  # idempotent: one file per source
            w.complete(s)  # recorded after the output exists
            led.write(f"{s}\n")
            if i % flush_every == 0:
                w.flush()  # completions are durable from here on
    return 0


def read_ledger(work: Path, job: str) -> list[str]:
    """Every source a job processed (from all its tasks' ledgers)."""
    return [line for p in sorted(work.glob(f"ledger-{job}-*.txt")) for line in p.read_text().split()]


def run_array(work: Path, args: argparse.Namespace, job: str, kill: int | None) -> int | None:
    """Start one array job of ``args.workers`` tasks; SIGKILL task ``kill`` midway.

    Returns the return code of the killed task (``None`` if none was killed).
    """
    procs = []
    for task in range(args.workers):
        env = {k: v for k, v in os.environ.items() if k != "RESUMELOG_RUN_ID"}
        env.update(SLURM_ARRAY_JOB_ID=job, SLURM_ARRAY_TASK_ID=str(task), SLURM_ARRAY_TASK_COUNT=str(args.workers))
        cmd = [sys.executable, __file__, "--worker", "--workdir", str(work), "--sources", str(args.sources)]
        cmd += ["--delay", str(args.delay), "--flush-every", str(args.flush_every)]
        procs.append(subprocess.Popen(cmd, env=env))
    killed_rc = None
    if kill is not None:
        victim = procs[kill]
        ledger = work / f"ledger-{job}-{kill}.txt"
        while victim.poll() is None:
            if ledger.exists() and len(ledger.read_text().split()) >= args.kill_after:
                victim.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        killed_rc = victim.wait()
        if killed_rc == -signal.SIGKILL:
            print(f"[driver] SIGKILLed task {kill} of job {job} after it processed {len(ledger.read_text().split())}")
        else:
            print(f"[driver] task {kill} finished before it could be killed")
    for p in procs:
        p.wait()
    return killed_rc


def driver(work: Path, args: argparse.Namespace) -> int:
    """Phase 1 (one task killed), then phase 2 (rerun); print the report."""
    sources = source_ids(args.sources)
    ckpt = resumelog.open(str(work / "checkpoint"))
    already = len(sources) - len(ckpt.pending(sources))
    print(f"[driver] {args.sources} sources, {args.workers} tasks, {already} already complete")

    job1 = f"{int(time.time())}{secrets.randbelow(1000):03d}"
    run_array(work, args, job1, args.kill if 0 <= args.kill < args.workers else None)
    ckpt = resumelog.open(str(work / "checkpoint"))
    done1 = set(sources) - set(ckpt.pending(sources))
    lost = [s for s in read_ledger(work, job1) if s not in done1]
    print(
        f"phase 1: completed {len(done1)}/{len(sources)}; processed but not recorded (lost with the kill): {len(lost)}"
    )
    ckpt.compact()  # fold the journals into a snapshot (fast startup for the rerun)

    job2 = str(int(job1) + 1)
    run_array(work, args, job2, None)
    processed2 = read_ledger(work, job2)
    redone = sorted(set(processed2) & set(lost))
    ckpt = resumelog.open(str(work / "checkpoint"))
    missing = ckpt.pending(sources)
    print(
        f"phase 2: skipped {len(sources) - len(processed2)} already complete, processed {len(processed2)}, "
        f"redone {len(redone)}: {' '.join(redone) or '-'}"
    )
    outputs = sum(1 for s in sources if (work / "outputs" / f"{s}.out").exists())
    print(f"complete {len(sources) - len(missing)}/{len(sources)}, outputs {outputs}/{len(sources)}")
    return 0 if not missing else 1


def main(argv: list[str] | None = None) -> int:
    """Parse arguments; run the driver or (``--worker``) one array task."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=None, help="default: a new temporary directory")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--sources", type=int, default=40)
    ap.add_argument("--kill", type=int, default=0, help="array task to SIGKILL in phase 1 (-1: none)")
    ap.add_argument("--kill-after", type=int, default=3, help="kill it once it processed this many sources")
    ap.add_argument("--delay", type=float, default=0.05, help="seconds of 'work' per source")
    ap.add_argument("--flush-every", type=int, default=2, help="flush completions every N sources")
    ap.add_argument("--worker", action="store_true", help="run one array task (driven by SLURM_* variables)")
    args = ap.parse_args(argv)
    work: Path = args.workdir or Path(tempfile.mkdtemp(prefix="resumelog-multiprocess-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.worker:
        return worker(work, args.sources, args.delay, args.flush_every)
    return driver(work, args)


if __name__ == "__main__":
    sys.exit(main())
