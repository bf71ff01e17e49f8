"""An exactly-once crash-storm worker (run as a script by test_exactly_once_storm.py).

Processes its share of the sources in run ``run_id``, writing every output through the
commit protocol of :class:`resumelog.outputs.PendingOutput` one step at a time, and
SIGKILLs itself with probability ``p_kill`` after any step (spool written, published,
recorded, flushed) besides the random SIGKILLs of the parent. Sources ``i % 3 == 0``
have one output of the whole source (``complete``); the others ``1 + i % 4`` sink
outputs (emission and fan-out flushed first, one ``-1`` per output). An O_APPEND
ledger, independent of resumelog, says ``FLUSHED <src>`` after the flush that made a
source's last record durable.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sys
import time

import resumelog
from resumelog.outputs import PendingOutput, output_store


def parts(i: int) -> int:
    """0: one output of the whole source; n: n sink outputs."""
    return 0 if i % 3 == 0 else 1 + i % 4


def names(i: int) -> list[str]:
    n = parts(i)
    return ["output"] if n == 0 else [f"part-{j}.bin" for j in range(n)]


def payload(source: str, name: str) -> bytes:
    """The deterministic body of an output (a few KiB)."""
    seed = hashlib.sha256(f"{source}/{name}".encode()).digest()
    n = 1024 + seed[0] * 24
    return (seed * (n // 32 + 1))[:n]


def content(run: str, source: str, name: str) -> bytes:
    return f"{run} {source} {name} {os.getpid()}\n".encode() + payload(source, name)


def main(url: str, root: str, run_id: str, worker: int, nworkers: int, nsources: int, ledger: str, seed: int,
         p_kill: float, delay: float, opts: dict) -> None:  # fmt: skip
    rng = random.Random(seed)

    def maybe_die() -> None:
        if rng.random() < p_kill:
            os.kill(os.getpid(), signal.SIGKILL)

    ck = resumelog.open(url, storage_options=opts, run_id=run_id, create=False)
    mine = {f"src-{i:05d}": i for i in range(nsources) if i % nworkers == worker}
    store = output_store(root, opts)
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    w = ck.writer(f"eo-{worker}")
    for s in ck.pending(mine):
        i = mine[s]
        n = parts(i)
        if n:
            w.emit(s)
            w.record(f"{s}/fan", s, n - 1)
            w.flush()  # the durability barrier
        flush_each = rng.random() < 0.5
        for j, name in enumerate(names(i)):
            p = PendingOutput(w, store, s, None if n == 0 else f"{s}/{j}", name)
            data = content(run_id, s, name)
            p.file.write(data[: len(data) // 2])
            time.sleep(delay)
            maybe_die()  # half-written spool file
            p.file.write(data[len(data) // 2 :])
            maybe_die()  # spool written, not published
            p.publish()
            maybe_die()  # published, no record
            p.record(flush=False)
            maybe_die()  # recorded in the buffer, not durable
            if flush_each or j == len(names(i)) - 1:
                w.flush()
            p.discard()
            maybe_die()  # durable; spool removed
        os.write(fd, f"FLUSHED {s}\n".encode())
    w.close()
    os.close(fd)


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], a[2], int(a[3]), int(a[4]), int(a[5]), a[6], int(a[7]), float(a[8]), float(a[9]),
         json.loads(a[10]))  # fmt: skip
