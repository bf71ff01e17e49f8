"""``resumelog demo``: a multi-process pipeline that is SIGKILLed midway and resumed.

Run 1 starts ``workers`` processes (SLURM-array style: each takes a slice of the
sources and writes its own journal). Each source goes through the counter algebra:
emission ``+1``, a fan-out into 3 parts (``+2``, flushed before the parts are
processed: the durability barrier), and three sink ``-1``. Midway the driver
SIGKILLs worker 0; whatever it had not flushed is lost. Run 2 reopens the checkpoint,
skips every completed source and redoes the rest. The demo then checks that every
source completed, and prints the status.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import resumelog
from resumelog import paths

__all__ = ["add_demo_arguments", "existing_checkpoint", "main", "run_demo"]

FANOUT = 3


def _work(ckpt_path: str, run_id: str, sources: list[str], ledger: str, delay: float, flush_every: int) -> None:
    """Worker body: process ``sources``, append each finished one to ``ledger``."""
    handle = resumelog.WriterHandle(ckpt_path, run_id)
    with handle.writer() as w, open(ledger, "a", buffering=1) as out:
        for i, s in enumerate(sources):
            w.emit(s)
            w.record(f"{s}_0", s, FANOUT - 1)  # fan-out 1 -> 3
            w.flush()  # barrier: the +1 and +2 are durable before the parts run
            for part in range(FANOUT):
                time.sleep(delay / FANOUT)
                w.record(f"{s}_0_{part}", s, -1)  # sink
            if (i + 1) % flush_every == 0:
                w.flush()
                out.write("\n".join(sources[i + 1 - flush_every : i + 1]) + "\n")


def _spawn(
    ckpt_path: str, run_id: str, shards: list[list[str]], ledger_dir: Path, delay: float
) -> list[subprocess.Popen[bytes]]:
    procs = []
    for k, shard in enumerate(shards):
        spec = json.dumps(
            {
                "path": ckpt_path,
                "run": run_id,
                "sources": shard,
                "ledger": str(ledger_dir / f"worker-{k}.txt"),
                "delay": delay,
            }
        )
        procs.append(subprocess.Popen([sys.executable, "-m", "resumelog.demo", "--worker", spec]))
    return procs


def _lines(p: Path) -> int:
    try:
        return sum(1 for line in p.read_text().splitlines() if line)
    except FileNotFoundError:
        return 0


def run_demo(
    path: str, sources: int = 240, workers: int = 4, delay: float = 0.01, out: Callable[[str], object] = print
) -> dict[str, int]:
    """Run the two-run demo at ``path`` (cleared first); return the figures it printed."""
    if sources < 1 or workers < 1:
        raise ValueError("the demo needs at least 1 source and 1 worker")
    workers = min(workers, sources)
    ids = [f"shard-{i:05d}" for i in range(sources)]
    fp = {"sources": sources, "fanout": FANOUT}
    resumelog.open(path).clear()  # the caller decided to replace whatever was there
    ckpt = resumelog.open(path, fingerprint=fp)
    ledger_dir = Path(path) / "_demo_ledgers"
    ledger_dir.mkdir(parents=True, exist_ok=True)
    shards = [ids[k::workers] for k in range(workers)]
    out(f"run 1 ({ckpt.run_id}): {sources} sources, {workers} worker processes, checkpoint at {path}")
    procs = _spawn(path, ckpt.run_id, shards, ledger_dir, delay)
    victim = ledger_dir / "worker-0.txt"
    deadline = time.time() + 120
    while _lines(victim) < len(shards[0]) // 2 and procs[0].poll() is None and time.time() < deadline:
        time.sleep(0.01)
    procs[0].send_signal(signal.SIGKILL)
    out(f"  SIGKILLed worker 0 after it reported {_lines(victim)} of {len(shards[0])} sources")
    for p in procs:
        p.wait()
    ckpt.compact()
    done1 = len(ckpt.completed)
    out(f"  run 1 ended: {done1} of {sources} sources complete")

    ckpt2 = resumelog.open(path, fingerprint=fp)
    todo = ckpt2.pending(ids)
    out(f"run 2 ({ckpt2.run_id}): skipped {sources - len(todo)} completed sources, redoing {len(todo)}")
    for p in _spawn(path, ckpt2.run_id, [todo[k::workers] for k in range(workers)], ledger_dir, 0.0):
        p.wait()
    ckpt2.compact()
    done2 = len(ckpt2.completed)
    missing = ckpt2.pending(ids)
    out(f"  run 2 ended: {done2} of {sources} sources complete; missing: {missing[:5]}")
    st = ckpt2.status()
    out(
        f"status: snapshot {st.snapshot}, completed {st.completed}, pending {st.pending}, "
        f"writers {len(st.writers)}, journal {st.journal_objects} objects / {st.journal_bytes} bytes, "
        f"anomalies {st.anomalies}"
    )
    for f in ledger_dir.iterdir():
        f.unlink()
    ledger_dir.rmdir()
    return {
        "sources": sources,
        "completed_run1": done1,
        "redone": len(todo),
        "completed": done2,
        "missing": len(missing),
    }


def _at_least_one(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {v}")
    return v


def add_demo_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of ``resumelog demo`` (also shown by ``resumelog demo --help``)."""
    ap.add_argument("--path", default="resumelog-demo", help="checkpoint directory (default: ./resumelog-demo)")
    ap.add_argument("--sources", type=_at_least_one, default=240, metavar="N", help="sources, >= 1 (default 240)")
    ap.add_argument("--workers", type=_at_least_one, default=4, metavar="N", help="worker processes, >= 1 (default 4)")
    ap.add_argument(
        "-y",
        "--yes",
        action="store_true",
        help="replace an existing checkpoint at --path without asking (the demo clears it first)",
    )


def existing_checkpoint(path: str) -> str | None:
    """Why ``path`` cannot be used as is: ``"checkpoint"`` (resumelog objects are there,
    the demo would delete them), ``"other"`` (a non-empty directory of something else, or
    a file), or ``None`` (missing or empty: free to use)."""
    if os.path.exists(path) and not os.path.isdir(path):
        return "other"
    if not os.path.isdir(path) or not os.listdir(path):
        return None
    if any(os.path.exists(os.path.join(path, p)) for p in (paths.META, paths.SNAPSHOT_PREFIX, paths.JOURNAL_PREFIX)):
        return "checkpoint"
    return "other"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m resumelog.demo`` (the same as ``resumelog demo``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--worker"] and len(args) == 2:
        spec = json.loads(args[1])
        _work(spec["path"], spec["run"], spec["sources"], spec["ledger"], spec["delay"], flush_every=4)
        return 0
    from resumelog.cli import main as cli_main

    return cli_main(["demo", *args])


if __name__ == "__main__":
    sys.exit(main())
