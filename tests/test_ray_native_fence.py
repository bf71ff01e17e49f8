"""Issue 22, defect 1: with Ray's ``delete_checkpoint_on_success=True``, the checkpoint
Ray deletes stays deleted, whenever the background ingest of Ray's id files ends.

A real local Ray cluster (``address="local"``), real Parquet files, Ray's own
``CheckpointConfig`` machinery driving :class:`resumelog.ray_data.ResumelogCheckpointConfig`.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
import pyarrow.fs as pafs  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

import resumelog  # noqa: E402
import resumelog.ray_data as rd  # noqa: E402
from resumelog.checkpoint import WriterHandle  # noqa: E402
from resumelog.errors import ObjectNotFound, StorageError  # noqa: E402
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


@contextmanager
def _writing(handle: WriterHandle) -> Iterator[list[int]]:
    """A slow ingest: a writer of ``handle``'s epoch flushing segments without pause
    (and retrying when its directory vanishes) until the block ends. Yields the list
    of its flushes, to show that it wrote during the block."""
    stop = threading.Event()
    flushes: list[int] = []

    def run() -> None:
        w = handle.writer()
        i = 0
        while not stop.is_set():
            i += 1
            w.complete(str(10**9 + i))  # an id no job reads
            try:
                w.flush()
                flushes.append(i)
            except StorageError:
                pass  # its directory was deleted under it: write it again

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield flushes
    finally:
        stop.set()
        t.join()


def test_a_background_ingest_ending_after_rays_delete_does_not_skip_the_next_jobs_rows(
    cluster: None, tmp_path: Path
) -> None:
    """The issue's scenario: 300,000 ids seeded in Ray's id files, a job over 20 more
    rows with ``delete_checkpoint_on_success=True``: Ray deletes ``checkpoint_path``
    when the job ends, typically before the background fold of 300,000 ids ends. The
    next job over all ids must write every row.

    A writer keeps writing into the checkpoint while Ray deletes it, as a slow ingest
    does: a recursive delete racing it used to stop part-way (``ENOTEMPTY``) and leave
    Ray's id files, so the next job skipped their rows."""
    n, extra = 300_000, 20
    native = tmp_path / "native"
    out = tmp_path / "out"
    _seed_ray_id_files(native, n)
    slow = resumelog.open(str(native / "_resumelog")).handle("slow-ingest")
    ctx = ray.data.DataContext.get_current()
    try:
        ctx.checkpoint_config = rd.ResumelogCheckpointConfig(
            id_column="id", checkpoint_path=str(native), delete_checkpoint_on_success=True
        )
        with _writing(slow) as flushes:
            ray.data.range(n + extra).write_parquet(str(out / "job1"))
            ingest = rd.ResumelogCheckpointManager.last_ingest
            assert ingest is not None
            ray.get(ingest)  # the fold has ended, before or after Ray's delete
        assert flushes  # it wrote while the job ran
        assert not list(native.rglob("*.parquet"))  # none of Ray's id files survived
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
        rd.ResumelogCheckpointManager.last_ingest = None


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


def test_deleting_checkpoint_path_while_an_ingest_writes_removes_rays_files_and_the_epoch(tmp_path: Path) -> None:
    """Ray's delete through the config's filesystem, racing a writer that recreates
    directories under ``_resumelog``: it returns, Ray's id files and ``meta.msgpack``
    are gone, and whatever the writer still wrote counts for no one."""
    native = tmp_path / "native"
    _seed_ray_id_files(native, 3000, per_file=1000)
    url = str(native / "_resumelog")
    with resumelog.open(url).writer("done") as w:
        w.complete_many(str(i) for i in range(100))
    assert _completed(url) == 100
    cfg = rd.ResumelogCheckpointConfig(id_column="id", checkpoint_path=str(native), delete_checkpoint_on_success=True)
    slow = resumelog.open(url).handle("slow-ingest")
    with _writing(slow) as flushes:
        while len(flushes) < 3:
            pass  # let it write first
        cfg.filesystem.delete_dir(str(native))  # what Ray's LoadCheckpointCallback calls
    assert not list(native.rglob("*.parquet"))
    assert not (native / "_resumelog" / "meta.msgpack").exists()
    assert _completed(url) == 0
    assert len(resumelog.open(url).completed) == 0  # a new epoch ignores the debris


def test_an_ingest_whose_directory_was_deleted_returns_zero_only_if_the_epoch_is_gone(tmp_path: Path) -> None:
    """A write failing under the ingest is the delete's news only if ``meta.msgpack``
    went with it; with the epoch alive the error is raised."""
    native = tmp_path / "native"
    _seed_ray_id_files(native, 10, per_file=10)
    files = [str(p) for p in native.glob("*.parquet")]
    ids = pa.array(range(10), pa.int64())
    ckpt = resumelog.open(str(native / "_resumelog"))
    handle = ckpt.handle("ingest")
    journal = native / "_resumelog" / "journal"
    shutil.rmtree(journal, ignore_errors=True)
    journal.write_bytes(b"")  # every segment write now fails (ENOTDIR)
    with pytest.raises(StorageError):
        _native._ingest(handle, ids, files, pafs.LocalFileSystem(), True)
    assert all(Path(p).exists() for p in files)  # nothing deleted on failure
    (native / "_resumelog" / "meta.msgpack").unlink()  # Ray's delete, fenced first
    assert _native._ingest(handle, ids, files, pafs.LocalFileSystem(), True) == 0
    assert all(Path(p).exists() for p in files)


def test_planning_a_read_with_nothing_checkpointed_writes_nothing(cluster: None, tmp_path: Path) -> None:
    native = tmp_path / "native"
    native.mkdir()
    cfg = rd.ResumelogCheckpointConfig(id_column="id", checkpoint_path=str(native))
    manager = rd.ResumelogCheckpointManager(cfg, ray.data.DataContext.get_current())
    assert manager.load_checkpoint() == (None, 0)
    assert list(native.rglob("*")) == []
