"""Port of NeMo Curator PR #1931's last-stage leaf skip (``tests/backends/
test_adapter_filter.py``, ``BaseStageAdapter._drop_completed_inputs``) to the drop-in.

The PR asks its checkpoint actor, before the last user stage runs, which inputs'
leaves (``resumability_task_key``) are already complete and drops them. Curator 1.4
has no such call before a stage runs; :func:`resumelog.curator_backend.enable` with
``leaf_resume=True`` wraps ``BaseStageAdapter.process_batch`` (the one method every
executor calls) instead. 1.4 has no ``resumability_task_key``: a leaf is identified
by the key of its sink record, ``<input task id>_0`` (Curator's deterministic task
ids), and it was written if an earlier run recorded ``-1`` for that key. A skipped
input's ``-1`` is recorded in the new run, so its source drains.

The PR's five cases, on real Curator stages and the real adapter (no fake actor):

* ``test_no_skip_without_leaf_resume`` — "no filtering when flag is false";
* ``test_skips_leaves_an_earlier_run_wrote`` — "filters completed leaves when last
  user stage", then the source completes;
* ``test_short_circuits_when_every_input_was_written`` — the stage is not called;
* ``test_no_skip_when_not_enabled`` — "no filtering when actor missing";
* ``test_inputs_without_source_pass_through`` — "passes through tasks missing keys"
  (no checkpoint read).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from curator_support import triples
from nemo_curator.backends.base import BaseStageAdapter
from nemo_curator.pipeline import Pipeline
from nemo_curator.stages.base import ProcessingStage
from nemo_curator.tasks import EmptyTask, Task

import resumelog.curator_backend as rcb

Factory = Callable[..., rcb.CuratorBackend]
N_SOURCES, FAN = 2, 3


@dataclass
class _IntTask(Task[int]):
    data: int = 0

    @property
    def num_items(self) -> int:
        return 1

    def validate(self) -> bool:
        return True

    def get_deterministic_id(self) -> str | None:
        return f"s{self.data}" if self.data < 10 else None


class _Stage(ProcessingStage[_IntTask, _IntTask]):
    def inputs(self) -> tuple[list[str], list[str]]:
        return [], []

    def outputs(self) -> tuple[list[str], list[str]]:
        return [], []


@dataclass
class _Source(ProcessingStage[EmptyTask, _IntTask]):
    name: str = "source"

    def inputs(self) -> tuple[list[str], list[str]]:
        return [], []

    def outputs(self) -> tuple[list[str], list[str]]:
        return [], []

    def process(self, _: EmptyTask) -> list[_IntTask]:
        return [_IntTask(dataset_name="d", data=i) for i in range(N_SOURCES)]


@dataclass
class _FanOut(_Stage):
    name: str = "fanout"

    def process(self, task: _IntTask) -> list[_IntTask]:
        return [_IntTask(dataset_name="d", data=10 * (task.data + 1) + j) for j in range(FAN)]


@dataclass
class _Writer(_Stage):
    """The last stage: records what it is given; raises once on ``fail_on``."""

    name: str = "writer"
    fail_on: tuple[int, ...] = ()
    seen: list[int] = field(default_factory=list)
    failed: set[int] = field(default_factory=set)

    def process(self, task: _IntTask) -> _IntTask:
        if task.data in self.fail_on and task.data not in self.failed:
            self.failed.add(task.data)
            raise RuntimeError(f"writer died at {task.data}")
        self.seen.append(task.data)
        return task


def _stages(writer: _Writer) -> list[ProcessingStage]:
    p = Pipeline(name="leaf_skip")
    for s in (_Source(), _FanOut(), writer):
        p.add_stage(s)
    p.build()  # the writer becomes the sink
    return p.stages


def _run(writer: _Writer) -> list[Task]:
    """Breadth first through the real adapters, one task per batch."""
    tasks: list[Task] = [EmptyTask()]
    for stage in _stages(writer):
        adapter = BaseStageAdapter(stage)
        out: list[Task] = []
        for t in tasks:
            out += adapter.process_batch([t])
        tasks = out
    return tasks


def _interrupted_run(backend_factory: Factory) -> rcb.CuratorBackend:
    """Run 1: the writer writes s0's first two leaves (10, 11) and dies at 12."""
    b = backend_factory()
    with pytest.raises(RuntimeError, match="writer died at 12"):
        _run(_Writer(fail_on=(12,)))
    b.checkpoint.refresh()
    assert not b.checkpoint.is_completed("s0")
    return b


def _done(b: rcb.CuratorBackend) -> list[bool]:
    b.checkpoint.refresh()
    return [b.checkpoint.is_completed(f"s{i}") for i in range(N_SOURCES)]


def test_no_skip_without_leaf_resume(backend_factory: Factory) -> None:
    _interrupted_run(backend_factory)
    b2 = backend_factory()  # leaf_resume off (the default)
    w = _Writer()
    _run(w)
    assert sorted(w.seen) == [10, 11, 12, 20, 21, 22]  # s0 from scratch
    assert _done(b2) == [True, True]


def test_skips_leaves_an_earlier_run_wrote(backend_factory: Factory, tmp_path: Path) -> None:
    _interrupted_run(backend_factory)
    b2 = backend_factory(leaf_resume=True)
    w = _Writer()
    out = _run(w)
    assert sorted(w.seen) == [12, 20, 21, 22]  # 10 and 11 were written by run 1
    assert sorted(t.data for t in out) == [12, 20, 21, 22]  # skipped leaves produce no output
    assert _done(b2) == [True, True]
    # the skipped leaves' sink records, written again in run 2, drain s0
    run2 = triples(tmp_path / "ckpt", b2.run_id)
    assert [(k, d) for k, s, d in run2 if s == "s0" and k in ("0_s0_0_0", "0_s0_1_0")] == [
        ("0_s0_0_0", -1),
        ("0_s0_1_0", -1),
    ]


def test_short_circuits_when_every_input_was_written(backend_factory: Factory) -> None:
    _interrupted_run(backend_factory)
    b2 = backend_factory(leaf_resume=True)
    w = _Writer()
    src, fan, sink = _stages(w)
    fanned = [
        c for t in BaseStageAdapter(src).process_batch([EmptyTask()]) for c in BaseStageAdapter(fan).process_batch([t])
    ]
    written = [t for t in fanned if t.data in (10, 11)]
    assert BaseStageAdapter(sink).process_batch(written) == []
    assert w.seen == []  # the stage was never called
    rest = [t for t in fanned if t.data not in (10, 11)]
    assert sorted(t.data for t in BaseStageAdapter(sink).process_batch(rest)) == [12, 20, 21, 22]
    assert _done(b2) == [True, True]


def test_no_skip_when_not_enabled(backend_factory: Factory) -> None:
    _interrupted_run(backend_factory)
    rcb.disable()
    w = _Writer()
    _run(w)
    assert sorted(w.seen) == [10, 11, 12, 20, 21, 22]


def test_inputs_without_source_pass_through(backend_factory: Factory) -> None:
    """Tasks that no source stage stamped (``_source_id`` empty) are processed, and
    the checkpoint is not read for them."""
    backend_factory(leaf_resume=True)
    w = _Writer()
    sink = _stages(w)[-1]
    bare = [_IntTask(dataset_name="d", data=10), _IntTask(dataset_name="d", data=11)]
    for i, t in enumerate(bare):
        t._set_task_id("0_x", i)
    assert [t.data for t in BaseStageAdapter(sink).process_batch(bare)] == [10, 11]
    assert w.seen == [10, 11]
    active = rcb._active
    assert active is not None and active.reader is None and active.leaves == {}


def test_leaf_resume_travels_to_ray_workers(backend_factory: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ray worker installs the backend from the job's environment variable
    (``setup_worker``): ``leaf_resume`` is part of it."""
    b = backend_factory(leaf_resume=True)
    env = rcb.runtime_env()["env_vars"]
    rcb.disable()
    monkeypatch.setenv(rcb.ENV_CONFIG, env[rcb.ENV_CONFIG])
    rcb.setup_worker()  # what the worker_process_setup_hook runs
    active = rcb._active
    assert active is not None and active.config.leaf_resume and active.config.handle == b.handle
