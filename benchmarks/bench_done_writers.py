"""What remembering open writers costs (RFC 0003), printed as JSON lines.

    python benchmarks/bench_done_writers.py [--n 200000] [--writers 8]

A lineage pipeline (``emit -> fan-out 1->3 -> 3 sinks``: 5 keys per source, the keys of
one source written by different writers, round robin) completes ``n`` sources on a
local store. Figures:

* ``open_writers``: an open from the journal alone (nothing compacted yet), then a
  compaction while every writer is still open, the worst case for frame 8 (every
  completion names its writers): seconds, snapshot bytes, frame 8 bytes, bytes per
  completed source, open of the snapshot (``resumelog.open`` + one lookup);
* ``closed_writers``: the same after every writer closed: frame 8 is empty again;
* ``late_record``: one rewrite by an open writer after the snapshot, folded at open
  (the path that decodes frame 8).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time

import resumelog
from resumelog import compactor, paths
from resumelog.format import decode_snapshot_frames
from resumelog.journal import FlushPolicy


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def snapshot_figures(ck: resumelog.Checkpoint, n: int) -> dict[str, object]:
    info = compactor.list_snapshots(ck.store)[-1][1]
    frames = decode_snapshot_frames(ck.store.read(info.path))
    return {
        "snapshot_bytes": info.size,
        "frame8_bytes": len(getattr(frames, "writers", b"")),  # (absent before format 3: A/B runs)
        "bytes_per_source": round(info.size / n, 1),
    }


def timed_open(root: str) -> float:
    t0 = time.perf_counter()
    ck = resumelog.open(root, run_id="reader", create=False)
    ck.is_completed("src-00000000")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--writers", type=int, default=8)
    args = ap.parse_args()
    n, nw = args.n, args.writers
    root = tempfile.mkdtemp(prefix="bench-writers-")
    try:
        ck = resumelog.open(root, run_id="run1")
        policy = FlushPolicy(max_bytes=1 << 22, max_records=1 << 30, max_seconds=1e9)
        ws = [ck.writer(f"w{i}", flush_policy=policy) for i in range(nw)]
        t0 = time.perf_counter()
        k = 0
        for i in range(n):
            src = f"src-{i:08d}"
            for key, delta, em in (
                (f"0_{src}", 1, True),
                (f"0_{src}_0", 2, False),
                (f"0_{src}_0_0", -1, False),
                (f"0_{src}_1_0", -1, False),
                (f"0_{src}_2_0", -1, False),
            ):
                ws[k % nw].record(key, src, delta, emission=em)
                k += 1
        for w in ws:
            w.flush()
        write_s = time.perf_counter() - t0
        open_journal_s = timed_open(root)  # nothing compacted yet: folds the whole journal
        t0 = time.perf_counter()
        res = ck.compact()
        compact_s = time.perf_counter() - t0
        assert res.completed == n
        emit(
            bench="done_writers",
            case="open_writers",
            sources=n,
            writers=nw,
            write_seconds=round(write_s, 3),
            open_journal_seconds=round(open_journal_s, 3),
            compact_seconds=round(compact_s, 3),
            open_seconds=round(timed_open(root), 4),
            **snapshot_figures(ck, n),
        )
        ws[0].record("0_src-00000000_0", "src-00000000", 3)  # a different value for a kept key: reopens src 0
        ws[0].flush()
        t0 = time.perf_counter()
        reader = resumelog.open(root, run_id="reader", create=False)
        late_s = time.perf_counter() - t0
        emit(
            bench="done_writers",
            case="late_record",
            sources=n,
            open_with_late_record_seconds=round(late_s, 4),
            completed=len(reader.completed),
        )
        for w in ws:
            w.close()
        t0 = time.perf_counter()
        ck.compact()
        compact_s = time.perf_counter() - t0
        emit(
            bench="done_writers",
            case="closed_writers",
            sources=n,
            writers=nw,
            compact_seconds=round(compact_s, 3),
            open_seconds=round(timed_open(root), 4),
            journal_objects=len(ck.store.list(paths.JOURNAL_PREFIX)),
            **snapshot_figures(ck, n),
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
