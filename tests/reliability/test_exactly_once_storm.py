"""Exactly-once outputs under a crash storm (local disk and SeaweedFS).

Workers write outputs through the commit protocol and are SIGKILLed at random, by the
test and by themselves after any protocol step (half-written spool, spool written,
published without a record, recorded but not flushed, flushed). Every round restarts
the killed workers in the same run (retries); the job is killed outright twice and
rerun under a new run id (voided attempts); the last run finishes. After every round
the reader helper must show, for each completed source, exactly its outputs, whole,
from the run that completed it, and every source a worker saw flushed; at the end
every expected output exists exactly once, the voided attempts' debris is invisible,
and ``gc`` removes it and nothing else.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
from s3_support import bucket_of

import resumelog
from resumelog.outputs import committed, output_store, scan

HERE = os.path.dirname(__file__)
sys.path.insert(0, HERE)
from eo_worker import names, payload  # noqa: E402

NWORKERS = 4
NSOURCES = 240
NSOURCES_S3 = 120  # each output costs several requests of the loopback server; same kill rounds
RUNS = 3  # the first two are killed outright; the last one finishes
ROUNDS = 4  # kill rounds per killed run
P_KILL = 0.004  # per protocol step, in the killed runs

pytestmark = pytest.mark.timeout(600)


def read_flushed(path: str) -> set[str]:
    try:
        with open(path) as f:
            return {line.split()[1] for line in f if line.startswith("FLUSHED")}
    except FileNotFoundError:
        return set()


def spawn(
    url: str, root: str, opts: dict[str, Any], run: str, k: int, ledger: str, seed: int, p_kill: float, nsources: int
):
    argv = [url, root, run, k, NWORKERS, nsources, ledger, seed, p_kill, 0.002, json.dumps(opts)]
    return subprocess.Popen([sys.executable, os.path.join(HERE, "eo_worker.py"), *map(str, argv)])


def check(url: str, root: str, opts: dict[str, Any], ledger: str, figures: dict[str, int]) -> set[str]:
    """What a reader sees (the job may be running): exactly the outputs of completed
    sources, once each, whole, from their completing run; nothing flushed is lost."""
    flushed = read_flushed(ledger)  # before the checkpoint: those must be complete
    ck = resumelog.open(url, storage_options=opts, create=False)
    outs = committed(ck, root, opts)
    seen: dict[str, list[str]] = {}
    # every output read whole, all at once (concurrent GETs on S3)
    contents = dict(output_store(root, opts).read_many([o.path for o in outs]))
    for o in outs:
        assert o.run == ck.completed_run(o.source)
        seen.setdefault(o.source, []).append(o.name)
        data = contents[o.path]
        assert isinstance(data, bytes), (o, data)
        head, _, _ = data.partition(b"\n")
        run, src, name, pid = head.decode().split(" ")
        assert (run, src, name) == (o.run, o.source, o.name), o
        assert pid.isdigit() and data == head + b"\n" + payload(src, name), o  # whole
    done = set(ck.completed)
    assert set(seen) == done, f"completed without outputs: {sorted(done - set(seen))[:5]}"
    for s, got in seen.items():
        assert sorted(got) == sorted(names(int(s[4:]))), (s, got)
    lost = flushed - done
    assert not lost, f"flushed completions lost: {sorted(lost)[:5]}"
    figures["checks"] += 1
    return done


def _flushed_count(ledger: str) -> int:
    try:
        with open(ledger) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def _wait_for_flushes(ledger: str, n: int, timeout: float = 180.0) -> None:
    """Until the ledger holds ``n`` lines (the workers are past start-up), or ``timeout``."""
    deadline = time.monotonic() + timeout
    while _flushed_count(ledger) < n and time.monotonic() < deadline:
        time.sleep(0.05)


def storm(url: str, root: str, opts: dict[str, Any], tmp_path: Any, nsources: int = NSOURCES) -> dict[str, int]:
    figures = {"runs": 0, "rounds": 0, "kills": 0, "self_kills": 0, "checks": 0}
    ledger = str(tmp_path / "ledger.txt")
    rng = random.Random(20)
    setup = resumelog.open(url, storage_options=opts, run_id="setup")
    # one voided attempt for sure (how many the kills leave depends on the timing): an
    # output published in a run that never completes its source
    with (
        setup.writer("setup") as w,
        w.output("src-00000", root, name="voided", record=False, storage_options=opts) as f,
    ):
        f.write(b"an attempt of a run that dies")
    for r in range(RUNS):
        run = f"run-{r}"
        last = r == RUNS - 1
        p_kill = 0.0 if last else P_KILL
        started = _flushed_count(ledger)
        workers = {
            k: spawn(url, root, opts, run, k, ledger, rng.randrange(1 << 30), p_kill, nsources) for k in range(NWORKERS)
        }
        if not last:  # kill workers at work, not while they import (slow on a fresh install)
            _wait_for_flushes(ledger, started + NWORKERS)
        for _ in range(0 if last else ROUNDS):
            time.sleep(rng.uniform(0.3, 1.0))
            for k in rng.sample(range(NWORKERS), rng.randint(1, 2)):
                if workers[k].poll() is None:
                    workers[k].send_signal(signal.SIGKILL)
                    figures["kills"] += 1
                workers[k].wait()
            for k, p in workers.items():  # restart every dead worker in the same run (a retry)
                if p.poll() is not None:
                    figures["self_kills"] += p.returncode == -signal.SIGKILL
                    workers[k] = spawn(url, root, opts, run, k, ledger, rng.randrange(1 << 30), p_kill, nsources)
            check(url, root, opts, ledger, figures)
            figures["rounds"] += 1
        if last:
            for p in workers.values():
                assert p.wait(timeout=300) == 0
        else:
            for p in workers.values():  # the job dies
                p.send_signal(signal.SIGKILL)
                p.wait()
        check(url, root, opts, ledger, figures)
        figures["runs"] += 1

    everything = {f"src-{i:05d}" for i in range(nsources)}
    assert check(url, root, opts, ledger, figures) == everything
    ck = resumelog.open(url, storage_options=opts, run_id="gc")
    expected = sum(len(names(i)) for i in range(nsources))
    before = scan(ck, root, opts, grace=0)  # (every run's job is over: what gc(grace=0) collects)
    assert len(before.committed) == expected and not before.in_flight
    figures["orphans"] = len(before.orphaned)
    figures["staging"] = len(before.staging)
    assert figures["orphans"] >= 1  # voided attempts are left behind, unseen
    visible = committed(ck, root, opts)
    res = ck.gc(grace=0, outputs=[root], outputs_storage_options=opts)
    assert res.outputs[0].orphaned == figures["orphans"] and res.outputs[0].staging == figures["staging"]
    assert committed(ck, root, opts) == visible
    left = {o.path for o in output_store(root, opts).list("")}
    assert left == {o.path for o in visible}  # exactly once: nothing else remains
    figures["outputs"] = expected
    return figures


def test_exactly_once_storm_local(tmp_path):
    figures = storm(str(tmp_path / "ck"), str(tmp_path / "out"), {}, tmp_path)
    print(json.dumps({"storm": "exactly-once-local", **figures}))
    assert figures["kills"] + figures["self_kills"] >= ROUNDS


@pytest.mark.s3
def test_exactly_once_storm_seaweedfs(tmp_path, s3_pool):
    server = s3_pool.get("seaweedfs")
    base = f"s3://{bucket_of(server)}/eo-{os.getpid()}"
    figures = storm(f"{base}/ck", f"{base}/out", server.storage_options(), tmp_path, NSOURCES_S3)
    print(json.dumps({"storm": "exactly-once-seaweedfs", **figures}))
    assert figures["kills"] + figures["self_kills"] >= ROUNDS
