"""resumelog.ray_data on a real local Ray cluster: skip, filter, checkpointed writes, native CheckpointConfig.

Every pipeline here runs on Ray Data for real (no mocks); interruptions are real task
failures (a map function that raises on a "poison" id) or real crashes (a map function
that SIGKILLs its worker process). The checkpointed writes' outputs are read back with
``rd.read_committed``, as a user would. Most pipelines use Ray's V1
Parquet reader (``use_datasource_v2 = False``): in Ray 2.60 the V2 reader costs ~80 ms
per small file on 2 cores, 16 s for 200 files; one test runs the V2 reader.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from s3_support import S3_KINDS  # noqa: E402

import resumelog  # noqa: E402
import resumelog.ray_data as rd  # noqa: E402
from resumelog.outputs import output_name, scan  # noqa: E402

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parent.parent


def _init_ray() -> None:
    from resumelog.testing.ray import init_local_ray

    init_local_ray(num_cpus=2, log_to_driver=False, logging_level="ERROR")


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A local Ray cluster (reused if this process already has one) with quiet, fast Ray Data."""
    started = not ray.is_initialized()
    if started:
        _init_ray()
    # the test functions below travel to the workers by value (the workers cannot import this module)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.use_datasource_v2, ctx.checkpoint_config, ctx.target_max_block_size)
    ctx.enable_progress_bars = False
    ctx.use_datasource_v2 = False
    yield
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars, ctx.use_datasource_v2, ctx.checkpoint_config, ctx.target_max_block_size = saved
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    if started:
        ray.shutdown()


# ---------------------------------------------------------------------- helpers


def make_files(
    d: Path, n: int, rows: int, row_group_size: int | None = None, prefix: str = "f", start: int = 0
) -> list[str]:
    """``n`` Parquet files; file ``i`` holds ids ``start + i*rows .. start + (i+1)*rows - 1``."""
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = d / f"{prefix}{i:04d}.parquet"
        ids = pa.array(range(start + i * rows, start + (i + 1) * rows), pa.int64())
        pq.write_table(pa.table({"id": ids, "v": pc.cast(ids, pa.float64())}), p, row_group_size=row_group_size)
        out.append(str(p))
    return out


def work(poison: int | None = None, delay: float = 0.0) -> Callable[[Any], Any]:
    """A 1:1 batch function adding ``y``; raises on the row with id ``poison``."""

    def fn(batch: Any) -> Any:
        if poison is not None and pc.any(pc.equal(batch["id"], poison)).as_py():
            time.sleep(delay)
            raise RuntimeError(f"poison row {poison}")
        return batch.append_column("y", pc.multiply(batch["id"], 2))

    return fn


EMPTY = {"id": pa.array([], pa.int64()), "path": pa.array([], pa.string())}


def out_table(out: Path) -> Any:
    """Every Parquet file directly in ``out`` (what Ray's own write_parquet writes)."""
    files = sorted(out.glob("*.parquet"))
    if not files:
        return pa.table(EMPTY)
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")


def committed_table(url: str, root: str | Path, opts: dict[str, Any] | None = None, run: str | None = None) -> Any:
    """The committed outputs of a checkpointed write, read back with ``rd.read_committed``."""
    ds = rd.read_committed(url, str(root), checkpoint_storage_options=opts, run=run)
    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables(tables, promote_options="default") if tables else pa.table(EMPTY)


def listing(d: Path) -> dict[str, int]:
    """Every file under ``d`` (recursively) with its mtime."""
    return {str(p.relative_to(d)): p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file()} if d.exists() else {}


def crash_then_resume(
    files: list[str], url: str, opts: dict[str, Any], out: str | Path, rows: int, *, fresh_cluster: bool = False
) -> None:
    """Run the pipeline, interrupted at 60 %; resume it; check exactly-once output."""
    n = len(files)
    ckpt = resumelog.open(url, storage_options=opts)
    ds = rd.read_parquet(ckpt, files)
    poison = int(n * 0.6) * rows + rows // 2
    with pytest.raises(ray.exceptions.RayError, match="poison row"):
        rd.write_parquet(ds.map_batches(work(poison), batch_format="pyarrow"), ckpt, str(out))

    if fresh_cluster:
        # the crashed job's workers flush what they completed until they exit (at the
        # latest when the cluster shuts down): judge the checkpoint once they are gone
        ray.shutdown()
        _init_ray()
        ray.data.DataContext.get_current().enable_progress_bars = False
        ray.data.DataContext.get_current().use_datasource_v2 = False
    ckpt.refresh()
    todo_after_crash = ckpt.pending(files)
    done1 = n - len(todo_after_crash)
    assert 0 < done1 < n, done1  # interrupted midway
    first = committed_table(url, out, opts)
    # what the crashed run completed is in the output, each row once, and nothing else
    done_paths = {p for p in files if ckpt.is_completed(p)}
    assert Counter(first.column("path").to_pylist()) == dict.fromkeys(done_paths, rows)

    ckpt2 = resumelog.open(url, storage_options=opts)  # a new run, as after a restart
    todo = rd.pending_paths(ckpt2, files)
    assert todo == todo_after_crash and len(todo) == n - done1
    ds = rd.read_parquet(ckpt2, files)
    summary = rd.write_parquet(ds.map_batches(work(), batch_format="pyarrow"), ckpt2, str(out))
    assert summary.undrained == [] and summary.sources_completed == len(todo)
    assert summary.rows == rows * len(todo)
    # this run processed each remaining file exactly once, and no completed file
    new = committed_table(url, out, opts, run=ckpt2.run_id)
    assert Counter(new.column("path").to_pylist()) == dict.fromkeys(todo, rows)
    assert summary.root == (str(out) if "://" in str(out) else os.path.abspath(out))
    assert sorted(summary.files) == sorted(
        o.path for o in resumelog.open(url, storage_options=opts).outputs(out, run=ckpt2.run_id)
    )
    # the union: every input row exactly once
    ids = committed_table(url, out, opts).column("id").to_pylist()
    assert len(ids) == n * rows and sorted(ids) == list(range(n * rows))
    assert rd.pending_paths(resumelog.open(url, storage_options=opts), files) == []


# ---------------------------------------------------------------------- file level


def test_interrupted_pipeline_resumes_each_remaining_file_exactly_once(cluster: None, tmp_path: Path) -> None:
    files = make_files(tmp_path / "in", 200, rows=20)
    out = tmp_path / "out"
    crash_then_resume(files, str(tmp_path / "ckpt"), {}, out, rows=20)

    # a rerun of the finished pipeline reads no input and writes no output
    before = listing(out)
    ckpt = resumelog.open(str(tmp_path / "ckpt"))
    assert rd.pending_paths(ckpt, files) == []
    with pytest.raises(resumelog.NothingToDo, match="all 200 sources already complete"):
        rd.read_parquet(ckpt, files)
    assert listing(out) == before
    assert resumelog.open(str(tmp_path / "ckpt")).status().anomalies == 0


def test_fewer_files_than_rays_minimum_blocks_are_read_one_block_per_file(cluster: None, tmp_path: Path) -> None:
    files = make_files(tmp_path / "in", 12, 50)  # 12 >= 2 per CPU, < read_op_min_num_blocks (200)
    ckpt = resumelog.open(str(tmp_path / "ck"))
    assert rd.read_parquet(ckpt, files[:6]).materialize().num_blocks() == 6
    # Ray's default (splitting every file's block) is kept when asked for explicitly
    ckpt2 = resumelog.open(str(tmp_path / "ck2"))
    assert rd.read_parquet(ckpt2, files, override_num_blocks=24).materialize().num_blocks() == 24


def test_a_resume_reads_as_many_files_to_a_task_as_the_fresh_run(cluster: None, tmp_path: Path) -> None:
    ctx = ray.data.DataContext.get_current()
    saved = ctx.read_op_min_num_blocks
    ctx.read_op_min_num_blocks = 16  # as Ray's 200 against 400 files: at most 2 files to a task
    try:
        files = make_files(tmp_path / "in", 32, 10)
        paths = [rd._ray_path(f) for f in files]
        # a fresh run with at least Ray's minimum files: Ray's own blocks
        plain = ray.data.read_parquet(files).materialize().num_blocks()
        ckpt = resumelog.open(str(tmp_path / "ck"))
        assert rd.read_parquet(ckpt, files).materialize().num_blocks() == plain
        # 12 of 32 files left, fewer than Ray's minimum (which would split every file's
        # block): 2 files to a task as in a fresh run over the 32 (16 tasks), so 6 tasks
        ckpt = resumelog.open(str(tmp_path / "ck2"))
        with ckpt.writer() as w:
            for p in paths[12:]:
                w.complete(p)
        ds = rd.read_parquet(ckpt, files).materialize()
        assert ds.num_blocks() == 6
        assert sorted(set(ds.to_pandas()["path"])) == sorted(paths[:12])
        # 5 of 32 left: never fewer than two tasks per CPU (4)
        ckpt = resumelog.open(str(tmp_path / "ck3"))
        with ckpt.writer() as w:
            for p in paths[5:]:
                w.complete(p)
        assert rd.read_parquet(ckpt, files).materialize().num_blocks() == 4
    finally:
        ctx.read_op_min_num_blocks = saved


@pytest.mark.s3
@pytest.mark.parametrize("s3_server", S3_KINDS[:1], indirect=True)
def test_s3_checkpoint_resumes_in_a_fresh_ray_cluster(
    cluster: None, tmp_path: Path, s3_url: tuple[str, dict[str, Any]]
) -> None:
    url, opts = s3_url
    # 60 files, not the local test's 200: each completed file costs a few requests of the
    # loopback server, and the crash at 60 % still leaves both completed and pending ones
    files = make_files(tmp_path / "in", 60, rows=10)
    # the outputs on S3 too (the checkpoint's storage options): published from the workers
    crash_then_resume(files, url, opts, url + "-out", rows=10, fresh_cluster=True)
    st = resumelog.open(url, storage_options=opts).status()
    assert st.completed == 60 and st.pending == 0 and st.anomalies == 0


def test_partial_outputs_of_an_interrupted_source_stay_invisible_and_are_collected(
    cluster: None, tmp_path: Path
) -> None:
    # one 1000-row file read as ~20 blocks, each written by its own task (the map does not
    # fuse with the read): the crash leaves some of its blocks written, the file incomplete
    files = make_files(tmp_path / "in", 1, rows=1000, row_group_size=50, prefix="big")
    files += make_files(tmp_path / "in", 3, rows=7, prefix="small", start=1000)
    url, out = str(tmp_path / "ckpt"), tmp_path / "out"
    ctx = ray.data.DataContext.get_current()
    saved = ctx.target_max_block_size
    ctx.target_max_block_size = 2000
    try:
        ckpt = resumelog.open(url)
        ds = rd.read_parquet(ckpt, files[:1])
        ds = ds.map_batches(work(poison=990, delay=2.0), batch_format="pyarrow", num_cpus=0.5)
        with pytest.raises(ray.exceptions.RayError, match="poison row"):
            rd.write_parquet(ds, ckpt, str(out))
        ckpt.refresh()
        assert not ckpt.is_completed(files[0])
        partial = sorted(o.path for o in scan(ckpt, out).in_flight)
        assert partial and all(p.startswith(f"{ckpt.run_id}/") for p in partial)  # written blocks...
        assert committed_table(url, out).num_rows == 0  # ...of an incomplete source: invisible

        ckpt2 = resumelog.open(url)
        ds = rd.read_parquet(ckpt2, files)
        summary = rd.write_parquet(ds.map_batches(work(), batch_format="pyarrow", num_cpus=0.5), ckpt2, str(out))
    finally:
        ctx.target_max_block_size = saved
    assert summary.undrained == [] and summary.sources_completed == 4
    t = committed_table(url, out)
    assert sorted(t.column("id").to_pylist()) == list(range(1021))
    assert Counter(t.column("path").to_pylist()) == {files[0]: 1000, **dict.fromkeys(files[1:], 7)}
    # the rerun deleted nothing: the interrupted attempt's files are in flight for the grace
    # after its run's last write (that run might still drain the source and take it over),
    # then orphans that gc collects (grace=0: as if that time had passed)
    assert sorted(o.path for o in scan(ckpt2, out).in_flight) == partial
    sc = scan(ckpt2, out, grace=0)
    assert sorted(o.path for o in sc.orphaned) == partial and sc.in_flight == []
    assert all(p.exists() for p in (out / name for name in partial))
    result = ckpt2.gc(grace=0, outputs=[str(out)])
    assert result.outputs[0].orphaned == len(partial)
    assert not any((out / name).exists() for name in partial)
    assert sorted(committed_table(url, out).column("id").to_pylist()) == list(range(1021))


def kill_worker_on(poison: int, marker: Path, then: str = "succeed", delay: float = 2.0) -> Callable[[Any], Any]:
    """A 1:1 batch function adding ``y``. The first time it meets the batch holding id
    ``poison`` (``marker`` does not exist yet: it creates it) it SIGKILLs its own worker
    process after ``delay`` seconds, so that other tasks publish meanwhile: a real crash,
    no exception, no cleanup. Ray retries the task; the retry succeeds, or with
    ``then="fail"`` raises, which fails the job (Ray does not retry exceptions)."""

    def fn(batch: Any) -> Any:
        if pc.any(pc.equal(batch["id"], poison)).as_py():
            if not marker.exists():
                marker.touch()
                time.sleep(delay)
                os.kill(os.getpid(), signal.SIGKILL)
            elif then == "fail":
                raise RuntimeError(f"poison row {poison} after the crash")
        return batch.append_column("y", pc.multiply(batch["id"], 2))

    return fn


def test_a_write_whose_worker_is_killed_then_rerun_shows_every_row_once(cluster: None, tmp_path: Path) -> None:
    """Run 1: the worker writing the last block of a 1000-row file SIGKILLs itself, and
    the retry fails: the job dies with that file's other blocks published. Run 2 redoes
    the file; its first attempt of that block is killed too, and Ray's retry finishes
    it. The committed outputs hold every row once, none from the voided attempt."""
    files = make_files(tmp_path / "in", 1, rows=1000, row_group_size=50, prefix="big")
    files += make_files(tmp_path / "in", 3, rows=7, prefix="small", start=1000)
    url, out = str(tmp_path / "ckpt"), tmp_path / "out"
    ctx = ray.data.DataContext.get_current()
    saved = ctx.target_max_block_size
    ctx.target_max_block_size = 2000  # ~20 blocks for the big file, each its own write
    try:
        ckpt = resumelog.open(url)
        run1 = ckpt.run_id
        ds = rd.read_parquet(ckpt, files)
        first = tmp_path / "killed-in-run-1"
        ds = ds.map_batches(kill_worker_on(990, first, then="fail"), batch_format="pyarrow", num_cpus=0.5)
        with pytest.raises(ray.exceptions.RayError, match="after the crash"):
            rd.write_parquet(ds, ckpt, str(out))
        assert first.exists()
        ckpt.refresh()
        assert not ckpt.is_completed(files[0])
        voided = [o for o in scan(ckpt, out).in_flight if o.source == files[0]]
        assert voided and {o.run for o in voided} == {run1}  # published before the crash
        assert files[0] not in set(committed_table(url, out).column("path").to_pylist())

        marker = tmp_path / "killed-once"
        ckpt2 = resumelog.open(url)
        ds = rd.read_parquet(ckpt2, files)
        ds = ds.map_batches(kill_worker_on(990, marker), batch_format="pyarrow", num_cpus=0.5)
        summary = rd.write_parquet(ds, ckpt2, str(out))
    finally:
        ctx.target_max_block_size = saved
    assert marker.exists()  # run 2 crashed too, and its retry finished the block
    assert summary.undrained == [] and resumelog.open(url).pending(files) == []
    t = committed_table(url, out)
    assert sorted(t.column("id").to_pylist()) == list(range(1021))  # every row exactly once
    assert Counter(t.column("path").to_pylist()) == {files[0]: 1000, **dict.fromkeys(files[1:], 7)}
    assert t.column("y").to_pylist() == [2 * i for i in t.column("id").to_pylist()]
    outs = resumelog.open(url).outputs(str(out))
    assert {o.run for o in outs if o.source == files[0]} == {ckpt2.run_id}
    orphaned = {o.path for o in scan(resumelog.open(url), out, grace=0).orphaned}  # (its run quiet)
    assert {o.path for o in voided} <= orphaned and not orphaned & {o.path for o in outs}


def test_a_late_record_of_an_interrupted_run_never_shows_a_row_twice(cluster: None, tmp_path: Path) -> None:
    """Run 1 published and recorded 6 of a source's 10 rows and died; run 2 redid the
    source; run 1's other block (a task that outlived its driver) lands only now. Both
    runs drained the source: the smaller run id holds the completion
    (docs/exactly-once.md), and the committed outputs switch to run 1's two files, a
    whole set: each row once, before and after. (ParquetSink.write runs in this process
    here: the sink's publish-then-record path without a cluster.)"""
    url, out = str(tmp_path / "ckpt"), str(tmp_path / "out")
    rows = pa.table({"id": pa.array(range(10), pa.int64()), "path": ["src"] * 10})
    rows = rows.append_column("row_hash", pa.array(range(100, 110), pa.int64()))

    def sink_of(ck: resumelog.Checkpoint) -> rd.ParquetSink:
        sink = rd.ParquetSink(out, ck.handle("w"))
        sink.require_row_hash = True
        return sink  # sync_flush: records durable when write() returns

    old = resumelog.open(url, run_id="run-1")
    with old.writer() as w:
        w.record("ray_data:rows:src", "src", 10, emission=True)
    sink_of(old).write([rows.slice(0, 6)], None)
    assert resumelog.open(url).outputs(out) == []

    new = resumelog.open(url, run_id="run-2")  # the resumed run redoes the source
    with new.writer() as w:
        w.record("ray_data:rows:src", "src", 10, emission=True)
    sink_of(new).write([rows], None)
    assert sorted(committed_table(url, out).column("id").to_pylist()) == list(range(10))

    sink_of(old).write([rows.slice(6)], None)  # run 1's last block lands late
    ck = resumelog.open(url)
    assert ck.completed_run("src") == "run-1" and [o.run for o in ck.outputs(out)] == ["run-1", "run-1"]
    assert sorted(committed_table(url, out).column("id").to_pylist()) == list(range(10))
    assert [o.run for o in scan(ck, out).orphaned] == []  # run 2's file: kept (its drained state could take over)


def _drop_multiples_of_3(df: Any) -> Any:  # pandas in, pandas out
    return df[df["id"].to_numpy() % 3 != 0]  # (pandas 3 has no % on Arrow-backed int columns)


class Duplicate:  # a callable class (an actor pool); numpy in, numpy out: every row twice
    def __init__(self, copies: int) -> None:
        self.copies = copies

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        out = {k: np.concatenate([v] * self.copies) for k, v in batch.items()}
        out["copy"] = np.repeat(np.arange(self.copies), len(batch["id"]))
        return out


def _duplicate_rows(row: dict[str, Any]) -> list[dict[str, Any]]:
    # row_hash (int64 since issue 22) survives Ray's row-based flat_map
    return [{**row, "copy": 0}, {**row, "copy": 1}]


def test_map_batches_accounts_for_filters_and_fan_out(cluster: None, tmp_path: Path) -> None:
    files = make_files(tmp_path / "in", 20, rows=30)
    out = tmp_path / "out"

    # a native flat_map changes row counts behind resumelog's back: nothing completes
    ckpt = resumelog.open(str(tmp_path / "ckpt"))
    ds = rd.read_parquet(ckpt, files).flat_map(_duplicate_rows)
    summary = rd.write_parquet(ds, ckpt, str(out))
    assert sorted(summary.undrained) == sorted(files) and summary.sources_completed == 0
    assert rd.pending_paths(resumelog.open(str(tmp_path / "ckpt")), files) == files

    # accounted: a filter (pandas) and a fan-out (numpy, an actor) — every file drains; the files the
    # unaccounted run wrote stay invisible (orphans of a run that never completed them)
    first_run = ckpt.run_id
    ckpt = resumelog.open(str(tmp_path / "ckpt"))
    ds = rd.read_parquet(ckpt, files)
    ds = rd.map_batches(ds, ckpt, _drop_multiples_of_3, batch_format="pandas", batch_size=7)
    ds = rd.map_batches(ds, ckpt, Duplicate, batch_format="numpy", fn_constructor_args=(2,), concurrency=1)
    summary = rd.write_parquet(ds, ckpt, str(out))
    assert summary.undrained == [] and summary.sources_completed == 20
    orphaned = scan(ckpt, out, grace=0).orphaned  # (once the first run has been quiet for the grace)
    assert len(orphaned) >= 20 and {o.run for o in orphaned} == {first_run}
    t = committed_table(str(tmp_path / "ckpt"), out)
    keys = list(zip(t.column("id").to_pylist(), t.column("copy").to_pylist()))
    assert len(keys) == len(set(keys)) == 2 * 400
    assert {i for i, _ in keys} == {i for i in range(600) if i % 3}
    assert "row_hash" not in t.column_names  # bookkeeping column dropped by default


def _double(batch: Any) -> Any:  # 1:1 in every batch format: adds y = 2 * id
    if isinstance(batch, pa.Table):
        return batch.append_column("y", pc.multiply(batch["id"], 2))
    batch["y"] = batch["id"] * 2  # a pandas DataFrame or a dict of numpy arrays
    return batch


ONE_TO_ONE_STEPS: dict[str, Callable[[Any], Any]] = {
    "map": lambda ds: ds.map(lambda r: {**r, "y": r["id"] * 2}),  # rows as dicts of Python ints
    "map_batches-pyarrow": lambda ds: ds.map_batches(_double, batch_format="pyarrow"),
    "map_batches-pandas": lambda ds: ds.map_batches(_double, batch_format="pandas"),
    "map_batches-numpy": lambda ds: ds.map_batches(_double, batch_format="numpy"),
    "add_column": lambda ds: ds.add_column("y", lambda b: pc.multiply(b["id"], 2), batch_format="pyarrow"),
    "select_columns": lambda ds: ds.add_column(
        "y", lambda b: pc.multiply(b["id"], 2), batch_format="pyarrow"
    ).select_columns(["row_hash", "id", "path", "y"]),
    "map-then-accounted-filter": lambda ds: ds.map(lambda r: {**r, "y": r["id"] * 2}),  # + rd.map_batches below
}


@pytest.mark.parametrize("step", list(ONE_TO_ONE_STEPS))
def test_file_level_write_after_a_native_one_to_one_step(cluster: None, tmp_path: Path, step: str) -> None:
    """Issue 22, defect 2: a plain 1:1 Ray Data step between read_parquet and write_parquet.

    Before the fix, ``ds.map`` turned Ray's uint64 ``row_hash`` into pickled Python
    objects and the write failed in ``_digest`` (``invalid literal for int()``). Every
    step must keep each row's hash: the output files are named by the digest of
    exactly the hashes plain Ray gives each file's rows.
    """
    from resumelog.ray_data._common import _SINK_KEY, _digest

    files = make_files(tmp_path / "in", 4, rows=25)
    ckpt = resumelog.open(str(tmp_path / "ckpt"))
    ds = ONE_TO_ONE_STEPS[step](rd.read_parquet(ckpt, files))
    kept = None
    if step == "map-then-accounted-filter":
        ds = rd.map_batches(ds, ckpt, lambda t: t.filter(pc.not_equal(pc.bit_wise_and(t["id"], 1), 1)), stage="even")
        kept = {i for i in range(100) if i % 2 == 0}
    summary = rd.write_parquet(ds, ckpt, str(tmp_path / "out"))
    assert summary.undrained == [] and summary.sources_completed == 4
    t = committed_table(str(tmp_path / "ckpt"), tmp_path / "out")
    assert sorted(t.column("id").to_pylist()) == sorted(kept if kept is not None else range(100))
    assert all(y == 2 * i for i, y in zip(t.column("id").to_pylist(), t.column("y").to_pylist()))
    assert "row_hash" not in t.column_names
    if kept is None:  # the row hashes survived the step: one file per source, named by Ray's own hashes
        ray_rows = ray.data.read_parquet(files, include_paths=True, include_row_hash=True).to_arrow_refs()
        plain = pa.concat_tables(ray.get(ray_rows))
        expected = set()
        for p in files:
            rows = plain.filter(pc.equal(plain["path"], p))
            assert rows.column("row_hash").type == pa.uint64()
            expected.add(output_name(ckpt.run_id, p, _SINK_KEY + _digest(rows), rd.PART_NAME))
        assert set(summary.files) == expected
    with pytest.raises(resumelog.NothingToDo):
        rd.read_parquet(resumelog.open(str(tmp_path / "ckpt")), files)


def test_a_step_dropping_row_hash_is_refused_before_anything_is_written(cluster: None, tmp_path: Path) -> None:
    """select_columns without ``row_hash``: refused at planning time (nothing runs); a
    batch function dropping it: refused by the first write task, before it writes."""
    files = make_files(tmp_path / "in", 3, rows=10)
    ckpt = resumelog.open(str(tmp_path / "ckpt"))
    ds = rd.read_parquet(ckpt, files)
    with pytest.raises(rd.UnfilterableDataset, match="lost the 'row_hash' column") as ei:
        rd.write_parquet(ds.select_columns(["id", "path"]), ckpt, str(tmp_path / "out"))
    assert isinstance(ei.value, resumelog.ResumelogError)
    with pytest.raises(rd.UnfilterableDataset, match="lost the 'row_hash' column"):
        rd.write_datasink(ds.rename_columns({"row_hash": "h"}), ckpt, CollectSink(str(tmp_path / "sink")))
    with pytest.raises(ray.exceptions.RayTaskError, match="lost the 'row_hash' column"):
        rd.write_parquet(ds.drop_columns(["row_hash"]), ckpt, str(tmp_path / "out"))
    assert list((tmp_path / "out").rglob("*.parquet")) == [] and not (tmp_path / "sink").exists()
    assert rd.pending_paths(resumelog.open(str(tmp_path / "ckpt")), files) == files


def test_row_hash_values_decode_every_type_a_step_can_leave() -> None:
    import numpy as np
    from ray.data._internal.object_extensions.arrow import ArrowPythonObjectArray

    from resumelog.ray_data._common import _digest, _normalize_row_hash, _row_hash_values

    u = np.array([0, 1, 2**63, 2**64 - 1, 12345], dtype=np.uint64)
    forms = {
        "uint64": pa.array(u),
        "int64": pa.array(u.view(np.int64)),
        "chunked": pa.chunked_array([pa.array(u[:2]), pa.array(u[2:])]),
        "pickled": ArrowPythonObjectArray.from_objects([int(v) for v in u]),
        "pickled-numpy": ArrowPythonObjectArray.from_objects(list(u)),
        "string": pa.array([str(int(v)) for v in u]),
        "binary8": pa.array([int(v).to_bytes(8, "little") for v in u], pa.binary(8)),
    }
    for name, col in forms.items():
        got = _row_hash_values(col)
        assert got is not None and got.tolist() == u.tolist(), name
        t = pa.table({"row_hash": col, "k": pa.array(range(5))})
        assert _normalize_row_hash(t).column("row_hash").type == pa.int64(), name
        assert _digest(t) == _digest(pa.table({"row_hash": pa.array(u), "k": pa.array(range(5))})), name
    assert _row_hash_values(pa.array([1.0, 2.0])) is None and _row_hash_values(pa.array([1, None])) is None


def test_generic_reader_without_row_hashes_and_empty_files(cluster: None, tmp_path: Path) -> None:
    import json

    d = tmp_path / "json"
    d.mkdir()
    paths = []
    for i in range(6):
        p = d / f"part-{i}.jsonl"
        p.write_text("".join(json.dumps({"id": i * 10 + j, "s": "x" * j}) + "\n" for j in range(10)))
        paths.append(str(p))
    empty = make_files(tmp_path / "pq", 1, rows=0)

    def count_lines(path: str) -> int:
        with open(path) as f:
            return sum(1 for _ in f)

    ckpt = resumelog.open(str(tmp_path / "ckpt"))
    ds = rd.read(ckpt, ray.data.read_json, paths, row_count=count_lines)
    ds = rd.map_batches(ds, ckpt, lambda t: t.filter(pc.greater(t["id"], 3)), stage="gt3")  # content digests
    summary = rd.write_parquet(ds, ckpt, str(tmp_path / "out"))
    assert summary.undrained == [] and summary.sources_completed == 6 and summary.rows == 56
    assert sorted(committed_table(str(tmp_path / "ckpt"), tmp_path / "out").column("id").to_pylist()) == list(
        range(4, 60)
    )
    # a file without rows is complete without being read
    with pytest.raises(resumelog.NothingToDo, match="had no rows"):
        rd.read_parquet(ckpt, empty)
    assert resumelog.open(str(tmp_path / "ckpt")).is_completed(empty[0])


# ---------------------------------------------------------------------- refusals


def test_a_step_that_adds_rows_without_row_hashes_is_refused() -> None:
    # Found by review: keyed by content, two batches of equal rows of one source (say,
    # duplicate lines of a JSONL file an explode step doubles) shared the key of their
    # +k, which the fold counts once; the source drained while rows of the second batch
    # were still unwritten. Refused before anything is recorded (no writer is needed).
    from resumelog.ray_data._accounting import _Accounting

    acc = _Accounting(None, "explode", "path", None, "pyarrow")  # type: ignore[arg-type]
    table = pa.table({"path": ["a.jsonl", "a.jsonl"], "text": ["xx", "xx"]})
    with pytest.raises(rd.UnfilterableDataset, match=r"adds rows to source 'a\.jsonl'.*no 'row_hash'"):
        acc(lambda t: pa.concat_tables([t, t]), table, (), {})
    assert acc(lambda t: t, table, (), {}) is not None  # the same count: nothing to record


def test_wiping_write_modes_and_unattributable_datasets_are_refused(cluster: None, tmp_path: Path) -> None:
    from ray.data import SaveMode

    files = make_files(tmp_path / "in", 3, rows=5)
    ckpt = resumelog.open(str(tmp_path / "ckpt"))
    ds = rd.read_parquet(ckpt, files)
    for mode in ("overwrite", SaveMode.OVERWRITE, "ignore", "error"):
        with pytest.raises(rd.UnsafeWriteMode, match="outputs of sources that earlier runs") as ei:
            rd.write_parquet(ds, ckpt, str(tmp_path / "out"), mode=mode)
        assert isinstance(ei.value, resumelog.ResumelogError) and isinstance(ei.value, ValueError)
    assert not (tmp_path / "out").exists()

    no_ids = ray.data.from_items([{"text": "a"}, {"text": "b"}])
    with pytest.raises(rd.UnfilterableDataset, match="no 'id' column"):
        rd.filter_completed(no_ids, ckpt, "id")
    with pytest.raises(rd.UnfilterableDataset, match="no 'path' column"):
        rd.write_parquet(no_ids, ckpt, str(tmp_path / "out"))
    with pytest.raises(rd.UnfilterableDataset, match="no 'path' column"):
        rd.write_datasink(no_ids, ckpt, CollectSink(str(tmp_path / "sink")))
    with pytest.raises(ValueError, match="filter"):
        rd.read_parquet(ckpt, files, filter=pc.field("id") > 2)
    with pytest.raises(ValueError, match="needs the read's row counts"):  # no read_parquet on this object
        rd.write_parquet(ds, resumelog.open(str(tmp_path / "ckpt")), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists() and not (tmp_path / "sink").exists()


# ---------------------------------------------------------------------- row level


def test_row_level_write_then_filter_completed(cluster: None, tmp_path: Path) -> None:
    ckpt = resumelog.open(str(tmp_path / "ckpt"))
    first = ray.data.range(1000).map_batches(lambda b: b.filter(pc.less(b["id"], 400)), batch_format="pyarrow")
    summary = rd.write_parquet(first, ckpt, str(tmp_path / "out"), id_column="id")
    assert summary.rows == 400
    ckpt = resumelog.open(str(tmp_path / "ckpt"))
    ids = [s for s in ckpt.completed if not s.startswith("ray_data:id-part:")]  # + one source per task's file
    assert len(ids) == 400 and ckpt.is_completed("399") and not ckpt.is_completed("400")
    assert len(ckpt.completed) - 400 == len(summary.files) == len(ckpt.outputs(tmp_path / "out"))
    written = committed_table(str(tmp_path / "ckpt"), tmp_path / "out").column("id").to_pylist()
    assert sorted(written) == list(range(400))

    left = rd.filter_completed(ray.data.range(1000), ckpt, "id")
    assert sorted(r["id"] for r in left.take_all()) == list(range(400, 1000))

    # string ids, some completed directly through a writer
    with ckpt.writer() as w:
        w.complete_many(f"doc-{i}" for i in range(0, 50, 2))
    items = ray.data.from_items([{"doc": f"doc-{i}", "n": i} for i in range(50)])
    kept = rd.filter_completed(items, ckpt, "doc").take_all()
    assert sorted(r["n"] for r in kept) == list(range(1, 50, 2))

    # nothing completed: the dataset is returned as is
    empty = resumelog.open(str(tmp_path / "empty"))
    assert rd.filter_completed(items, empty, "doc") is items


def test_id_matcher_is_vectorised_and_exact() -> None:
    from resumelog.ray_data import _IdMatcher

    ids = pa.array([str(i) for i in range(0, 200_000, 2)] + ["x", "-5"], pa.large_string())
    m = _IdMatcher(ids)  # > 65536 ids: the reusable hash index for strings
    ints = pa.chunked_array([pa.array([0, 1, 2, None, -5, 199_998, 200_000], pa.int64())])
    assert m.mask(ints).tolist() == [True, False, True, False, True, True, False]
    strs = pa.array(["x", "y", "4", None, "3"])
    assert m.mask(strs).tolist() == [True, False, True, False, False]
    small = _IdMatcher(pa.array(["a", "b"]))  # pyarrow.compute.is_in
    t = pa.table({"k": pa.array(["a", "c", "b", "d"], pa.large_string()), "n": [1, 2, 3, 4]})
    assert small.keep(t, "k").column("n").to_pylist() == [2, 4]
    assert _IdMatcher(pa.array([], pa.string())).mask(strs).tolist() == [False] * 5


# ---------------------------------------------------------------------- lists and ids (no Ray execution)


def test_pending_paths_uses_rays_path_form_and_source_id(tmp_path: Path) -> None:
    ckpt = resumelog.open(str(tmp_path / "ckpt"))
    with ckpt.writer() as w:
        w.complete("bucket/data/a.parquet")
        w.complete("b.parquet")
    paths = ["s3://bucket/data/a.parquet", "s3://bucket/data/b.parquet", "/x/c.parquet"]
    assert rd.pending_paths(ckpt, paths) == paths[1:]
    assert rd.pending_paths(ckpt, paths, source_id=os.path.basename) == [paths[0], paths[2]]
    assert rd.pending_paths(ckpt, "s3://bucket/data/a.parquet") == []


@pytest.mark.parametrize("block_bytes", [None, 256], ids=["one-block", "many-blocks"])
def test_completed_ids_zero_copy_matches_the_completed_view(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block_bytes: int | None
) -> None:
    if block_bytes is not None:
        monkeypatch.setattr(resumelog.layers, "BLOCK_BYTES", block_bytes)  # format 6: a few ids a block
    url = str(tmp_path / "ckpt")
    ckpt = resumelog.open(url)
    with ckpt.writer() as w:
        w.complete_many(f"s{i}" for i in range(1000))
    ckpt.compact()
    with ckpt.writer() as w:  # after the snapshot: additions and a reset
        w.complete_many(["new-1", "new-2", "é"])
    ckpt.reset(["s5", "s7"])
    ckpt = resumelog.open(url)
    arr = rd.completed_ids(ckpt)
    assert sorted(arr.to_pylist()) == sorted(ckpt.completed) and len(arr) == 1001
    fast = rd._completed_ids_fast(ckpt)  # the zero-copy path itself, not its fallback
    assert fast.type == pa.large_string() and sorted(fast.to_pylist()) == sorted(ckpt.completed)


# ---------------------------------------------------------------------- custom Datasink, V2 reader


class CollectSink(ray.data.Datasink):
    """Writes each task's rows to one JSON-lines file named by a hash of its ids (idempotent)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def on_write_start(self, schema: Any = None) -> None:
        os.makedirs(self.directory, exist_ok=True)

    def write(self, blocks: Any, ctx: Any) -> int:
        import hashlib
        import json

        from ray.data.block import BlockAccessor

        rows = [r for b in blocks for r in BlockAccessor.for_block(b).iter_rows(public_row_format=True)]
        if not rows:
            return 0
        name = hashlib.sha1(json.dumps(sorted(r["id"] for r in rows)).encode()).hexdigest()
        with open(os.path.join(self.directory, name + ".jsonl"), "w") as f:
            f.writelines(json.dumps({k: r[k] for k in ("id", "path")}) + "\n" for r in rows)
        assert all("row_hash" not in r for r in rows)  # bookkeeping column dropped before the inner sink
        return len(rows)


def test_custom_datasink_with_the_v2_reader(cluster: None, tmp_path: Path) -> None:
    import json

    ctx = ray.data.DataContext.get_current()
    ctx.use_datasource_v2 = True
    try:
        files = make_files(tmp_path / "in", 12, rows=9)
        ckpt = resumelog.open(str(tmp_path / "ckpt"))
        sink = CollectSink(str(tmp_path / "sink"))
        ds = rd.read_parquet(ckpt, files[:5])  # a first run does 5 files
        summary = rd.write_datasink(ds.map_batches(work(), batch_format="pyarrow"), ckpt, sink)
        assert summary.undrained == [] and summary.sources_completed == 5
        ckpt = resumelog.open(str(tmp_path / "ckpt"))
        assert rd.pending_paths(ckpt, files) == files[5:]
        summary = rd.write_datasink(rd.read_parquet(ckpt, files), ckpt, sink)
        assert summary.sources_completed == 7
    finally:
        ctx.use_datasource_v2 = False
    rows = [json.loads(line) for p in (tmp_path / "sink").iterdir() for line in p.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == list(range(12 * 9))
    with pytest.raises(resumelog.NothingToDo):
        rd.read_parquet(resumelog.open(str(tmp_path / "ckpt")), files)


# ---------------------------------------------------------------------- native CheckpointConfig


def test_native_checkpoint_config_with_resumelog_manager_and_filter(cluster: None, tmp_path: Path) -> None:
    files = make_files(tmp_path / "in", 40, rows=25)
    out = tmp_path / "out"
    native = tmp_path / "native-ckpt"
    ctx = ray.data.DataContext.get_current()
    ctx.checkpoint_config = rd.ResumelogCheckpointConfig(id_column="id", checkpoint_path=str(native))
    assert ctx.checkpoint_config.checkpoint_manager_cls is rd.ResumelogCheckpointManager
    assert ctx.checkpoint_config.checkpoint_filter_cls is rd.ResumelogCheckpointFilter

    def run(poison: int | None) -> None:
        ds = ray.data.read_parquet(files, override_num_blocks=8)
        ds.map_batches(work(poison), batch_format="pyarrow").write_parquet(str(out))

    try:
        with pytest.raises(ray.exceptions.RayError, match="poison row"):
            run(poison=26 * 25 + 3)
        written1 = out_table(out).column("id").to_pylist()
        committed = [p.name for p in native.glob("*.parquet")]
        assert 0 < len(written1) < 1000 and committed  # Ray's own per-block id files

        run(poison=None)  # resumes: the rows in Ray's id files are filtered out
        ids = out_table(out).column("id").to_pylist()
        assert len(ids) == len(set(ids)) == 1000 and sorted(ids) == list(range(1000))
        assert ray.get(rd.ResumelogCheckpointManager.last_ingest) == len(written1)  # the background fold
        assert not any(p.name in committed for p in native.glob("*.parquet"))  # folded, then deleted
        folded = resumelog.open(str(native / "_resumelog"))
        assert {int(i) for i in folded.completed} == set(written1)

        # finished: every row is filtered out, nothing is written (this time the fold blocks)
        ctx.checkpoint_config = rd.ResumelogCheckpointConfig(
            id_column="id", checkpoint_path=str(native), ingest="blocking"
        )
        before = listing(out)
        run(poison=None)
        assert listing(out) == before
        ck = resumelog.open(str(native / "_resumelog"))
        assert len(ck.completed) == 1000 and list(native.glob("*.parquet")) == []
        st = ck.status()
        assert st.snapshot_objects >= 1 and st.anomalies == 0
    finally:
        ctx.checkpoint_config = None


def test_native_filter_accepts_a_numpy_array_of_ids(cluster: None) -> None:
    import numpy as np

    cfg = rd.ResumelogCheckpointConfig(id_column="id", checkpoint_path="/tmp/unused-resumelog-test")
    f = rd.ResumelogCheckpointFilter(cfg, ray.put(np.array([1, 3, 5])))
    block = pa.table({"id": pa.array([1, 2, 3, 4], pa.int64())})
    assert f.filter_rows_for_block(block).column("id").to_pylist() == [2, 4]


@ray.remote(num_cpus=0)
def _filter_memory(cfg: Any, refs: list[Any], block: Any) -> tuple[int, int, list[str]]:
    """In a Ray worker, as Ray's filter actor: build the filter, filter one block; return the
    bytes Python allocations (objects and numpy arrays, not Arrow's pool) hold after it,
    their peak, and the ids kept."""
    import tracemalloc

    tracemalloc.start()
    f = rd.ResumelogCheckpointFilter(cfg, refs[0])  # (in a list: Ray passes the ref, not its value)
    kept = f.filter_rows_for_block(block).column("id").to_pylist()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return current, peak, kept


def test_native_filter_reports_and_holds_string_ids_without_a_python_object_each(cluster: None, tmp_path: Path) -> None:
    """Issue 22, defect 3: string ids were held as a pandas Index of Python strings (~166 MB
    per 1M ids) while the manager reported the Arrow nbytes (22.9 MB)."""
    n = 200_000  # above _LARGE_SET: the reusable index, not pyarrow's per-call is_in
    native = tmp_path / "native"
    native.mkdir()
    done = [f"doc-{i:07d}" for i in range(0, 2 * n, 2)]
    pq.write_table(pa.table({"id": pa.array(done)}), native / "ray-ids-0.parquet")  # as Ray's id files
    cfg = rd.ResumelogCheckpointConfig(id_column="id", checkpoint_path=str(native), ingest="blocking")
    mgr = rd.ResumelogCheckpointManager(checkpoint_config=cfg, data_context=ray.data.DataContext.get_current())
    ref, size = mgr.load_checkpoint()
    ids = ray.get(ref)
    assert len(ids) == n and ids.type == pa.large_string()
    # the size Ray reserves memory by (x1.5 per filter actor): the array plus the index at its peak
    # (hashes, argsort's order, positions: 20 bytes an id; 12 kept)
    assert size == ids.nbytes + 20 * n

    block = pa.table({"id": pa.array([f"doc-{i:07d}" for i in range(2 * n - 1000, 2 * n + 1000)] + ["", "doc"])})
    current, peak, kept = ray.get(_filter_memory.remote(cfg, [ref], block))
    assert kept == [f"doc-{i:07d}" for i in range(2 * n - 999, 2 * n, 2)] + [
        f"doc-{i:07d}" for i in range(2 * n, 2 * n + 1000)
    ] + ["", "doc"]
    # what Python holds after the build is the index (12 bytes an id), not an object per id
    # (a pandas Index of Python strings: ~60 bytes an id here); the build's peak is what the
    # manager reports beside the array (20 bytes an id) plus the fixed-size hashing chunk
    assert current <= 12 * n + 200_000, current
    assert peak <= 20 * n + 8_000_000, peak


def test_string_index_is_exact_under_hash_collisions_and_odd_strings() -> None:
    import numpy as np

    from resumelog.ray_data._filter import _string_hashes, _StringIndex

    ids = pa.array(["", "a", "abcdefgh", "abcdefghi", "é" * 9, "x" * 100, "doc-1"], pa.large_string())
    idx = _StringIndex(ids)
    probe = pa.array(["zz", "", "b", "abcdefgh", "abcdefghi", "é" * 9, "abcdefgh\x00", "x" * 99, "doc-1"])
    got = idx.mask(pc.cast(probe, pa.large_string()).slice(1))  # a slice: offsets not at 0
    assert got.tolist() == [True, False, True, True, True, False, False, True]
    h = _string_hashes(pc.cast(probe, pa.large_string()))
    assert len(np.unique(h)) == len(probe)
    # force collisions: every stored hash equal; only the string comparison decides
    idx.hashes[:] = 7
    idx.perm[:] = np.arange(len(ids), dtype=idx.perm.dtype)
    q = pa.array(["doc-1", "nope"], pa.large_string())
    real = _string_hashes(q)
    idx.hashes[:] = real[0]  # "doc-1" and "nope" probes: the first collides with all seven ids
    assert idx.mask(q).tolist() == [True, False]


# ---------------------------------------------------------------------- the example


def test_example_ray_data_parquet_interrupts_resumes_and_skips(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RESUMELOG_RUN_ID", "SLURM_ARRAY_JOB_ID")}
    script = ROOT / "examples" / "ray_data_parquet.py"
    args = ["--workdir", str(tmp_path), "--num-files", "60", "--rows-per-file", "20", "--fast-read"]
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=240, env=env)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    assert "phase 1: skipped 0 already complete" in out and "phase 1: reading 60 files" in out
    assert "phase 1: interrupted (simulated crash on id" in out
    done1 = int(out.split("phase 1: interrupted")[1].split("complete ")[1].split("/")[0])
    assert 0 < done1 < 60
    assert f"phase 2: skipped {done1} already complete" in out and f"phase 2: reading {60 - done1} files" in out
    assert "complete 60/60" in out
    assert "phase 3: skipped 60 already complete" in out and "read 0 files, wrote 0 files" in out
    expected = sum(1 for i in range(1200) if i % 7)
    assert f"output: {expected} rows, {expected} distinct ids, expected {expected}" in out
