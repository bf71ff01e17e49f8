"""Port of NeMo Curator 1.4's ``tests/backends/test_resumability_adapter.py``.

Curator's tests patch the three client functions with mocks and assert on the
``(task_id, source_id, delta)`` tuples the adapter flushes. Here the real adapter runs
with :func:`resumelog.curator_backend.enable` and the same tuples are read back from
the journal on storage (plus the emission flag resumelog adds: only the source
stage's ``+1`` records are emissions). "Already completed" sources are completed in
the checkpoint by an earlier run instead of being returned by a mock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curator_support import journal_records, triples
from nemo_curator.backends.base import BaseStageAdapter
from nemo_curator.stages.base import ProcessingStage
from nemo_curator.tasks import FailedTask, NoneTask, Task

import resumelog
import resumelog.curator_backend as rcb

Factory = Callable[..., rcb.CuratorBackend]


@dataclass
class _NoopStage(ProcessingStage[Task, Task]):
    name: str = "noop"

    def inputs(self) -> tuple[list[str], list[str]]:
        return [], []

    def outputs(self) -> tuple[list[str], list[str]]:
        return [], []

    def process(self, task: Task) -> Task:
        return task


@dataclass
class _DropStage(ProcessingStage[Task, Task]):
    """A non-source stage that filters every input (returns ``None``)."""

    name: str = "drop"

    def inputs(self) -> tuple[list[str], list[str]]:
        return [], []

    def outputs(self) -> tuple[list[str], list[str]]:
        return [], []

    def process(self, task: Task) -> None:
        return None


@dataclass
class _SimpleTask(Task[list[int]]):
    @property
    def num_items(self) -> int:
        return 0

    def validate(self) -> bool:
        return True


def _task(task_id: str = "", source_id: str = "") -> _SimpleTask:
    t = _SimpleTask(dataset_name="d", data=[])
    t.task_id = task_id  # pretend _post_process_task_ids already ran
    t._source_id = source_id
    return t


class _Env:
    """A checkpoint directory, optionally with sources completed by an earlier run."""

    def __init__(self, tmp_path: Path, backend_factory: Factory) -> None:
        self.root = tmp_path / "ckpt"
        self.factory = backend_factory

    def enable(self, completed: set[str] | None = None) -> rcb.CuratorBackend:
        if completed:
            earlier = resumelog.open(self.root)
            with earlier.writer() as w:
                w.complete_many(sorted(completed))
            earlier.close()
        return self.factory(self.root, on_nothing_to_do="ignore")


def _counters(
    env: _Env,
    stage: ProcessingStage,
    input_tasks: list[Task],
    output_tasks: list[Any],
    *,
    completed: set[str] | None = None,
) -> tuple[list[Task], list[tuple[str, str, int]]]:
    b = env.enable(completed)
    out = BaseStageAdapter(stage)._apply_resumability_counters(input_tasks, output_tasks)
    return out, triples(env.root, b.run_id)


def _process(env: _Env, stage: ProcessingStage, tasks: list[Task]) -> tuple[list[Task], list[tuple[str, str, int]]]:
    b = env.enable()
    out = BaseStageAdapter(stage).process_batch(tasks)
    return out, triples(env.root, b.run_id)


def _env(tmp_path: Path, backend_factory: Factory) -> _Env:
    return _Env(tmp_path, backend_factory)


class TestNoneNormalization:
    def test_returned_none_decrements_and_is_stripped(self, tmp_path: Path, backend_factory: Factory) -> None:
        parent = _task("s_0", source_id="s")
        out, captured = _process(_env(tmp_path, backend_factory), _DropStage(), [parent])
        assert out == []
        assert captured == [("s_0_0", "s", -1)]


class TestSourceStage:
    def _src_stage(self) -> _NoopStage:
        s = _NoopStage()
        s.is_source_stage = True
        return s

    def test_stamps_source_id_and_fires_plus_one(self, tmp_path: Path, backend_factory: Factory) -> None:
        env = _env(tmp_path, backend_factory)
        empty = _task("0")
        a, b = _task("0_aaa"), _task("0_bbb")
        out, captured = _counters(env, self._src_stage(), [empty], [a, b])
        assert out == [a, b]
        assert a._source_id == "aaa"
        assert b._source_id == "bbb"
        assert sorted(captured) == [("0_aaa", "aaa", 1), ("0_bbb", "bbb", 1)]
        # resumelog's addition: the source stage's +1 records are emissions
        assert all(r.emission for r in journal_records(env.root))

    def test_drops_already_completed_sources(self, tmp_path: Path, backend_factory: Factory) -> None:
        empty = _task("0")
        a, b, c = _task("0_a"), _task("0_b"), _task("0_c")
        out, captured = _counters(
            _env(tmp_path, backend_factory), self._src_stage(), [empty], [a, b, c], completed={"b"}
        )
        assert out == [a, c]
        assert {sid for _, sid, _ in captured} == {"a", "c"}


class TestNonSourceStage:
    def test_pre_source_is_noop(self, tmp_path: Path, backend_factory: Factory) -> None:
        a = _task("0_0")
        out, captured = _counters(_env(tmp_path, backend_factory), _NoopStage(), [a], [a])
        assert out == [a]
        assert captured == []

    def test_one_to_one_nonsink_zero_delta(self, tmp_path: Path, backend_factory: Factory) -> None:
        env = _env(tmp_path, backend_factory)
        stage = _NoopStage()
        stage.is_sink_stage = False
        parent = _task("s_0", source_id="s")
        child = _task("s_0_0")
        _out, captured = _counters(env, stage, [parent], [child])
        assert captured == [("s_0_0", "s", 0)]
        assert child._source_id == "s"
        assert not any(r.emission for r in journal_records(env.root))

    def test_one_to_one_sink_minus_one(self, tmp_path: Path, backend_factory: Factory) -> None:
        stage = _NoopStage()
        stage.is_sink_stage = True
        parent = _task("s_0", source_id="s")
        _out, captured = _counters(_env(tmp_path, backend_factory), stage, [parent], [_task("s_0_0")])
        assert captured == [("s_0_0", "s", -1)]

    def test_nonetask_slot_decrements(self, tmp_path: Path, backend_factory: Factory) -> None:
        parent = _task("s_0", source_id="s")
        nt = NoneTask()
        nt.task_id = "s_0_0"
        _out, captured = _counters(_env(tmp_path, backend_factory), _NoopStage(), [parent], [nt])
        assert captured == [("s_0_0", "s", -1)]

    def test_failedtask_slot_zero_delta(self, tmp_path: Path, backend_factory: Factory) -> None:
        parent = _task("s_0", source_id="s")
        ft = FailedTask()
        ft.task_id = "s_0_0"
        _out, captured = _counters(_env(tmp_path, backend_factory), _NoopStage(), [parent], [ft])
        assert captured == [("s_0_0", "s", 0)]

    def test_fanout_grows_counter(self, tmp_path: Path, backend_factory: Factory) -> None:
        env = _env(tmp_path, backend_factory)
        stage = _NoopStage()
        stage.is_sink_stage = False
        parent = _task("s_0", source_id="s")
        c0, c1, c2 = _task("s_0_0"), _task("s_0_1"), _task("s_0_2")
        _out, captured = _counters(env, stage, [parent], [c0, c1, c2])
        assert captured == [("s_0_0", "s", 2)]
        assert all(c._source_id == "s" for c in (c0, c1, c2))
        assert not any(r.emission for r in journal_records(env.root))  # a fan-out +k is no emission

    def test_fanout_nonsink_mixed_real_none_failed(self, tmp_path: Path, backend_factory: Factory) -> None:
        stage = _NoopStage()
        stage.is_sink_stage = False
        parent = _task("s_0", source_id="s")
        real = _task("s_0_0")
        nt, ft = NoneTask(), FailedTask()
        nt.task_id, ft.task_id = "s_0_1", "s_0_2"
        _out, captured = _counters(_env(tmp_path, backend_factory), stage, [parent], [real, nt, ft])
        assert captured == [("s_0_0", "s", 1)]

    def test_fanout_sink_real_outputs_leave(self, tmp_path: Path, backend_factory: Factory) -> None:
        stage = _NoopStage()
        stage.is_sink_stage = True
        parent = _task("s_0", source_id="s")
        r0, r1 = _task("s_0_0"), _task("s_0_1")
        ft = FailedTask()
        ft.task_id = "s_0_2"
        _out, captured = _counters(_env(tmp_path, backend_factory), stage, [parent], [r0, r1, ft])
        assert captured == [("s_0_0", "s", 0)]

    def test_empty_output_skips(self, tmp_path: Path, backend_factory: Factory) -> None:
        env = _env(tmp_path, backend_factory)
        parent = _task("s_0", source_id="s")
        out, captured = _counters(env, _NoopStage(), [parent], [])
        assert captured == []
        assert out == []
        assert not list((env.root / "journal").rglob("*.seg"))  # never an empty segment

    def test_ambiguous_batch_skips_counters(self, tmp_path: Path, backend_factory: Factory) -> None:
        p0, p1 = _task("s_0", source_id="s"), _task("s_1", source_id="s")
        out, captured = _counters(_env(tmp_path, backend_factory), _NoopStage(), [p0, p1], [_task(), _task(), _task()])
        assert captured == []
        assert len(out) == 3


class TestSingleStage:
    """resumelog's fix (not in Curator): a source stage that is also the sink completes."""

    def test_source_sink_records_its_identity_sink(self, tmp_path: Path, backend_factory: Factory) -> None:
        env = _env(tmp_path, backend_factory)
        stage = _NoopStage()
        stage.is_source_stage = stage.is_sink_stage = True
        out, captured = _counters(env, stage, [_task("0")], [_task("0_a")])
        assert [t.task_id for t in out] == ["0_a"]
        assert captured == [("0_a", "a", 1), ("0_a_0", "a", -1)]
        ckpt = resumelog.open(env.root)
        assert ckpt.is_completed("a")
