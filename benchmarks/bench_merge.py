"""Time and peak memory of merging two layers of the completed-id index.

A merge is the one step of compaction whose cost grows with the completed ids (the
binary counter of ``layers.plan_merges`` rewrites each id ``log2(N / tick)`` times over
its life). Each measurement runs in a fresh child process: build a lower layer of
``--lower`` ids and an upper one of ``--upper`` ids (half new, a tenth of the lower
ones masked), then merge them; prints one JSON line per size: seconds of the merge,
the child's peak RSS during the merge (``VmHWM``, reset after building the inputs) and
its RSS before the merge.

    python benchmarks/bench_merge.py                      # 1M+1M, 4M+4M
    python benchmarks/bench_merge.py --sizes 8000000:1000000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def _vm(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def child(lower: int, upper: int) -> None:
    import resumelog
    from resumelog.done_shapes import ShapeTable
    from resumelog.layers import make_layer, merge_layers

    def sid(i: int) -> str:
        return f"s3://corpus/cc/shard-{i // 4096:06d}/part-{i:010d}.jsonl"

    lo = [sid(2 * i) for i in range(lower)]
    lo.sort()
    a = make_layer(lo, [0] * lower, [0] * lower, ShapeTable(), ["r1"], frozenset())
    up = sorted({sid(2 * i + 1) for i in range(upper // 2)} | {sid(2 * i) for i in range(0, 2 * (upper // 2), 2)})
    masked = frozenset(sid(2 * i) for i in range(1, lower, 10))
    b = make_layer(up, [0] * len(up), [0] * len(up), ShapeTable(), ["r2"], masked)
    del lo, up
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to now: the figure is the merge's, not the build's
    rss0 = _vm("VmRSS")
    t0 = time.perf_counter()
    m = merge_layers(a, b, bottom=True)
    dt = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "bench": "layer_merge",
                "resumelog": resumelog.__file__,
                "lower": lower,
                "upper": len(b.index.ids()) if upper <= 10 else upper,
                "merged": m.count,
                "seconds": round(dt, 3),
                "rss_before_mb": round(rss0, 1),
                "peak_rss_mb": round(_vm("VmHWM"), 1),
                "layer_mb": round(len(m.data or b"") / 1e6, 1),
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="*", default=["1000000:1000000", "4000000:4000000"], help="LOWER:UPPER ids")
    ap.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    for size in args.sizes:
        lower, upper = (int(x) for x in size.split(":"))
        subprocess.run([sys.executable, __file__, "--child", str(lower), str(upper)], check=True)


if __name__ == "__main__":
    main()
