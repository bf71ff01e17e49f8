"""Scenarios of NeMo Curator's unmerged PR #1931 (``tests/backends/xenna/
test_resumability_mock_pipeline.py``), ported to Curator 1.4 stages on resumelog.

The PR's 8-stage mock pipeline — ls (source) → read → passthrough → batched
passthrough → fan-out → passthrough → batched passthrough → write Parquet — with its
partition modes (``always_fail``: filtered to ``None``; ``filter``: half the rows;
``all``), run in-process through Curator's real ``Pipeline.build`` and
``BaseStageAdapter`` with :func:`resumelog.curator_backend.enable`. The PR's own
mechanisms map onto Curator 1.4 as follows:

* ``TransientDrop`` (drop this run, retry on resume) is 1.4's ``FailedTask`` from a
  non-source stage: ``test_transient_drop_not_marked_permanent``;
* "raise mid-run, resume completes": ``test_raise_mid_run_resumes``;
* per-parent attribution at a batched stage: ``batch_size=4`` variants;
* the PR's ``resumability_*`` metadata keys and their strip warning do not exist in
  1.4 (ids come from ``task_id``): not ported;
* the last-stage leaf skip (``_drop_completed_inputs``): 1.4's adapter has no seam
  before a stage runs; the drop-in wraps ``BaseStageAdapter.process_batch`` for it
  (``enable(..., leaf_resume=True)``): ``test_writer_dies_mid_partition_leaf_resume``
  here, the PR's unit cases in ``test_curator_port_leaf_skip.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from nemo_curator.backends.base import BaseStageAdapter
from nemo_curator.pipeline import Pipeline
from nemo_curator.stages.base import ProcessingStage
from nemo_curator.tasks import EmptyTask, FailedTask, Task

import resumelog.curator_backend as rcb

Factory = Callable[..., rcb.CuratorBackend]

ALL, ALWAYS_FAIL, FILTER, TRANSIENT = "all", "always_fail", "filter", "transient"
ROWS, FACTOR = 12, 3
CHILDREN = ROWS // FACTOR
DEFAULT_MODES = (ALWAYS_FAIL, FILTER, ALL, ALL)


@dataclass
class RowTask(Task[pd.DataFrame]):
    data: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def num_items(self) -> int:
        return len(self.data)

    def validate(self) -> bool:
        return True

    def get_deterministic_id(self) -> str | None:
        return self._metadata.get("partition")


@dataclass
class Ls(ProcessingStage[EmptyTask, RowTask]):
    modes: tuple[str, ...] = DEFAULT_MODES
    name: str = "1_ls"

    def inputs(self) -> tuple[list[str], list[str]]:
        return [], []

    def outputs(self) -> tuple[list[str], list[str]]:
        return [], []

    def process(self, _: EmptyTask) -> list[RowTask]:
        return [
            RowTask(
                dataset_name="demo",
                data=pd.DataFrame({"row_idx": range(ROWS), "src": [i] * ROWS}),
                # no "_" in a source's own id: Curator 1.4 takes it from the last
                # "_"-separated segment of the task id (Task.get_source_id)
                _metadata={"mode": m, "partition": f"part-{i}-{m.replace('_', '')}"},
            )
            for i, m in enumerate(self.modes)
        ]


class _Stage(ProcessingStage[RowTask, RowTask]):
    def inputs(self) -> tuple[list[str], list[str]]:
        return [], []

    def outputs(self) -> tuple[list[str], list[str]]:
        return [], []


def _pass(task: RowTask) -> RowTask | None:
    mode = task._metadata.get("mode")
    if mode == ALWAYS_FAIL:
        return None
    if mode == FILTER:
        task.data = task.data.iloc[: max(1, len(task.data) // 2)].reset_index(drop=True)
    return task


@dataclass
class Read(_Stage):
    name: str = "2_read_mock"

    def process(self, task: RowTask) -> RowTask:
        task.data = task.data.assign(value=list(range(len(task.data))))
        return task


@dataclass
class PassThrough(_Stage):
    name: str = "passthrough"

    def process(self, task: RowTask) -> RowTask | None:
        return _pass(task)


@dataclass
class PassThroughBatched(_Stage):
    """Overrides ``process_batch`` (vectorised), one output (or ``None``) per input."""

    name: str = "passthrough_batched"
    batch_size: int = 1

    def process(self, task: RowTask) -> RowTask:
        return task

    def process_batch(self, tasks: list[RowTask]) -> list[RowTask | None]:
        return [_pass(t) for t in tasks]


@dataclass
class FanOut(_Stage):
    name: str = "5_fanout"

    def process(self, task: RowTask) -> list[RowTask]:
        n = max(1, len(task.data) // FACTOR)
        chunk = max(1, -(-len(task.data) // n))
        return [
            RowTask(
                dataset_name="demo", data=task.data.iloc[i * chunk : (i + 1) * chunk], _metadata=dict(task._metadata)
            )
            for i in range(n)
            if len(task.data.iloc[i * chunk : (i + 1) * chunk])
        ]


@dataclass
class Once(_Stage):
    """Raises (``how="raise"``) or returns a FailedTask (``how="failed"``, the PR's
    ``TransientDrop``) the first time per task it is asked to, marker files on disk."""

    markers: str = ""
    how: str = "raise"
    target_mode: str = TRANSIENT
    target_partition: str = ""
    name: str = "once"

    def process(self, task: RowTask) -> RowTask | FailedTask:
        hit = task._metadata.get("mode") == self.target_mode or task._metadata.get("partition") == self.target_partition
        # the PR marks a raise once per partition, a transient drop once per task
        marker = Path(self.markers, f"{self.target_partition if self.how == 'raise' else task.task_id}.seen")
        if hit and not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
            if self.how == "raise":
                raise RuntimeError(f"injected failure for {task.task_id}")
            return FailedTask()
        return task


@dataclass
class WriteParquet(_Stage):
    """The last stage; with ``die_after`` it raises once (marker file ``markers``)
    when it is about to write a ``die_after + 1``-th file of partition ``die_in``."""

    out_dir: str = ""
    name: str = "8_write"
    die_in: str = ""
    die_after: int = 0
    markers: str = ""

    def process(self, task: RowTask) -> RowTask:
        out = Path(self.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        part = task._metadata["partition"]
        if part == self.die_in and len(list(out.glob(f"{part}-*.parquet"))) >= self.die_after:
            marker = Path(self.markers, "writer-died")
            if not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
                raise RuntimeError(f"writer died in {part}")
        task.data.to_parquet(out / f"{part}-{task.task_id}.parquet", index=False)
        return task


def _pipeline(
    out: Path,
    batch: int = 1,
    modes: tuple[str, ...] = DEFAULT_MODES,
    extra: list[Any] | None = None,
    writer: WriteParquet | None = None,
) -> Any:
    p = Pipeline(name="resumability_mock")
    for s in [
        Ls(modes=modes),
        Read(),
        PassThrough(name="3_passthrough"),
        PassThroughBatched(name="4_passthrough_batched", batch_size=batch),
        FanOut(),
        *(extra or []),
        PassThrough(name="6_passthrough"),
        PassThroughBatched(name="7_passthrough_batched", batch_size=batch),
        writer or WriteParquet(out_dir=str(out)),
    ]:
        p.add_stage(s)
    p.build()  # Curator's own decomposition and source/sink roles
    return p


def _execute(pipeline: Any) -> list[Task]:
    """Curator's stage loop in-process: every stage through the real adapter, in
    batches of its ``batch_size``, breadth first (as the actor-pool executor)."""
    tasks: list[Task] = [EmptyTask()]
    for stage in pipeline.stages:
        adapter = BaseStageAdapter(stage)
        n = stage.batch_size or 1
        out: list[Task] = []
        for i in range(0, len(tasks), n):
            out += adapter.process_batch(tasks[i : i + n])
        tasks = out
    return tasks


def _partitions(modes: tuple[str, ...] = DEFAULT_MODES) -> list[str]:
    return [f"part-{i}-{m.replace('_', '')}" for i, m in enumerate(modes)]


@pytest.mark.parametrize("batch", [1, 4])
def test_resumability_full_coverage(tmp_path: Path, backend_factory: Factory, batch: int) -> None:
    out = tmp_path / "out"
    b = backend_factory(on_nothing_to_do="ignore")
    _execute(_pipeline(out, batch))
    files = sorted(p.name for p in out.glob("*.parquet"))
    assert not [f for f in files if "alwaysfail" in f]
    assert len([f for f in files if "-all-" in f]) == 2 * CHILDREN
    assert len([f for f in files if "-filter-" in f]) == 1  # 12 -> 6 -> 3 rows: one child
    b.checkpoint.refresh()
    assert [b.checkpoint.is_completed(p) for p in _partitions()] == [True] * 4  # always_fail too

    backend_factory(on_nothing_to_do="ignore")  # resume: nothing is written again
    before = {p: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    assert _execute(_pipeline(out, batch)) == []
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.parquet")} == before


def test_raise_mid_run_resumes(tmp_path: Path, backend_factory: Factory) -> None:
    out, modes = tmp_path / "out", (ALL, ALL, ALL, ALL)
    extra = [Once(markers=str(tmp_path / "m"), how="raise", target_mode="", target_partition="part-2-all")]
    b1 = backend_factory()
    with pytest.raises(RuntimeError, match="injected failure"):
        _execute(_pipeline(out, modes=modes, extra=extra))
    b1.checkpoint.refresh()
    assert not b1.checkpoint.is_completed("part-2-all")

    b2 = backend_factory()
    _execute(_pipeline(out, modes=modes, extra=extra))
    b2.checkpoint.refresh()
    assert [b2.checkpoint.is_completed(p) for p in _partitions(modes)] == [True] * 4


def test_transient_drop_not_marked_permanent(tmp_path: Path, backend_factory: Factory) -> None:
    out, modes = tmp_path / "out", (TRANSIENT, TRANSIENT, ALL, ALL)
    extra = [Once(markers=str(tmp_path / "m"), how="failed")]
    b1 = backend_factory()
    _execute(_pipeline(out, modes=modes, extra=extra))
    b1.checkpoint.refresh()
    assert [b1.checkpoint.is_completed(p) for p in _partitions(modes)] == [False, False, True, True]
    before = set(out.glob("*.parquet"))

    b2 = backend_factory()
    _execute(_pipeline(out, modes=modes, extra=extra))
    new = set(out.glob("*.parquet")) - before
    assert new and all("transient" in p.name for p in new)
    b2.checkpoint.refresh()
    assert [b2.checkpoint.is_completed(p) for p in _partitions(modes)] == [True] * 4


@pytest.mark.parametrize("leaf_resume", [False, True])
def test_writer_dies_mid_partition_leaf_resume(tmp_path: Path, backend_factory: Factory, leaf_resume: bool) -> None:
    """The writer dies after 2 of the 4 files of ``part-2-all``. On resume the source
    reruns; with ``leaf_resume`` its 2 written files are not written again (the PR's
    last-stage skip) and the partition still completes."""
    out, modes = tmp_path / "out", (ALL, ALL, ALL, ALL)
    writer = WriteParquet(out_dir=str(out), die_in="part-2-all", die_after=2, markers=str(tmp_path / "m"))
    b1 = backend_factory()
    with pytest.raises(RuntimeError, match="writer died in part-2-all"):
        _execute(_pipeline(out, modes=modes, writer=writer))
    b1.checkpoint.refresh()
    assert [b1.checkpoint.is_completed(p) for p in _partitions(modes)] == [True, True, False, False]
    written = {p.name: p.stat().st_mtime_ns for p in out.glob("part-2-all-*.parquet")}
    assert len(written) == 2

    b2 = backend_factory(leaf_resume=leaf_resume)
    _execute(_pipeline(out, modes=modes, writer=writer))
    b2.checkpoint.refresh()
    assert [b2.checkpoint.is_completed(p) for p in _partitions(modes)] == [True] * 4
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("part-2-all-*.parquet")}
    assert len(after) == CHILDREN
    rewritten = {n for n, t in written.items() if after[n] != t}
    assert rewritten == (set() if leaf_resume else set(written))
