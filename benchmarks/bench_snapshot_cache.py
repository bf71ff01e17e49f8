"""Opening a compacted checkpoint on S3 with and without the local snapshot cache
(issue 17, "lookups without downloading everything"), printed as JSON lines.

    python benchmarks/bench_snapshot_cache.py [--n 1000000] [--server seaweedfs] [--reps 3]

``n`` sources are completed by one writer and compacted into one snapshot on a
loopback S3 server. Each open runs in a fresh interpreter (``resumelog.open`` plus one
``is_completed``), best of ``reps``: ``cold`` with the cache off (what every open cost
before: the whole snapshot is downloaded), ``warm`` with the cache filled by one
earlier open (one ranged GET of the snapshot's header, then the local copy is
memory-mapped). Figures: seconds, GETs, bytes read from the server, bytes of the
snapshot. On a loopback server the download is cheap, so the seconds barely move at
1M ids; the bytes read are what a real network pays for.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_s3 import BUCKET, s3_server

import resumelog

_CHILD = """
import json, sys, time
t0 = time.perf_counter()
import resumelog
from resumelog.storage._fsspec import FsspecStore
url, opts = sys.argv[1], json.loads(sys.argv[2])
store = FsspecStore(url, opts)
ck = resumelog.open(store, create=False)
ck.is_completed("src-0000000")
print(json.dumps({"open_s": time.perf_counter() - t0, "completed": len(ck.completed),
                  "gets": store.requests.get("GetObject", 0), "bytes_read": store.bytes_read}))
"""


def _open(url: str, opts: dict[str, Any], cache: str) -> dict[str, Any]:
    env = {**os.environ, "RESUMELOG_CACHE_DIR": cache}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, url, json.dumps(opts)], capture_output=True, text=True, env=env, check=True
    )
    row: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--server", default="seaweedfs", choices=["moto", "seaweedfs"])
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    with s3_server(a.server) as opts:
        url = f"s3://{BUCKET}/cache-{a.n}"
        ck = resumelog.open(url, storage_options=opts)
        t0 = time.perf_counter()
        with ck.writer("w") as w:
            w.complete_many(f"src-{i:07d}" for i in range(a.n))
        ck.compact(progress=False)
        write_s = time.perf_counter() - t0
        snap = ck.store.list("snapshots/")[-1]
        with tempfile.TemporaryDirectory(prefix="resumelog-cache-bench-") as cache:
            cold = min((_open(url, opts, "off") for _ in range(a.reps)), key=lambda r: r["open_s"])
            _open(url, opts, cache)  # fills the cache
            warm = min((_open(url, opts, cache) for _ in range(a.reps)), key=lambda r: r["open_s"])
        for state, r in (("cold", cold), ("warm", warm)):
            print(
                json.dumps(
                    {
                        "bench": "s3_open_cache",
                        "server": a.server,
                        "cache": state,
                        "n": a.n,
                        "snapshot_bytes": snap.size,
                        "open_s": round(r["open_s"], 3),
                        "gets": r["gets"],
                        "bytes_read": r["bytes_read"],
                        "completed": r["completed"],
                        "write_and_compact_s": round(write_s, 1),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
