"""The Curator-style hook and runner (``resumelog.curator``) end to end on a local checkpoint.

Curator parity cases (DESIGN §3), the durability barrier (§4), nothing-to-do (§6),
leaf-level resume (§4) and the hook driven by a foreign executor.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import resumelog
from resumelog import compactor
from resumelog.curator import (
    FailedTask,
    NoneTask,
    Pipeline,
    SourceStage,
    Stage,
    StageCheckpointer,
    Task,
    child_id,
    lineage_child,
    root_id,
)
from resumelog.storage import open_store

Rec = tuple[str, str, int, bool]


class SpyWriter:
    """Wraps a real writer; logs each record and each flush, in order."""

    def __init__(self, w: resumelog.Writer) -> None:
        self.w = w
        self.log: list[Rec | str] = []

    def record(self, key: str, source: str, delta: int, *, emission: bool = False) -> None:
        self.log.append((key, source, delta, emission))
        self.w.record(key, source, delta, emission=emission)

    def flush(self) -> None:
        self.log.append("flush")
        self.w.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.w, name)


def open_ck(path: Path, run: str = "r1", **kw: Any) -> resumelog.Checkpoint:
    return resumelog.open(str(path), run_id=run, **kw)


def fan(n: int, name: str = "split") -> Stage:
    return Stage(lambda batch: [f"{batch[0].data}/{i}" for i in range(n)], name=name)


def unique(name: str) -> str:
    """A stage name never used before in this process (the M->K warning is once per name)."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


class Sink:
    """A 1:1 sink stage that counts its calls per source and can fail on demand."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.calls: Counter[str] = Counter()
        self.written: list[str] = []
        self.fail = fail or set()
        self.__name__ = "sink"

    def __call__(self, batch: list[Task]) -> list[object]:
        out: list[object] = []
        for t in batch:
            self.calls[t.source_id or "<untracked>"] += 1
            if t.task_id in self.fail:
                out.append(FailedTask(""))
            else:
                self.written.append(t.task_id)
                out.append(t.data)
        return out


# ----------------------------------------------------------------- parity, end to end


def test_emission_fanout_and_three_sink_decrements_complete(tmp_path: Path) -> None:
    ck = open_ck(tmp_path)
    spy = SpyWriter(ck.writer("w"))
    res = Pipeline([SourceStage(["s"]), fan(3), Sink()], checkpoint=ck).run(writer=spy)  # type: ignore[arg-type]
    spy.w.close()
    r = root_id("s")
    assert spy.log[:4] == [(r, "s", 1, True), "flush", (child_id(r, 0), "s", 2, False), "flush"]
    sink = [child_id(child_id(r, i), 0) for i in range(3)]
    assert spy.log[4:7] == [(k, "s", -1, False) for k in sink]
    assert res.completed == ["s"] and res.processed == ["s"] and res.failed == []
    assert [t.data for t in res.outputs] == ["s/0", "s/1", "s/2"]
    assert open_ck(tmp_path, "r2").is_completed("s")


def test_filtered_source_completes_and_never_reaches_the_sink(tmp_path: Path) -> None:
    sink = Sink()
    drop = Stage(lambda b: [None if t.source_id == "b" else t.data for t in b], name="filter", batch_size=2)
    res = Pipeline([SourceStage(["a", "b", "c"]), drop, sink], checkpoint=open_ck(tmp_path)).run()
    assert sorted(res.completed) == ["a", "b", "c"]
    assert sink.calls == Counter({"a": 1, "c": 1})
    # a fan-out whose children are all filtered completes too (delta 0 + 0 - 1)
    all_none = Stage(lambda b: [None, NoneTask("")], name="split-none")
    res2 = Pipeline([SourceStage(["d"]), all_none, Sink()], checkpoint=open_ck(tmp_path, "r2")).run()
    assert res2.completed == ["d"]


@pytest.mark.parametrize("how", ["failed-task", "exception"])
def test_failed_source_stays_pending_and_reruns(tmp_path: Path, how: str) -> None:
    flaky_on = {"b"}

    def flaky(batch: list[Task]) -> list[object]:
        if batch[0].source_id in flaky_on:
            if how == "exception":
                raise RuntimeError("boom")
            return [FailedTask("", data="boom")]
        return [t.data for t in batch]

    def pipeline(run: str) -> Pipeline:
        return Pipeline([SourceStage(["a", "b", "c"]), flaky, fan(2), Sink()], checkpoint=open_ck(tmp_path, run))

    r1 = pipeline("r1").run()
    assert sorted(r1.completed) == ["a", "c"] and r1.failed == ["b"]
    assert "b" in r1.processed  # emitted, so it is pending in run r1
    assert not open_ck(tmp_path, "x").is_completed("b")
    r2 = pipeline("r2").run()  # still flaky: b stays pending, a and c are skipped
    assert r2.skipped == ["a", "c"] and r2.failed == ["b"]
    flaky_on.clear()
    r3 = pipeline("r3").run()
    assert r3.skipped == ["a", "c"] and r3.processed == ["b"] and r3.completed == ["b"]
    assert open_ck(tmp_path, "x").completed_run("b") == "r3"


def test_completed_rerun_does_nothing_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reads: list[str] = []

    def read(s: str) -> str:
        reads.append(s)
        return s

    sink = Sink()
    Pipeline([SourceStage(["a", "b"], read), sink], checkpoint=open_ck(tmp_path, "r1")).run()
    assert reads == ["a", "b"]
    with caplog.at_level(logging.WARNING, logger="resumelog"):
        res = Pipeline([SourceStage(["a", "b"], read), sink], checkpoint=open_ck(tmp_path, "r2")).run()
    assert res.nothing_to_do and res.skipped == ["a", "b"] and res.processed == []
    assert reads == ["a", "b"] and sink.calls == Counter({"a": 1, "b": 1})  # nothing read or processed
    assert any("nothing to do" in r.getMessage() for r in caplog.records)
    with pytest.raises(resumelog.NothingToDo):
        Pipeline(
            [SourceStage(["a", "b"], read), sink], checkpoint=open_ck(tmp_path, "r3"), on_nothing_to_do="raise"
        ).run()
    # partially complete: no warning, just skipped
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="resumelog"):
        res = Pipeline([SourceStage(["a", "z"], read), sink], checkpoint=open_ck(tmp_path, "r4")).run()
    assert res.skipped == ["a"] and res.completed == ["z"] and not res.nothing_to_do
    assert not any("nothing to do" in r.getMessage() for r in caplog.records)


def test_single_stage_pipeline_completes(tmp_path: Path) -> None:
    done: list[str] = []

    def read(s: str) -> str:
        done.append(s)  # the read is the work
        return s

    res = Pipeline([SourceStage(["a", "b"], read)], checkpoint=open_ck(tmp_path)).run()
    assert sorted(res.completed) == ["a", "b"] and [t.data for t in res.outputs] == ["a", "b"]
    again = Pipeline([SourceStage(["a", "b"], read)], checkpoint=open_ck(tmp_path, "r2")).run()
    assert again.nothing_to_do and done == ["a", "b"]


def test_filtered_read_is_not_emitted_and_reruns(tmp_path: Path) -> None:
    def read(s: str) -> object:
        return None if s == "none" else s

    res = Pipeline([SourceStage(["ok", "none"], read), Sink()], checkpoint=open_ck(tmp_path)).run()
    assert res.completed == ["ok"] and res.processed == ["ok"] and res.failed == ["none"]


def test_failed_read_fails_the_run_like_curator(tmp_path: Path) -> None:
    """NeMo Curator raises when a source stage emits a FailedTask; so does the runner,
    for a read that raises (chained) or returns a FailedTask; nothing is emitted."""

    def read(s: str) -> object:
        if s == "bad":
            raise OSError("unreadable")
        return FailedTask("", s) if s == "failed" else s

    ck = open_ck(tmp_path)
    with pytest.raises(ValueError, match="source stage emitted a FailedTask") as ei:
        Pipeline([SourceStage(["ok", "bad"], read), Sink()], checkpoint=ck).run()
    assert isinstance(ei.value.__cause__, OSError)
    with pytest.raises(ValueError, match="not supported"):
        Pipeline([SourceStage(["ok", "failed"], read), Sink()], checkpoint=open_ck(tmp_path, "r2")).run()
    ck.refresh()
    assert ck.status().completed == 0 and not ck.is_completed("ok")


def test_nothing_to_do_is_curators_error_type(tmp_path: Path) -> None:
    """NeMo Curator raises ``ValueError`` when it has no tasks to process."""
    Pipeline([SourceStage(["a"]), Sink()], checkpoint=open_ck(tmp_path)).run()
    with pytest.raises(ValueError, match="nothing to do") as ei:
        Pipeline([SourceStage(["a"]), Sink()], checkpoint=open_ck(tmp_path, "r2"), on_nothing_to_do="raise").run()
    assert isinstance(ei.value, resumelog.NothingToDo)


def test_ambiguous_batches_warn_once_per_stage_and_leave_sources_pending(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    name = unique("merge")
    regroup = Stage(lambda b: ["x", "y", "z"], name=name, batch_size=2)  # 2 -> 3
    sink = Sink()
    with caplog.at_level(logging.WARNING, logger="resumelog"):
        res = Pipeline([SourceStage(["a", "b", "c", "d"]), regroup, sink], checkpoint=open_ck(tmp_path)).run()
    warns = [r for r in caplog.records if name in r.getMessage()]
    assert len(warns) == 1  # two ambiguous batches, one warning
    assert res.completed == [] and sorted(res.failed) == ["a", "b", "c", "d"]
    assert len(res.outputs) == 6 and all(t.source_id is None for t in res.outputs)  # untracked downstream
    assert sink.calls == Counter({"<untracked>": 6})


def test_positive_records_are_durable_before_the_next_stage_runs(tmp_path: Path) -> None:
    url = str(tmp_path)
    seen: dict[str, dict[str, int | None]] = {}

    def probe(batch: list[Task]) -> list[object]:
        # a fresh reader, straight from storage: the +1 and the +2 of this task's
        # source must already be there
        t = batch[0]
        assert t.source_id is not None
        state = compactor.load(open_store(url)).state
        seen[t.task_id] = dict(state.pending[("r1", t.source_id)].effective())
        return [t.data]

    Pipeline([SourceStage(["s"]), fan(3), Stage(probe, name="probe"), Sink()], checkpoint=open_ck(tmp_path)).run()
    r = root_id("s")
    assert len(seen) == 3
    for effective in seen.values():
        assert effective[r] == 1 and effective[child_id(r, 0)] == 2
    # without any sink -1 on storage yet: the positives were flushed, not the rest
    first = seen[child_id(r, 0)]
    assert all(v is not None and v > 0 for v in first.values())


def test_stage_errors_and_bad_returns(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="must return a list"):
        Pipeline([SourceStage(["a"]), Stage(lambda b: None, name="bad")], checkpoint=open_ck(tmp_path)).run()  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError):
        Pipeline([Stage(lambda b: b)], checkpoint=open_ck(tmp_path))  # type: ignore[list-item]
    with pytest.raises(ValueError):
        SourceStage(["a", ""])
    with pytest.raises(ValueError):
        Stage(lambda b: b, batch_size=0)


def test_task_ids_are_deterministic_and_rooted_per_source(tmp_path: Path) -> None:
    def ids(run: str, leaf: bool) -> list[str]:
        res = Pipeline(
            [SourceStage(["a", "b"]), fan(2), Sink()], checkpoint=open_ck(tmp_path / run, run), leaf_resume=leaf
        ).run()
        return [t.task_id for t in res.outputs]

    assert ids("r1", False) == ids("r2", False) == ["0_a_0_0", "0_a_1_0", "0_b_0_0", "0_b_1_0"]
    assert ids("r3", True) == ["a::0::0", "a::1::0", "b::0::0", "b::1::0"]
    assert lineage_child("a", 1) == "a::1"


# ----------------------------------------------------------------- leaf-level resume


def test_leaf_resume_skips_leaves_written_by_an_earlier_run(tmp_path: Path) -> None:
    def stages(sink: Sink) -> list[Any]:
        return [SourceStage(["a", "b"]), fan(4), sink]

    # run 1: the sink fails on two of a's four leaves (b completes)
    sink1 = Sink(fail={"a::2", "a::3"})
    r1 = Pipeline(stages(sink1), checkpoint=open_ck(tmp_path, "r1"), leaf_resume=True).run()
    assert r1.completed == ["b"] and r1.failed == ["a"]
    ck2 = open_ck(tmp_path, "r2")
    assert ck2.completed_leaves("a") == {"a::0::0", "a::1::0"}
    # run 2: only a's two missing leaves reach the sink, and a completes
    sink2 = Sink()
    r2 = Pipeline(stages(sink2), checkpoint=ck2, leaf_resume=True).run()
    assert r2.skipped == ["b"] and r2.completed == ["a"] and r2.leaves_skipped == 2
    assert sink2.calls == Counter({"a": 2}) and sink2.written == ["a::2", "a::3"]
    assert "skipped 2 leaves" in r2.summary()
    assert open_ck(tmp_path, "x").completed_run("a") == "r2"


def test_without_leaf_resume_a_half_done_source_reruns_from_scratch(tmp_path: Path) -> None:
    Pipeline([SourceStage(["a"]), fan(4), Sink(fail={"0_a_3"})], checkpoint=open_ck(tmp_path, "r1")).run()
    sink = Sink()
    res = Pipeline([SourceStage(["a"]), fan(4), sink], checkpoint=open_ck(tmp_path, "r2")).run()
    assert res.completed == ["a"] and sink.calls == Counter({"a": 4}) and res.leaves_skipped == 0


CRASHING_RUN = """
import os, sys
import resumelog
from resumelog.curator import Pipeline, SourceStage, Stage
ckpt = resumelog.open(sys.argv[1], run_id="r1", flush_policy=resumelog.FlushPolicy(max_records=1))
n = 0
def sink(batch):
    global n
    n += 1
    if n == 4:          # the process dies while writing a's fourth leaf
        os._exit(17)
    return [t.data for t in batch]
split = Stage(lambda b: [f"{b[0].data}/{i}" for i in range(6)], name="split")
Pipeline([SourceStage(["a"]), split, sink], checkpoint=ckpt, leaf_resume=True).run()
"""


def test_leaf_resume_after_a_crash_midway_through_a_sources_leaves(tmp_path: Path) -> None:
    url = str(tmp_path / "ck")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(CRASHING_RUN), url], capture_output=True, timeout=60)
    assert proc.returncode == 17, proc.stderr
    ck = open_ck(Path(url), "r2")
    assert not ck.is_completed("a")
    assert ck.completed_leaves("a") == {"a::0::0", "a::1::0", "a::2::0"}
    sink = Sink()
    res = Pipeline([SourceStage(["a"]), fan(6), sink], checkpoint=ck, leaf_resume=True).run()
    assert res.completed == ["a"] and res.leaves_skipped == 3
    assert sink.calls == Counter({"a": 3}) and sink.written == ["a::3", "a::4", "a::5"]


# ----------------------------------------------------------------- the hook, foreign executor


def test_hook_with_foreign_tasks_and_accessors(tmp_path: Path) -> None:
    """An executor with its own task type (dicts) calls the hook per batch."""
    ck = open_ck(tmp_path)
    w = ck.writer("exec")
    hook: StageCheckpointer[dict[str, Any]] = StageCheckpointer(
        w,
        ck,
        task_id=lambda t: t["id"],
        source_id=lambda t: t.get("src"),
        is_filtered=lambda t: t.get("kind") == "none",
        is_failed=lambda t: t.get("kind") == "failed",
    )

    def kids(parent: dict[str, Any], kinds: Sequence[str]) -> list[dict[str, Any]]:
        return [{"id": f"{parent['id']}.{i}", "src": parent["src"], "kind": k} for i, k in enumerate(kinds)]

    roots = [{"id": "p", "src": "p"}, {"id": "q", "src": "q"}, {"kind": "none", "id": "z", "src": "z"}]
    out = hook.after_stage("read", [], roots, is_source=True, is_sink=False)
    assert [t["id"] for t in out] == ["p", "q"] and w.buffered == 0  # +1s flushed
    p, q = out
    # fan-out [real, filtered, failed] at a non-sink: one record +1 (0 + 1 + 1 - 1)
    children = kids(p, ["real", "none", "failed"])
    out = hook.after_stage("split", [p], children, is_source=False, is_sink=False)
    assert out == children[:1] and w.buffered == 0
    # the sink, positional: real -1 completes q; p is kept open by its failed child
    hook.after_stage("write", [out[0], q], kids(out[0], ["real"]) + kids(q, ["real"]), is_source=False, is_sink=True)
    assert w.buffered == 2 and hook.records == 2 + 1 + 2
    w.close()
    again = open_ck(tmp_path, "r2")
    assert again.is_completed("q") and not again.is_completed("p") and not again.is_completed("z")
    # a rerun of the source stage drops q and keeps p
    w2 = again.writer("exec")
    hook2: StageCheckpointer[dict[str, Any]] = StageCheckpointer(
        w2, again, task_id=lambda t: t["id"], source_id=lambda t: t.get("src"), on_nothing_to_do="raise"
    )
    assert [t["id"] for t in hook2.after_stage("read", [], roots[:2], is_source=True, is_sink=False)] == ["p"]
    assert hook2.skipped_sources == ["q"]
    with pytest.raises(resumelog.NothingToDo):
        hook2.after_stage("read", [], roots[1:2], is_source=True, is_sink=False)
    w2.close()
    with pytest.raises(ValueError):
        StageCheckpointer(w2, again, on_nothing_to_do="maybe")  # type: ignore[arg-type]


def test_duplicate_stage_names_are_kept_apart(tmp_path: Path) -> None:
    res = Pipeline(
        [SourceStage(["a"]), lambda b: [t.data for t in b], lambda b: [t.data for t in b]], checkpoint=open_ck(tmp_path)
    ).run()
    assert res.stage_calls == {"source": 1, "<lambda>": 1, "<lambda>#2": 1} and res.completed == ["a"]


def test_fanout_records_through_the_runner(tmp_path: Path) -> None:
    """[real, filtered, failed] at a non-sink: one +1; [real, real, failed] at the sink: one 0."""
    ck = open_ck(tmp_path)
    spy = SpyWriter(ck.writer("w"))
    mixed = Stage(lambda b: [b[0].data, None, FailedTask("")], name="mixed")
    sink_fan = Stage(lambda b: [1, 2, FailedTask("")], name="sink-fan")
    res = Pipeline([SourceStage(["s"]), mixed, sink_fan], checkpoint=ck).run(writer=spy)  # type: ignore[arg-type]
    spy.w.close()
    r = root_id("s")
    records = [e for e in spy.log if e != "flush"]
    assert records == [(r, "s", 1, True), (child_id(r, 0), "s", 1, False), (child_id(child_id(r, 0), 0), "s", 0, False)]
    assert spy.log.count("flush") >= 2 and spy.log[3] == "flush"  # the +1 of the fan-out is flushed at once
    assert res.failed == ["s"] and [t.data for t in res.outputs] == [1, 2]
