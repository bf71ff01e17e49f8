"""Core figures, printed as JSON lines (never asserted in tests).

    python benchmarks/bench_core.py [--quick] [--only NAME ...]

* ``append``      records/s into one writer's buffer (16-char keys)
* ``flush``       encode + flush to local disk, records/s and p50/p99 flush latency
* ``bytes``       bytes per record on storage (16-char keys, 4 records per source)
* ``compaction``  records/s folding N records from 64 writers into a snapshot
* ``startup``     open + first ``is_completed`` with 1M / 10M completed ids, peak RSS
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import resumelog
from resumelog import compactor
from resumelog.journal import FlushPolicy, Writer
from resumelog.storage import LocalStore, MemoryStore


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def keys16(n: int) -> list[str]:
    return [f"task-{i:011d}" for i in range(n)]  # 16 characters


def bench_append(n: int) -> None:
    store = MemoryStore("bench-append")
    store.clear()
    w = Writer(store, "w", "r", policy=FlushPolicy(max_bytes=1 << 40, max_records=1 << 40, max_seconds=1e9))
    keys = keys16(n)
    sources = [f"src-{i // 4:08d}" for i in range(n)]
    gc.disable()
    t0 = time.perf_counter()
    rec = w.record
    for k, s in zip(keys, sources):
        rec(k, s, -1)
    dt = time.perf_counter() - t0
    gc.enable()
    emit(bench="append", records=n, seconds=round(dt, 3), records_per_s=round(n / dt))
    w.closed = True


def bench_flush(n: int, tmp: str) -> None:
    store = LocalStore(os.path.join(tmp, "flush"))
    w = Writer(store, "w", "r", policy=FlushPolicy(max_bytes=1 << 20, max_records=1 << 30, max_seconds=1e9))
    keys = keys16(n)
    sources = [f"src-{i // 4:08d}" for i in range(n)]
    t0 = time.perf_counter()
    for k, s in zip(keys, sources):
        w.record(k, s, -1)
    w.flush()
    dt = time.perf_counter() - t0
    lat = sorted(w.flush_seconds)
    size = sum(o.size for o in store.list("journal/"))
    emit(
        bench="flush_local",
        records=n,
        seconds=round(dt, 3),
        records_per_s=round(n / dt),
        segments=w.flush_count,
        segment_bytes_avg=size // max(w.flush_count, 1),
        flush_p50_ms=round(lat[len(lat) // 2] * 1000, 2),
        flush_p99_ms=round(lat[int(len(lat) * 0.99)] * 1000, 2),
    )
    emit(bench="bytes_per_record", keys="16 chars", records_per_source=4, bytes_per_record=round(size / n, 2))
    w.closed = True


def record_source(rec: Callable[..., None], s: str, k: str) -> None:
    """One source of the workload through ``rec`` (``Writer.record``): emit +1, fan-out
    +2, three sinks -1, with record keys made from ``k``."""
    rec("\x00emit", s, 1, emission=True)
    rec(f"{k}f", s, 2)
    rec(f"{k}a", s, -1)
    rec(f"{k}b", s, -1)
    rec(f"{k}c", s, -1)


def write_journals(url: str, records: int, writers: int) -> None:
    """`records` records from `writers` writers: per source emit +1, fan-out +2, 3 sinks
    (5 records per source, 16-char keys)."""
    ck = resumelog.open(url, run_id="bench")
    per = records // writers
    policy = FlushPolicy(max_bytes=1 << 20, max_records=1 << 30, max_seconds=1e9)
    for wi in range(writers):
        w = ck.writer(f"w{wi:03d}", flush_policy=policy)
        w._on_flush = None  # the benchmark writer does not maintain a view
        rec = w.record
        for j in range(per // 5):
            s = f"src-{wi:03d}-{j:07d}"
            record_source(rec, s, s[:12])
        w.close()


def bench_compaction(records: int, writers: int, tmp: str) -> None:
    url = os.path.join(tmp, f"compact-{records}")
    write_journals(url, records, writers)
    store = LocalStore(url)
    gc.collect()
    t0 = time.perf_counter()
    r = compactor.compact(store, progress=False)
    dt = time.perf_counter() - t0
    emit(
        bench="compaction",
        records=r.records_folded,
        writers=writers,
        seconds=round(dt, 3),
        records_per_s=round(r.records_folded / dt),
        completed=r.completed,
        snapshot_bytes=os.path.getsize(os.path.join(url, "snapshots", f"{r.snapshot:020d}.snap")),
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    )
    shutil.rmtree(url)


def make_completed_snapshot(url: str, n: int) -> None:
    """A checkpoint whose snapshot holds n completed ids (built directly, fast)."""
    from resumelog.algebra import FoldState
    from resumelog.compactor import put_snapshot
    from resumelog.format import RunInfo
    from resumelog.snapshot import encode_snapshot

    state = FoldState(number=1)
    state.runs["bench"] = RunInfo("bench", 1, 1)
    state.run_order.append("bench")
    state.added = {f"shard-{i:010d}": "bench" for i in range(n)}
    data = encode_snapshot(state, None)
    resumelog.open(url)
    put_snapshot(LocalStore(url), 1, data)


STARTUP_CHILD = """
import sys, time, json
t0 = time.perf_counter()
import resumelog
t1 = time.perf_counter()
ck = resumelog.open(sys.argv[1], create=False)
hit = ck.is_completed("shard-0000000007")
t2 = time.perf_counter()
misses = sum(ck.is_completed(f"absent-{i}") for i in range(10000))
t3 = time.perf_counter()
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]  # reset by exec
print(json.dumps({"open_s": t2 - t1, "import_s": t1 - t0, "hit": hit, "lookup_us": (t3 - t2) / 10000 * 1e6,
                  "rss_mb": int(hwm) / 1024}))
"""


def bench_startup(n: int, tmp: str) -> None:
    url = os.path.join(tmp, f"startup-{n}")
    make_completed_snapshot(url, n)
    runs = []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", STARTUP_CHILD, url], capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout))
    best = min(runs, key=lambda r: r["open_s"])
    emit(
        bench="startup",
        completed_ids=n,
        open_plus_first_lookup_s=round(best["open_s"], 4),
        lookup_us=round(best["lookup_us"], 2),
        hit=best["hit"],
        peak_rss_mb=round(best["rss_mb"]),
        snapshot_bytes=os.path.getsize(os.path.join(url, "snapshots", "00000000000000000001.snap")),
    )
    shutil.rmtree(url)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller sizes")
    ap.add_argument("--only", nargs="*", default=None)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="resumelog-bench-")
    want = set(a.only or ["append", "flush", "compaction", "startup"])
    try:
        if "append" in want:
            bench_append(1_000_000 if a.quick else 5_000_000)
        if "flush" in want:
            bench_flush(1_000_000 if a.quick else 5_000_000, tmp)
        if "compaction" in want:
            bench_compaction(1_000_000 if a.quick else 10_000_000, 64, tmp)
        if "startup" in want:
            for n in [1_000_000] if a.quick else [1_000_000, 10_000_000]:
                bench_startup(n, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
