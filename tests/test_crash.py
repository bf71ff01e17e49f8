"""Real crashes (SIGKILL of a writing process) and real races between processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import resumelog
from resumelog.format import decode_segment

WORKER = os.path.join(os.path.dirname(__file__), "proc_worker.py")


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, WORKER, *args], stdout=subprocess.PIPE, text=True)


def test_sigkill_keeps_every_flushed_completion_and_nothing_else(tmp_path):
    url = str(tmp_path / "ck")
    resumelog.open(url, run_id="r1")
    p = start("writer", url, "r1", "w1", "100000", "10", "104")
    acked = -1
    assert p.stdout is not None
    for line in p.stdout:
        if line.startswith("ACK"):
            acked = int(line.split()[1])
        if line.startswith("PAUSED"):
            break
    assert acked == 99
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    ck = resumelog.open(url, run_id="r2")
    done = sorted(ck.completed)
    # every acknowledged flush survived
    assert all(f"s{i:05d}" in ck.completed for i in range(acked + 1))
    # completions form a prefix: nothing after the last durable flush
    assert done == [f"s{i:05d}" for i in range(len(done))]
    # each barrier flush also carried the previous source's buffered -1s, so s00100..s00103
    # completed; s00104's +1s were durable but its -1s were not: pending, not complete
    assert len(done) == 104
    st = ck.status()
    assert st.pending == 1 and not ck.is_completed("s00104")
    # the rerun completes exactly the rest
    todo = ck.pending([f"s{i:05d}" for i in range(len(done) + 5)])
    assert todo == [f"s{i:05d}" for i in range(len(done), len(done) + 5)]
    with ck.writer("w2") as w:
        for s in todo:
            w.complete(s)
    assert len(resumelog.open(url).completed) == len(done) + 5


def test_sigkill_then_torn_last_segment(tmp_path):
    url = str(tmp_path / "ck")
    resumelog.open(url, run_id="r1")
    p = start("writer", url, "r1", "w1", "100000", "5")
    assert p.stdout is not None
    for line in p.stdout:
        if line.startswith("ACK") and int(line.split()[1]) >= 20:
            break
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    before = resumelog.open(url)
    n_before = len(before.completed)
    segs = [o.path for o in before.store.list("journal/")]
    last = os.path.join(url, *segs[-1].split("/"))
    data = open(last, "rb").read()
    recs = decode_segment(data).record_count
    with open(last, "wb") as f:
        f.write(data[: len(data) - 7])  # a torn write of the last segment
    after = resumelog.open(url)
    assert after.status().anomaly_counts.get("torn_tail") == 1
    # the torn segment held at most one flush: at most that flush's completions are gone
    assert n_before - 5 <= len(after.completed) <= n_before
    assert recs > 0


def test_four_compactor_processes_race_to_the_same_content(tmp_path):
    url = str(tmp_path / "ck")
    ck = resumelog.open(url, run_id="r1")
    expected = set()
    for w in range(8):
        with ck.writer(f"w{w}") as wr:
            for i in range(300):
                s = f"w{w}-s{i}"
                wr.complete(s)
                expected.add(s)
                if i % 50 == 0:
                    wr.flush()
    for round_ in range(2):
        start_at = time.time() + 1.0
        procs = [start("compact", url, str(start_at)) for _ in range(4)]
        outs = []
        for p in procs:
            out, _ = p.communicate(timeout=60)
            assert p.returncode == 0
            outs.append(json.loads(out.strip().splitlines()[-1]))
        assert {o["digest"] for o in outs} == {outs[0]["digest"]}
        assert {o["completed"] for o in outs} == {len(expected)}
        assert sum(o["written"] for o in outs) <= 1 + (round_ == 0) * 3
        # add more records before the next round so there is something to fold
        with ck.writer(f"extra{round_}") as wr:
            for i in range(10):
                s = f"extra{round_}-{i}"
                wr.complete(s)
                expected.add(s)
    final = resumelog.open(url)
    assert set(final.completed) == expected
    snaps = sorted(p.name for p in (tmp_path / "ck" / "snapshots").iterdir())
    assert len(snaps) >= 1


def test_sigterm_flushes_buffered_records(tmp_path):
    url = str(tmp_path / "ck")
    resumelog.open(url, run_id="r1")
    p = start("buffered", url, "r1")
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "BUFFERED"
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=30)
    assert p.returncode == -signal.SIGTERM  # the default action still ends the process
    assert sorted(resumelog.open(url).completed) == sorted(f"t{i}" for i in range(50))


def test_sigterm_kills_at_once_once_every_writer_is_closed(tmp_path):
    """The flush-on-SIGTERM hook is removed with the last open writer. A Python-level
    handler only runs when the main thread next runs bytecode, so while it is installed
    a SIGTERM that the kernel hands to another thread, with the main thread blocked in
    C, would be swallowed (a pool worker idle on its task queue then ignores
    ``Pool.terminate()`` for ever)."""
    url = str(tmp_path / "ck")
    resumelog.open(url, run_id="r1")
    p = start("closed", url, "r1")
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "BLOCKING"
    try:
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise AssertionError("SIGTERM sent to a non-main thread did not end the process") from None
    assert p.returncode == -signal.SIGTERM
    assert sorted(resumelog.open(url).completed) == ["c0"]


def test_sigkill_loses_only_unflushed_records(tmp_path):
    url = str(tmp_path / "ck")
    resumelog.open(url, run_id="r1")
    p = start("buffered", url, "r1")
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "BUFFERED"
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    assert len(resumelog.open(url).completed) == 0
