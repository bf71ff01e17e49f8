"""A crash-storm worker (run as a script by test_crash_storm.py).

Processes its share of the sources with the counter API: emit +1 and a fan-out +2,
flushed before the three parts are "processed" (barrier); the parts' -1 records are
flushed in batches. Two O_APPEND ledgers, independent of resumelog:
  DRAINED <src>  written once all three parts ran, BEFORE their -1 are flushed
  FLUSHED <src>  written after the flush carrying its last -1 returned
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

import resumelog
from resumelog import compactor


def main(
    url: str,
    run_id: str,
    worker: int,
    nworkers: int,
    nsources: int,
    ledger: str,
    seed: int,
    delay: float,
    opts: dict,
    fold: list[int] | None = None,
) -> None:
    rng = random.Random(seed)
    if fold:  # (round records, spill completions) of the spilling storm's folds
        compactor.ROUND_RECORDS, compactor.SPILL_COMPLETIONS = fold
    ck = resumelog.open(url, storage_options=opts, run_id=run_id, create=False)
    mine = [f"src-{i:06d}" for i in range(nsources) if i % nworkers == worker]
    todo = ck.pending(mine)
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    w = ck.writer(f"worker-{worker}")
    drained: list[str] = []
    for s in todo:
        w.emit(s)
        w.record(f"{s}/0", s, 2)
        w.flush()
        for part in range(3):
            w.record(f"{s}/0/{part}", s, -1)
            time.sleep(delay / 3)
        drained.append(s)
        os.write(fd, f"DRAINED {s}\n".encode())
        if len(drained) >= rng.choice([1, 3, 7]):
            w.flush()
            os.write(fd, "".join(f"FLUSHED {d}\n" for d in drained).encode())
            drained = []
    w.flush()
    os.write(fd, "".join(f"FLUSHED {d}\n" for d in drained).encode())
    w.close()
    os.close(fd)


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], int(a[2]), int(a[3]), int(a[4]), a[5], int(a[6]), float(a[7]), json.loads(a[8]), json.loads(a[9]))
