"""Time and peak memory of merging two layers of the completed-id index.

A merge is the one step of compaction whose cost grows with the completed ids (the
binary counter of ``layers.plan_merges`` rewrites each id ``log2(N / tick)`` times over
its life). Each measurement runs in a fresh child process: build a lower layer of
``--lower`` ids and an upper one of ``--upper`` ids (half new, a tenth of the lower
ones masked), opened from their stored bytes as a compaction opens them (blocks read when
the merge needs them), then merge them and stamp the result as a compaction does before it
writes it (``encode_new_layer``: the stored object's bytes). Prints one JSON line per
size: seconds of the merge and of the stamp; the child's peak RSS over both
(``VmHWM``, reset after building the inputs: it counts the pages of memory-mapped
files too); and its peak *anonymous* memory over both (``RssAnon``, what cannot be
paged out without swap), sampled every ~2 ms from the parent process (no GIL shared
with the merge), and its value before the merge.

    python benchmarks/bench_merge.py                      # 1M+1M, 4M+4M
    python benchmarks/bench_merge.py --sizes 16000000:4000000
    python benchmarks/bench_merge.py --spool-bytes 100000000000  # no spooling (A/B)
    python benchmarks/bench_merge.py --layout ordered shards --shapes  # block copies

``--layout``: ``interleaved`` (above: every block of both layers touched, nothing to
copy), ``ordered`` (the upper ids all above the lower ones, none masked: a pipeline
going through its sources in key order) or ``shards`` (the upper ids in 64 runs of
consecutive ids spread over the lower's key range, none masked: 64 workers each
advancing in its shard). ``--shapes``: every entry carries a shape id (1 or 2, the
same table in both layers), as a pipeline's completions do.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time


def _vm(field: str, pid: str = "self") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


LAYOUTS = ("interleaved", "ordered", "shards")


def child(lower: int, upper: int, spool_bytes: int | None, layout: str = "interleaved", shapes: bool = False) -> None:
    import resumelog
    from resumelog import layers
    from resumelog.done_shapes import ShapeTable
    from resumelog.layers import encode_new_layer, make_layer, merge_layers, open_layer

    if spool_bytes is not None:
        layers.SPOOL_BYTES = spool_bytes  # type: ignore[attr-defined,unused-ignore]

    def sid(i: int) -> str:
        return f"s3://corpus/cc/shard-{i // 4096:06d}/part-{i:010d}.jsonl"

    lo = [sid(2 * i) for i in range(lower)]
    lo.sort()
    table = ShapeTable([[[["a", ""], 1]], [[["b", ""], -1]]] if shapes else [])
    a = make_layer(
        lo,
        [0] * lower,
        [1, 2] * (lower // 2) + [1] * (lower % 2) if shapes else [0] * lower,
        table,
        ["r1"],
        frozenset(),
    )
    masked: frozenset[str] = frozenset()
    if layout == "interleaved":
        up = sorted({sid(2 * i + 1) for i in range(upper // 2)} | {sid(2 * i) for i in range(0, 2 * (upper // 2), 2)})
        masked = frozenset(sid(2 * i) for i in range(1, lower, 10))
    elif layout == "ordered":
        up = [sid(2 * lower + i) for i in range(upper)]
    else:  # 64 runs of consecutive odd ids, spread over the lower's range
        per, step = upper // 64, max(1, lower // 64)
        up = sorted(sid(2 * (w * step + j) + 1) for w in range(64) for j in range(per))
    tags = ([1, 2] * (len(up) // 2) + [1] * (len(up) % 2)) if shapes else [0] * len(up)
    b = make_layer(
        up, [0] * len(up), tags, ShapeTable(table.shapes), ["r1"] if layout != "interleaved" else ["r2"], masked
    )
    # as a compaction opens stored layers: their blocks unread until the merge needs them
    a, b = (open_layer(encode_new_layer(x, number=1, epoch=bytes(16), created_ms=0)[1], "input") for x in (a, b))
    del lo, up
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to now: the figure is the merge's, not the build's
    rss0, anon0 = _vm("VmRSS"), _vm("RssAnon")
    print("merge", flush=True)  # the parent samples RssAnon from here ...
    time.sleep(0.05)
    t0 = time.perf_counter()
    m = merge_layers(a, b, bottom=True)
    t1 = time.perf_counter()
    _, data = encode_new_layer(m, number=2, epoch=bytes(16), created_ms=0)
    t2 = time.perf_counter()
    time.sleep(0.05)
    print("end", flush=True)  # ... to here
    print(
        json.dumps(
            {
                "bench": "layer_merge",
                "resumelog": resumelog.__file__,
                "spool_bytes": getattr(layers, "SPOOL_BYTES", None),
                "lower": lower,
                "upper": len(b.index.ids()) if upper <= 10 else upper,
                "merged": m.count,
                "seconds": round(t1 - t0, 3),
                "stamp_seconds": round(t2 - t1, 3),
                "rss_before_mb": round(rss0, 1),
                "peak_rss_mb": round(_vm("VmHWM"), 1),
                "anon_before_mb": round(anon0, 1),
                "layer_mb": round(len(data) / 1e6, 1),
            }
        ),
        flush=True,
    )


def measure(
    lower: int, upper: int, spool_bytes: int | None, layout: str = "interleaved", shapes: bool = False
) -> dict[str, object]:
    """Run one child; its JSON line with the peak RssAnon the parent saw while it merged."""
    argv = [sys.executable, __file__, "--child", str(lower), str(upper), str(spool_bytes or 0)]
    argv += [str(LAYOUTS.index(layout)), str(int(shapes))]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    pid = str(proc.pid)
    sampling = threading.Event()
    done = threading.Event()
    peak = [0.0]
    samples = [0]

    def sample() -> None:
        while not done.is_set():
            if sampling.is_set():
                try:
                    peak[0] = max(peak[0], _vm("RssAnon", pid))
                    samples[0] += 1
                except (OSError, ValueError):
                    return
            time.sleep(0.002)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    assert proc.stdout is not None
    result: dict[str, object] = {}
    for line in proc.stdout:
        if line.strip() == "merge":
            sampling.set()
        elif line.strip() == "end":
            sampling.clear()
        elif line.startswith("{"):
            result = json.loads(line)
    done.set()
    t.join()
    if proc.wait() != 0:
        raise SystemExit(f"the child failed (exit {proc.returncode})")
    result["peak_anon_mb"] = round(peak[0], 1)
    result["anon_samples"] = samples[0]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="*", default=["1000000:1000000", "4000000:4000000"], help="LOWER:UPPER ids")
    ap.add_argument(
        "--spool-bytes",
        type=int,
        help="set layers.SPOOL_BYTES in the child (a huge value: the merged layer stays in memory, as before spooling)",
    )
    ap.add_argument("--layout", nargs="+", choices=LAYOUTS, default=["interleaved"], help="where the upper ids fall")
    ap.add_argument("--shapes", action="store_true", help="entries carry shape ids")
    ap.add_argument("--child", nargs="+", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        lower, upper, spool, layout, shapes = args.child
        child(lower, upper, spool or None, LAYOUTS[layout], bool(shapes))
        return
    for layout in args.layout:
        for size in args.sizes:
            lower, upper = (int(x) for x in size.split(":"))
            row = measure(lower, upper, args.spool_bytes, layout, args.shapes)
            print(json.dumps({**row, "layout": layout, "shapes": args.shapes}), flush=True)


if __name__ == "__main__":
    main()
