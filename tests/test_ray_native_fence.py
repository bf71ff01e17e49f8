"""Issue 22, defect 1: with Ray's ``delete_checkpoint_on_success=True``, the checkpoint
Ray deletes stays deleted, whenever the background ingest of Ray's id files ends.

A real local Ray cluster (``address="local"``), real Parquet files, Ray's own
``CheckpointConfig`` machinery driving :class:`resumelog.ray_data.ResumelogCheckpointConfig`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
import pyarrow.fs as pafs  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

import resumelog  # noqa: E402
import resumelog.ray_data as rd  # noqa: E402
from resumelog.errors import ObjectNotFound  # noqa: E402
from resumelog.ray_data import _native  # noqa: E402
from resumelog.testing.ray import init_local_ray  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    started = not ray.is_initialized()
    if started:
        init_local_ray(num_cpus=2)
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.checkpoint_config)
    ctx.enable_progress_bars = False
    yield
    ctx.enable_progress_bars, ctx.checkpoint_config = saved
    if started:
        ray.shutdown()


def _completed(url: str) -> int:
    """Sources complete at ``url`` for a new job (0 if there is no checkpoint)."""
    try:
        return len(resumelog.open(url, create=False).completed)
    except ObjectNotFound:
        return 0


def _seed_ray_id_files(native: Path, n: int, per_file: int = 100_000) -> None:
    """Ray's committed per-block id files, as a crashed earlier job left them."""
    native.mkdir(parents=True)
    for k, start in enumerate(range(0, n, per_file)):
        ids = pa.array(range(start, min(n, start + per_file)), pa.int64())
        pq.write_table(pa.table({"id": ids}), native / f"ckpt-{k:04d}.parquet")


def test_a_background_ingest_ending_after_rays_delete_does_not_skip_the_next_jobs_rows(
    cluster: None, tmp_path: Path
) -> None:
    """The issue's scenario: 300,000 ids seeded in Ray's id files, a job over 20 more
    rows with ``delete_checkpoint_on_success=True``: Ray deletes ``checkpoint_path``
    when the job ends, typically before the background fold of 300,000 ids ends. The
    next job over all ids must write every row."""
    n, extra = 300_000, 20
    native = tmp_path / "native"
    out = tmp_path / "out"
    _seed_ray_id_files(native, n)
    ctx = ray.data.DataContext.get_current()
    try:
        ctx.checkpoint_config = rd.ResumelogCheckpointConfig(
            id_column="id", checkpoint_path=str(native), delete_checkpoint_on_success=True
        )
        ray.data.range(n + extra).write_parquet(str(out / "job1"))
        ingest = rd.ResumelogCheckpointManager.last_ingest
        assert ingest is not None
        ray.get(ingest)  # the fold has ended, before or after Ray's delete
        assert not (native / "_resumelog" / "meta.msgpack").exists()
        assert _completed(str(native / "_resumelog")) == 0
        assert pq.read_table(out / "job1").num_rows == extra  # job 1 skipped the seeded ids

        ctx.checkpoint_config = rd.ResumelogCheckpointConfig(
            id_column="id", checkpoint_path=str(native), delete_checkpoint_on_success=True
        )
        ray.data.range(n + extra).write_parquet(str(out / "job2"))
        assert pq.read_table(out / "job2").num_rows == n + extra
    finally:
        ctx.checkpoint_config = None


def test_an_ingest_task_starting_after_the_delete_writes_nothing_that_counts(cluster: None, tmp_path: Path) -> None:
    """However late Ray schedules the fold, it writes into the epoch its handle was
    made in: a task started after ``checkpoint_path`` was deleted recreates nothing."""
    native = tmp_path / "native"
    _seed_ray_id_files(native, 1000)
    cfg = rd.ResumelogCheckpointConfig(id_column="id", checkpoint_path=str(native), ingest="blocking")
    manager = rd.ResumelogCheckpointManager(cfg, ray.data.DataContext.get_current())
    files = manager.committed_files()
    ids = manager.read_ids(files)
    handle = manager.open().handle("late-ingest")
    shutil.rmtree(native)  # Ray's delete_checkpoint_on_success, before the task ran
    folded = ray.get(_native._ingest_task.remote(handle, ids, files, pafs.LocalFileSystem(), True))
    assert folded == 0
    assert _completed(str(native / "_resumelog")) == 0
    assert not (native / "_resumelog" / "meta.msgpack").exists()


def test_planning_a_read_with_nothing_checkpointed_writes_nothing(cluster: None, tmp_path: Path) -> None:
    native = tmp_path / "native"
    native.mkdir()
    cfg = rd.ResumelogCheckpointConfig(id_column="id", checkpoint_path=str(native))
    manager = rd.ResumelogCheckpointManager(cfg, ray.data.DataContext.get_current())
    assert manager.load_checkpoint() == (None, 0)
    assert list(native.rglob("*")) == []
