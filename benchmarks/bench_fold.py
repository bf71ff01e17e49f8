"""Where the journal fold's time goes, fast path against the reference, as JSON lines.

    python benchmarks/bench_fold.py [--quick] [--only phases compaction open] [--repeat R] [--spill N|none]

The workload is ``run.py``'s (``baselines/common.py``): per source ``emit +1`` (source
stage), a fan-out ``+2`` and three sink ``-1`` records with Curator-style task ids as
keys (5 records per source), written by W writers, nothing compacted. Every figure is
measured on three paths, alternating, best of ``--repeat``: ``native`` (the fast path,
:mod:`resumelog._fastfold`, with the compiled kernels of :mod:`resumelog._native`;
left out when they are not built), ``numpy`` (the fast path, ``RESUMELOG_NATIVE=0``) and
``python`` (the reference loop, no kernels: a ``pip install .`` without NumPy or a C
compiler):

* ``phases``      in one process, CPU seconds of each phase of a compaction: read the
                  segments, decode them, apply them (``FoldState.apply_segment``),
                  evaluate (``finish``), encode the snapshot; records/s of the fold
                  (decode + apply + finish) and of all phases; whether both paths
                  encoded the same snapshot bytes (the nonce fixed)
* ``compaction``  ``compactor.compact()`` in a fresh process: wall seconds, records/s
* ``open``        journal-only startup: ``resumelog.open`` + the first ``is_completed``
                  in a fresh process (imports excluded), as ``run.py``'s startup section
                  times it, 1M sources by default (``--open-sources``)

``--spill N|none`` runs the compaction and open children with another
``compactor.SPILL_COMPLETIONS`` (what a fold holds before spilling into layers; the
phases do not spill).

Journals are written once per size into a temporary directory (``--keep DIR`` keeps
them between runs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(os.path.dirname(HERE), "src"), HERE]  # this tree's resumelog writes the journals

from baselines import resumelog_sys  # noqa: E402

PATHS = ["native", "numpy", "python"]
SRC = {p: os.path.join(os.path.dirname(HERE), "src") for p in PATHS}
ENV = {
    "native": {"RESUMELOG_FOLD": "numpy", "RESUMELOG_NATIVE": "1"},  # the fast path with the compiled kernels
    "numpy": {"RESUMELOG_FOLD": "numpy", "RESUMELOG_NATIVE": "0"},  # the fast path without them
    "python": {"RESUMELOG_FOLD": "python", "RESUMELOG_NATIVE": "0"},  # the reference, pure Python
    "before": {"RESUMELOG_FOLD": "auto"},  # another tree (--before), as it installs (NumPy if it has the fast path)
}


EXTRA_ENV: dict[str, str] = {}
"""Set in every child (``--spill``: ``BENCH_FOLD_SPILL``)."""
TAGS: dict[str, object] = {}
"""Added to every row (``--spill``: ``spill_completions``)."""


def emit(**fields: object) -> None:
    print(json.dumps({**fields, **TAGS}), flush=True)


def journals(root: str, sources: int, writers: int) -> str:
    url = os.path.join(root, f"j-{sources}-{writers}")
    if not os.path.exists(os.path.join(url, "meta.msgpack")):
        shutil.rmtree(url, ignore_errors=True)
        resumelog_sys.write_journals(url, sources, writers)
    return url


PHASES_CHILD = r"""
import gc, json, sys, time
import resumelog.snapshot as snapshot
from resumelog import paths
from resumelog.algebra import FoldState
from resumelog.format import decode_segment
from resumelog.storage import LocalStore

snapshot.secrets.token_bytes = lambda n: bytes(n)  # a fixed nonce: compare the bytes
store = LocalStore(sys.argv[1])
gc.disable()  # as compaction does (compactor._gc_paused)
clock = time.process_time
t0 = clock()
keys = sorted(o.path for o in store.list(paths.JOURNAL_PREFIX))
datas = [store.read(k) for k in keys]
t1 = clock()
import inspect
from resumelog import _fastfold
# (as the compaction decodes them: into columns where the fast path folds; --before: its own way)
kw = {"columns": _fastfold.ENABLED} if "columns" in inspect.signature(decode_segment).parameters else {}
segs = [decode_segment(d, k, **kw) for d, k in zip(datas, keys)]
t2 = clock()
state = FoldState()
for s in segs:
    state.apply_segment(s.header, s.batches, s.footer.closed)
t3 = clock()
state.finish()
t4 = clock()
encoded = snapshot.encode_snapshot(state, None)
t5 = clock()
import hashlib
digest = hashlib.sha256(encoded.data)
for name, layer in sorted(encoded.layers):  # the new layers, by name
    digest.update(name.encode()); digest.update(layer)
print(json.dumps({"read": t1 - t0, "decode": t2 - t1, "apply": t3 - t2, "finish": t4 - t3, "encode": t5 - t4,
                  "records": state.records_folded, "completed": state.completed_count(),
                  "sha256": digest.hexdigest()}))  # (--before: no fixed nonce if its snapshot differs)
"""

SPILL_SETTING = r"""
import os
from resumelog import compactor
if os.environ.get("BENCH_FOLD_SPILL"):  # (--spill: another SPILL_COMPLETIONS than the default)
    spill = os.environ["BENCH_FOLD_SPILL"]
    compactor.SPILL_COMPLETIONS = None if spill == "none" else int(spill)
"""

COMPACT_CHILD = (
    SPILL_SETTING
    + r"""
import json, sys, time
from resumelog import compactor
from resumelog.storage import LocalStore
store = LocalStore(sys.argv[1])
t0 = time.perf_counter()
r = compactor.compact(store, progress=False)
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "records": r.records_folded, "completed": r.completed}))
"""
)

OPEN_CHILD = (
    SPILL_SETTING
    + r"""
import json, sys, time
import resumelog
t0 = time.perf_counter()
ck = resumelog.open(sys.argv[1], create=False)
hit = ck.is_completed(sys.argv[2])
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "hit": hit, "completed": len(ck.completed)}))
"""
)


def child(code: str, path: str, *args: str) -> dict[str, object]:
    # (NumPy's BLAS threads, idle but spinning for a while after NumPy's import, would be
    # counted in the CPU seconds; the fold uses no BLAS)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", **ENV[path], **EXTRA_ENV)
    src = SRC[path]
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def bench_phases(url: str, sources: int, writers: int, repeat: int) -> None:
    best: dict[str, dict[str, float]] = {}
    digests: dict[str, str] = {}
    records = 0
    for _ in range(repeat):
        for path in PATHS:
            r = child(PHASES_CHILD, path, url)
            records = int(r["records"])  # type: ignore[call-overload]
            digests[path] = str(r["sha256"])
            b = best.setdefault(path, {})
            for phase in ("read", "decode", "apply", "finish", "encode"):
                b[phase] = min(b.get(phase, 1e9), float(r[phase]))  # type: ignore[arg-type]
    for path in PATHS:
        b = best[path]
        fold = b["decode"] + b["apply"] + b["finish"]
        emit(
            bench="fold_phases",
            path=path,
            sources=sources,
            writers=writers,
            records=records,
            **{f"{k}_s": round(v, 3) for k, v in b.items()},
            fold_records_per_s=round(records / fold),
            all_records_per_s=round(records / sum(b.values())),
            same_snapshot_bytes=len(set(digests.values())) == 1,
        )


def bench_timed(kind: str, code: str, url: str, sources: int, writers: int, repeat: int, *args: str) -> None:
    best: dict[str, dict[str, object]] = {}
    for _ in range(repeat):
        for path in PATHS:
            r = child(code, path, url, *args)
            if path not in best or float(r["seconds"]) < float(best[path]["seconds"]):  # type: ignore[arg-type]
                best[path] = r
    for path in PATHS:
        r = best[path]
        secs = float(r["seconds"])  # type: ignore[arg-type]
        emit(bench=kind, path=path, sources=sources, writers=writers, seconds=round(secs, 3), hit=r["hit"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200k sources (1M records) for phases and compaction")
    ap.add_argument("--only", nargs="*", default=None, help="phases, compaction, open")
    ap.add_argument("--sources", type=int, default=None, help="sources for phases and compaction (default 200k/1M)")
    ap.add_argument("--open-sources", type=int, default=1_000_000)
    ap.add_argument("--writers", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", help="directory for the journals, kept between runs")
    ap.add_argument("--before", help="the src/ directory of another tree, measured as path 'before' (A/B)")
    ap.add_argument(
        "--spill",
        help="compaction and open children: spill at this many completions held, or 'none' (never), instead of "
        "compactor.SPILL_COMPLETIONS (rows get spill_completions)",
    )
    a = ap.parse_args()
    if a.spill is not None:
        if a.spill != "none" and not a.spill.isdigit():
            ap.error("--spill takes a number of completions or 'none'")
        EXTRA_ENV["BENCH_FOLD_SPILL"] = a.spill
        TAGS["spill_completions"] = None if a.spill == "none" else int(a.spill)
    from resumelog import _compiled

    if _compiled.native is None:
        print(f"# resumelog._native is not in use ({_compiled.why_not}): path 'native' left out", file=sys.stderr)
        PATHS.remove("native")
    if a.before:
        PATHS.append("before")
        SRC["before"] = a.before
    want = set(a.only or ["phases", "compaction", "open"])
    sources = a.sources or (200_000 if a.quick else 1_000_000)
    root = a.keep or tempfile.mkdtemp(prefix="resumelog-bench-fold-")
    os.makedirs(root, exist_ok=True)
    try:
        if want & {"phases", "compaction"}:
            url = journals(root, sources, a.writers)
            if "phases" in want:
                bench_phases(url, sources, a.writers, a.repeat)
            if "compaction" in want:
                bench_compactions(url, sources, a.writers, a.repeat)
        if "open" in want:
            url = journals(root, a.open_sources, a.writers)
            probe = f"shard-{a.open_sources // 2:010d}"
            bench_timed("open_journal_only", OPEN_CHILD, url, a.open_sources, a.writers, a.repeat, probe)
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)


def bench_compactions(url: str, sources: int, writers: int, repeat: int) -> None:
    """``compact()`` publishes a snapshot, so each run compacts a fresh copy of the journals."""
    best: dict[str, float] = {}
    for _ in range(repeat):
        for path in PATHS:
            copy = url + ".compact"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(url, copy)
            r = child(COMPACT_CHILD, path, copy)
            best[path] = min(best.get(path, 1e9), float(r["seconds"]))  # type: ignore[arg-type]
            shutil.rmtree(copy, ignore_errors=True)
    for path in PATHS:
        emit(
            bench="compaction",
            path=path,
            sources=sources,
            writers=writers,
            records=sources * 5,
            seconds=round(best[path], 3),
            records_per_s=round(sources * 5 / best[path]),
        )


if __name__ == "__main__":
    main()
