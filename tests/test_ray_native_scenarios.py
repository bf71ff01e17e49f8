"""Ray Data's own native-checkpointing scenarios, run against resumelog's classes.

Ported from Ray's ``python/ray/data/tests/test_checkpoint.py`` (repository
``ray-project/ray``), the version whose API matches the installed Ray 2.60 (commit
``b7f4259e944bf6959f721b106adc366ddfa0c356``: ``IdColumnCheckpointManager``,
``NumpyArrayBasedCheckpointFilter``, ``checkpoint_manager_cls``; newer versions add
generated ids, older ones have ``BatchBasedCheckpointFilter``). Only the scenarios that
run a configured pipeline or call the configured manager/filter are ported; each runs
with :class:`resumelog.ray_data.ResumelogCheckpointConfig` (resumelog's manager and
filter) for both ``delete_checkpoint_on_success`` settings and asserts what stock Ray
gives for that setting. Local storage only (Ray's S3 variants need its moto fixtures);
one local Ray cluster for the module, 10-row datasets as in Ray's file.

"Checkpointed ids" here are the ids in Ray's committed id files plus those resumelog
folded into ``<checkpoint_path>/_resumelog``: the set the next run skips.

Not ported: ``test_partial_failure_no_duplicates*`` (they restart Ray mid-test),
config-validation and 2PC-writer unit tests (they never reach resumelog's classes).
"""

from __future__ import annotations

import csv
import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402
from ray.data.checkpoint.checkpoint_writer import (  # noqa: E402
    PENDING_CHECKPOINT_SUFFIX,
    BatchBasedCheckpointWriter,
)

import resumelog  # noqa: E402
import resumelog.ray_data as rd  # noqa: E402

pytestmark = pytest.mark.ray

ID_COL = "id"
SAMPLE_DATA_NUM_ROWS = 10
DELETE = pytest.mark.parametrize("delete", [True, False], ids=["delete-on-success", "keep"])


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """One local Ray cluster for the module (Ray's file uses ``ray_start_10_cpus_shared``)."""
    started = not ray.is_initialized()
    if started:
        from resumelog.testing.ray import init_local_ray

        init_local_ray(num_cpus=2, log_to_driver=False, logging_level="ERROR")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    if started:
        ray.shutdown()


@pytest.fixture
def ctx(cluster: None) -> Iterator[Any]:
    """The current DataContext, restored after the test (Ray's ``restore_data_context``)."""
    c = ray.data.DataContext.get_current()
    saved = (
        c.checkpoint_config,
        c.enable_progress_bars,
        c.raise_original_map_exception,
        c.execution_options.preserve_order,
    )
    c.enable_progress_bars = False
    rd.ResumelogCheckpointManager.last_ingest = None  # another module's, maybe of another Ray session
    yield c
    (
        c.checkpoint_config,
        c.enable_progress_bars,
        c.raise_original_map_exception,
        c.execution_options.preserve_order,
    ) = saved


def config(path: Path | str, delete: bool, id_column: str = ID_COL) -> Any:
    return rd.ResumelogCheckpointConfig(
        id_column=id_column, checkpoint_path=str(path), delete_checkpoint_on_success=delete
    )


def sample_csv(d: Path, id_type: str = "int") -> str:
    ids: list[Any] = (
        [f"id_{i}" for i in range(SAMPLE_DATA_NUM_ROWS)] if id_type == "str" else list(range(SAMPLE_DATA_NUM_ROWS))
    )
    p = d / "sample_data.csv"
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[ID_COL, "col1"])
        w.writeheader()
        w.writerows({ID_COL: i, "col1": random.random()} for i in ids)
    return str(p)


def sample_parquet(d: Path) -> str:
    """10 rows in three uneven row groups, as Ray's fixture."""
    out = d / "sample_data_parquet"
    out.mkdir(exist_ok=True)
    t = pa.table({ID_COL: list(range(SAMPLE_DATA_NUM_ROWS)), "col1": [random.random() for _ in range(10)]})
    pq.write_table(t, out / "sample_data.parquet", row_group_size=max(1, SAMPLE_DATA_NUM_ROWS // 3))
    return str(out)


def checkpointed_ids(cfg: Any) -> list[Any]:
    """Ids the next run would skip: Ray's committed id files plus resumelog's folded ids."""
    root = Path(cfg.checkpoint_path)
    ids: list[Any] = []
    if root.is_dir():
        for p in root.iterdir():
            if (
                p.is_file()
                and p.name.endswith(".parquet")
                and not p.name.endswith(PENDING_CHECKPOINT_SUFFIX + ".parquet")
            ):
                ids.extend(pq.read_table(p).column(cfg.id_column).to_pylist())
    if (root / "_resumelog").is_dir():
        for s in resumelog.open(str(root / "_resumelog")).completed:
            ids.append(int(s) if s.lstrip("-").isdigit() else s)
    return sorted(set(ids), key=str)


def settle() -> None:
    """Wait for the last background fold of Ray's id files (resumelog's ingest task)."""
    if rd.ResumelogCheckpointManager.last_ingest is not None:
        ray.get(rd.ResumelogCheckpointManager.last_ingest)
        rd.ResumelogCheckpointManager.last_ingest = None


def read_back(path: str) -> list[Any]:
    files = sorted(Path(path).rglob("*.parquet")) if Path(path).exists() else []
    return [v for f in files for v in pq.read_table(f).column(ID_COL).to_pylist()]


def no_checkpoint_left(cfg: Any) -> bool:
    root = Path(cfg.checkpoint_path)
    return not root.exists() or not any(p for p in root.rglob("*") if p.is_file())


def passthrough(batch: Any) -> Any:
    """Ray's scenarios use a passthrough *actor* (``TestActor``); on 2 CPUs an actor pool
    stage beside the 1-CPU checkpoint filter actor starves the read, so a task stage."""
    return batch


# ---------------------------------------------------------------------- end to end


@DELETE
def test_checkpoint_end_to_end(ctx: Any, tmp_path: Path, delete: bool) -> None:
    """Ray: ``test_checkpoint_end_to_end`` (local backend). Ids 0-4 checkpointed beforehand."""
    ckpt = tmp_path / "test_checkpoint_output_files"
    ctx.checkpoint_config = config(ckpt, delete)
    ckpt.mkdir()
    pq.write_table(pa.table({ID_COL: list(range(5))}), ckpt / "pre_checkpoint.parquet")
    out = str(tmp_path / "output")
    ray.data.read_csv(sample_csv(tmp_path)).map_batches(passthrough).write_parquet(out)
    settle()
    if delete:
        assert no_checkpoint_left(ctx.checkpoint_config)
    else:
        assert checkpointed_ids(ctx.checkpoint_config) == list(range(10))
    ctx.checkpoint_config = None
    assert sorted(read_back(out)) == [5, 6, 7, 8, 9]


@DELETE
def test_full_dataset_executed_for_non_write(ctx: Any, tmp_path: Path, delete: bool) -> None:
    """Ray: ``schema()`` and ``count()`` of a fully checkpointed dataset skip nothing."""
    ctx.checkpoint_config = config(tmp_path / "test_checkpoint_output_files", delete)
    src = sample_parquet(tmp_path)
    ds = ray.data.read_parquet(src).map(lambda row: row)
    schema_before, count_before = ds.schema(), ds.count()
    ds.write_parquet(str(tmp_path / "output"))
    settle()
    ds2 = ray.data.read_parquet(src).map(lambda row: row)
    assert ds2.schema() == schema_before
    assert ds2.count() == count_before == SAMPLE_DATA_NUM_ROWS


@ray.remote(num_cpus=0)
class Coordinator:
    def __init__(self) -> None:
        self.should_fail = True

    def disable_failure(self) -> None:
        self.should_fail = False

    def get(self) -> bool:
        return self.should_fail


class ScenarioError(Exception):
    pass


class FailActor:
    """Ray's passthrough actor failing on row 2 while the coordinator says so."""

    def __init__(self, coordinator: Any, id_col: str) -> None:
        self.should_fail = ray.get(coordinator.get.remote())
        self.id_col = id_col

    def __call__(self, batch: Any) -> Any:
        for i in batch[self.id_col]:
            if self.should_fail and i == 2:
                raise ScenarioError(f"FailActor: Failing on row {i}")
        return batch


@DELETE
def test_recovery_no_missing_rows(ctx: Any, tmp_path: Path, delete: bool) -> None:
    """Ray: a run failing midway, rerun: no row missing (at least once)."""
    ctx.execution_options.preserve_order = True
    ckpt = tmp_path / "test_checkpoint_output_files"
    ckpt.mkdir()
    ctx.checkpoint_config = config(ckpt, delete)
    ctx.raise_original_map_exception = True
    coordinator = Coordinator.remote()  # type: ignore[attr-defined]
    out = str(tmp_path / "output")
    ds = ray.data.read_parquet(sample_parquet(tmp_path))
    n = ds.count()
    ds = ds.map_batches(
        FailActor, fn_constructor_args=[coordinator, ID_COL], concurrency=1, batch_size=None, num_cpus=0.5
    )
    with pytest.raises(ScenarioError):
        ds.write_parquet(out, concurrency=1)
    ray.get(coordinator.disable_failure.remote())
    ds.write_parquet(out, concurrency=1)
    settle()
    if delete:
        assert checkpointed_ids(ctx.checkpoint_config) == []
    else:
        assert checkpointed_ids(ctx.checkpoint_config) == list(range(n))
    ctx.checkpoint_config = None
    assert set(read_back(out)) == set(range(n))


@DELETE
def test_manual_checkpoint_filters_ids(ctx: Any, tmp_path: Path, delete: bool) -> None:
    """Ray: ids written with Ray's own checkpoint writer are filtered out."""
    ctx.checkpoint_config = config(tmp_path / "test_manual_checkpoint_files", delete)
    from ray.data.block import BlockAccessor

    BatchBasedCheckpointWriter(ctx.checkpoint_config).write_block_checkpoint(
        BlockAccessor.for_block(pa.table({ID_COL: [1, 3, 7]}))
    )
    assert checkpointed_ids(ctx.checkpoint_config) == [1, 3, 7]
    out = str(tmp_path / "output")
    ray.data.read_parquet(sample_parquet(tmp_path)).write_parquet(out)
    settle()
    ctx.checkpoint_config = None
    assert sorted(read_back(out)) == [0, 2, 4, 5, 6, 8, 9]


@ray.remote(num_cpus=0)
class FailController:
    def __init__(self) -> None:
        self.fail = True

    def should_fail(self) -> bool:
        return self.fail

    def disable_failure(self) -> None:
        self.fail = False


def _fail_once_sink(path: str, controller: Any) -> Any:
    from ray.data.datasource import BlockBasedFileDatasink

    class FailOnceCSVDatasink(BlockBasedFileDatasink):  # type: ignore[misc]
        def write_block_to_file(self, block: Any, file: Any) -> None:
            if ray.get(controller.should_fail.remote()):
                file.write(b"id\n0\n")  # a partial file, then the failure
                raise RuntimeError("Simulated write failure")
            block.to_pandas().to_csv(file, index=False)

    return FailOnceCSVDatasink(path, file_format="csv")


@DELETE
def test_2pc_fail_retry_cleans_pending_checkpoints(ctx: Any, tmp_path: Path, delete: bool) -> None:
    """Ray: a write failing after its pending id file; the rerun cleans it and its data."""
    ctx.raise_original_map_exception = True
    ckpt = tmp_path / "checkpoint"
    ckpt.mkdir()
    out = str(tmp_path / "output")
    ctx.checkpoint_config = config(ckpt, delete)
    controller = FailController.remote()  # type: ignore[attr-defined]
    sink = _fail_once_sink(out, controller)
    ds = ray.data.range(SAMPLE_DATA_NUM_ROWS, override_num_blocks=1)
    with pytest.raises(RuntimeError, match="Simulated write failure"):
        ds.write_datasink(sink, ray_remote_args={"max_retries": 0})
    assert [p for p in os.listdir(ckpt) if p.endswith(f"{PENDING_CHECKPOINT_SUFFIX}.parquet")]
    ray.get(controller.disable_failure.remote())
    ds.write_datasink(sink, ray_remote_args={"max_retries": 0})
    settle()
    if ckpt.exists():
        assert [p for p in os.listdir(ckpt) if p.endswith(f"{PENDING_CHECKPOINT_SUFFIX}.parquet")] == []
    ctx.checkpoint_config = None
    rows = [int(line) for p in Path(out).glob("*.csv") for line in p.read_text().split()[1:]]
    assert sorted(rows) == list(range(SAMPLE_DATA_NUM_ROWS))


@DELETE
def test_skip_checkpoint_flag(ctx: Any, tmp_path: Path, delete: bool) -> None:
    """Ray: ``schema()``/``count()`` write no checkpoint; the write does (10 ids, unless deleted)."""
    ctx.checkpoint_config = config(tmp_path / "test_checkpoint_output_files", delete)
    csv_file = sample_csv(tmp_path)
    ds = ray.data.read_csv(csv_file).map(lambda row: row)
    assert ds.schema() is not None
    assert checkpointed_ids(ctx.checkpoint_config) == []
    ds = ray.data.read_csv(csv_file).map(lambda row: row)
    assert ds.count() is not None
    assert checkpointed_ids(ctx.checkpoint_config) == []
    ds.write_parquet(str(tmp_path / "output"))
    settle()
    assert len(checkpointed_ids(ctx.checkpoint_config)) == (0 if delete else SAMPLE_DATA_NUM_ROWS)


def test_checkpoint_with_missing_id_column(ctx: Any, tmp_path: Path) -> None:
    """Ray: an id column absent from the data fails the write with Ray's message."""
    ctx.checkpoint_config = config(tmp_path / "ckpt", False, id_column="nonexistent_column")
    ds = ray.data.read_csv(sample_csv(tmp_path)).map(lambda row: row)
    with pytest.raises(ValueError, match="ID column nonexistent_column is absent in the block to be written"):
        ds.write_parquet(str(tmp_path / "output"))


@DELETE
def test_checkpoint_restore_after_full_execution(ctx: Any, tmp_path: Path, delete: bool) -> None:
    """Ray: a second run of a finished pipeline writes nothing while the checkpoint is kept
    (Ray's scenario sets ``delete_checkpoint_on_success=False``); with ``True`` the
    checkpoint is gone and the second run writes every row again."""
    src = sample_parquet(tmp_path)
    out = str(tmp_path / "output")
    ctx.checkpoint_config = config(tmp_path / "checkpoint", delete)
    ray.data.read_parquet(src).write_parquet(out)
    settle()
    first = len(read_back(out))
    assert first == SAMPLE_DATA_NUM_ROWS
    assert (tmp_path / "checkpoint").exists() != delete
    ray.data.read_parquet(src).write_parquet(out)
    settle()
    assert len(read_back(out)) - first == (SAMPLE_DATA_NUM_ROWS if delete else 0)


@DELETE
def test_checkpoint_with_string_typed_id(ctx: Any, tmp_path: Path, delete: bool) -> None:
    """Ray: string ids, half of them checkpointed beforehand."""
    ckpt = tmp_path / "test_checkpoint_output_files"
    ckpt.mkdir()
    ctx.checkpoint_config = config(ckpt, delete)
    done = [f"id_{i}" for i in range(SAMPLE_DATA_NUM_ROWS // 2)]
    pq.write_table(pa.table({ID_COL: done}), ckpt / "pre_checkpoint.parquet")
    out = str(tmp_path / "output")
    ray.data.read_csv(sample_csv(tmp_path, "str")).map_batches(passthrough).write_parquet(out)
    settle()
    ctx.checkpoint_config = None
    assert sorted(read_back(out)) == [f"id_{i}" for i in range(5, 10)]


# ---------------------------------------------------------------------- planning, filter, cleanup


def _plan_read(ctx: Any, tmp_path: Path) -> Any:
    from ray.data._internal.datasource.csv_datasource import CSVDatasource
    from ray.data._internal.logical.operators import Read
    from ray.data._internal.planner.checkpoint.plan_read_op import plan_read_op_with_checkpoint_filter

    datasource = CSVDatasource(sample_csv(tmp_path))
    read_op = Read(datasource, datasource, -1, None)
    return plan_read_op_with_checkpoint_filter(None, None, op=read_op, physical_children=[], data_context=ctx)


@DELETE
def test_plan_read_op_with_checkpoint_filter(ctx: Any, tmp_path: Path, delete: bool) -> None:
    """Ray: no checkpoint directory or an empty one plans the bare read; ids plan a
    ``CheckpointFilter`` operator."""
    from ray.data._internal.execution.operators.map_operator import MapOperator

    ctx.checkpoint_config = config(tmp_path / "non_existent_ckpt_dir", delete)
    assert _plan_read(ctx, tmp_path).name == "ReadCSV"
    (tmp_path / "empty_ckpt_dir").mkdir()
    ctx.checkpoint_config = config(tmp_path / "empty_ckpt_dir", delete)
    assert _plan_read(ctx, tmp_path).name == "ReadCSV"
    valid = tmp_path / "valid_ckpt_dir"
    valid.mkdir()
    pq.write_table(pa.table({ID_COL: list(range(5))}), valid / "ckpt_0.parquet")
    ctx.checkpoint_config = config(valid, delete)
    op = _plan_read(ctx, tmp_path)
    settle()
    assert isinstance(op, MapOperator) and op.name == "CheckpointFilter"


def test_filter_rows_for_block(ctx: Any) -> None:
    """Ray: the filter drops checkpointed ids (a NumPy array of ids, as Ray's manager gives)."""
    import numpy as np

    cfg = config("/mock/path", False)
    block = pa.table({ID_COL: list(range(10)), "data": [str(i) for i in range(10)]})
    ref = ray.put(np.concatenate([np.array([1, 2, 4]), np.array([6, 8, 9, 11]), np.array([12, 13])]))
    got = rd.ResumelogCheckpointFilter(cfg, ref).filter_rows_for_block(block=block)
    assert got.equals(pa.table({ID_COL: [0, 3, 5, 7], "data": ["0", "3", "5", "7"]}))


def test_checkpoint_map_transformer(ctx: Any, tmp_path: Path) -> None:
    """Ray: the filter operator's transformer, built from the config's filter class."""
    import numpy as np
    from ray.data._internal.execution.interfaces import TaskContext
    from ray.data._internal.execution.operators.map_transformer import TransformClock
    from ray.data._internal.planner.checkpoint.plan_read_op import _get_checkpoint_map_transformer

    ctx.checkpoint_config = config(tmp_path / "test_checkpoint_output_files", True)
    transformer = _get_checkpoint_map_transformer(ctx, ray.put(np.array([1, 3, 5, 7, 9], dtype=np.int64)))
    transformer.init()
    block = pa.table({ID_COL: list(range(10)), "data": [str(i) for i in range(10)]})
    task = TaskContext(task_idx=0, op_name="t")  # (Ray 2.60 adds the clock argument)
    out = next(iter(transformer.apply_transform(input_blocks=[block], ctx=task, clock=TransformClock())))
    assert out.equals(pa.table({ID_COL: [0, 2, 4, 6, 8], "data": ["0", "2", "4", "6", "8"]}))


@pytest.mark.parametrize("data_file_exists", [True, False])
def test_clean_pending_checkpoint(ctx: Any, tmp_path: Path, data_file_exists: bool) -> None:
    """Ray: the manager's cleanup deletes a pending id file and the data file it names."""
    ckpt, data = tmp_path / "checkpoint", tmp_path / "data"
    ckpt.mkdir()
    data.mkdir()
    ctx.checkpoint_config = config(ckpt, False)
    pending = BatchBasedCheckpointWriter(ctx.checkpoint_config).write_pending_checkpoint(
        pa.table({ID_COL: [0]})[ID_COL], checkpoint_id="test_000000_000000"
    )
    assert pending is not None and os.path.exists(pending.pending_path)
    data_file = data / "test_000000_000000.csv"
    if data_file_exists:
        data_file.write_bytes(b"id\n0\n")
    mgr = rd.ResumelogCheckpointManager(checkpoint_config=ctx.checkpoint_config, data_context=ctx)
    mgr._clean_pending_checkpoints(str(data), ctx.checkpoint_config.filesystem)
    assert not data_file.exists()
    assert not os.path.exists(pending.pending_path)
