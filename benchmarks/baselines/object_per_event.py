"""The naive way: one small JSON object per event on an fsspec path (local or S3).

What pipeline frameworks do today: every counter event becomes its own object
``expected_increments/<hash>_<task>.json`` (``<hash>``: 8 hex digits of the source id's
SHA-1, ``<task>``: the record's task key; body ``{"source", "delta"}``), and a source
whose counter returns to zero gets ``completed/<source>.json``. Counters and the per-key
dedup (Curator's rules) live in memory; each object is written with ``pipe_file`` as the
event happens (sequential, as a stage call would). Startup lists both prefixes and reads
every object back (``fs.cat`` of the lists, which s3fs runs concurrently) to rebuild the
completed set and the pending counters.

S3 request counts come from a botocore ``before-call`` hook on the s3fs client (the same
counting as ``FsspecStore.requests``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from typing import Any

from baselines.common import call_chunks, calls, proc_status, source_id


def filesystem(protocol: str, storage_options: dict[str, Any] | None = None) -> Any:
    import fsspec

    opts = dict(storage_options or {})
    if protocol == "s3":
        opts.setdefault("use_listings_cache", False)
        opts.setdefault("skip_instance_cache", True)
    return fsspec.filesystem(protocol, **opts)


def count_requests(fs: Any) -> Counter[str]:
    """A Counter of S3 API calls made by ``fs`` (empty for non-S3 filesystems)."""
    counts: Counter[str] = Counter()
    if getattr(fs, "protocol", None) in ("s3", ("s3", "s3a")) or type(fs).__name__ == "S3FileSystem":
        fs.connect()

        def count(model: Any = None, **_: Any) -> None:
            if model is not None:
                counts[model.name] += 1

        fs.s3.meta.events.register("before-call.s3", count)
    return counts


def _makedirs(fs: Any, protocol: str, root: str) -> None:
    if protocol == "file":  # object stores have no directories
        fs.makedirs(f"{root}/completed", exist_ok=True)
        fs.makedirs(f"{root}/expected_increments", exist_ok=True)


def _h(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()[:8]


def increment_path(root: str, key: str, source: str) -> str:
    return f"{root}/expected_increments/{_h(source)}_{key}.json"


def completed_path(root: str, source: str) -> str:
    return f"{root}/completed/{source}.json"


def _inc_body(source: str, delta: int) -> bytes:
    return json.dumps({"source": source, "delta": delta}).encode()


def _done_body(source: str) -> bytes:
    return json.dumps({"source": source}).encode()


class ObjectPerEvent:
    """Counters in memory, one object per event on ``fs`` under ``root``."""

    def __init__(self, fs: Any, root: str) -> None:
        self.fs = fs
        self.root = root
        self.counter: dict[str, int] = {}
        self.applied: dict[str, int] = {}
        self.completed: set[str] = set()

    def apply(self, recs: list[tuple[str, str, int]]) -> None:
        fs, root = self.fs, self.root
        for key, src, d in recs:
            prev = self.applied.get(key)
            if prev == d:
                continue
            self.applied[key] = d
            fs.pipe_file(increment_path(root, key, src), _inc_body(src, d))
            c = self.counter[src] = self.counter.get(src, 0) + d - (prev or 0)
            if c == 0:
                fs.pipe_file(completed_path(root, src), _done_body(src))
                self.completed.add(src)
                del self.counter[src]


def throughput(
    protocol: str, root: str, n: int, storage_options: dict[str, Any] | None = None, offset: int = 0
) -> dict[str, Any]:
    """Sequential per-event writes for sources ``offset..offset+n-1``."""
    fs = filesystem(protocol, storage_options)
    reqs = count_requests(fs)
    _makedirs(fs, protocol, root)
    sys_ = ObjectPerEvent(fs, root)
    busy = 0.0
    records = 0
    for chunk in call_chunks(offset, offset + n, chunk=20_000):
        t0 = time.perf_counter()
        for _stage, recs in chunk:
            sys_.apply(recs)
        busy += time.perf_counter() - t0
        records += sum(len(r) for _, r in chunk)
    return {
        "records": records,
        "seconds": round(busy, 3),
        "records_per_s": round(records / busy),
        "objects": records + len(sys_.completed),
        "completed": len(sys_.completed),
        "requests": dict(reqs),
    }


def populate(
    protocol: str, root: str, lo: int, hi: int, storage_options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The objects ``throughput`` would leave for sources ``lo..hi-1``, written in bulk
    (concurrent ``fs.pipe`` batches on S3; not a timed figure)."""
    fs = filesystem(protocol, storage_options)
    reqs = count_requests(fs)
    _makedirs(fs, protocol, root)
    t0 = time.perf_counter()
    nbytes = objects = 0
    for a in range(lo, hi, 2_000):
        batch: dict[str, bytes] = {}
        for _stage, recs in calls(a, min(a + 2_000, hi)):
            for key, src, d in recs:
                batch[increment_path(root, key, src)] = _inc_body(src, d)
        for i in range(a, min(a + 2_000, hi)):
            s = source_id(i)
            batch[completed_path(root, s)] = _done_body(s)
        fs.pipe(batch)
        objects += len(batch)
        nbytes += sum(len(v) for v in batch.values())
    return {"seconds": round(time.perf_counter() - t0, 2), "objects": objects, "bytes": nbytes, "requests": dict(reqs)}


def startup(protocol: str, root: str, probe: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """List both prefixes, read every object, rebuild completed set and pending counters.

    Timed from creating the filesystem object (as resumelog's startup is timed from
    ``resumelog.open``); module imports happen before the clock starts for both."""
    if protocol == "s3":
        import s3fs  # noqa: F401 - imported before the clock, like every system's imports
    rss0 = proc_status("VmRSS")
    t0 = time.perf_counter()
    fs = filesystem(protocol, storage_options)
    reqs = count_requests(fs)
    # whole-object GETs without s3fs's HEAD per object (the way resumelog reads too)
    cat_kw = {"max_concurrency": 1} if protocol == "s3" else {}
    done_paths = fs.find(f"{root}/completed")
    inc_paths = fs.find(f"{root}/expected_increments")
    done = {json.loads(v)["source"] for v in fs.cat(done_paths, **cat_kw).values()}
    counter: dict[str, int] = {}
    for v in fs.cat(inc_paths, **cat_kw).values():
        o = json.loads(v)
        if o["source"] not in done:
            counter[o["source"]] = counter.get(o["source"], 0) + o["delta"]
    hit = probe in done
    dt = time.perf_counter() - t0
    return {
        "open_s": round(dt, 4),
        "hit": hit,
        "completed": len(done),
        "pending": len(counter),
        "objects": len(done_paths) + len(inc_paths),
        "rss_before_mb": round(rss0, 1),
        "requests": dict(reqs),
    }
