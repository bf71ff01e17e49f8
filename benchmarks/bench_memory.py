"""Peak memory of one compaction vs the records it folds (issue 17 part 4), as JSON lines.

    python benchmarks/bench_memory.py [--quick | --smoke] [--records M ...] [--workdir DIR]

M records of the shared pipeline workload (``bench_scale.py``: per source an emission
``+1``, a fan-out ``+2`` and three sinks ``-1``, 49-byte source ids, from 64 writers,
default 1 MiB segments) are written once per M, then compacted onto an empty checkpoint
by one ``compactor.compact`` in a fresh child process per setting (the snapshot and
its layers are deleted between children, the journal is kept):

* ``before``: no spill (``SPILL_COMPLETIONS = None``), rounds of 2,000,000 records
  (the settings before issue 17 part 4);
* ``rounds``: no spill, rounds of ``ROUND_RECORDS`` (500,000);
* ``after``: the defaults (rounds of 500,000 records, spilling at
  ``SPILL_COMPLETIONS`` = 1,000,000 completions held);
* ``spill2m``: the defaults but spilling at 2,000,000 completions held (an alternative
  measured against the default, not a default: ``--settings after spill2m``).

Each row (``bench: "memory_compaction"``) gives the child's peak RSS (``VmHWM``: it
counts the resident pages of memory-mapped files too, such as the layer spools), its
peak anonymous memory (``peak_anon_mb``: ``RssAnon``, sampled from the parent), seconds, records/s, the spills and the layers the published snapshot names; after an
``after`` compaction that published several layers, a ``memory_merge`` row gives the
same of a ``compact(merge=True)`` merging them into one (what a later tick or
``resumelog compact --merge`` pays once). Sizes:
``--smoke`` 20k records (``after``: rounds of 2,000 records, spilling at 1,000
completions), ``--quick`` 4M and 16M, full 4M, 16M and 64M (the journal of
64M records is 4.5 GB on disk; ``before`` peaks near 10 GB there). A setting whose
predicted peak (linear in M through the points measured so far) exceeds 85 % of
``MemAvailable`` is skipped with a ``skipped`` row.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)

import bench_scale  # noqa: E402

SIZES = {"smoke": [20_000], "quick": [4_000_000, 16_000_000], "full": [4_000_000, 16_000_000, 64_000_000]}
WRITERS = 64
SETTINGS: dict[str, dict[str, Any]] = {
    "before": {"round_records": 2_000_000, "spill": None},
    "rounds": {"round_records": None, "spill": None},  # None: the module's default
    "after": {"round_records": None, "spill": "default"},
    "spill2m": {"round_records": None, "spill": 2_000_000},
}
MEM_FRACTION = 0.85


def child_compact(url: str, round_records: int | None, spill: Any, merge: bool = False) -> dict[str, Any]:
    """One compaction of everything written under ``url`` (run in a fresh interpreter);
    ``merge``: a ``compact(merge=True)`` onto what the last one published (every layer
    merged into one)."""
    from resumelog import compactor
    from resumelog.format import decode_snapshot_frames
    from resumelog.storage import open_store

    if round_records is not None:
        compactor.ROUND_RECORDS = round_records
    if spill != "default":
        compactor.SPILL_COMPLETIONS = spill
    store = open_store(url, {})
    t0 = time.perf_counter()
    r = compactor.compact(store, progress=False, merge=merge)
    dt = time.perf_counter() - t0
    _, info = compactor.list_snapshots(store)[-1]
    frames = decode_snapshot_frames(store.read(info.path), info.path)
    return {
        "seconds": round(dt, 3),
        "records": r.records_folded,
        "completed": r.completed,
        "spills": r.spills,
        "layers": len(frames.layers or ()),
        "round_records": compactor.ROUND_RECORDS,
        "spill_completions": compactor.SPILL_COMPLETIONS,
    }


def run_child(kw: dict[str, Any], timeout: float = 4 * 3600) -> dict[str, Any]:
    """One child compaction; its result with ``peak_anon_mb``, the largest ``RssAnon``
    (anonymous memory: what cannot be paged out without swap, unlike the pages of the
    memory-mapped layer spools that ``VmHWM`` counts too) the parent saw, every ~5 ms."""
    env = {**os.environ, "RESUMELOG_CACHE_DIR": "off"}
    src = os.path.join(os.path.dirname(BENCH_DIR), "src")
    if os.path.isdir(src):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    p = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--child", json.dumps(kw)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], bench_scale._vm("RssAnon", p.pid))  # (nan once it exited: kept out)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        stdout, stderr = p.communicate(timeout=timeout)
    finally:
        done.set()
        sampler.join()
    for line in stdout.splitlines():
        if line.startswith("@@RESULT "):
            out: dict[str, Any] = json.loads(line[9:])
            out["peak_anon_mb"] = round(peak[0], 1)
            return out
    why = f"killed by signal {-p.returncode}" if p.returncode < 0 else f"exit {p.returncode}"
    raise RuntimeError(f"compaction child failed ({why}): {(stderr or stdout)[-1500:]}")


def predict(points: list[tuple[int, float]], m: int) -> float | None:
    """Peak RSS at ``m`` records, linear through the two largest points (or the ratio of one)."""
    if not points:
        return None
    pts = sorted(points)[-2:]
    if len(pts) == 1:
        return pts[0][1] * m / pts[0][0]
    (x0, y0), (x1, y1) = pts
    slope = (y1 - y0) / (x1 - x0) if x1 != x0 else 0.0
    return y1 + slope * (m - x1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true")
    g.add_argument("--smoke", action="store_true")
    ap.add_argument("--records", type=int, nargs="+", help="record counts M (overrides the mode's)")
    ap.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=["before", "rounds", "after"])
    ap.add_argument("--workdir", help="where the journals are written (default: a temporary directory)")
    args = ap.parse_args()
    if args.child:
        out = child_compact(**json.loads(args.child))
        out["peak_rss_mb"] = round(bench_scale._vm("VmHWM"), 1)
        print("@@RESULT " + json.dumps(out), flush=True)
        return
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    if mode == "smoke":  # too few records for the defaults to spill: spill anyway
        SETTINGS["after"] = {"round_records": 2_000, "spill": 1_000}
    sizes = args.records or SIZES[mode]
    work = tempfile.mkdtemp(prefix="resumelog-mem-", dir=args.workdir)
    seen: dict[str, list[tuple[int, float]]] = {s: [] for s in args.settings}

    def emit(**row: Any) -> None:
        print(json.dumps(row), flush=True)

    emit(bench="memory_env", mode=mode, records=sizes, settings=args.settings, loadavg=os.getloadavg())
    try:
        for m in sizes:
            url = os.path.join(work, f"j{m}")
            w = bench_scale.run_child("write_journals", url=url, records=m, writers=WRITERS)
            for name in args.settings:
                guess = predict(seen[name], m)
                if guess is not None and guess > MEM_FRACTION * bench_scale.mem_available_mb():
                    emit(bench="skipped", what=f"{name} at {m:,} records", predicted_peak_mb=round(guess))
                    continue
                for d in ("snapshots", "layers"):
                    shutil.rmtree(os.path.join(url, d), ignore_errors=True)
                c = run_child({"url": url, **SETTINGS[name]})
                seen[name].append((m, c["peak_rss_mb"]))
                emit(
                    bench="memory_compaction",
                    setting=name,
                    writers=WRITERS,
                    journal_bytes=w["journal_bytes"],
                    segments=w["segments"],
                    records_per_s=round(c["records"] / c["seconds"]),
                    **c,
                    units={"seconds": "s", "peak_rss_mb": "MB", "peak_anon_mb": "MB", "records_per_s": "records/s"},
                )
                if name in ("after", "spill2m") and c["layers"] > 1:  # then merge the spilled layers into one
                    g = run_child({"url": url, **SETTINGS[name], "merge": True})
                    emit(
                        bench="memory_merge",
                        setting=name,
                        records=m,
                        completed=g["completed"],
                        layers_before=c["layers"],
                        seconds=g["seconds"],
                        peak_rss_mb=g["peak_rss_mb"],
                        peak_anon_mb=g["peak_anon_mb"],
                        units={"seconds": "s", "peak_rss_mb": "MB", "peak_anon_mb": "MB"},
                    )
            shutil.rmtree(url, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
