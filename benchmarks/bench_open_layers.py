"""A fresh client's open of a snapshot of many layers on SeaweedFS, its layers' first
reads made at once (``snapshot_cache.prefetch_layers``) or one after another, as JSON
lines.

    python benchmarks/bench_open_layers.py [--small 12] [--reps 12]

One checkpoint on a loopback SeaweedFS: a base layer of 200k ids (read in parts: its
head) and ``--small`` layers of 2,000 ids (read whole), stacked by ticks that defer their
merges. Then ``--reps`` times, alternating: a fresh store client opens it and answers one
lookup (``RESUMELOG_CACHE_DIR=off``), with the prefetch and with it turned off. Prints
the median milliseconds of each and the GETs of one open. On loopback a request costs
about a millisecond; on S3 each of the round trips the prefetch saves costs tens.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))
os.environ["RESUMELOG_CACHE_DIR"] = "off"

import resumelog  # noqa: E402
from resumelog import layers, snapshot_cache  # noqa: E402
from resumelog.storage import FsspecStore  # noqa: E402
from resumelog.testing.s3server import run_s3_server  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=12, help="small layers above the base")
    ap.add_argument("--reps", type=int, default=12)
    args = ap.parse_args()
    layers.MIN_LAYER = 1  # every tick a layer of its own
    with run_s3_server("seaweedfs") as server:
        server.create_bucket("bench-open")
        url = f"s3://bench-open/{uuid.uuid4().hex}"
        opts = server.storage_options()
        ck = resumelog.open(url, storage_options=opts, run_id="r")
        with ck.writer("w0") as w:
            w.complete_many([f"s3://corpus/cc/shard-{i // 4096:06d}/part-{i:010d}.jsonl" for i in range(200_000)])
        ck.compact()
        for k in range(args.small):
            with ck.writer(f"w{k + 1}") as w:
                w.complete_many([f"x{k:02d}-{i:06d}" for i in range(2000)])
            ck.compact(defer_merges=True)
        probe = "x00-000001" if args.small else "s3://corpus/cc/shard-000000/part-0000000001.jsonl"
        prefetch = snapshot_cache.prefetch_layers
        times: dict[str, list[float]] = {"at_once": [], "one_by_one": []}
        gets: dict[str, int] = {}
        nlayers = 0
        for _ in range(args.reps):
            for mode in times:
                snapshot_cache.prefetch_layers = prefetch if mode == "at_once" else (lambda store, refs: {})  # type: ignore[assignment]
                t0 = time.perf_counter()
                store = FsspecStore(url, opts)
                view = resumelog.open(store, create=False)
                hit = view.is_completed(probe)
                times[mode].append(time.perf_counter() - t0)
                assert hit
                gets[mode] = store.requests["GetObject"]
                nlayers = len(view._loaded.frames.layers or [])  # type: ignore[union-attr]
        snapshot_cache.prefetch_layers = prefetch
        for mode, ts in times.items():
            print(
                json.dumps(
                    {
                        "bench": "open_layers",
                        "mode": mode,
                        "layers": nlayers,
                        "median_ms": round(statistics.median(ts) * 1000, 1),
                        "reps": args.reps,
                        "gets": gets[mode],
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
