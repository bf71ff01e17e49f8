"""Port of NeMo Curator 1.4's ``tests/backends/test_resumability_functional.py``.

Curator drives the real ``BaseStageAdapter`` against a real LMDB actor over two runs
sharing a checkpoint directory; here the same stages, inputs and expected outcomes
run through the real adapter with :func:`resumelog.curator_backend.enable` (each
"new actor" of the original is a new run on the same checkpoint). Nothing of
Curator is mocked: the three client functions are resumelog's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from nemo_curator.backends.base import BaseStageAdapter
from nemo_curator.stages.base import ProcessingStage
from nemo_curator.tasks import EmptyTask, FailedTask, Task

import resumelog.curator_backend as rcb

Factory = Callable[..., rcb.CuratorBackend]


@dataclass
class _IntTask(Task[int]):
    data: int = 0

    @property
    def num_items(self) -> int:
        return 1

    def validate(self) -> bool:
        return True


@dataclass
class _Source(ProcessingStage[EmptyTask, _IntTask]):
    name: str = "source"
    n: int = 0
    is_source_stage: bool = True

    def inputs(self) -> tuple[list[str], list[str]]:
        return [], []

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], []

    def process(self, _: EmptyTask) -> list[_IntTask]:
        return [_IntTask(data=i, dataset_name="d") for i in range(self.n)]


@dataclass
class _Sink(ProcessingStage[_IntTask, _IntTask]):
    name: str = "sink"
    is_sink_stage: bool = True
    fail: tuple[int, ...] = ()
    none: tuple[int, ...] = ()
    newobj: bool = False

    def inputs(self) -> tuple[list[str], list[str]]:
        return ["data"], []

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], []

    def process(self, task: _IntTask) -> _IntTask | FailedTask | None:
        if task.data in self.fail:
            return FailedTask()
        if task.data in self.none:
            return None
        return _IntTask(data=task.data, dataset_name="d") if self.newobj else task


def _run(n: int, **sink_kwargs: object) -> tuple[list[str], list[str]]:
    """One source→sink pass through the real adapters (as in Curator's test)."""
    src_out = BaseStageAdapter(_Source(n=n)).process_batch([EmptyTask()])
    src_ids = sorted(t._source_id for t in src_out)
    sink_out = BaseStageAdapter(_Sink(**sink_kwargs)).process_batch(src_out)  # type: ignore[arg-type]
    return src_ids, sorted(t._source_id for t in sink_out)


def _done(b: rcb.CuratorBackend, ids: list[str]) -> list[bool]:
    b.checkpoint.refresh()
    return [b.checkpoint.is_completed(s) for s in ids]


class TestResumeLoop:
    def test_completed_skip_and_failed_reruns(self, backend_factory: Factory) -> None:
        a1 = backend_factory()
        src1, _ = _run(n=3, fail=(1,))
        assert src1 == ["0", "1", "2"]
        assert _done(a1, ["0", "1", "2"]) == [True, False, True]

        a2 = backend_factory()  # a new run on the same checkpoint
        src2, sink2 = _run(n=3)
        assert src2 == ["1"]
        assert sink2 == ["1"]
        assert _done(a2, ["0", "1", "2"]) == [True, True, True]

    def test_new_object_sink_completes(self, backend_factory: Factory) -> None:
        a1 = backend_factory()
        _run(n=3, newobj=True)
        assert _done(a1, ["0", "1", "2"]) == [True, True, True]

        # Curator's second run returns [] from the source stage; resumelog raises its
        # nothing-to-do error by default (a ValueError), or returns [] with "ignore".
        backend_factory(on_nothing_to_do="ignore")
        src2, _ = _run(n=3, newobj=True)
        assert src2 == []

    def test_none_filtered_source_completes(self, backend_factory: Factory) -> None:
        a1 = backend_factory()
        _, sink1 = _run(n=3, none=(1,))
        assert sink1 == ["0", "2"]
        assert _done(a1, ["0", "1", "2"]) == [True, True, True]

        backend_factory(on_nothing_to_do="ignore")
        src2, _ = _run(n=3, none=(1,))
        assert src2 == []


def test_nothing_to_do_raises_a_value_error(backend_factory: Factory, tmp_path: Path) -> None:
    """Parity: every source complete → Curator's error type (``ValueError``, "No tasks
    to process"), here from the source stage, whatever the executor."""
    backend_factory()
    _run(n=2)
    backend_factory()
    with pytest.raises(ValueError, match="No tasks to process") as ei:
        _run(n=2)
    assert isinstance(ei.value, rcb.CuratorNothingToDo)


@dataclass
class _Keyed(_IntTask):
    def get_deterministic_id(self) -> str | None:
        return f"k{self.data}"


@dataclass
class _ListSource(ProcessingStage[_IntTask, _IntTask]):
    """A source stage fed ``initial_tasks``: input ``i`` gives sources ``k<10i>``,
    ``k<10i+1>``."""

    name: str = "list_source"
    is_source_stage: bool = True

    def inputs(self) -> tuple[list[str], list[str]]:
        return [], []

    def outputs(self) -> tuple[list[str], list[str]]:
        return [], []

    def process(self, task: _IntTask) -> list[_IntTask]:
        return [_Keyed(data=10 * task.data + j, dataset_name="d") for j in range(2)]


def test_a_batch_of_initial_tasks_with_every_source_complete_is_no_error(backend_factory: Factory) -> None:
    """With ``initial_tasks`` the source stage runs once per batch: one batch whose
    sources are all complete is not "nothing to do" (other batches may have work):
    its sources are dropped and the others run, where resumelog used to raise."""
    a1 = backend_factory()
    first = [_IntTask(data=1, dataset_name="d")]
    first[0]._set_task_id("0", 0)  # as Pipeline.run's assign_root_task_ids
    out = BaseStageAdapter(_Sink()).process_batch(BaseStageAdapter(_ListSource()).process_batch(first))
    assert sorted(t._source_id for t in out) == ["k10", "k11"]
    assert _done(a1, ["k10", "k11"]) == [True, True]

    a2 = backend_factory()  # on_nothing_to_do="raise"
    both = [_IntTask(data=i, dataset_name="d") for i in (1, 2)]
    for i, t in enumerate(both):
        t._set_task_id("0", i)
    src = BaseStageAdapter(_ListSource())
    assert src.process_batch([both[0]]) == []  # complete: dropped, no error
    rest = src.process_batch([both[1]])
    assert sorted(t._source_id for t in rest) == ["k20", "k21"]
    BaseStageAdapter(_Sink()).process_batch(rest)
    assert _done(a2, ["k10", "k11", "k20", "k21"]) == [True] * 4
