"""resumelog, measured on the shared workload (local disk, ``memory://``, S3).

Every function is called in a child process by ``run.py`` (see ``common.run_child``)
and returns a dict of figures. Writers are opened the way pipeline workers open them,
from a picklable handle (``Checkpoint.handle().writer()``), so no in-process view is
maintained; ``via="checkpoint"`` uses ``Checkpoint.writer()`` instead (whose close
marks the checkpoint's view stale; the first read after it, timed apart as
``view_reload_s``, reloads it).
"""

from __future__ import annotations

import os
import time
from typing import Any

import resumelog
from baselines.common import FANOUT, RECORDS_PER_SOURCE, SOURCE, call_chunks, calls, pct, proc_status, writer_slices
from resumelog import compactor
from resumelog.journal import FlushPolicy, Writer
from resumelog.storage import open_store

_HUGE = FlushPolicy(max_bytes=1 << 40, max_records=1 << 40, max_seconds=1e9)


def _open(url: str, storage_options: dict[str, Any] | None, policy: FlushPolicy | None = None) -> resumelog.Checkpoint:
    return resumelog.open(url, storage_options=storage_options or {}, run_id="bench", flush_policy=policy)


def _writer(ck: resumelog.Checkpoint, writer_id: str, via: str) -> Writer:
    if via == "checkpoint":
        return ck.writer(writer_id)
    return ck.handle(writer_id).writer()


def _feed(w: Writer, chunk: list[Any], barrier: bool) -> None:
    rec = w.record
    for stage, recs in chunk:
        if stage == SOURCE:
            for k, s, d in recs:
                rec(k, s, d, emission=True)
        else:
            for k, s, d in recs:
                rec(k, s, d)
        if barrier and stage <= FANOUT:
            w.flush()  # durability barrier: positive deltas durable before dispatch


def throughput(
    url: str, n: int, variant: str = "buffered", via: str = "handle", storage_options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One writer records the workload for ``n`` sources.

    ``buffered``: default flush policy (1 MiB segments), closed at the end.
    ``barrier``: additionally ``flush()`` after every stage call with positive deltas
    (the source batch and every fan-out), as an adapter must before dispatching.
    """
    ck = _open(url, storage_options)
    w = _writer(ck, "w000", via)
    barrier = variant == "barrier"
    busy = 0.0
    for chunk in call_chunks(0, n, chunk=20_000):
        t0 = time.perf_counter()
        _feed(w, chunk, barrier)
        busy += time.perf_counter() - t0
    t0 = time.perf_counter()
    w.close()
    busy += time.perf_counter() - t0
    records = n * RECORDS_PER_SOURCE
    lat = w.flush_seconds
    extra: dict[str, Any] = {}
    if via == "checkpoint":
        t0 = time.perf_counter()
        extra["completed_after"] = len(ck.completed)  # the first read reloads the view
        extra["view_reload_s"] = round(time.perf_counter() - t0, 4)
    return {
        **extra,
        "records": records,
        "seconds": round(busy, 4),
        "records_per_s": round(records / busy),
        "flushes": w.flush_count,
        "flush_p50_ms": round(pct(lat, 0.5) * 1e3, 3),
        "flush_p99_ms": round(pct(lat, 0.99) * 1e3, 3),
        "bytes_written": w.bytes_written,
        "bytes_per_record": round(w.bytes_written / records, 2),
        "requests": dict(w.store.requests),
    }


def write_journals(
    url: str, n: int, writers: int, storage_options: dict[str, Any] | None = None, offset: int = 0
) -> dict[str, Any]:
    """``writers`` writers (one after another, in this process) journal the workload for
    their share of sources ``offset..offset+n-1`` with the default flush policy; nothing
    compacted. Writer ``i`` of a later round (``offset > 0``) is a new incarnation."""
    ck = _open(url, storage_options)
    busy = 0.0
    reqs: dict[str, int] = {}
    for wi, (lo, hi) in enumerate(writer_slices(n, writers)):
        lo, hi = lo + offset, hi + offset
        w = _writer(ck, f"w{wi:03d}", "handle")
        for a in range(lo, hi, 20_000):
            chunk = calls(a, min(a + 20_000, hi))
            t0 = time.perf_counter()
            _feed(w, chunk, False)
            busy += time.perf_counter() - t0
        t0 = time.perf_counter()
        w.close()
        busy += time.perf_counter() - t0
        for k, v in w.store.requests.items():
            reqs[k] = reqs.get(k, 0) + v
    objs = [o for o in ck.store.list("journal/")]
    return {
        "records": n * RECORDS_PER_SOURCE,
        "seconds": round(busy, 3),
        "records_per_s": round(n * RECORDS_PER_SOURCE / busy),
        "journal_objects": len(objs),
        "journal_bytes": sum(o.size for o in objs),
        "requests": reqs,
    }


def compact(
    url: str, storage_options: dict[str, Any] | None = None, collect: bool = False, keep_runs: int | None = None
) -> dict[str, Any]:
    """Fold every journal into a snapshot (then, with ``collect``, GC keeping only the
    latest snapshot, no grace period). ``keep_runs=0`` also retires every run, which drops
    the runs' pending state and the final deltas kept for their completed sources."""
    store = open_store(url, storage_options or {})
    rss0 = proc_status("VmRSS")
    t0 = time.perf_counter()
    r = compactor.compact(store, progress=False, keep_runs=keep_runs)
    dt = time.perf_counter() - t0
    snap = [o for o in store.list("snapshots/")]
    out: dict[str, Any] = {
        "seconds": round(dt, 4),
        "records": r.records_folded,
        "records_per_s": round(r.records_folded / dt) if dt else None,
        "segments": r.segments_folded,
        "completed": r.completed,
        "snapshot_bytes": snap[-1].size if snap else 0,
        "rss_before_mb": round(rss0, 1),
        "requests": dict(store.requests),
    }
    if collect:
        t0 = time.perf_counter()
        g = compactor.gc(store, grace=0, retain=1, progress=False)
        out["gc_seconds"] = round(time.perf_counter() - t0, 4)
        out["gc_deleted"] = g.segments + g.snapshots
        out["bytes_after_gc"] = sum(o.size for o in store.list(""))
    return out


def startup(url: str, probe: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A resuming process: ``resumelog.open`` + the first ``is_completed``."""
    if url.startswith("s3://"):
        import s3fs  # noqa: F401 - imported before the clock, like every system's imports
    rss0 = proc_status("VmRSS")
    t0 = time.perf_counter()
    ck = resumelog.open(url, storage_options=storage_options or {}, create=False)
    hit = ck.is_completed(probe)
    dt = time.perf_counter() - t0
    t1 = time.perf_counter()
    misses = sum(ck.is_completed(f"absent-{i}") for i in range(10_000))
    lookup = (time.perf_counter() - t1) / 10_000
    return {
        "open_s": round(dt, 5),
        "hit": hit,
        "misses": misses,
        "completed": len(ck.completed),
        "lookup_us": round(lookup * 1e6, 3),
        "rss_before_mb": round(rss0, 1),
        "requests": dict(getattr(ck.store, "requests", {})),
    }


def flush_latency(url: str, segment_bytes: int = 1 << 20, flushes: int = 100) -> dict[str, Any]:
    """Latency of ``Writer.flush()`` (encode + durable put) for segments of ``segment_bytes``,
    next to the disk's floor in the same directory (write + fsync + directory fsync of the
    same number of bytes, no encoding)."""
    ck = _open(url, None, _HUGE)
    w = _writer(ck, "lat", "handle")
    gen = _record_stream()
    # calibrate: records per segment_bytes of encoded segment
    k0 = 20_000
    for _ in range(k0):
        k, s, d, e = next(gen)
        w.record(k, s, d, emission=e)
    w.flush()
    per = max(1, int(k0 * segment_bytes / max(w.bytes_written, 1)))
    lat: list[float] = []
    sizes: list[int] = []
    floor: list[float] = []
    local = "://" not in url
    blob = os.urandom(segment_bytes)
    for i in range(flushes):
        for _ in range(per):
            k, s, d, e = next(gen)
            w.record(k, s, d, emission=e)
        before = w.bytes_written
        t0 = time.perf_counter()
        w.flush()
        lat.append(time.perf_counter() - t0)
        sizes.append(w.bytes_written - before)
        if local:  # the floor interleaved with the flushes: the same disk weather
            floor.append(_disk_floor_once(os.path.join(url, "floor"), i, blob[: sizes[-1]]))
    put = w.flush_seconds[1:]
    w.close()
    return {
        "flushes": flushes,
        "segment_bytes_avg": sum(sizes) // len(sizes),
        "records_per_segment": per,
        "flush_p50_ms": round(pct(lat, 0.5) * 1e3, 3),
        "flush_p99_ms": round(pct(lat, 0.99) * 1e3, 3),
        "flush_max_ms": round(max(lat) * 1e3, 3),
        "put_p50_ms": round(pct(put, 0.5) * 1e3, 3),
        "put_p99_ms": round(pct(put, 0.99) * 1e3, 3),
        "floor_p50_ms": round(pct(floor, 0.5) * 1e3, 3) if floor else None,
        "floor_p99_ms": round(pct(floor, 0.99) * 1e3, 3) if floor else None,
    }


def _record_stream() -> Any:
    i = 0
    while True:
        for stage, recs in calls(i, i + 1000):
            for k, s, d in recs:
                yield k, s, d, stage == SOURCE
        i += 1000


def _disk_floor_once(d: str, i: int, data: bytes) -> float:
    """Create-exclusive write + fsync + directory fsync of ``data``: what the disk allows."""
    os.makedirs(d, exist_ok=True)
    t0 = time.perf_counter()
    fd = os.open(os.path.join(d, f"{i:06d}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return time.perf_counter() - t0
