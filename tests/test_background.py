"""Compaction on a timer: ``Checkpoint.compact_in_background`` and ``resumelog compact --every``."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import resumelog
from resumelog import compactor
from resumelog.errors import CorruptSnapshot
from resumelog.storage import LocalStore, open_store

WORKER = os.path.join(os.path.dirname(__file__), "proc_worker.py")


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def complete(w: resumelog.Writer, ids: range) -> None:
    for i in ids:
        w.complete(f"s{i:05d}")
    w.flush()


def snapshots(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "snapshots").glob("*") if not p.name.endswith(".partial"))


def corrupt_only_snapshot(root: Path, n: int) -> tuple[resumelog.Checkpoint, Path]:
    """A checkpoint of ``n`` completions whose only snapshot is garbage (nothing to fall
    back to: every compaction fails until it is removed)."""
    ckpt = resumelog.open(str(root))
    with ckpt.writer("w") as w:
        complete(w, range(n))
    ckpt.compact()
    (only,) = snapshots(root)
    path = root / "snapshots" / only
    path.write_bytes(b"not a snapshot")
    return ckpt, path


def test_snapshots_follow_the_writer_and_the_view_is_left_alone(tmp_path: Path) -> None:
    root = tmp_path / "ck"
    ckpt = resumelog.open(str(root))
    w = ckpt.writer("w")
    bg = ckpt.compact_in_background(every=0.05)
    assert bg.running
    complete(w, range(0, 100))
    wait_for(lambda: bg.last_result is not None and bg.last_result.completed == 100, "the first 100 folded")
    complete(w, range(100, 250))
    wait_for(lambda: bg.last_result is not None and bg.last_result.completed == 250, "all 250 folded")
    assert bg.snapshots_written >= 2 and bg.failures == 0 and bg.last_error is None
    assert len(snapshots(root)) == bg.snapshots_written
    # a tick with nothing new publishes nothing
    n = bg.snapshots_written
    done = bg.compactions
    wait_for(lambda: bg.compactions >= done + 2, "two more ticks")
    assert bg.snapshots_written == n
    ckpt.close()  # stops the thread
    assert not bg.running
    # the next open loads the latest snapshot and has nothing left to fold
    loaded = compactor.load(LocalStore(str(root)))
    assert loaded.snapshot == n and loaded.records_folded == 0
    assert loaded.state.completed_count() == 250
    assert resumelog.open(str(root)).completed == {f"s{i:05d}" for i in range(250)}


def test_a_failed_compaction_is_counted_logged_and_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "ck"
    ckpt, bad = corrupt_only_snapshot(root, 10)
    with ckpt.writer("w2") as w:
        complete(w, range(10, 20))
    with ckpt.compact_in_background(every=0.05) as bg:
        wait_for(lambda: bg.failures >= 2, "two failed ticks")
        assert isinstance(bg.last_error, CorruptSnapshot)
        assert bg.running and bg.compactions == 0
        assert "background compaction" in caplog.text and "retried" in caplog.text
        bad.unlink()  # the operator removes it
        wait_for(lambda: bg.compactions >= 1, "a compaction after the repair")
        assert bg.last_error is None
        assert bg.last_result is not None and bg.last_result.completed == 20
    assert not bg.running


def test_every_must_be_positive(tmp_path: Path) -> None:
    ckpt = resumelog.open(str(tmp_path / "ck"))
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="positive"):
            ckpt.compact_in_background(every=bad)


def test_overlapping_folds_restore_the_collector_once_the_last_one_ends() -> None:
    assert gc.isenabled()
    a, b = compactor._gc_paused(), compactor._gc_paused()
    a.__enter__()
    b.__enter__()  # a second fold (another thread) starts while the first runs
    a.__exit__(None, None, None)
    assert not gc.isenabled()  # the second is still folding
    b.__exit__(None, None, None)
    assert gc.isenabled()


def test_sigkill_leaves_a_snapshot_and_a_short_tail(tmp_path: Path) -> None:
    """A job compacting in the background is killed: its next start loads a snapshot
    and folds only the records written since, and keeps every acknowledged completion."""
    url = str(tmp_path / "ck")
    proc = subprocess.Popen([sys.executable, WORKER, "bg-writer", url, "0.2", "50"], stdout=subprocess.PIPE, text=True)
    acked = -1
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            _, i, snaps, failures = line.split()
            acked = int(i)
            assert failures == "0"
            if int(snaps) >= 3 and acked >= 2_000:
                break
            assert time.monotonic() < deadline, "the background compactions did not happen"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = set(resumelog.open(url).completed)
    # sources are completed and flushed in order: what survived is every acknowledged
    # one and possibly a few more flushed after the last ACK read, always a prefix
    assert len(done) >= acked + 1
    assert done == {f"s{i:06d}" for i in range(len(done))}
    # the next start loads a snapshot and folds only what came after it
    loaded = compactor.load(LocalStore(url))
    assert loaded.snapshot >= 3
    assert loaded.records_folded < 4 * len(done)  # emit, fan-out, two sinks per source
    assert loaded.state.completed_count() == len(done)


def test_cli_compact_every_until_sigterm(tmp_path: Path) -> None:
    url = str(tmp_path / "ck")
    ckpt = resumelog.open(url)
    with ckpt.writer("w") as w:
        complete(w, range(30))
    proc = subprocess.Popen(
        [sys.executable, "-m", "resumelog.cli", "compact", url, "--every", "0.1", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    docs = [json.loads(proc.stdout.readline())]
    with ckpt.writer("w2") as w:
        complete(w, range(30, 45))
    while docs[-1]["completed"] != 45:
        docs.append(json.loads(proc.stdout.readline()))
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert docs[0]["written"] and docs[0]["completed"] == 30 and docs[0]["snapshot"] == 1
    assert docs[-1]["written"] and docs[-1]["completed"] == 45
    assert all(d["seconds"] >= 0 and "error" not in d for d in docs)
    assert [json.loads(x)["written"] for x in out.splitlines()] == [False] * len(out.splitlines())


def test_cli_compact_every_reports_a_failure_and_goes_on(tmp_path: Path) -> None:
    root = tmp_path / "ck"
    _, bad = corrupt_only_snapshot(root, 5)
    proc = subprocess.Popen(
        [sys.executable, "-m", "resumelog.cli", "compact", str(root), "--every", "0.1", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())
    assert "error" in first and "corrupt" in first["error"].lower() and "snapshot" not in first
    bad.unlink()
    doc = first
    while "error" in doc:
        doc = json.loads(proc.stdout.readline())
    assert doc["written"] and doc["completed"] == 5
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


@pytest.mark.s3
def test_background_compaction_and_the_sidecar_on_s3(s3_url: tuple[str, dict[str, Any]]) -> None:
    url, opts = s3_url
    ckpt = resumelog.open(url, storage_options=opts)
    with ckpt.writer("w") as w:
        complete(w, range(20))
    with ckpt.compact_in_background(every=0.05) as bg:
        wait_for(lambda: bg.snapshots_written >= 1, "a snapshot on S3")
    assert bg.failures == 0 and bg.last_result is not None and bg.last_result.completed == 20
    with ckpt.writer("w2") as w:
        complete(w, range(20, 30))
    # the sidecar, its storage options from the environment (never on its command line)
    env = {**os.environ, "RESUMELOG_STORAGE_OPTIONS": json.dumps(opts)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "resumelog.cli", "compact", url, "--every", "0.1", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    doc = json.loads(proc.stdout.readline())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert doc["written"] and doc["completed"] == 30 and doc["snapshot"] == 2
    loaded = compactor.load(open_store(url, opts))
    assert loaded.snapshot == 2 and loaded.records_folded == 0
