"""Load soak: W concurrent writer processes x R records into one checkpoint, then compaction.

    python benchmarks/soak.py [--url URL] [--writers 64] [--records 100000] [--s3 moto|seaweedfs]

Prints JSON lines: records/s over all writers, PUT/GET/LIST counts (S3), p50/p99 flush
latency, compaction time and its peak RSS. Each source gets the counter pattern
emit +1, fan-out +2 (flushed: the barrier is part of the load), three sink -1.
With ``--s3 KIND`` a loopback S3 server from :mod:`resumelog.testing.s3server` is used.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from typing import Any

import resumelog
from resumelog import compactor
from resumelog.journal import FlushPolicy
from resumelog.storage import open_store


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def writer_proc(url: str, opts: dict[str, Any], run_id: str, k: int, records: int, barrier_every: int, q: Any) -> None:
    h = resumelog.WriterHandle(url, run_id, opts, max_bytes=1 << 20)
    w = h.writer(f"soak-{k:03d}")
    t0 = time.perf_counter()
    n = 0
    i = 0
    while n < records:
        s = f"w{k:03d}-s{i:08d}"
        w.emit(s)
        w.record(f"{s}/f", s, 2)
        if i % barrier_every == 0:
            w.flush()  # the durability barrier, amortised over `barrier_every` sources
        for part in range(3):
            w.record(f"{s}/f/{part}", s, -1)
        n += 5
        i += 1
    w.close()
    dt = time.perf_counter() - t0
    reqs = dict(getattr(w.store, "requests", {}))
    q.put({"writer": k, "records": n, "seconds": dt, "flush_s": list(w.flush_seconds), "requests": reqs})


def vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return 0.0


def compact_proc(url: str, opts: dict[str, Any], q: Any) -> None:
    store = open_store(url, opts)
    t0 = time.perf_counter()
    r = compactor.compact(store, progress=False)
    q.put(
        {
            "seconds": time.perf_counter() - t0,
            "records": r.records_folded,
            "completed": r.completed,
            "requests": dict(getattr(store, "requests", {})),
            "peak_rss_mb": round(vm_hwm_mb()),
        }
    )


def run(url: str, opts: dict[str, Any], writers: int, records: int, barrier_every: int) -> None:
    ck = resumelog.open(url, storage_options=opts, run_id="soak", flush_policy=FlushPolicy())
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    t0 = time.perf_counter()
    procs = [
        ctx.Process(target=writer_proc, args=(url, opts, ck.run_id, k, records, barrier_every, q))
        for k in range(writers)
    ]
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
    wall = time.perf_counter() - t0
    total = sum(r["records"] for r in results)
    lat = sorted(x for r in results for x in r["flush_s"])
    reqs: dict[str, int] = {}
    for r in results:
        for k, v in r["requests"].items():
            reqs[k] = reqs.get(k, 0) + v
    emit(
        soak="write",
        url_kind=url.split("://")[0] if "://" in url else "local",
        writers=writers,
        records=total,
        wall_s=round(wall, 2),
        records_per_s=round(total / wall),
        flush_p50_ms=round(statistics.median(lat) * 1000, 2) if lat else None,
        flush_p99_ms=round(lat[int(len(lat) * 0.99)] * 1000, 2) if lat else None,
        flushes=len(lat),
        requests=reqs,
    )
    cp = ctx.Process(target=compact_proc, args=(url, opts, q))
    cp.start()
    c = q.get()
    cp.join()
    emit(
        soak="compact",
        records=c["records"],
        seconds=round(c["seconds"], 2),
        records_per_s=round(c["records"] / c["seconds"]) if c["seconds"] else None,
        completed=c["completed"],
        peak_rss_mb=c["peak_rss_mb"],
        requests=c["requests"],
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url")
    ap.add_argument("--writers", type=int, default=64)
    ap.add_argument("--records", type=int, default=100_000, help="records per writer")
    ap.add_argument("--barrier-every", type=int, default=100, help="sources per barrier flush")
    ap.add_argument("--s3", choices=["moto", "seaweedfs"])
    a = ap.parse_args()
    if a.s3:
        from resumelog.testing.s3server import run_s3_server

        with run_s3_server(a.s3) as server:
            server.create_bucket("soak")
            run("s3://soak/ck", server.storage_options(), a.writers, a.records, a.barrier_every)
        return
    url = a.url or os.path.join(tempfile.mkdtemp(prefix="resumelog-soak-"), "ck")
    run(url, {}, a.writers, a.records, a.barrier_every)


if __name__ == "__main__":
    main()
