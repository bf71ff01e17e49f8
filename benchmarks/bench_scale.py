"""Benchmarks at scale (issue 17, part 5): how compaction, opening and storage grow with
the number of completed ids N, on local disk and on SeaweedFS, as JSON lines.

    python benchmarks/bench_scale.py [--quick | --smoke] [--no-s3] [--n N ...] [--out DIR]
    python benchmarks/bench_scale.py --plot results/scale-quick.jsonl [more.jsonl ...]

Sizes (``--n`` overrides the N ladder):

=========  ==========================  ==============================
mode       N (completed ids)           M (records compacted at once)
=========  ==========================  ==============================
``smoke``  2k, 20k                     20k
``quick``  10^5, 10^6, 10^7            10^6, 4x10^6
full       10^5, 10^6, 10^7, 10^8      4x10^6, 16x10^6, 64x10^6
=========  ==========================  ==============================

One checkpoint grows through the N ladder by the real write and publish path: a
writer ``complete()``\\ s fresh ids at full speed (an emission ``+1`` and a ``-1`` each,
default 1 MiB segments), then ``compactor.compact`` folds them into a new snapshot and
``compactor.gc`` keeps only that one; rounds of at most ``round`` ids (memory of one
fold). At each N of the ladder, with exactly N ids completed:

* ``scale_bytes``   bytes of every object at rest (after compaction and GC) per id;
* ``scale_open``    a fresh process (``RESUMELOG_CACHE_DIR=off``) opens the checkpoint
  and looks up 10,000 ids, of two shapes: ``shard`` (10,000 consecutive ids, as a
  worker checks its shard; all completed) and ``random`` (uniform over ``2N`` ids: half
  completed, half not); seconds (open, first lookup, the rest), peak RSS, and on S3
  the GETs and bytes read (``FsspecStore.requests`` / ``.bytes_read``); best of ``reps``;
* ``scale_tick``    compaction ticks: a writer adds 100,000 new records (50,000 fresh
  ids) and ``compactor.compact`` folds them onto the base of N (timed alone, in a
  child process: seconds, peak RSS, and where the time went when the compactor's
  functions can be wrapped: ``phases``), ``ticks`` times in a row (8; 1 on S3), so
  that the layer merges every other tick runs are counted: ``seconds`` is the mean
  (the targets use it), ``seconds_median`` and ``seconds_max`` beside it;
* on S3 the same on a copy of the checkpoint uploaded to SeaweedFS (the objects are
  location-independent): ``scale_open`` and ``scale_tick`` with ``storage: s3``.

Apart from the ladder, ``scale_compaction``: M records of the shared pipeline workload
(per source: emission ``+1``, fan-out ``+2``, three sinks ``-1``; Curator-style task
ids) from W writers, folded and published by one compaction onto an empty checkpoint:
records/s and peak RSS.

Then ``scale_fit`` (a power law ``y = a * x^b``, least squares in log-log, through the
measured points at N >= 10^6 when there are two such, else all of them) and rows marked
``extrapolated: true`` for every figure at 10^8 (if not measured) and 10^9; ``scale_target``
rows compare with the issue's targets (tick at 10^7 <= 0.3 s, tick(10^7)/tick(10^5) <= 2).
``results/scale-<mode>-<commit>.jsonl`` holds every row and ``results/scale-<mode>-<commit>.png``
the log-log plot when matplotlib is importable (a name no earlier run holds: ``-2``... after
it; with ``--out DIR``: ``DIR/scale-<mode>.jsonl`` and ``DIR/scale.png``). ``--plot``
redraws a plot from JSON lines files, e.g. a "before" run next to an "after" run.

Every figure comes from a child process of its own (peak RSS is that process's
``VmHWM``). Before each N (and each M) the peak RSS of its steps is predicted from the
points measured so far; an N whose prediction exceeds 85 % of ``MemAvailable`` is
skipped with the reason (its figures are then extrapolated only).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)

Row = dict[str, Any]

SIZES: dict[str, dict[str, Any]] = {
    "smoke": {
        "N": [2_000, 20_000],
        "tick_records": 2_000,
        "ticks": 2,
        "round": 10_000,
        "M": [20_000],
        "writers": 4,
        "lookups": 1_000,
        "reps": 1,
        "s3_reps": 1,
    },
    "quick": {
        "N": [100_000, 1_000_000, 10_000_000],
        "tick_records": 100_000,
        "ticks": 8,
        "round": 2_000_000,
        "M": [1_000_000, 4_000_000],
        "writers": 64,
        "lookups": 10_000,
        "reps": 5,
        "s3_reps": 2,
    },
    "full": {
        "N": [100_000, 1_000_000, 10_000_000, 100_000_000],
        "tick_records": 100_000,
        "ticks": 8,
        "round": 4_000_000,
        "M": [4_000_000, 16_000_000, 64_000_000],
        "writers": 64,
        "lookups": 10_000,
        "reps": 5,
        "s3_reps": 3,
    },
}
RUN_ID = "scale"
FIT_MIN_N = 1_000_000
"""Fits leave out smaller N when two larger points exist: below it fixed costs
(process start, the tick's own 100k records) hide how a figure grows."""
EXTRAPOLATE_TO = (100_000_000, 1_000_000_000)
TICK_TARGET_S = 0.3
TICK_RATIO_TARGET = 2.0
MEM_FRACTION = 0.85


SHORT_IDS = os.environ.get("RESUMELOG_BENCH_IDS") == "short"
"""``--ids short`` (set for the children through the environment): 16-byte ids."""


def source_id(i: int) -> str:
    """A realistic source id, 49 bytes: 4,096 files per shard (``--ids short``: 16 bytes,
    ``doc-000001234567``)."""
    if SHORT_IDS:
        return f"doc-{i:012d}"
    return f"s3://corpus/cc/shard-{i >> 12:06d}/part-{i:010d}.jsonl"


def _vm(field: str, pid: int | str = "self") -> float:
    """A ``/proc/<pid>/status`` field in MiB (``VmHWM``: the process's peak RSS), ``nan``
    if unreadable (the process has exited)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def mem_available_mb() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("inf")


# ====================================================================== child processes
# Each runs in a fresh interpreter (``--child NAME JSON``) and returns a dict.


def _store(url: str, storage_options: dict[str, Any] | None) -> Any:
    from resumelog.storage import open_store

    return open_store(url, storage_options or {})


def _requests(store: Any) -> dict[str, int]:
    return dict(getattr(store, "requests", {}) or {})


def child_build(url: str, lo: int, hi: int, writer_id: str) -> Row:
    """Complete ids ``lo..hi-1`` with one writer, compact, GC to the new snapshot."""
    import resumelog
    from resumelog import compactor

    ck = resumelog.open(url, run_id=RUN_ID)
    t0 = time.perf_counter()
    with ck.handle(writer_id).writer() as w:
        w.complete_many(map(source_id, range(lo, hi)))
    t1 = time.perf_counter()
    store = _store(url, None)
    r = compactor.compact(store, progress=False)
    t2 = time.perf_counter()
    compactor.gc(store, retain=1, grace=0, progress=False)
    return {
        "write_s": round(t1 - t0, 3),
        "compact_s": round(t2 - t1, 3),
        "gc_s": round(time.perf_counter() - t2, 3),
        "completed": r.completed,
    }


def _phase_timers(store: Any) -> tuple[dict[str, float], Callable[[], None]]:
    """Wrap the compactor's steps to time them (best effort: names that are not there,
    e.g. after a format change, are left out). Returns the totals and an undo."""
    from resumelog import compactor

    phases: dict[str, float] = {}
    undo: list[Callable[[], None]] = []

    def wrap(owner: Any, name: str, label: str) -> None:
        fn = getattr(owner, name, None)
        if fn is None or not callable(fn):
            return

        def timed(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                phases[label] = phases.get(label, 0.0) + time.perf_counter() - t0

        setattr(owner, name, timed)
        if owner is store:
            undo.append(lambda: delattr(owner, name))
        else:
            undo.append(lambda: setattr(owner, name, fn))

    wrap(compactor, "load", "load_s")  # listing + base snapshot + fold of the tail
    wrap(compactor, "_load_base", "read_base_s")  # of which: read + decode the base
    wrap(compactor, "encode_snapshot", "encode_s")  # new index + snapshot bytes
    wrap(store, "put_if_absent", "put_s")

    def restore() -> None:
        for u in reversed(undo):
            u()

    return phases, restore


def child_tick(
    url: str, lo: int, ids: int, storage_options: dict[str, Any] | None = None, defer_merges: bool = False
) -> Row:
    """``ids`` fresh ids completed (2 records each), then one timed compaction
    (``defer_merges``: a tick that leaves large merges to ``compactor.merge``)."""
    import resumelog
    from resumelog import compactor

    ck = resumelog.open(url, run_id=RUN_ID, storage_options=storage_options or {})
    with ck.handle("tick").writer() as w:
        w.complete_many(map(source_id, range(lo, lo + ids)))
    store = _store(url, storage_options)
    if hasattr(store, "bytes_read"):  # a compactor's S3 client is warm: make it before the clock
        store.exists("meta.msgpack")
        store.requests.clear()
        store.bytes_read = 0
    phases, restore = _phase_timers(store)
    rss0 = _vm("VmRSS")
    t0 = time.perf_counter()
    r = compactor.compact(store, progress=False, defer_merges=defer_merges)
    dt = time.perf_counter() - t0
    restore()
    reqs = _requests(store)
    bytes_read = getattr(store, "bytes_read", None)
    snaps = compactor.list_snapshots(store)
    peak = _vm("VmHWM")
    compactor.gc(store, retain=1, grace=0, progress=False)
    return {
        "seconds": round(dt, 4),
        "records": r.records_folded,
        "completed": r.completed,
        "phases": {k: round(v, 4) for k, v in phases.items()},
        "snapshot_bytes": snaps[-1][1].size if snaps else 0,
        "requests": reqs,
        "bytes_read": bytes_read,
        "rss_before_mb": round(rss0, 1),
        "tick_peak_rss_mb": round(peak, 1),
    }


def lookup_ids(shape: str, n: int, count: int, seed: int = 17) -> list[str]:
    """The ids a fresh client looks up: ``shard`` (``count`` consecutive ids, all
    completed) or ``random`` (uniform over ``2n`` ids: about half completed)."""
    rng = random.Random(seed)
    count = min(count, n)
    if shape == "shard":
        start = rng.randrange(0, n - count + 1)
        return [source_id(i) for i in range(start, start + count)]
    return [source_id(rng.randrange(0, 2 * n)) for _ in range(count)]


def child_open(url: str, n: int, shape: str, lookups: int, storage_options: dict[str, Any] | None = None) -> Row:
    """A fresh client: open (store client included) + ``lookups`` ``is_completed``."""
    import resumelog

    if url.startswith("s3://"):
        import s3fs  # noqa: F401 - imports are not the client's open
    ids = lookup_ids(shape, n, lookups)
    rss0 = _vm("VmRSS")
    t0 = time.perf_counter()
    store = _store(url, storage_options)
    ck = resumelog.open(store, create=False)
    t1 = time.perf_counter()
    first = ck.is_completed(ids[0])
    t2 = time.perf_counter()
    hits = int(first) + sum(map(ck.is_completed, ids[1:]))
    t3 = time.perf_counter()
    reqs = _requests(store)
    return {
        "open_s": round(t1 - t0, 5),
        "first_lookup_s": round(t2 - t1, 6),
        "lookups_s": round(t3 - t1, 5),
        "total_s": round(t3 - t0, 5),
        "lookups": len(ids),
        "hits": hits,
        "requests": reqs,
        "gets": sum(v for k, v in reqs.items() if k in ("GetObject", "HeadObject", "get")),
        "bytes_read": getattr(store, "bytes_read", None),
        "rss_before_mb": round(rss0, 1),
        "anon_mb": round(_vm("RssAnon"), 1),  # after the lookups: what the client holds (mapped files excluded)
    }


def _pipeline_records(i: int) -> Iterator[tuple[str, str, int, bool]]:
    """The shared workload's records of source ``i``: emission, fan-out, three sinks."""
    s = source_id(i)
    t = f"0_{s}"
    yield t, s, 1, True
    yield f"{t}_0", s, 2, False
    for j in range(3):
        yield f"{t}_{j}_0", s, -1, False


def child_write_journals(url: str, records: int, writers: int) -> Row:
    """``records`` records of the pipeline workload (5 per source) from ``writers``
    writers (one after another, default flush policy); nothing compacted."""
    import resumelog

    ck = resumelog.open(url, run_id=RUN_ID)
    sources = records // 5
    per, extra = divmod(sources, writers)
    lo = 0
    t0 = time.perf_counter()
    for wi in range(writers):
        hi = lo + per + (1 if wi < extra else 0)
        with ck.handle(f"w{wi:03d}").writer() as w:
            rec = w.record
            for i in range(lo, hi):
                for k, s, d, e in _pipeline_records(i):
                    rec(k, s, d, emission=e)
        lo = hi
    objs = ck.store.list("journal/")
    return {
        "records": sources * 5,
        "write_s": round(time.perf_counter() - t0, 3),
        "segments": len(objs),
        "journal_bytes": sum(o.size for o in objs),
    }


def child_compact(url: str) -> Row:
    """One timed compaction of everything written (fold + publish)."""
    from resumelog import compactor

    store = _store(url, None)
    phases, restore = _phase_timers(store)
    t0 = time.perf_counter()
    r = compactor.compact(store, progress=False)
    dt = time.perf_counter() - t0
    restore()
    snaps = compactor.list_snapshots(store)
    return {
        "seconds": round(dt, 4),
        "records": r.records_folded,
        "segments": r.segments_folded,
        "completed": r.completed,
        "phases": {k: round(v, 4) for k, v in phases.items()},
        "snapshot_bytes": snaps[-1][1].size if snaps else 0,
    }


def child_merge(url: str) -> Row:
    """One timed background merge (``compactor.merge``: as the layer sizes ask)."""
    from resumelog import compactor

    store = _store(url, None)
    t0 = time.perf_counter()
    r = compactor.merge(store)
    dt = time.perf_counter() - t0
    compactor.gc(store, retain=1, grace=0, progress=False)
    return {
        "seconds": round(dt, 4),
        "written": r.written,
        "layers_before": r.layers_before,
        "layers_after": r.layers_after,
        "entries": r.entries,
    }


def child_gc(url: str, hours: float = 0.0) -> Row:
    """``compactor.gc`` keeping the newest snapshot, as if ``hours`` later."""
    from resumelog import compactor

    r = compactor.gc(_store(url, None), retain=1, grace=0, now=time.time() + hours * 3600, progress=False)
    return {"deleted": len(r.keys)}


CHILDREN: dict[str, Callable[..., Row]] = {
    "build": child_build,
    "tick": child_tick,
    "merge": child_merge,
    "gc": child_gc,
    "open": child_open,
    "write_journals": child_write_journals,
    "compact": child_compact,
}


class ChildError(RuntimeError):
    pass


def run_child(name: str, timeout: float = 7200, **kw: Any) -> Row:
    """``CHILDREN[name](**kw)`` in a fresh interpreter, with ``peak_rss_mb`` (its
    ``VmHWM``) and ``child_wall_s``. The local snapshot cache is off in every child."""
    env = {**os.environ, "RESUMELOG_CACHE_DIR": "off"}
    src = os.path.join(os.path.dirname(BENCH_DIR), "src")
    if os.path.isdir(src):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    t0 = time.perf_counter()
    try:
        p = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--child", name, json.dumps(kw)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        raise ChildError(f"{name} timed out after {timeout:.0f} s") from exc
    for line in p.stdout.splitlines():
        if line.startswith("@@RESULT "):
            out: Row = json.loads(line[9:])
            out["child_wall_s"] = round(time.perf_counter() - t0, 2)
            return out
    why = f"killed by signal {-p.returncode}" if p.returncode < 0 else f"exit {p.returncode}"
    raise ChildError(f"{name} failed ({why}): {(p.stderr or p.stdout)[-1500:]}")


def _child_main(name: str, arg: str) -> None:
    out = CHILDREN[name](**json.loads(arg))
    out["peak_rss_mb"] = round(_vm("VmHWM"), 1)
    print("@@RESULT " + json.dumps(out), flush=True)


# ====================================================================== fits


def power_fit(points: Iterable[tuple[float, float]]) -> tuple[float, float, list[float]] | None:
    """``(a, b, xs)`` of ``y = a * x^b`` by least squares in log-log through the points
    with ``x >= FIT_MIN_N`` when at least two have, else through all; None below two
    usable points (``y > 0``)."""
    pts = sorted((x, y) for x, y in points if x > 0 and y is not None and y > 0)
    big = [p for p in pts if p[0] >= FIT_MIN_N]
    pts = big if len(big) >= 2 else pts
    if len({x for x, _ in pts}) < 2:
        return None
    lx = [math.log(x) for x, _ in pts]
    ly = [math.log(y) for _, y in pts]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    b = sum((u - mx) * (v - my) for u, v in zip(lx, ly)) / sum((u - mx) ** 2 for u in lx)
    a = math.exp(my - b * mx)
    return a, b, [x for x, _ in pts]


SERIES: list[tuple[str, str, str, str, str, Callable[[Row], bool]]] = [
    # (figure, bench, x field, y field, unit, row filter)
    ("tick_s", "scale_tick", "n", "seconds", "s", lambda r: True),
    ("tick_deferred_s", "scale_tick_deferred", "n", "seconds", "s", lambda r: True),
    ("merge_s", "scale_merge", "n", "seconds", "s", lambda r: True),
    ("tick_peak_rss_mb", "scale_tick", "n", "peak_rss_mb", "MB", lambda r: True),
    ("open_lookups_s", "scale_open", "n", "total_s", "s", lambda r: True),
    ("open_peak_rss_mb", "scale_open", "n", "peak_rss_mb", "MB", lambda r: True),
    ("open_gets", "scale_open", "n", "gets", "requests", lambda r: r.get("storage") == "s3"),
    ("open_bytes_read", "scale_open", "n", "bytes_read", "B", lambda r: r.get("storage") == "s3"),
    ("bytes_per_id", "scale_bytes", "n", "bytes_per_id", "B/id", lambda r: True),
    ("compaction_records_per_s", "scale_compaction", "records", "records_per_s", "records/s", lambda r: True),
    ("compaction_peak_rss_mb", "scale_compaction", "records", "peak_rss_mb", "MB", lambda r: True),
]


def _series_key(r: Row) -> tuple[str, str]:
    return r.get("storage", "local"), r.get("shape", "")


def series(rows: list[Row]) -> dict[tuple[str, str, str], tuple[str, str, list[tuple[float, float]]]]:
    """``(figure, storage, shape) -> (x field, unit, [(x, y)])`` of the measured rows."""
    out: dict[tuple[str, str, str], tuple[str, str, list[tuple[float, float]]]] = {}
    for fig, bench, xf, yf, unit, keep in SERIES:
        for r in rows:
            if r.get("bench") != bench or r.get("extrapolated") or not keep(r) or r.get(yf) is None:
                continue
            storage, shape = _series_key(r)
            out.setdefault((fig, storage, shape), (xf, unit, []))[2].append((float(r[xf]), float(r[yf])))
    return out


def fit_rows(rows: list[Row]) -> list[Row]:
    """``scale_fit`` rows and the ``extrapolated: true`` points of every series."""
    out: list[Row] = []
    for (fig, storage, shape), (xf, unit, pts) in series(rows).items():
        fit = power_fit(pts)
        if fit is None:
            continue
        a, b, used = fit
        base = {"system": "resumelog", "figure": fig, "storage": storage, **({"shape": shape} if shape else {})}
        out.append(
            {"bench": "scale_fit", **base, "x": xf, "unit": unit, "a": a, "exponent": round(b, 3), "fit_x": used}
        )
        measured = {x for x, _ in pts}
        for x in EXTRAPOLATE_TO:
            if x in measured:
                continue
            out.append(
                {
                    "bench": "scale_extrapolated",
                    **base,
                    xf: x,
                    "value": _round(a * x**b),
                    "unit": unit,
                    "extrapolated": True,
                    "exponent": round(b, 3),
                    "fit_x": used,
                }
            )
    return out


def _round(v: float) -> float:
    if v == 0 or not math.isfinite(v):
        return v
    return round(v, max(0, 3 - math.floor(math.log10(abs(v)))))


def predict(rows: list[Row], figure: str, storage: str, x: float) -> float | None:
    """The power-law prediction of ``figure`` at ``x`` from the rows so far (max over
    shapes), or None without two points."""
    best: float | None = None
    for (fig, st, _shape), (_xf, _unit, pts) in series(rows).items():
        if fig != figure or st != storage:
            continue
        fit = power_fit(pts)
        if fit is not None:
            v = fit[0] * x ** fit[1]
            best = v if best is None else max(best, v)
    return best


# ====================================================================== the benchmark


class Bench:
    def __init__(self, mode: str, sizes: dict[str, Any], emit: Callable[..., None], work: str) -> None:
        self.mode = mode
        self.sz = sizes
        self.emit_ = emit
        self.rows: list[Row] = []
        self.work = work
        self.s3: dict[str, Any] | None = None
        self.server = ""
        self.bucket = ""

    def emit(self, **row: Any) -> None:
        self.rows.append(row)
        self.emit_(**row)

    def skip(self, what: str, reason: str, **extra: Any) -> None:
        print(f"# skipped {what}: {reason}", file=sys.stderr, flush=True)
        self.emit(bench="skipped", system="resumelog", what=what, reason=reason, **extra)

    def too_big(self, figures: list[tuple[str, str]], x: float) -> str | None:
        """A reason to skip size ``x`` if a step's predicted peak RSS exceeds the memory
        available now, else None."""
        avail = mem_available_mb()
        for fig, storage in figures:
            p = predict(self.rows, fig, storage, x)
            if p is not None and p > MEM_FRACTION * avail:
                return (
                    f"{fig} ({storage}) predicted at {p:,.0f} MB from the smaller sizes "
                    f"(power law), over {MEM_FRACTION:.0%} of the {avail:,.0f} MB available"
                )
        return None

    # ------------------------------------------------------------------ compaction rate

    def compaction_rate(self) -> None:
        w = self.sz["writers"]
        for m in self.sz["M"]:
            why = self.too_big([("compaction_peak_rss_mb", "local")], m)
            if why:
                self.skip(f"compaction of {m:,} records", why, records=m)
                continue
            url = os.path.join(self.work, f"rate-{m}")
            shutil.rmtree(url, ignore_errors=True)
            try:
                wr = run_child("write_journals", url=url, records=m, writers=w)
                c = run_child("compact", url=url)
            except ChildError as exc:
                self.emit(
                    bench="error", system="resumelog", what=f"compaction of {m:,} records", reason=str(exc)[-800:]
                )
                shutil.rmtree(url, ignore_errors=True)
                continue
            self.emit(
                bench="scale_compaction",
                system="resumelog",
                storage="local",
                records=c["records"],
                writers=w,
                sources=c["completed"],
                seconds=c["seconds"],
                records_per_s=round(c["records"] / c["seconds"]),
                peak_rss_mb=c["peak_rss_mb"],
                phases=c["phases"],
                segments=c["segments"],
                journal_bytes=wr["journal_bytes"],
                snapshot_bytes=c["snapshot_bytes"],
                write_s=wr["write_s"],
                units={"seconds": "s", "records_per_s": "records/s", "peak_rss_mb": "MB"},
            )
            shutil.rmtree(url, ignore_errors=True)

    # ------------------------------------------------------------------ the N ladder

    def ladder(self) -> None:
        url = os.path.join(self.work, "ckpt")
        shutil.rmtree(url, ignore_errors=True)
        done = 0  # ids 0..done-1 are completed
        rounds = 0
        tick_ids = self.sz["tick_records"] // 2
        for n in self.sz["N"]:
            if n < done:
                self.skip(f"N={n:,}", f"the checkpoint already holds {done:,} ids", n=n)
                continue
            figs = [("tick_peak_rss_mb", "local"), ("open_peak_rss_mb", "local")]
            if self.s3 is not None:
                figs += [("tick_peak_rss_mb", "s3"), ("open_peak_rss_mb", "s3")]
            why = self.too_big(figs, n)
            if why:
                for m in [x for x in self.sz["N"] if x >= n]:
                    self.skip(f"N={m:,}", why, n=m)
                break
            # ---- build: fresh ids done..n-1 through writers and compactions
            t0 = time.perf_counter()
            build_rss = 0.0
            lo = done
            while lo < n:
                hi = min(n, lo + self.sz["round"])
                b = run_child("build", url=url, lo=lo, hi=hi, writer_id=f"build-{rounds:04d}")
                build_rss = max(build_rss, b["peak_rss_mb"])
                rounds += 1
                lo = hi
                if b["completed"] != hi:
                    raise RuntimeError(f"build round ended with {b['completed']:,} completed, expected {hi:,}")
            self.emit(
                bench="scale_build",
                system="resumelog",
                storage="local",
                n=n,
                added=n - done,
                rounds_total=rounds,
                seconds=round(time.perf_counter() - t0, 1),
                peak_rss_mb=build_rss,
                units={"seconds": "s", "peak_rss_mb": "MB"},
            )
            done = n
            # ---- bytes at rest: after a GC an hour on, when the merged layers earlier
            # background merges left (superseded since) are collected too (ORPHAN_AGE)
            run_child("gc", url=url, hours=1.0)
            objs = _local_objects(url)
            size = sum(s for _, s in objs)
            self.emit(
                bench="scale_bytes",
                system="resumelog",
                storage="local",
                n=n,
                bytes=size,
                objects=len(objs),
                bytes_per_id=round(size / n, 2),
                unit="B/id",
            )
            # ---- a fresh client, local; the same on SeaweedFS (a copy), then a tick there
            # (a failing step is reported and the ladder goes on: the local checkpoint is intact)
            for shape in ("shard", "random"):
                self._guarded(f"open, local, {shape}, N={n:,}", self._open, url, n, shape, "local", None)
            if self.s3 is not None:
                self._guarded(f"s3 at N={n:,}", self._s3_at, url, n, done, tick_ids)
            # ---- ticks onto N, local, one after another (each adds tick_ids ids: the next
            # build starts after them); the layer merges some of them run are part of the cost
            # Then as many ticks that defer their merges, and the background merge after
            # them (timed apart: in production another process runs it).
            rows: dict[bool, list[Row]] = {False: [], True: []}
            merge: Row | None = None
            try:
                for defer in (False, True):
                    for _ in range(self.sz.get("ticks", 1)):
                        rows[defer].append(run_child("tick", url=url, lo=done, ids=tick_ids, defer_merges=defer))
                        done += tick_ids
                merge = run_child("merge", url=url)
            except ChildError as exc:  # the checkpoint's state is unknown now: stop here
                self.emit(bench="error", system="resumelog", what=f"tick, local, N={n:,}", reason=str(exc)[-800:])
                break
            self._tick_row("local", n, rows[False])
            self._tick_row("local", n, rows[True], deferred=True)
            self.emit(
                bench="scale_merge",
                system="resumelog",
                storage="local",
                n=n,
                after_ticks=len(rows[True]),
                seconds=merge["seconds"],
                written=merge["written"],
                layers_before=merge["layers_before"],
                layers_after=merge["layers_after"],
                entries=merge["entries"],
                peak_rss_mb=merge["peak_rss_mb"],
                units={"seconds": "s", "peak_rss_mb": "MB"},
            )
        self._targets()

    def _guarded(self, what: str, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:
            print(f"# {what} failed: {exc}", file=sys.stderr, flush=True)
            self.emit(bench="error", system="resumelog", what=what, reason=f"{type(exc).__name__}: {str(exc)[-800:]}")

    def _open(self, url: str, n: int, shape: str, storage: str, opts: dict[str, Any] | None) -> None:
        reps = self.sz["s3_reps" if storage == "s3" else "reps"]
        runs = [
            run_child("open", url=url, n=n, shape=shape, lookups=self.sz["lookups"], storage_options=opts)
            for _ in range(reps)
        ]
        best = min(runs, key=lambda r: r["total_s"])
        row: Row = {
            "bench": "scale_open",
            "system": "resumelog",
            "storage": storage,
            "shape": shape,
            "n": n,
            "lookups": best["lookups"],
            "hits": best["hits"],
            "open_s": best["open_s"],
            "first_lookup_s": best["first_lookup_s"],
            "lookups_s": best["lookups_s"],
            "total_s": best["total_s"],
            "total_s_all": [r["total_s"] for r in runs],
            "peak_rss_mb": best["peak_rss_mb"],
            "anon_mb": best.get("anon_mb"),
            "gets": best["gets"],
            "requests": best["requests"],
        }
        if storage == "local":
            row["total_ms"] = round(best["total_s"] * 1e3, 2)
        if best.get("bytes_read") is not None:
            row["bytes_read"] = best["bytes_read"]
        row["units"] = {"total_s": "s", "total_ms": "ms", "peak_rss_mb": "MB", "anon_mb": "MB", "bytes_read": "B"}
        if shape == "shard" and best["hits"] != best["lookups"]:
            row["WRONG"] = f"{best['hits']} of {best['lookups']} shard ids found"
        self.emit(**row)

    def _tick_row(self, storage: str, n: int, ts: list[Row], *, deferred: bool = False) -> None:
        """One row for ``ts``, consecutive ticks onto ``n`` ids: ``seconds`` is their mean
        (what a tick costs over time, the layer merges some of them run included; the
        targets use it), ``seconds_median`` a tick without a large merge, every tick's
        seconds and phases listed. ``deferred``: ticks that left their large merges to
        a background merge (``bench: scale_tick_deferred``)."""
        t = ts[0]
        secs = [float(x["seconds"]) for x in ts]
        row: Row = {
            "bench": "scale_tick_deferred" if deferred else "scale_tick",
            "system": "resumelog",
            "storage": storage,
            "n": n,
            "new_records": t["records"],
            "ticks": len(ts),
            "seconds": round(sum(secs) / len(secs), 4),
            "seconds_median": round(statistics.median(secs), 4),
            "seconds_max": max(secs),
            "seconds_all": secs,
            "peak_rss_mb": max(float(x["tick_peak_rss_mb"]) for x in ts),
            "phases": t["phases"],
            "phases_all": [x["phases"] for x in ts],
            "snapshot_bytes": ts[-1]["snapshot_bytes"],
            "target_s": TICK_TARGET_S,
            "units": {"seconds": "s", "peak_rss_mb": "MB"},
        }
        if storage == "s3":
            row["requests"] = t["requests"]
            row["bytes_read"] = t["bytes_read"]
        tick_ids = self.sz["tick_records"] // 2
        first = n + (len(ts) * tick_ids if deferred else 0)  # (the deferred ticks come after the others)
        wrong = [x["completed"] for i, x in enumerate(ts) if x["completed"] != first + (i + 1) * tick_ids]
        if wrong:
            row["WRONG"] = f"completed {wrong}"
        self.emit(**row)

    def _s3_at(self, url: str, n: int, done: int, tick_ids: int) -> None:
        assert self.s3 is not None
        import s3fs

        fs = s3fs.S3FileSystem(**self.s3, skip_instance_cache=True, use_listings_cache=False)
        prefix = f"{self.bucket}/scale/n-{n}"
        t0 = time.perf_counter()
        objs = _local_objects(url)
        for rel, _size in objs:
            fs.put_file(os.path.join(url, rel), f"{prefix}/{rel}")
        up = time.perf_counter() - t0
        listed = fs.find(prefix, detail=True)
        size = sum(int(v.get("size") or v.get("Size") or 0) for v in listed.values())
        self.emit(
            bench="scale_bytes",
            system="resumelog",
            storage="s3",
            server=self.server,
            n=n,
            bytes=size,
            objects=len(listed),
            bytes_per_id=round(size / n, 2),
            upload_s=round(up, 2),
            unit="B/id",
        )
        s3url = f"s3://{prefix}"
        for shape in ("shard", "random"):
            self._open(s3url, n, shape, "s3", self.s3)
        t = run_child("tick", url=s3url, lo=done, ids=tick_ids, storage_options=self.s3)
        self._tick_row("s3", n, [t])  # (one tick: the copy is deleted after it)
        fs.rm(prefix, recursive=True)

    def _targets(self) -> None:
        for kind, label in (("scale_tick", "merging"), ("scale_tick_deferred", "merges deferred")):
            self._tick_targets(kind, label)

    def _tick_targets(self, kind: str, label: str) -> None:
        ticks = {(r["storage"], r["n"]): r["seconds"] for r in self.rows if r.get("bench") == kind}
        for storage in ("local", "s3"):
            small = ticks.get((storage, 100_000))
            for big_n in (10_000_000, 100_000_000):
                big = ticks.get((storage, big_n))
                if big is None:
                    continue
                self.emit(
                    bench="scale_target",
                    system="resumelog",
                    storage=storage,
                    target=f"compaction tick ({label}, mean), 100k new records onto {big_n:,} ids <= {TICK_TARGET_S} s",
                    measured=big,
                    unit="s",
                    met=big <= TICK_TARGET_S,
                )
                if small:
                    ratio = round(big / small, 2)
                    self.emit(
                        bench="scale_target",
                        system="resumelog",
                        storage=storage,
                        target=f"tick({big_n:,}) / tick(100,000) ({label}) <= {TICK_RATIO_TARGET:g}x",
                        measured=ratio,
                        unit="x",
                        small_s=small,
                        big_s=big,
                        met=ratio <= TICK_RATIO_TARGET,
                    )

    # ------------------------------------------------------------------ all

    def run(self, server: str | None) -> None:
        self.emit(bench="env", system="scale", **_env(self.mode, self.sz))
        t0 = time.perf_counter()
        self.compaction_rate()
        if server is None:
            self.skip("s3", "--no-s3 given")
            self.ladder()
        else:
            try:
                from bench_s3 import BUCKET, S3Unavailable, s3_server
            except ImportError as exc:  # pragma: no cover
                self.skip("s3", f"bench_s3 cannot be imported: {exc}")
                self.ladder()
            else:
                try:
                    with s3_server(server) as opts:
                        self.s3, self.server, self.bucket = opts, server, BUCKET
                        self.ladder()
                except S3Unavailable as exc:
                    self.s3 = None
                    self.skip("s3", str(exc))
                    if not any(r.get("bench") == "scale_tick" for r in self.rows):
                        self.ladder()
        for r in fit_rows(self.rows):
            self.emit(**r)
        self.emit(bench="scale_run", system="resumelog", mode=self.mode, seconds=round(time.perf_counter() - t0, 1))


def _local_objects(root: str) -> list[tuple[str, int]]:
    """``(key, size)`` of every file under ``root`` (no temporary ``.partial`` files)."""
    out = []
    for d, _dirs, files in os.walk(root):
        for f in files:
            if f.endswith(".partial"):
                continue
            p = os.path.join(d, f)
            out.append((os.path.relpath(p, root).replace(os.sep, "/"), os.path.getsize(p)))
    return sorted(out)


def git_state() -> tuple[str, bool]:
    """This checkout's short commit (``""`` outside git) and whether it has uncommitted
    changes (the ``git`` of the benchmarks' ``env`` rows, and result file names)."""
    git = ["git", "-C", BENCH_DIR]
    try:
        rev = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True).stdout)
    except OSError:
        return "", False
    return rev, dirty


def _env(mode: str, sizes: dict[str, Any]) -> Row:
    import platform

    import resumelog

    rev, dirty = git_state()
    return {
        "mode": mode,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "resumelog": getattr(resumelog, "__version__", ""),
        "git": rev + ("+dirty" if dirty else ""),
        "mem_available_mb": round(mem_available_mb()),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "sizes": sizes,
        "source_id_example": source_id(1234567),
    }


# ====================================================================== report


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not v.is_integer():
        if abs(v) >= 100:
            s = f"{v:,.0f}"
        elif abs(v) >= 1:
            s = f"{v:.3g}"
        else:
            s = f"{v:.3g}"
    else:
        s = f"{int(v):,}"
    return f"{s} {unit}".strip()


def _disp(fig: str, storage: str, v: float, unit: str) -> str:
    """A figure's value for the table: local opens in ms, bytes in MB/GB."""
    if fig == "open_lookups_s" and storage == "local":
        return _fmt(v * 1e3, "ms")
    if unit == "B" and v >= 1e9:
        return _fmt(v / 1e9, "GB")
    if unit == "B" and v >= 1e6:
        return _fmt(v / 1e6, "MB")
    if unit == "MB" and v >= 1e4:
        return _fmt(v / 1e3, "GB")
    return _fmt(v, unit)


def _order(key: tuple[str, str, str]) -> tuple[int, int, str]:
    figs = [f for f, *_ in SERIES]
    storages, shapes = ("local", "s3"), ("", "shard", "random")
    return (
        figs.index(key[0]),
        storages.index(key[1]) if key[1] in storages else 2,
        str(shapes.index(key[2])) if key[2] in shapes else key[2],
    )


def _n(x: float) -> str:
    e = math.log10(x)
    return f"10^{e:.0f}" if e.is_integer() else f"{x:,.0f}"


def markdown(rows: list[Row]) -> str:
    """The scale figures as Markdown tables (one against N, one against the records M
    of one compaction): a line per figure, a column per size, extrapolated values in
    italics with ``~``, then the fit's exponent; then the targets."""
    ser = series(rows)
    extra = {
        (r["figure"], r.get("storage", "local"), r.get("shape", ""), r.get("n", r.get("records"))): r["value"]
        for r in rows
        if r.get("bench") == "scale_extrapolated"
    }
    fits = {
        (r["figure"], r["storage"], r.get("shape", "")): r["exponent"] for r in rows if r.get("bench") == "scale_fit"
    }
    env = next((r for r in rows if r.get("bench") == "env" and r.get("system") == "scale"), {})
    tick = int(env.get("sizes", {}).get("tick_records", 100_000))
    labels = {
        "tick_s": f"compaction tick, {tick:,} new records onto N (mean of consecutive ticks)",
        "tick_deferred_s": "the same, merges deferred (`compact(defer_merges=True)`)",
        "merge_s": "the background merge after those ticks (`compactor.merge`)",
        "tick_peak_rss_mb": "peak RSS of that tick",
        "open_lookups_s": f"fresh client: open + {int(env.get('sizes', {}).get('lookups', 10_000)):,} lookups",
        "open_peak_rss_mb": "peak RSS of that client",
        "open_gets": "GETs of that client",
        "open_bytes_read": "bytes read by that client",
        "bytes_per_id": "bytes per completed id at rest",
        "compaction_records_per_s": "compaction (fold + publish) of M records",
        "compaction_peak_rss_mb": "peak RSS of that compaction",
    }
    writers = {r.get("writers") for r in rows if r.get("bench") == "scale_compaction"}
    out: list[str] = []
    for axis, name, lookups in (("n", "N", True), ("records", "M", False)):
        keys = [k for k, v in ser.items() if v[0] == axis]
        if not keys:
            continue
        xs = sorted({x for k in keys for x, _ in ser[k][2]} | set(EXTRAPOLATE_TO))
        head = ["figure", "storage"] + (["lookups"] if lookups else []) + [f"{name}={_n(x)}" for x in xs] + ["exponent"]
        if out:
            out.append("")
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for key in sorted(keys, key=_order):
            fig, storage, shape = key
            _xf, unit, pts = ser[key]
            got = dict(pts)
            cells = []
            for x in xs:
                if x in got:
                    cells.append(_disp(fig, storage, got[x], unit))
                elif (fig, storage, shape, x) in extra:
                    cells.append(f"*~{_disp(fig, storage, extra[(fig, storage, shape, x)], unit)}*")
                else:
                    cells.append("-")
            label = labels.get(fig, fig)
            if axis == "records" and writers:
                label += f" (W={', '.join(map(str, sorted(w for w in writers if w)))})"
            b = fits.get(key)
            first = [label, storage] + ([shape or "-"] if lookups else [])
            out.append("| " + " | ".join([*first, *cells, "-" if b is None else f"{b:.2f}"]) + " |")
    tg = [r for r in rows if r.get("bench") == "scale_target"]
    if tg:
        out.append("")
        out.append("| target | storage | measured | met |")
        out.append("|---|---|---|---|")
        for r in tg:
            out.append(
                f"| {r['target']} | {r['storage']} | {_fmt(r['measured'], r['unit'])} | {'yes' if r['met'] else 'no'} |"
            )
    return "\n".join(out) + "\n"


def plot(rows: list[Row], path: str, title: str = "", before: list[Row] | None = None) -> str | None:
    """A log-log plot of every figure against N (and the compaction against M), each
    with its power-law fit extended to 10^9; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = [
        ("compaction tick (100k new records), s", ["tick_s", "tick_deferred_s"]),
        ("fresh client: open + 10k lookups, s", ["open_lookups_s"]),
        ("peak RSS, MB", ["tick_peak_rss_mb", "open_peak_rss_mb"]),
        ("S3 bytes read by that client, B", ["open_bytes_read"]),
        ("bytes per completed id at rest", ["bytes_per_id"]),
        ("compaction of M records: records/s and peak RSS MB", ["compaction_records_per_s", "compaction_peak_rss_mb"]),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    runs = [("", rows)] + ([("before: ", before)] if before else [])
    for (label, figs), ax in zip(panels, axes.flat):
        all_y: list[float] = []
        for k, (prefix, rs) in enumerate(runs):
            for (f, storage, shape), (_xf, _unit, pts) in sorted(series(rs).items(), key=lambda kv: _order(kv[0])):
                if f not in figs:
                    continue
                name = f"{prefix}{f} {storage}{' ' + shape if shape else ''}"
                xs, ys = zip(*sorted(pts))
                all_y += ys
                line = ax.plot(xs, ys, "o" if k == 0 else "s", label=name, alpha=1.0 if k == 0 else 0.5)[0]
                fit = power_fit(pts)
                if fit is not None:
                    a, b, _ = fit
                    gx = [min(xs) * (1e9 / min(xs)) ** (i / 40) for i in range(41)]
                    ax.plot(gx, [a * x**b for x in gx], "--", color=line.get_color(), alpha=0.6)
                    ex = [x for x in EXTRAPOLATE_TO if x not in xs]
                    ax.plot(ex, [a * x**b for x in ex], "o", mfc="none", color=line.get_color(), alpha=0.8)
                    all_y += [a * x**b for x in ex]
        if all_y and max(all_y) / min(all_y) < 4:  # a flat figure: show it flat
            ax.set_ylim(min(all_y) / 4, max(all_y) * 4)
        if not ax.lines:
            ax.text(0.5, 0.5, "not measured in this run", ha="center", va="center", transform=ax.transAxes)
        if figs == ["tick_s"]:
            ax.axhline(TICK_TARGET_S, color="grey", lw=0.8, ls=":", label=f"target {TICK_TARGET_S} s")
        ax.axvspan(1e8 * 1.0001, 1e9, color="0.93", zorder=0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("M records" if figs[0].startswith("compaction") else "N completed ids")
        ax.grid(True, which="both", lw=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    env = next((r for r in rows if r.get("bench") == "env" and r.get("system") == "scale"), {})
    if env:
        title = f"{title} · git {env.get('git', '')} · {env.get('date', '')[:10]}".strip(" ·")
    fig.suptitle(
        (title + "  " if title else "")
        + "(filled: measured; dashed: power-law fit; hollow: extrapolated; shaded: beyond 10^8)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def read_jsonl(path: str) -> list[Row]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.startswith("{")]


# ====================================================================== main


def revision() -> str:
    """This checkout's short commit (``<commit>-dirty`` with uncommitted changes), or
    ``"unversioned"`` outside git."""
    rev, dirty = git_state()
    return (rev + ("-dirty" if dirty else "")) if rev else "unversioned"


def fresh_base(results: str, mode: str) -> str:
    """``<results>/scale-<mode>-<commit>`` (``-2``, ``-3``... after it if taken): a run
    without ``--out`` never overwrites the results of an earlier run, committed ones
    included."""
    stem = os.path.join(results, f"scale-{mode}-{revision()}")
    base, k = stem, 1
    while os.path.exists(base + ".jsonl"):
        k += 1
        base = f"{stem}-{k}"
    return base


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _child_main(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N = 10^5, 10^6, 10^7 (fits 10 minutes on 2 cores)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (seconds; wins over --quick)")
    ap.add_argument("--n", type=int, nargs="+", help="the N ladder (overrides the mode's)")
    ap.add_argument("--m", type=int, nargs="*", help="records of the compaction-rate runs (overrides the mode's)")
    ap.add_argument("--no-s3", action="store_true", help="local disk only")
    ap.add_argument("--server", default="seaweedfs", choices=["seaweedfs", "moto"], help="loopback S3 server")
    ap.add_argument(
        "--out",
        help="where scale-<mode>.jsonl and scale.png go (default: benchmarks/results/scale-<mode>-<commit>.jsonl "
        "and .png, never overwriting an earlier run's)",
    )
    ap.add_argument("--workdir", help="where the checkpoints are written (default: the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints")
    ap.add_argument(
        "--ids",
        choices=["path", "short"],
        default="path",
        help="source ids: 49-byte object paths (default) or 16-byte 'doc-000001234567'",
    )
    ap.add_argument("--plot", nargs="+", metavar="JSONL", help="only redraw the plot from these files (first: now)")
    a = ap.parse_args()
    if a.plot:
        rows = read_jsonl(a.plot[0])
        before = [r for p in a.plot[1:] for r in read_jsonl(p)] or None
        out = a.out or os.path.join(BENCH_DIR, "results")
        os.makedirs(out, exist_ok=True)
        got = plot(rows, os.path.join(out, "scale.png"), os.path.basename(a.plot[0]), before)
        print(got or "matplotlib is not importable: no plot", file=sys.stderr)
        return
    mode = "smoke" if a.smoke else "quick" if a.quick else "full"
    sizes = dict(SIZES[mode])
    if a.n:
        sizes["N"] = sorted(a.n)
    if a.m is not None:
        sizes["M"] = sorted(a.m)
    if a.ids == "short":
        global SHORT_IDS
        SHORT_IDS = True
        os.environ["RESUMELOG_BENCH_IDS"] = "short"  # (for the children)
        sizes["ids"] = "short"
    work = tempfile.mkdtemp(prefix="resumelog-scale-", dir=a.workdir)
    out = a.out or (tempfile.mkdtemp(prefix="resumelog-scale-out-") if mode == "smoke" else None)
    # (no --out: the committed results directory, under a name no earlier run holds)
    base = os.path.join(out, f"scale-{mode}") if out else fresh_base(os.path.join(BENCH_DIR, "results"), mode)

    def emit(**row: Any) -> None:
        print(json.dumps(row), flush=True)

    bench = Bench(mode, sizes, emit, work)
    try:
        bench.run(None if a.no_s3 else a.server)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.dirname(base), exist_ok=True)
    with open(base + ".jsonl", "w") as f:
        for r in bench.rows:
            f.write(json.dumps(r) + "\n")
    md = markdown(bench.rows)
    print("\n" + md, file=sys.stderr)
    png = os.path.join(out, "scale.png") if out else base + ".png"
    chart = plot(bench.rows, png, f"bench_scale.py --{mode}")
    print(f"# wrote {base}.jsonl" + (f", {chart}" if chart else " (no matplotlib: no plot)"), file=sys.stderr)


if __name__ == "__main__":
    main()
