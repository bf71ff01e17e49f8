""" "Just use a database": one SQLite file in WAL mode (local disk only).

One table ``sources(source PRIMARY KEY, counter, completed)``. Each stage call is one
transaction: an ``executemany`` upsert adding the deltas to the counters, an
``executemany`` marking the touched sources whose counter reached 0, a commit.
``journal_mode=WAL``, ``synchronous=NORMAL`` (the usual WAL setting: a commit survives a
process crash; the WAL is fsynced at checkpoints, so a power loss can lose recent
commits — weaker than resumelog's and Curator's per-commit fsync; ``synchronous=FULL``
is the ``durable`` variant). No per-key dedup table (a retried record would be counted
twice); Curator's and resumelog's algebra has one. Startup: ``SELECT source ... WHERE
completed`` into a Python set.
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

from baselines.common import call_chunks, dir_bytes, proc_status, source_id

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sources (
    source    TEXT PRIMARY KEY,
    counter   INTEGER NOT NULL,
    completed INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID
"""
_UPSERT = (
    "INSERT INTO sources(source, counter) VALUES (?, ?) "
    "ON CONFLICT(source) DO UPDATE SET counter = counter + excluded.counter"
)
_MARK = "UPDATE sources SET completed = 1 WHERE source = ? AND counter = 0 AND completed = 0"


def _connect(path: str, synchronous: str = "NORMAL") -> sqlite3.Connection:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(f"PRAGMA synchronous={synchronous}")
    con.execute(_SCHEMA)
    return con


def _bytes(path: str) -> tuple[int, int]:
    size = alloc = 0
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            s, a = dir_bytes(path + suffix)
            size += s
            alloc += a
    return size, alloc


def throughput(path: str, n: int, synchronous: str = "NORMAL") -> dict[str, Any]:
    con = _connect(path, synchronous)
    busy = 0.0
    records = 0
    for chunk in call_chunks(0, n, chunk=20_000):
        t0 = time.perf_counter()
        for _stage, recs in chunk:
            con.execute("BEGIN")
            con.executemany(_UPSERT, [(s, d) for _, s, d in recs])
            con.executemany(_MARK, [(s,) for _, s, d in recs if d < 0])
            con.execute("COMMIT")
        busy += time.perf_counter() - t0
        records += sum(len(r) for _, r in chunk)
    completed = con.execute("SELECT count(*) FROM sources WHERE completed = 1").fetchone()[0]
    con.close()
    size, alloc = _bytes(path)
    return {
        "records": records,
        "seconds": round(busy, 3),
        "records_per_s": round(records / busy),
        "completed": completed,
        "bytes": size,
        "bytes_allocated": alloc,
        "bytes_per_completed": round(size / max(completed, 1), 2),
    }


def populate(path: str, n: int) -> dict[str, Any]:
    """``n`` completed sources, bulk-inserted, then checkpointed (WAL folded into the db)."""
    con = _connect(path)
    t0 = time.perf_counter()
    for a in range(0, n, 100_000):
        con.execute("BEGIN")
        con.executemany(
            "INSERT OR REPLACE INTO sources VALUES (?, 0, 1)", [(source_id(i),) for i in range(a, min(a + 100_000, n))]
        )
        con.execute("COMMIT")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    size, alloc = _bytes(path)
    return {"seconds": round(time.perf_counter() - t0, 3), "bytes": size, "bytes_allocated": alloc}


def startup(path: str, probe: str) -> dict[str, Any]:
    rss0 = proc_status("VmRSS")
    t0 = time.perf_counter()
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    done = {r[0] for r in con.execute("SELECT source FROM sources WHERE completed = 1")}
    hit = probe in done
    dt = time.perf_counter() - t0
    con.close()
    return {"open_s": round(dt, 5), "hit": hit, "completed": len(done), "rss_before_mb": round(rss0, 1)}
