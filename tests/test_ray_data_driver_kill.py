"""A Ray Data checkpointed write whose *driver* is SIGKILLed mid-way, then rerun.

The drivers are subprocesses joined to a Ray head of their own
(:func:`resumelog.testing.ray.head_node`): the first hangs one write task on purpose and
is SIGKILLed (by its pid) once other tasks have published outputs of that task's file;
Ray then ends the job and its workers. A second driver reruns the pipeline and reads
the result back with ``rd.read_committed``. Every row must be there exactly once, and
nothing of the killed run's attempt at the unfinished file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

import resumelog  # noqa: E402
from resumelog.outputs import scan  # noqa: E402
from resumelog.testing.ray import head_node  # noqa: E402

pytestmark = pytest.mark.ray

DRIVER = """
import json, os, sys, time
import pyarrow.compute as pc
import ray
import resumelog
import resumelog.ray_data as rd

phase, url, out, marker = sys.argv[1:5]
files = json.loads(sys.argv[5])
ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False, logging_level="ERROR")
ctx = ray.data.DataContext.get_current()
ctx.enable_progress_bars = False
ctx.use_datasource_v2 = False
ctx.target_max_block_size = 2000  # ~20 blocks for the big file, each written by its own task


def work(batch):
    if phase == "crash" and pc.any(pc.equal(batch["id"], 990)).as_py():
        open(marker, "w").close()
        time.sleep(3600)  # this task never finishes: its driver is killed meanwhile
    return batch.append_column("y", pc.multiply(batch["id"], 2))


ckpt = resumelog.open(url)
print(json.dumps({"run": ckpt.run_id}), flush=True)
ds = rd.read_parquet(ckpt, files).map_batches(work, batch_format="pyarrow", num_cpus=0.5)
summary = rd.write_parquet(ds, ckpt, out)
t = rd.read_committed(url, out).to_pandas()
print(json.dumps({"undrained": summary.undrained, "ids": sorted(int(i) for i in t["id"]),
                  "paths": sorted(set(t["path"])), "y_ok": bool((t["y"] == 2 * t["id"]).all())}), flush=True)
"""


def make_files(d: Path) -> list[str]:
    """One 1000-row file in 50-row row groups (ids 0..999) and three of 7 rows (1000..1020)."""
    d.mkdir(parents=True)
    out = []
    for name, lo, n, group in (("big", 0, 1000, 50), ("small0", 1000, 7, None), ("small1", 1007, 7, None)):
        p = d / f"{name}.parquet"
        ids = pa.array(range(lo, lo + n), pa.int64())
        pq.write_table(pa.table({"id": ids}), p, row_group_size=group)
        out.append(str(p))
    p = d / "small2.parquet"
    pq.write_table(pa.table({"id": pa.array(range(1014, 1021), pa.int64())}), p)
    return [*out, str(p)]


def driver(phase: str, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, phase, *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_write_whose_driver_is_killed_then_rerun_shows_every_row_once(tmp_path: Path, monkeypatch) -> None:
    made: list[str] = []  # the head node's temp dir: removed when it stops
    mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda **kw: made.append(mkdtemp(**kw)) or made[-1])
    files = make_files(tmp_path / "in")
    big = files[0]
    url, out, marker = str(tmp_path / "ckpt"), str(tmp_path / "out"), str(tmp_path / "hung")
    args = (url, out, marker, json.dumps(files))
    with head_node(num_cpus=2) as env:
        first = driver("crash", env, *args)
        try:
            assert first.stdout is not None
            run1 = json.loads(first.stdout.readline())["run"]
            # wait (no timing assertion: a generous limit only) until the hung task runs and
            # other tasks published outputs of its file; then kill the driver
            deadline = time.monotonic() + 240
            while True:
                published: list[Any] = []
                if os.path.exists(out):
                    published = [o for o in scan(resumelog.open(url, create=False), out).in_flight if o.source == big]
                if os.path.exists(marker) and published:
                    break
                assert first.poll() is None, first.stderr.read() if first.stderr else ""
                assert time.monotonic() < deadline, "the first driver never reached the hung task"
                time.sleep(0.5)
        finally:
            if first.poll() is None:
                os.kill(first.pid, signal.SIGKILL)
            first.communicate()
        assert first.returncode == -signal.SIGKILL

        ck = resumelog.open(url, create=False)
        assert not ck.is_completed(big)
        voided = {o.path for o in scan(ck, out).in_flight if o.source == big and o.run == run1}
        assert voided  # outputs of the killed run's attempt at the big file

        second = driver("rerun", env, *args)
        stdout, stderr = second.communicate(timeout=600)
        assert second.returncode == 0, stderr[-3000:]
        assert len(made) == 1 and os.path.isdir(made[0])
    assert not os.path.exists(made[0])
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    run2, result = lines[0]["run"], lines[1]
    assert result["undrained"] == []
    assert result["ids"] == list(range(1021))  # every row exactly once
    assert result["paths"] == sorted(files) and result["y_ok"]

    ck = resumelog.open(url, create=False)
    assert ck.pending(files) == []
    committed = ck.outputs(out)
    assert {o.run for o in committed if o.source == big} == {run2}
    sc = scan(ck, out, grace=0)  # (the killed run is over: what gc(grace=0) collects)
    orphaned = {o.path for o in sc.orphaned}
    assert voided <= orphaned and not orphaned & {o.path for o in committed}
