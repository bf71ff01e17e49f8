"""Child-process programs for the crash and race tests (run as a script, never imported by pytest)."""

from __future__ import annotations

import hashlib
import json
import sys
import time

import resumelog
from resumelog import compactor
from resumelog.storage import open_store


def writer(url: str, run_id: str, writer_id: str, n: int, flush_every: int, pause_at: int = -1) -> None:
    """Counter-API pipeline: emit(+1) and a +1 fan-out are flushed at once (barrier);
    the two sink -1 are flushed every `flush_every` sources. Prints `ACK i` after the
    flush that made source i complete. At source `pause_at` (after its sink records are
    buffered, before they are flushed) prints PAUSED and waits to be killed."""
    h = resumelog.WriterHandle(url, run_id)
    w = h.writer(writer_id)
    for i in range(n):
        s = f"s{i:05d}"
        w.emit(s)
        w.record(f"{s}/fan", s, 1)
        w.flush()
        w.record(f"{s}/a", s, -1)
        w.record(f"{s}/b", s, -1)
        if i == pause_at:
            print("PAUSED", flush=True)
            time.sleep(600)
        if (i + 1) % flush_every == 0:
            w.flush()
            print(f"ACK {i}", flush=True)
    w.close()
    print("DONE", flush=True)


def compact_race(url: str, start_at: float) -> None:
    while time.time() < start_at:
        pass
    r = compactor.compact(open_store(url))
    ck = resumelog.open(url, create=False)
    digest = hashlib.sha256("\n".join(sorted(ck.completed)).encode()).hexdigest()
    print(
        json.dumps(
            {
                "snapshot": r.snapshot,
                "written": r.written,
                "attempts": r.attempts,
                "completed": len(ck.completed),
                "digest": digest,
            }
        ),
        flush=True,
    )


def background_compacting_writer(url: str, every: float, flush_every: int) -> None:
    """Completes sources forever (as `writer`) beside ``compact_in_background(every)``;
    prints `ACK i snapshots` after each flush that made sources up to i complete."""
    ckpt = resumelog.open(url)
    bg = ckpt.compact_in_background(every)
    w = ckpt.writer("bg-writer")
    i = 0
    while True:
        s = f"s{i:06d}"
        w.emit(s)
        w.record(f"{s}/fan", s, 1)
        w.record(f"{s}/a", s, -1)
        w.record(f"{s}/b", s, -1)
        if (i + 1) % flush_every == 0:
            w.flush()
            print(f"ACK {i} {bg.snapshots_written} {bg.failures}", flush=True)
            time.sleep(0.002)
        i += 1


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "writer":
        writer(args[0], args[1], args[2], int(args[3]), int(args[4]), int(args[5]) if len(args) > 5 else -1)
    elif cmd == "compact":
        compact_race(args[0], float(args[1]))
    elif cmd == "bg-writer":
        background_compacting_writer(args[0], float(args[1]), int(args[2]))


def buffered_then_wait(url: str, run_id: str) -> None:
    """Buffer completions without flushing, say so, and wait for a signal."""
    w = resumelog.WriterHandle(url, run_id).writer("sigterm-writer")
    for i in range(50):
        w.complete(f"t{i}")
    print("BUFFERED", flush=True)
    time.sleep(600)


def closed_then_block(url: str, run_id: str) -> None:
    """Open and close a writer, then block the main thread in a C-level wait that no
    other thread's signal interrupts, while a second thread takes the SIGTERM."""
    import multiprocessing
    import signal
    import threading

    with resumelog.WriterHandle(url, run_id).writer("closed-writer") as w:
        w.complete("c0")
    lock = multiprocessing.Lock()
    lock.acquire()

    def take_sigterm() -> None:
        time.sleep(0.5)
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # to this thread, not the main one
        time.sleep(600)

    threading.Thread(target=take_sigterm, daemon=True).start()
    print("BLOCKING", flush=True)
    lock.acquire()  # sem_wait: only a signal delivered to the main thread interrupts it


def s3_race(op: str) -> None:
    """One racer of the S3 race tests. Reads ``{"url", "opts", "i"}`` (one JSON line) on
    stdin, prints READY, waits for GO on stdin so every racer starts at once, runs
    ``op`` and prints its result as JSON. (Storage options travel on stdin, not argv.)"""
    job = json.loads(sys.stdin.readline())
    url, opts, i = job["url"], job["opts"], job["i"]
    store = open_store(url, opts)
    print("READY", flush=True)
    if sys.stdin.readline().strip() != "GO":
        raise SystemExit("no GO")
    result: object
    if op == "race-create":
        try:
            store.put_if_absent("snapshots/00000000000000000007.snap", f"process-{i}".encode())
            result = i
        except resumelog.AlreadyExists:
            result = None
    elif op == "same-writer-id":
        with resumelog.WriterHandle(url, "r", opts).writer("shared-id") as w:
            for j in range(20):
                w.complete(f"p{i}-s{j}")
                if j % 5 == 4:
                    w.flush()
        result = w.incarnation
    else:
        raise SystemExit(f"unknown race {op!r}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__" and sys.argv[1] == "s3-race":
    s3_race(sys.argv[2])
if __name__ == "__main__" and sys.argv[1] == "buffered":
    buffered_then_wait(sys.argv[2], sys.argv[3])
if __name__ == "__main__" and sys.argv[1] == "closed":
    closed_then_block(sys.argv[2], sys.argv[3])
