"""Time of building a compaction's new layer (``layers.build_layer``) from a fold's
completions, with and without the compiled kernels, as JSON lines.

    python benchmarks/bench_layer_build.py [--n 1000000] [--repeat 3] [--before OTHER/src]

A compaction (and a fold's spill) turns the completions it holds (``FoldState.added``:
id -> completing run; ``done_shapes``: id -> shape id, here one id in three) into one
new layer: the ids in key order, encoded, cut into blocks, each hashed and packed. How
long that takes depends on the order the ids completed in: ``ordered`` (a pipeline
going through its sources in key order), ``shards`` (64 workers each advancing through
its own key range: 64 interleaved runs), ``random`` (the same ids in random order) and
``uuid`` (random UUIDs, as Ray Data row ids). Each figure is the best of ``--repeat``
runs in a fresh process per path: ``native`` (the kernels where built, ``kernels_built``)
and ``python`` (without them, ``RESUMELOG_NATIVE=0``); ``same_bytes`` says whether both
built the same layer (its blocks, byte for byte); ``--before``: the same with another
tree's kernels (``before_s``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
ORDERS = ("ordered", "shards", "random", "uuid")

CHILD = r"""
import gc, hashlib, json, random, sys, time, uuid
from resumelog import _compiled, layers
from resumelog.done_shapes import ShapeTable

n, order, repeat = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
rng = random.Random(7)
ids = [f"s3://corpus/cc/part-{i:010d}.jsonl" for i in range(n)]
if order == "shards":
    ids = [ids[w * (n // 64) + i] for i in range(n // 64) for w in range(64)]
elif order == "random":
    rng.shuffle(ids)
elif order == "uuid":
    ids = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(n)]
added = dict(zip(ids, ["run-a", "run-b"] * (n // 2 + 1)))
table = ShapeTable()
for k in range(3):
    table.intern({f"0_x_{k}": 1, f"0_x_{k}_0": -1}, "x")
tags = {i: 1 + j % 3 for j, i in enumerate(ids[::3])}
gc.disable()
best = None
for _ in range(repeat):
    t = time.perf_counter()
    layer = layers.build_layer(added, (), tags, table)
    s = time.perf_counter() - t
    best = s if best is None else min(best, s)
digest = hashlib.sha256(bytes(layer.data)).hexdigest() if layer.data is not None else ""
print(json.dumps({"seconds": best, "native": _compiled.native is not None, "sha256": digest, "count": layer.index.count}))
"""


def run(n: int, order: str, repeat: int, native: str, src: str = SRC) -> dict:
    env = {**os.environ, "RESUMELOG_NATIVE": native, "PYTHONPATH": src}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(n), order, str(repeat)], env=env, check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--orders", nargs="+", choices=ORDERS, default=list(ORDERS))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--before", metavar="SRC", help="also time another tree's src/ (its kernels built in place)")
    args = ap.parse_args()
    for n in args.n:
        for order in args.orders:
            fast, slow = run(n, order, args.repeat, "auto"), run(n, order, args.repeat, "0")
            row = {
                "bench": "layer_build",
                "ids": n,
                "order": order,
                "native_s": round(fast["seconds"], 4),
                "python_s": round(slow["seconds"], 4),
                "speedup": round(slow["seconds"] / fast["seconds"], 2),
                "kernels_built": fast["native"],
                "same_bytes": fast["sha256"] == slow["sha256"] and fast["count"] == slow["count"],
            }
            if args.before:
                before = run(n, order, args.repeat, "1", args.before)
                row["before_s"] = round(before["seconds"], 4)
                row["same_bytes"] = row["same_bytes"] and before["sha256"] == fast["sha256"]
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
