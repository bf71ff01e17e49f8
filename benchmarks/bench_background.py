"""Compacting during a run: what it costs the writer, and what it saves the next start.

    python benchmarks/bench_background.py [--quick | --smoke] [--every SECONDS]

One writer process writes N sources (emit +1, fan-out +2, three sinks -1: 5 records
each, 1 MiB segments, local disk), paced evenly over D seconds (``--quick``: 500k sources
in 10 s, compacting every second; full: 4M in 80 s, every 8 s), then dies without closing or compacting (``os._exit``
after its last flush: a crash). Three ways to run it:

* ``none``     nothing compacts during the run: the next start folds every record;
* ``thread``   ``ckpt.compact_in_background(every)`` in the writer's own process
  (it shares the interpreter: the writer slows while a compaction runs);
* ``sidecar``  ``resumelog compact URL --every`` as a separate process (the other core).

Prints JSON lines: the writer's record rate and the compactions made during the run,
then the next start in a fresh process (``resumelog.open`` + first lookup) and how many
records it still had to fold.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from bench_core import record_source

import resumelog
from resumelog import FlushPolicy


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def child_write(url: str, n: int, mode: str, every: float, duration: float) -> None:
    ck = resumelog.open(url, run_id="bench")
    bg = ck.compact_in_background(every) if mode == "thread" else None
    w = ck.writer("w000", flush_policy=FlushPolicy(max_bytes=1 << 20, max_records=1 << 30, max_seconds=1e9))
    rec = w.record
    chunk = 1000
    busy = 0.0
    t0 = time.perf_counter()
    for start in range(0, n, chunk):  # paced: n sources spread over `duration` seconds
        c0 = time.perf_counter()
        for j in range(start, min(n, start + chunk)):
            s = f"src-{j:09d}"
            record_source(rec, s, s)
        busy += time.perf_counter() - c0
        ahead = t0 + duration * (start + chunk) / n - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
    c0 = time.perf_counter()
    w.flush()
    busy += time.perf_counter() - c0
    dt = time.perf_counter() - t0
    out = {
        "records": 5 * n,
        "seconds": round(dt, 3),
        "records_per_s": round(5 * n / dt),
        # the writer's own time (paced: the rest is sleep); a compaction thread takes
        # the GIL from it, a sidecar does not
        "writer_busy_s": round(busy, 3),
    }
    if bg is not None:
        out |= {"snapshots_written": bg.snapshots_written, "failures": bg.failures}
    print(json.dumps(out), flush=True)
    sys.stdout.flush()
    os._exit(0)  # a crash: no close, no final compaction (the thread dies with the process)


def child_open(url: str, probe: str) -> None:
    t0 = time.perf_counter()
    ck = resumelog.open(url, create=False)
    ck.is_completed(probe)
    dt = time.perf_counter() - t0
    st = ck.status()
    print(json.dumps({"open_s": round(dt, 4), "completed": st.completed, "unfolded_segments": st.unfolded_segments}))


def run_mode(tmp: str, n: int, mode: str, every: float, duration: float) -> None:
    url = os.path.join(tmp, mode)
    resumelog.open(url, run_id="setup")  # the sidecar needs a checkpoint to attach to
    side = None
    if mode == "sidecar":
        side = subprocess.Popen(
            [sys.executable, "-m", "resumelog.cli", "compact", url, "--every", str(every), "--json"],
            stdout=subprocess.PIPE,
            text=True,
        )
    me = os.path.abspath(__file__)
    w = subprocess.run(
        [sys.executable, me, "--child-write", url, str(n), mode, str(every), str(duration)],
        capture_output=True,
        text=True,
        check=True,
    )
    wr = json.loads(w.stdout.strip().splitlines()[-1])
    if side is not None:
        side.send_signal(signal.SIGTERM)
        out, _ = side.communicate(timeout=600)
        docs = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
        wr |= {
            "snapshots_written": sum(1 for d in docs if d.get("written")),
            "failures": sum(1 for d in docs if "error" in d),
        }
    o = subprocess.run(
        [sys.executable, me, "--child-open", url, "src-000000007"], capture_output=True, text=True, check=True
    )
    op = json.loads(o.stdout.strip().splitlines()[-1])
    emit(
        bench="background_compaction",
        mode=mode,
        every_s=every if mode != "none" else None,
        sources=n,
        paced_s=duration,
        **wr,
        **op,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--every", type=float, default=None, help="seconds between compactions")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--child-write", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--child-open", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child_write:
        url, n, mode, every, duration = a.child_write
        child_write(url, int(n), mode, float(every), float(duration))
        return 0
    if a.child_open:
        child_open(*a.child_open)
        return 0
    n = 20_000 if a.smoke else 500_000 if a.quick else 4_000_000
    duration = 1.0 if a.smoke else 10.0 if a.quick else 80.0
    every = a.every or (0.2 if a.smoke else 1.0 if a.quick else 8.0)
    tmp = tempfile.mkdtemp(prefix="bench-background-", dir=a.workdir)
    try:
        for mode in ("none", "thread", "sidecar"):
            run_mode(tmp, n, mode, every, duration)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
