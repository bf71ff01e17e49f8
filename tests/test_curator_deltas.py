"""Counter records of Curator-style stages (DESIGN §3, ``resumelog.curator_deltas``)."""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

import pytest

from resumelog.curator_deltas import (
    FailedTask,
    NoneTask,
    Task,
    child_id,
    default_source_id,
    default_task_id,
    is_emission,
    root_id,
    stage_deltas,
)

Record = tuple[str, str, int]


def fold(*batches: Iterable[Record]) -> dict[str, int]:
    """Per-source sum over distinct keys; a repeated key would be a bug here."""
    seen: dict[tuple[str, str], int] = {}
    for batch in batches:
        for key, src, delta in batch:
            assert (src, key) not in seen, f"key {key!r} reused for source {src!r}"
            seen[(src, key)] = delta
    sums: dict[str, int] = defaultdict(int)
    for (src, _), delta in seen.items():
        sums[src] += delta
    return dict(sums)


def src_task(source: str) -> Task:
    return Task(root_id(source), source)


def children(parent: Task, kinds: Sequence[type[Task]]) -> list[Task]:
    return [k(child_id(parent.task_id, i), parent.source_id) for i, k in enumerate(kinds)]


def step(parent: Task, kind: type[Task] = Task) -> Task:
    """The output of a positional (1:1) stage for ``parent``."""
    return kind(child_id(parent.task_id, 0), parent.source_id)


def ambiguity_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "resumelog" and r.levelno == logging.WARNING]


# ----------------------------------------------------------------- id helpers


def test_ids_follow_curator_scheme() -> None:
    assert root_id("shard-1") == "0_shard-1"
    assert child_id("0_shard-1", 0) == "0_shard-1_0"
    assert child_id(child_id(root_id("s"), 2), 0) == "0_s_2_0"


def test_default_accessors_reject_foreign_tasks() -> None:
    with pytest.raises(TypeError, match="task_id="):
        default_task_id({"id": "x"})
    with pytest.raises(TypeError, match="source_id="):
        default_source_id({"id": "x"})


# ----------------------------------------------------------------- one test per rule


def test_source_stage_emits_plus_one_per_real_output_and_drops_filtered() -> None:
    outs = [src_task("a"), NoneTask("0_x"), src_task("b")]
    recs = stage_deltas([], outs, is_source=True, is_sink=False)
    assert recs == [("0_a", "a", 1), ("0_b", "b", 1)]
    assert all(is_emission(d, is_source=True) for _, _, d in recs)


def test_source_stage_failed_output_raises_like_curator() -> None:
    outs = [src_task("a"), FailedTask("0_y", data=OSError("gone"))]
    with pytest.raises(ValueError, match="FailedTask, which is not supported") as ei:
        stage_deltas([], outs, is_source=True, is_sink=False)
    assert isinstance(ei.value.__cause__, OSError)


def test_source_stage_takes_source_from_outputs_not_inputs() -> None:
    seed = Task("0", "not-a-source")
    recs = stage_deltas([seed], [Task("0_k", "real")], is_source=True, is_sink=False)
    assert recs == [("0_k", "real", 1)]


def test_source_stage_output_without_source_id_raises() -> None:
    with pytest.raises(ValueError, match="no source id"):
        stage_deltas([], [Task("0_a")], is_source=True, is_sink=False)


def test_source_stage_that_is_also_sink_completes() -> None:
    recs = stage_deltas([], [src_task("a"), NoneTask("0_n"), src_task("b")], is_source=True, is_sink=True)
    assert recs == [("0_a", "a", 1), ("0_a_0", "a", -1), ("0_b", "b", 1), ("0_b_0", "b", -1)]
    assert [is_emission(d, is_source=True) for _, _, d in recs] == [True, False, True, False]
    assert fold(recs) == {"a": 0, "b": 0}


def test_empty_output_gives_no_records() -> None:
    parent = step(src_task("a"))
    for is_sink in (False, True):
        assert stage_deltas([parent], [], is_source=False, is_sink=is_sink) == []
        assert stage_deltas([parent, step(parent)], [], is_source=False, is_sink=is_sink) == []
        assert stage_deltas([], [], is_source=True, is_sink=is_sink) == []


def test_fanout_non_sink_real_filtered_failed_is_plus_one() -> None:
    parent = src_task("a")
    outs = children(parent, [Task, NoneTask, FailedTask])
    recs = stage_deltas([parent], outs, is_source=False, is_sink=False)
    assert recs == [("0_a_0", "a", 1)]  # n_real 1 + n_failed 1 - 1
    assert not is_emission(1, is_source=False)


def test_fanout_keys_on_first_output_even_if_it_is_a_sentinel() -> None:
    parent = src_task("a")
    outs = children(parent, [NoneTask, Task, Task])
    assert stage_deltas([parent], outs, is_source=False, is_sink=False) == [("0_a_0", "a", 1)]


def test_fanout_at_sink_real_real_failed_is_zero() -> None:
    parent = src_task("a")
    outs = children(parent, [Task, Task, FailedTask])
    assert stage_deltas([parent], outs, is_source=False, is_sink=True) == [("0_a_0", "a", 0)]  # 0 + 1 - 1


def test_fanout_takes_source_from_input() -> None:
    parent = src_task("a")
    outs = [Task("c0", "wrong"), Task("c1", None)]
    assert stage_deltas([parent], outs, is_source=False, is_sink=False) == [("c0", "a", 1)]


def test_positional_sink_real_real_failed() -> None:
    parents = [step(src_task(s)) for s in "abc"]
    outs = [step(parents[0]), step(parents[1]), step(parents[2], FailedTask)]
    recs = stage_deltas(parents, outs, is_source=False, is_sink=True)
    assert recs == [("0_a_0_0", "a", -1), ("0_b_0_0", "b", -1), ("0_c_0_0", "c", 0)]


def test_positional_non_sink_per_slot() -> None:
    parents = [src_task(s) for s in "abc"]
    outs = [step(parents[0]), step(parents[1], NoneTask), step(parents[2], FailedTask)]
    recs = stage_deltas(parents, outs, is_source=False, is_sink=False)
    assert recs == [("0_a_0", "a", 0), ("0_b_0", "b", -1), ("0_c_0", "c", 0)]


def test_one_to_one_is_positional() -> None:
    parent = src_task("a")
    assert stage_deltas([parent], [step(parent)], is_source=False, is_sink=False) == [("0_a_0", "a", 0)]
    assert stage_deltas([parent], [step(parent)], is_source=False, is_sink=True) == [("0_a_0", "a", -1)]
    assert stage_deltas([parent], [step(parent, NoneTask)], is_source=False, is_sink=False) == [("0_a_0", "a", -1)]


def test_positional_takes_source_from_inputs() -> None:
    parents = [src_task("a"), src_task("b")]
    outs = [Task("x", "b"), Task("y", None)]
    assert stage_deltas(parents, outs, is_source=False, is_sink=True) == [("x", "a", -1), ("y", "b", -1)]


def test_ambiguous_m_to_k_warns_once_per_stage(caplog: pytest.LogCaptureFixture) -> None:
    stage = f"merge-{uuid.uuid4().hex}"
    parents = [src_task("a"), src_task("b")]
    outs = children(parents[0], [Task, Task, Task])
    caplog.set_level(logging.WARNING, logger="resumelog")
    assert stage_deltas(parents, outs, is_source=False, is_sink=False, stage_name=stage) == []
    assert stage_deltas(parents, outs, is_source=False, is_sink=True, stage_name=stage) == []
    warnings = ambiguity_warnings(caplog)
    assert len(warnings) == 1
    assert stage in warnings[0].getMessage()
    assert "3 outputs for 2 inputs" in warnings[0].getMessage()
    other = f"merge-{uuid.uuid4().hex}"
    assert stage_deltas(parents, outs[:1], is_source=False, is_sink=False, stage_name=other) == []
    assert len(ambiguity_warnings(caplog)) == 2


def test_untracked_inputs_give_no_records_and_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="resumelog")
    pre = [Task("p0"), Task("p1")]
    stage = f"pre-{uuid.uuid4().hex}"
    assert stage_deltas(pre, [Task("q0")], is_source=False, is_sink=False, stage_name=stage) == []
    assert stage_deltas(pre[:1], [Task("q0"), Task("q1")], is_source=False, is_sink=False) == []
    assert stage_deltas(pre, [Task("q0"), NoneTask("q1")], is_source=False, is_sink=True) == []
    assert stage_deltas([], [Task("q0")], is_source=False, is_sink=False, stage_name=stage) == []
    assert ambiguity_warnings(caplog) == []
    mixed = [Task("p0"), src_task("a")]
    assert stage_deltas(mixed, [step(mixed[0]), step(mixed[1])], is_source=False, is_sink=True) == [("0_a_0", "a", -1)]


# ----------------------------------------------------------------- whole-pipeline sums


def test_emission_fanout_and_three_sink_decrements_drain() -> None:
    s = src_task("a")
    emitted = stage_deltas([], [s], is_source=True, is_sink=False)
    kids = children(s, [Task, Task, Task])
    fanned = stage_deltas([s], kids, is_source=False, is_sink=False)
    assert fanned == [("0_a_0", "a", 2)]
    sunk = stage_deltas(kids, [step(k) for k in kids], is_source=False, is_sink=True)
    assert sunk == [("0_a_0_0", "a", -1), ("0_a_1_0", "a", -1), ("0_a_2_0", "a", -1)]
    assert fold(emitted) == {"a": 1}
    assert fold(emitted, fanned) == {"a": 3}
    assert fold(emitted, fanned, sunk) == {"a": 0}


def test_filtered_source_drains() -> None:
    s = src_task("a")
    emitted = stage_deltas([], [s], is_source=True, is_sink=False)
    filtered = stage_deltas([s], [step(s, NoneTask)], is_source=False, is_sink=False)
    assert filtered == [("0_a_0", "a", -1)]
    assert fold(emitted, filtered) == {"a": 0}


def test_failed_source_stays_pending() -> None:
    s = src_task("a")
    emitted = stage_deltas([], [s], is_source=True, is_sink=False)
    failed = stage_deltas([s], [step(s, FailedTask)], is_source=False, is_sink=False)
    assert failed == [("0_a_0", "a", 0)]
    assert fold(emitted, failed) == {"a": 1}


def test_failed_child_of_fanout_keeps_source_pending() -> None:
    s = src_task("a")
    kids = children(s, [Task, NoneTask, FailedTask])
    real = [k for k in kids if type(k) is Task]
    recs = [
        stage_deltas([], [s], is_source=True, is_sink=False),
        stage_deltas([s], kids, is_source=False, is_sink=False),
        stage_deltas(real, [step(k) for k in real], is_source=False, is_sink=True),
    ]
    assert fold(*recs) == {"a": 1}


def test_single_stage_pipeline_drains() -> None:
    recs = stage_deltas([Task("0")], [src_task("a")], is_source=True, is_sink=True)
    assert recs == [("0_a", "a", 1), ("0_a_0", "a", -1)]
    assert fold(recs) == {"a": 0}


def test_independent_sources_in_one_positional_batch() -> None:
    srcs = [src_task(s) for s in "abc"]
    emitted = stage_deltas([], srcs, is_source=True, is_sink=False)
    mid = [step(srcs[0]), step(srcs[1], NoneTask), step(srcs[2], FailedTask)]
    mid_recs = stage_deltas(srcs, mid, is_source=False, is_sink=False)
    sunk = stage_deltas(mid[:1], [step(mid[0])], is_source=False, is_sink=True)
    assert fold(emitted, mid_recs, sunk) == {"a": 0, "b": 0, "c": 1}


# ----------------------------------------------------------------- custom accessors


def test_custom_accessors_on_dict_tasks() -> None:
    def tid(t: dict[str, str]) -> str:
        return t["id"]

    def sid(t: dict[str, str]) -> str | None:
        return t.get("src")

    def filtered(t: dict[str, str]) -> bool:
        return t.get("state") == "dropped"

    def failed(t: dict[str, str]) -> bool:
        return t.get("state") == "error"

    def deltas(
        ins: list[dict[str, str]], outs: list[dict[str, str]], *, is_source: bool, is_sink: bool
    ) -> list[Record]:
        return stage_deltas(
            ins,
            outs,
            is_source=is_source,
            is_sink=is_sink,
            task_id=tid,
            source_id=sid,
            is_filtered=filtered,
            is_failed=failed,
        )

    source_out = [{"id": "r", "src": "S"}, {"id": "n", "state": "dropped"}]
    emitted = deltas([], source_out, is_source=True, is_sink=False)
    assert emitted == [("r", "S", 1)]

    parent = source_out[0]
    kids = [{"id": "k0"}, {"id": "k1", "state": "dropped"}, {"id": "k2", "state": "error"}, {"id": "k3"}]
    fanned = deltas([parent], kids, is_source=False, is_sink=False)
    assert fanned == [("k0", "S", 2)]  # n_real 2 + n_failed 1 - 1

    live = [{"id": "k0", "src": "S"}, {"id": "k3", "src": "S"}]
    outs = [{"id": "k0.w"}, {"id": "k3.w", "state": "dropped"}]
    sunk = deltas(live, outs, is_source=False, is_sink=True)
    assert sunk == [("k0.w", "S", -1), ("k3.w", "S", -1)]
    assert fold(emitted, fanned, sunk) == {"S": 1}  # k2 failed: S reruns


def test_stable_ids_need_stage_namespaced_keys() -> None:
    """A framework that keeps task ids across stages namespaces keys per stage."""

    def keyed(stage: str) -> Callable[[Task], str]:
        return lambda t: f"{stage}/{t.task_id}"

    s = Task("row-1", "a")
    emitted = stage_deltas([], [s], is_source=True, is_sink=False, task_id=keyed("read"))
    mid = stage_deltas([s], [s], is_source=False, is_sink=False, task_id=keyed("map"))
    sunk = stage_deltas([s], [s], is_source=False, is_sink=True, task_id=keyed("write"))
    assert emitted == [("read/row-1", "a", 1)]
    assert mid == [("map/row-1", "a", 0)]
    assert sunk == [("write/row-1", "a", -1)]
    assert fold(emitted, mid, sunk) == {"a": 0}


def test_is_emission_rule() -> None:
    assert is_emission(1, is_source=True)
    assert not is_emission(-1, is_source=True)
    assert not is_emission(0, is_source=True)
    assert not is_emission(2, is_source=False)
