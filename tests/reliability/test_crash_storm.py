"""Crash storms: writers and compactors (ticks, and ticks deferring their merges to a
background merge) SIGKILLed at random points, restarted with the
same writer ids, until every source completes. Checked against independent ledgers.
Compactors write a layer each (merging as they go) and half of them collect garbage
with no grace period, so merged layers are collected while others read them.

A third storm folds in tiny rounds and spills every few completions (compactors, the
restarted workers' ``pending`` and the checks alike), so the bounded-memory fold
(``compactor.ROUND_RECORDS``, ``compactor.SPILL_COMPLETIONS``: provisional completions,
spilled layers, their merges) is killed and read mid-way too.

Bounded in CI; ``RESUMELOG_SOAK=1`` runs 10,000 sources and more rounds.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from s3_support import bucket_of

import resumelog
from resumelog import compactor
from resumelog.storage import open_store
from resumelog.testing.compaction import spilling

HERE = os.path.dirname(__file__)
SOAK = bool(os.environ.get("RESUMELOG_SOAK"))
NWORKERS = 8
NSOURCES = 10_000 if SOAK else 2_000
ROUNDS = 40 if SOAK else 8
DELAY = 0.012  # seconds of "work" per source: a worker lives through several rounds
TIGHT = (64, 32)
"""(``ROUND_RECORDS``, ``SPILL_COMPLETIONS``) of the spilling storm: a fold of the whole
journal (~10,000 records) evaluates some 150 rounds and spills dozens of times."""


def read_ledger(path):
    drained, flushed = set(), set()
    try:
        with open(path) as f:
            for line in f:
                kind, _, src = line.strip().partition(" ")
                (drained if kind == "DRAINED" else flushed).add(src)
    except FileNotFoundError:
        pass
    return drained, flushed


def spawn_worker(url, opts, run_id, k, ledger, seed, fold=None):
    argv = [url, run_id, str(k), str(NWORKERS), str(NSOURCES), ledger, str(seed), str(DELAY), json.dumps(opts)]
    argv += [json.dumps(fold)]
    return subprocess.Popen([sys.executable, os.path.join(HERE, "storm_worker.py"), *argv])


def spawn_compactor(url, opts, collect=False, background_merge=False, fold=None):
    """A compactor process; ``collect``: then a GC with no grace (old snapshots, the
    layers only they named, covered segments). Every compaction writes a layer (no
    minimum layer size), so the stack grows and merges as a big checkpoint's does.
    ``background_merge``: a tick that defers its merges, then a background merge
    (``compactor.merge``), which the storm may kill too. ``fold``: (round records,
    spill completions) of its fold. It prints how many times its fold spilled."""
    code = (
        "import sys, json; import resumelog.layers; from resumelog import compactor; "
        "from resumelog.storage import open_store; resumelog.layers.MIN_LAYER = 1; "
        "fold = json.loads(sys.argv[5]); "
        "fold and setattr(compactor, 'ROUND_RECORDS', fold[0]); "
        "fold and setattr(compactor, 'SPILL_COMPLETIONS', fold[1]); "
        "store = open_store(sys.argv[1], json.loads(sys.argv[2])); "
        "r = compactor.compact(store, progress=False, defer_merges=sys.argv[4] == '1'); "
        "print(json.dumps({'spills': r.spills}), flush=True); "
        "sys.argv[4] == '1' and compactor.merge(store); "
        "sys.argv[3] == '1' and compactor.gc(store, retain=1, grace=0)"
    )
    argv = [url, json.dumps(opts), "1" if collect else "0", "1" if background_merge else "0", json.dumps(fold)]
    return subprocess.Popen([sys.executable, "-c", code, *argv], stdout=subprocess.PIPE, text=True)


def folding(fold):
    """The block's folds in rounds of ``fold[0]`` records, spilling at ``fold[1]``
    completions (``None``: the defaults)."""
    return spilling(*fold) if fold else contextlib.nullcontext()


def check(url, opts, ledger, figures, fold=None):
    # "flushed" is read before the checkpoint (those must already be complete) and
    # "drained" after it (a completion seen must have drained before it was seen)
    _, flushed = read_ledger(ledger)
    with folding(fold):
        ck = resumelog.open(url, storage_options=opts, create=False)
    completed = set(ck.completed)
    drained, _ = read_ledger(ledger)
    false = completed - drained
    lost = flushed - completed
    figures["checks"] += 1
    assert not false, f"reported complete before draining: {sorted(false)[:5]}"
    assert not lost, f"flushed completions lost: {sorted(lost)[:5]}"
    return completed


def run_storm(url, opts, tmp_path, fold=None):
    """The storm's figures. ``fold``: (round records, spill completions) of every fold:
    compactors', the workers' and the checks' (``None``: the defaults, which these sizes
    never reach)."""
    figures = {"rounds": 0, "writer_kills": 0, "compactor_kills": 0, "background_merges": 0, "checks": 0, "spills": 0}
    run_id = "storm"
    resumelog.open(url, storage_options=opts, run_id=run_id)
    ledger = str(tmp_path / "ledger.txt")
    rng = random.Random(1234)

    def worker(k):
        return spawn_worker(url, opts, run_id, k, ledger, rng.randrange(1 << 30), fold)

    workers = {k: worker(k) for k in range(NWORKERS)}
    everything = {f"src-{i:06d}" for i in range(NSOURCES)}
    for _ in range(ROUNDS):
        time.sleep(rng.uniform(0.05, 0.4))
        comp = None
        if rng.random() < 0.6:
            merging = rng.random() < 0.5
            comp = spawn_compactor(url, opts, collect=rng.random() < 0.5, background_merge=merging, fold=fold)
            figures["background_merges"] += merging
        time.sleep(rng.uniform(0.0, 0.2))
        victims = rng.sample(sorted(workers), rng.randint(1, 3))
        if comp is not None and rng.random() < 0.5:
            comp.send_signal(signal.SIGKILL)
            figures["compactor_kills"] += 1
        for k in victims:
            if workers[k].poll() is None:
                workers[k].send_signal(signal.SIGKILL)
                figures["writer_kills"] += 1
        for k in victims:
            workers[k].wait()
        if comp is not None:
            out, _ = comp.communicate()
            figures["spills"] += sum(json.loads(line)["spills"] for line in out.splitlines())
        check(url, opts, ledger, figures, fold)
        for k in victims:
            workers[k] = worker(k)
        figures["rounds"] += 1
    for p in workers.values():
        assert p.wait(timeout=600) == 0
    with folding(fold):
        figures["spills"] += compactor.compact(open_store(url, opts), progress=False).spills
    completed = check(url, opts, ledger, figures, fold)
    assert completed == everything
    figures["sources"] = len(everything)
    return figures


# the full soak runs far past the suite's 600 s per-test timeout
pytestmark = pytest.mark.timeout(7200 if SOAK else 600)


def test_crash_storm_local(tmp_path):
    figures = run_storm(str(tmp_path / "ck"), {}, tmp_path)
    print(json.dumps({"storm": "local", **figures, "lost": 0, "false_completions": 0}))
    assert figures["writer_kills"] >= ROUNDS // 2


def test_crash_storm_s3(tmp_path, s3_pool):
    """On SeaweedFS: its conditional create is atomic (moto's is not, see s3server)."""
    server = s3_pool.get("seaweedfs")
    figures = run_storm(f"s3://{bucket_of(server)}/storm-{os.getpid()}", server.storage_options(), tmp_path)
    print(json.dumps({"storm": "s3-seaweedfs", **figures, "lost": 0, "false_completions": 0}))
    assert figures["writer_kills"] >= ROUNDS // 2


def test_crash_storm_spilling_local(tmp_path):
    """The storm with every fold in rounds of 64 records, spilling at 32 completions."""
    figures = run_storm(str(tmp_path / "ck"), {}, tmp_path, fold=TIGHT)
    print(json.dumps({"storm": "local-spilling", **figures, "lost": 0, "false_completions": 0}))
    assert figures["writer_kills"] >= ROUNDS // 2
    assert figures["spills"] >= 10  # the compactors' folds spilled (the count is theirs only)
