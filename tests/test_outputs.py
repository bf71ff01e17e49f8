"""Exactly-once outputs (resumelog.outputs, Writer.output) on real files and S3 servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

import resumelog
import resumelog.ray
from resumelog import outputs
from resumelog.curator import OutputSink, Pipeline, SourceStage, Task
from resumelog.errors import InvalidId, StorageError
from resumelog.outputs import PendingOutput, escape, output_name, parse_output_name, scan, unescape
from resumelog.storage import LocalStore


def names_of(outs: list[outputs.Output]) -> list[tuple[str, str | None, str, str]]:
    return [(o.source, o.key, o.name, o.run) for o in outs]


# ---------------------------------------------------------------------- names


@pytest.mark.parametrize("value", ["a", "s3://b/k/x.parquet", ".", "..", ".hidden", "~", "a b%", "é/ü", "x" * 80])
def test_escape_is_one_reversible_component(value: str) -> None:
    e = escape(value)
    assert "/" not in e and "~" not in e and e not in (".", "..") and not e.startswith(".")
    assert unescape(e) == value


def test_only_canonical_spellings_parse() -> None:
    assert unescape("%61") is None  # 'a' must be written plainly
    assert unescape("%2f") is None  # upper-case hex only
    assert unescape("%ZZ") is None and unescape("") is None and unescape("%") is None
    with pytest.raises(InvalidId):
        escape("")
    with pytest.raises(InvalidId):
        escape("/" * 100)  # 300 characters escaped: too long for a path component


def test_output_names_round_trip() -> None:
    n = output_name("r1", "s3://b/x", "0_s_0", "part-0.jsonl")
    assert n == "r1/s3%3A%2F%2Fb%2Fx/0_s_0/part-0.jsonl"
    assert parse_output_name(n) == ("r1", "s3://b/x", "0_s_0", "part-0.jsonl")
    whole = output_name("r1", "s", None, "output")
    assert whole == "r1/s/~/output" and parse_output_name(whole) == ("r1", "s", None, "output")
    for junk in ("~staging/x.spool", "r1/s/~", "r1/s/%61/x", "bad run!/s/~/x", "r1/s/~/x/y"):
        assert parse_output_name(junk) is None, junk


def test_an_output_named_like_a_local_temporary_file_is_refused_and_x_partial_is_shown(tmp_path: Path) -> None:
    # A local store's temporary files are <key>.<uuid>.partial; its listings skipped
    # every *.partial file, so an output named part-0.partial was published, counted,
    # and never shown (nor collected).
    url, root = str(tmp_path / "ck"), str(tmp_path / "out")
    ck = resumelog.open(url, run_id="r1")
    with ck.writer("w") as w:
        with w.output("a", root, name="part-0.partial") as f:
            f.write(b"a")
        with w.output("b", root, name="part-0.parquet") as f:
            f.write(b"b")
        temp = f"part-0.{'0123456789abcdef' * 2}.partial"
        with pytest.raises(InvalidId, match="temporary"):
            output_name("r1", "c", None, temp)
        with pytest.raises(InvalidId, match="temporary"):
            with w.output("c", root, name=temp) as f:
                f.write(b"c")
    ck.refresh()
    assert sorted(ck.completed) == ["a", "b"]
    assert [(o.source, o.name) for o in ck.outputs(root)] == [("a", "part-0.partial"), ("b", "part-0.parquet")]
    assert scan(ck, root).counts()["committed"] == 2


def test_the_checkpoints_own_root_is_refused_as_an_outputs_root(tmp_path: Path) -> None:
    # A segment journal/<writer>/<incarnation>/<seq>.seg has an output's shape (run
    # "journal", source <writer>): with the outputs beside the checkpoint's objects and
    # writers named after their sources, output gc deleted the journal as orphans.
    url = str(tmp_path / "ck")
    ck = resumelog.open(url, run_id="r1")
    with ck.writer("shard-1") as w:
        w.complete("shard-1")
        for root in (url, url + "/", LocalStore(url)):
            with pytest.raises(ValueError, match="checkpoint's own root"):
                with w.output("shard-1", root) as f:
                    f.write(b"x")
    ck.refresh()
    for call in (lambda: scan(ck, url), lambda: ck.outputs(url), lambda: ck.gc(grace=0, outputs=[url])):
        with pytest.raises(ValueError, match="checkpoint's own root"):
            call()
    # the same root under another name (a symlink): its listing holds the checkpoint's meta.msgpack
    (tmp_path / "alias").symlink_to(tmp_path / "ck")
    for call in (lambda: scan(ck, str(tmp_path / "alias")), lambda: ck.gc(grace=0, outputs=[str(tmp_path / "alias")])):
        with pytest.raises(ValueError, match="holds a checkpoint"):
            call()
    assert ck.is_completed("shard-1")
    assert [p.name for p in (tmp_path / "ck" / "journal").iterdir()] == ["shard-1"]


# ---------------------------------------------------------------------- the protocol


def test_output_of_a_whole_source_is_published_then_completed(tmp_path: Path) -> None:
    ck = resumelog.open(str(tmp_path / "ck"), run_id="r1")
    root = str(tmp_path / "out")
    with ck.writer("w") as w:
        with w.output("a/b", root) as f:
            f.write(b"hello")
        assert w.buffered == 0  # flushed: the output counts when the block ends
    assert ck.is_completed("a/b") and ck.completed_run("a/b") == "r1"
    outs = ck.outputs(root)
    assert names_of(outs) == [("a/b", None, "output", "r1")]
    assert outs[0].path == "r1/a%2Fb/~/output" and outs[0].size == 5
    assert Path(outs[0].url).read_bytes() == b"hello"
    assert os.listdir(tmp_path / "out" / "~staging") == []  # the spool file is gone


def test_an_exception_in_the_block_publishes_and_records_nothing(tmp_path: Path) -> None:
    ck = resumelog.open(str(tmp_path / "ck"), run_id="r1")
    root = str(tmp_path / "out")
    with ck.writer("w") as w:
        with pytest.raises(RuntimeError), w.output("s", root) as f:
            f.write(b"half")
            raise RuntimeError("the task failed")
    assert not ck.is_completed("s") and ck.outputs(root) == []
    sc = scan(ck, root)
    assert sc.counts() == {"committed": 0, "in_flight": 0, "orphaned": 0, "staging": 0, "foreign": 0}


class _StagingDeletedUnderIt(LocalStore):
    """An outputs root whose staging directory a concurrent ``delete`` (a GC of spool
    files, which removes the directories it empties) removes right after it was made,
    ``times`` times."""

    def __init__(self, root: str, times: int) -> None:
        super().__init__(root)
        self.times = times

    def _makedirs(self, d: str) -> None:
        super()._makedirs(d)
        if self.times > 0 and os.path.basename(d) == "~staging":
            self.times -= 1
            os.rmdir(d)


def test_a_spool_whose_directory_a_delete_removed_meanwhile_is_made_again(tmp_path: Path) -> None:
    ck = resumelog.open(str(tmp_path / "ck"), run_id="r1")
    root = _StagingDeletedUnderIt(str(tmp_path / "out"), times=2)
    with ck.writer("w") as w:
        with w.output("s", root) as f:
            f.write(b"bytes")
    assert root.times == 0  # (raced twice)
    assert ck.is_completed("s")
    assert [Path(o.url).read_bytes() for o in ck.outputs(root)] == [b"bytes"]


def test_a_spool_whose_directory_keeps_vanishing_fails_with_a_storage_error(tmp_path: Path) -> None:
    ck = resumelog.open(str(tmp_path / "ck"), run_id="r1")
    root = _StagingDeletedUnderIt(str(tmp_path / "out"), times=100)
    with ck.writer("w") as w:
        with pytest.raises(StorageError, match="cannot create spool file"), w.output("s", root) as f:
            f.write(b"never")
    assert not ck.is_completed("s") and ck.outputs(root) == []


def test_outputs_of_a_pending_source_are_invisible_until_it_completes(tmp_path: Path) -> None:
    ck = resumelog.open(str(tmp_path / "ck"), run_id="r1")
    root = str(tmp_path / "out")
    w = ck.writer("w")
    w.emit("s")
    w.record("fan", "s", 1)
    w.flush()
    with w.output("s", root, key="s/0", name="p0.txt") as f:
        f.write(b"0")
    reader = resumelog.open(str(tmp_path / "ck"), create=False)
    assert reader.outputs(root) == []  # one of two sink records: pending
    assert [o.name for o in scan(reader, root).in_flight] == ["p0.txt"]
    with w.output("s", root, key="s/1", name="p1.txt") as f:
        f.write(b"1")
    assert [(o.key, o.name) for o in reader.outputs(root)] == [("s/0", "p0.txt"), ("s/1", "p1.txt")]
    w.close()


def test_a_retry_in_the_same_run_keeps_the_first_published_bytes(tmp_path: Path) -> None:
    ck = resumelog.open(str(tmp_path / "ck"), run_id="r1")
    root = str(tmp_path / "out")
    w1 = ck.writer("w1")
    p = PendingOutput(w1, outputs.output_store(root), "s", None, "output")
    p.file.write(b"first attempt")
    p.publish()
    p.discard()
    w1.closed = True  # killed before its record
    assert ck.outputs(root) == []
    with ck.writer("w2") as w2:  # the retry, in the same run
        with w2.output("s", root) as f:
            f.write(b"second attempt")
    outs = ck.outputs(root)
    assert len(outs) == 1 and Path(outs[0].url).read_bytes() == b"first attempt"


def test_a_rerun_never_shows_nor_deletes_an_attempt_of_another_run(tmp_path: Path) -> None:
    url, root = str(tmp_path / "ck"), str(tmp_path / "out")
    ck1 = resumelog.open(url, run_id="r1")
    w = ck1.writer("w")
    with w.output("s", root, record=False) as f:  # published, then the job dies
        f.write(b"r1")
    with w.output("t", root) as f:
        f.write(b"t")
    w.closed = True
    spool = PendingOutput(ck1.writer("w3"), outputs.output_store(root), "u", None, "output")
    spool.file.write(b"killed while writing")
    spool.file.close()
    ck2 = resumelog.open(url, run_id="r2")
    assert ck2.pending(["s", "t"]) == ["s"]
    with ck2.writer("w") as w2:
        with w2.output("s", root) as f:
            f.write(b"r2")
    assert names_of(ck2.outputs(root)) == [("s", None, "output", "r2"), ("t", None, "output", "r1")]
    assert names_of(ck2.outputs(root, run="r1")) == [("t", None, "output", "r1")]
    sc = scan(ck2, root)
    assert [o.path for o in sc.orphaned] == ["r1/s/~/output"] and len(sc.staging) == 1
    # gc keeps what is younger than the grace, then deletes orphans and debris only
    res = ck2.gc(outputs=[root])
    assert res.outputs[0].orphaned == 0 and res.outputs[0].kept_recent == 2
    res = ck2.gc(grace=0, outputs=[root])
    assert (res.outputs[0].orphaned, res.outputs[0].staging) == (1, 1)
    assert sorted(o.path for o in outputs.output_store(root).list("")) == ["r1/t/~/output", "r2/s/~/output"]


def test_a_reset_source_hides_its_outputs_and_its_rerun_shows_the_new_ones(tmp_path: Path) -> None:
    url, root = str(tmp_path / "ck"), str(tmp_path / "out")
    ck = resumelog.open(url, run_id="r1")
    with ck.writer("w") as w:
        for s in ("a", "b"):
            with w.output(s, root) as f:
                f.write(s.encode())
    assert ck.reset(["a"]) == ["a"]
    assert [o.source for o in ck.outputs(root)] == ["b"]
    assert [o.path for o in scan(ck, root).orphaned] == ["r1/a/~/output"]  # voided by the reset
    ck2 = resumelog.open(url, run_id="r2")
    with ck2.writer("w") as w:
        with w.output("a", root) as f:
            f.write(b"a again")
    assert names_of(ck2.outputs(root)) == [("a", None, "output", "r2"), ("b", None, "output", "r1")]


def test_a_retired_run_keeps_its_completed_outputs_and_loses_its_pending_ones(tmp_path: Path) -> None:
    url, root = str(tmp_path / "ck"), str(tmp_path / "out")
    ck = resumelog.open(url, run_id="r1")
    w = ck.writer("w")
    with w.output("done", root) as f:
        f.write(b"d")
    with w.output("half", root, record=False) as f:
        f.write(b"h")
    w.close()
    ck2 = resumelog.open(url, run_id="r2")
    ck2.compact()
    ck2.compact(keep_runs=0)
    sc = scan(ck2, root)
    assert [o.path for o in sc.committed] == ["r1/done/~/output"]
    assert [o.path for o in sc.orphaned] == ["r1/half/~/output"]


def test_a_retired_runs_output_taken_over_by_a_smaller_run_stays_until_that_run_keeps_it(tmp_path: Path) -> None:
    # r2 completes x and is retired (its completion stands); r1 then completes x too and
    # holds it (the smaller run). r2's drained state is kept to take x back if r1's
    # completion is voided, so r2's output is in flight, never collected, and it is the
    # committed one once a late record of r1 reopens x.
    url, root = str(tmp_path / "ck"), str(tmp_path / "out")
    w1 = resumelog.open(url, run_id="r1").writer("w1")
    ck2 = resumelog.open(url, run_id="r2")
    op = resumelog.open(url, run_id="r3")
    with ck2.writer("w2") as w2:
        with w2.output("x", root) as f:
            f.write(b"by r2")
    op.compact()
    assert op.compact(keep_runs=1).retired_runs == ["r2"]
    with w1.output("x", root) as f:
        f.write(b"by r1")
    op.compact()
    sc = scan(op, root)
    assert op.completed_run("x") == "r1"
    assert ([o.path for o in sc.committed], [o.path for o in sc.in_flight]) == (["r1/x/~/output"], ["r2/x/~/output"])
    assert sc.orphaned == []
    assert op.gc(grace=0, outputs=[root]).outputs[0].orphaned == 0
    w1.record("x::late", "x", 1)  # r1's completion is reopened: r2's stands again
    w1.flush()
    op.compact()
    assert op.completed_run("x") == "r2"
    assert [o.path for o in op.outputs(root)] == ["r2/x/~/output"]
    assert (tmp_path / "out" / "r2" / "x" / "~" / "output").read_bytes() == b"by r2"


def _two_runs_on_one_source(url: str, root: str, tmp_path: Path, clock_skew: float) -> tuple[Any, Path]:
    """r1 (a writer whose clock is ``clock_skew`` seconds off) published one of x's two
    sink outputs two hours ago (by its file's time) and is still draining x; r2 then
    completed x. Returns r1's writer and the output's path."""
    w1 = resumelog.open(url, run_id="r1").writer("w1")
    w1._clock = lambda: time.time() + clock_skew
    w1.emit("x")
    w1.record("x/fan", "x", 1)  # two sink tasks, x/0 and x/1
    w1.flush()
    with w1.output("x", root, key="x/0", name="part-0") as f:
        f.write(b"r1 part 0")
    part0 = tmp_path / "out" / "r1" / "x" / "x%2F0" / "part-0"
    os.utime(part0, (part0.stat().st_atime - 7200, part0.stat().st_mtime - 7200))
    with resumelog.open(url, run_id="r2").writer("w2") as w2:
        with w2.output("x", root) as f:
            f.write(b"r2 whole")
    return w1, part0


@pytest.mark.parametrize("skew", [0.0, -7200.0], ids=["clock-right", "clock-lags"])
def test_outputs_of_a_smaller_run_still_draining_a_source_another_run_completed_are_kept(
    tmp_path: Path, skew: float
) -> None:
    # Two runs on one source at once: r2 completes x while r1 has published one of its
    # two sink outputs, two hours ago. r1 is alive (it wrote within the grace) and its
    # state may still drain and take x over (the smaller run), so gc keeps that output:
    # it collected it, and r1's committed set then lacked it. clock-lags: r1's writer's
    # clock runs two hours behind, so its segments' headers say it last wrote two hours
    # ago; liveness goes by the storage's times (the clock segment GC trusts), and by
    # the writer's clock gc collected that output.
    url, root = str(tmp_path / "ck"), str(tmp_path / "out")
    w1, part0 = _two_runs_on_one_source(url, root, tmp_path, skew)
    op = resumelog.open(url, run_id="r3")
    assert op.completed_run("x") == "r2"
    st = op._state
    (m,) = [m for m in st.streams.values() if m.run_id == "r1"]
    assert abs(m.last_ms / 1000 - (time.time() + skew)) < 60  # what the header says
    assert outputs.last_writes(st.streams.values(), op._loaded.journal)["r1"] > time.time() - 60
    sc = scan(op, root)  # (grace: one hour)
    assert [o.path for o in sc.in_flight] == ["r1/x/x%2F0/part-0"] and sc.orphaned == []
    res = op.gc(outputs=[root]).outputs[0]
    assert (res.orphaned, res.kept_recent) == (0, 0)
    # had r1 been quiet for the grace, its output would be collected
    assert [o.path for o in scan(op, root, grace=0).orphaned] == ["r1/x/x%2F0/part-0"]
    with w1.output("x", root, key="x/1", name="part-1") as f:
        f.write(b"r1 part 1")
    op.refresh()
    assert op.completed_run("x") == "r1"
    assert [o.name for o in op.outputs(root)] == ["part-0", "part-1"]  # whole
    assert part0.read_bytes() == b"r1 part 0"
    assert [o.path for o in scan(op, root, refresh=False, grace=0).in_flight] == ["r2/x/~/output"]  # drained


def test_a_quiet_run_whose_writer_clock_runs_ahead_is_quiet(tmp_path: Path) -> None:
    # r1's writer's clock runs a day ahead; it last wrote two hours ago by the storage's
    # times. It is quiet (the same clock segment GC trusts), so its output is collected
    # as an orphan; by its own clock it would look alive for a day.
    url, root = str(tmp_path / "ck"), str(tmp_path / "out")
    _, part0 = _two_runs_on_one_source(url, root, tmp_path, 86400)
    for seg in (tmp_path / "ck" / "journal" / "w1").rglob("*.seg"):
        os.utime(seg, (seg.stat().st_atime - 7200, seg.stat().st_mtime - 7200))
    op = resumelog.open(url, run_id="r3")
    st = op._state
    (m,) = [m for m in st.streams.values() if m.run_id == "r1"]
    assert m.last_ms / 1000 > time.time() + 80000  # what the header says
    sc = scan(op, root)
    assert [o.path for o in sc.orphaned] == ["r1/x/x%2F0/part-0"] and sc.in_flight == []
    assert op.gc(outputs=[root]).outputs[0].orphaned == 1
    assert not part0.exists()
    # a store that gives no times: the writer's clock, as the only one there is
    assert outputs.last_writes(st.streams.values(), [])["r1"] == m.last_ms / 1000


def test_several_outputs_of_one_source_under_one_completion(tmp_path: Path) -> None:
    ck = resumelog.open(str(tmp_path / "ck"), run_id="r1")
    root = str(tmp_path / "out")
    with ck.writer("w") as w:
        for j in range(3):
            with w.output("s", root, name=f"chunk-{j}.txt", record=False) as f:
                f.write(str(j).encode())
        assert ck.outputs(root) == []
        w.complete("s")
    assert [o.name for o in ck.outputs(root)] == ["chunk-0.txt", "chunk-1.txt", "chunk-2.txt"]


def test_outputs_on_another_store_than_the_checkpoint(tmp_path: Path, memory_url: str) -> None:
    ck = resumelog.open(memory_url, run_id="r1")
    root = str(tmp_path / "out")
    with ck.writer("w") as w:
        with w.output("s", root) as f:
            f.write(b"x")
    assert [o.url for o in ck.outputs(root)] == [f"{tmp_path}/out/r1/s/~/output"]
    # and the other way round: outputs in memory, spooled in the temporary directory
    ck2 = resumelog.open(str(tmp_path / "ck"), run_id="r1")
    with ck2.writer("w") as w:
        with w.output("s", memory_url + "-out") as f:
            f.write(b"y")
    assert [o.path for o in ck2.outputs(memory_url + "-out")] == ["r1/s/~/output"]
    resumelog.storage.MemoryStore(memory_url.split("://")[1] + "-out").clear()


@pytest.mark.s3
def test_outputs_on_s3_take_the_checkpoints_storage_options(s3_url: tuple[str, dict[str, Any]]) -> None:
    url, opts = s3_url
    root = url + "-out"
    ck = resumelog.open(url, storage_options=opts, run_id="r1")
    with ck.writer("w") as w:
        with w.output("s/1", root) as f:  # no storage_options: the checkpoint's (same protocol)
            f.write(b"on s3")
        p = PendingOutput(w, outputs.output_store(root, opts), "s/2", None, "output")
        p.file.write(b"retried")
        p.publish()
        p.discard()
        with w.output("s/2", root) as f:  # the retry: the first bytes are kept
            f.write(b"other bytes")
    outs = ck.outputs(root)
    assert [(o.source, o.url) for o in outs] == [
        ("s/1", f"{root}/r1/s%2F1/~/output"),
        ("s/2", f"{root}/r1/s%2F2/~/output"),
    ]
    store = outputs.output_store(root, opts)
    assert store.read(outs[0].path) == b"on s3" and store.read(outs[1].path) == b"retried"


# ---------------------------------------------------------------------- adapters


def test_curator_pipeline_refuses_leaf_resume_with_an_output_sink(tmp_path: Path) -> None:
    # A leaf skipped as written by an earlier run has its output under that run's name;
    # the run completing the source committed the other leaves' outputs only, and output
    # gc then deleted the skipped leaf's as an orphan.
    ck = resumelog.open(str(tmp_path / "ck"), run_id="r1")
    sink = OutputSink(str(tmp_path / "out"), lambda t: b"x")
    with pytest.raises(ValueError, match="leaf_resume"):
        Pipeline([SourceStage(["s"]), lambda b: b], checkpoint=ck, leaf_resume=True, outputs=sink)
    assert Pipeline([SourceStage(["s"]), lambda b: b], checkpoint=ck, outputs=sink).run().completed == ["s"]
    assert [o.source for o in ck.outputs(str(tmp_path / "out"))] == ["s"]


def test_curator_pipeline_output_sink_publishes_before_the_sink_records(tmp_path: Path) -> None:
    url, root = str(tmp_path / "ck"), str(tmp_path / "out")
    failing = {"s1-1"}  # in the first run only

    def split(batch: list[Task]) -> list[object]:
        return [f"{batch[0].data}-{j}" for j in range(2)]

    def flaky(batch: list[Task]) -> list[object]:
        if batch[0].data in failing:
            raise RuntimeError("flaky")
        return [t.data for t in batch]

    def sink(batch: list[Task]) -> list[object]:
        return [t.data for t in batch]

    def pipeline(run: str) -> Pipeline:
        return Pipeline(
            [SourceStage(["s0", "s1"]), split, flaky, sink],
            checkpoint=resumelog.open(url, run_id=run),
            outputs=OutputSink(root, lambda t: str(t.data).encode(), name="row.txt"),
        )

    r1 = pipeline("r1").run()
    assert r1.completed == ["s0"] and r1.failed == ["s1"]
    ck = resumelog.open(url, create=False)
    assert sorted((o.source, Path(o.url).read_text()) for o in ck.outputs(root)) == [("s0", "s0-0"), ("s0", "s0-1")]
    failing.clear()
    r2 = pipeline("r2").run()
    assert r2.completed == ["s1"] and r2.skipped == ["s0"]
    got = sorted((o.source, o.run, Path(o.url).read_text()) for o in ck.outputs(root))
    assert got == [("s0", "r1", "s0-0"), ("s0", "r1", "s0-1"), ("s1", "r2", "s1-0"), ("s1", "r2", "s1-1")]
    # the s1 branch that got through in r1: r1's state of s1 (one task failed) could
    # still drain and take s1 over while r1 is alive, so it is kept for the grace after
    # r1's last write; then it is collectable
    assert [(o.source, o.run) for o in scan(ck, root).in_flight] == [("s1", "r1")]
    assert [(o.source, o.run) for o in scan(ck, root, grace=0).orphaned] == [("s1", "r1")]


def test_ray_output_with_completes_in_a_plain_process(tmp_path: Path) -> None:
    ck = resumelog.open(str(tmp_path / "ck"), run_id="r1")
    root = str(tmp_path / "out")
    handle = ck.handle()

    @resumelog.ray.completes("handle", source="path")
    def convert(path: str, handle: resumelog.WriterHandle, fail: bool = False) -> int:
        for j in range(2):
            with resumelog.ray.output(handle, path, root, name=f"part-{j}") as f:
                f.write(f"{path}:{j}".encode())
            if fail:
                raise RuntimeError("task died after its first output")
        return 2

    with pytest.raises(RuntimeError):
        convert("p1", handle, fail=True)
    assert convert("p2", handle) == 2
    ck.refresh()
    assert [(o.source, o.name) for o in ck.outputs(root)] == [("p2", "part-0"), ("p2", "part-1")]
    assert convert("p1", handle) == 2  # the retry keeps p1's part-0 and adds part-1
    assert len(ck.outputs(root)) == 4


# ---------------------------------------------------------------------- CLI


def test_cli_status_gc_verify_count_outputs(tmp_path: Path) -> None:
    url, root = str(tmp_path / "ck"), str(tmp_path / "out")
    ck = resumelog.open(url, run_id="r1")
    w = ck.writer("w")
    with w.output("a", root) as f:
        f.write(b"a")
    with w.output("b", root, record=False) as f:
        f.write(b"b")
    w.close()
    with resumelog.open(url, run_id="r2").writer("w") as w2:
        with w2.output("b", root) as f:
            f.write(b"b2")

    def cli(*args: str) -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-m", "resumelog.cli", *args, "--json"], capture_output=True, text=True, check=True
        )
        doc: dict[str, Any] = json.loads(out.stdout)
        return doc

    st = cli("status", url, "--outputs", root)["outputs"][0]
    counts = {k: st[k] for k in ("committed", "in_flight", "orphaned", "staging", "foreign")}
    assert counts == {"committed": 2, "in_flight": 0, "orphaned": 1, "staging": 0, "foreign": 0}
    assert (st["committed_bytes"], st["orphaned_bytes"]) == (3, 1)  # "a" + "b2", and r1's "b"
    assert st["gc_objects"] == 0  # younger than the grace
    assert st == msgspec.to_builtins(resumelog.open(url, create=False).status(outputs=[root]).outputs[0])
    assert cli("status", url)["outputs"] == []
    assert cli("verify", url, "--outputs", root)["outputs"][0]["orphaned"] == 1
    assert cli("status", url, "--outputs", root, "--grace", "0")["outputs"][0]["gc_objects"] == 1
    g = cli("gc", url, "--outputs", root, "--grace", "0")["outputs"][0]
    assert (g["orphaned"], g["keys"]) == (1, ["r1/b/~/output"])
    assert cli("status", url, "--outputs", root)["outputs"][0]["orphaned"] == 0


def test_status_counts_each_kind_of_output_with_its_bytes(tmp_path: Path) -> None:
    url, root, other = str(tmp_path / "ck"), str(tmp_path / "out"), str(tmp_path / "out2")
    ck1 = resumelog.open(url, run_id="r1")
    w = ck1.writer("w")
    with w.output("done", root) as f:  # committed in r1
        f.write(b"12345")
    with w.output("redone", root, record=False) as f:  # a voided attempt once r2 completes it
        f.write(b"123")
    w.emit("half")
    w.record("fan", "half", 1)
    w.flush()
    with w.output("half", root, key="k0", name="p0") as f:  # one of two parts: in flight
        f.write(b"1234567")
    w.closed = True
    spool = PendingOutput(ck1.writer("w2"), outputs.output_store(root), "x", None, "output")
    spool.file.write(b"killed")  # a spool file a killed writer left
    spool.file.close()
    (tmp_path / "out" / "notes.txt").write_bytes(b"not an output")
    with resumelog.open(url, run_id="r2").writer("w") as w2:
        with w2.output("redone", root) as f:
            f.write(b"12345678")
        with w2.output("elsewhere", other) as f:
            f.write(b"1")

    st = resumelog.open(url, create=False).status(outputs=[root, other])
    assert [o.root for o in st.outputs] == [root, other]
    o = st.outputs[0]
    assert (o.committed, o.committed_bytes) == (2, 5 + 8)
    assert (o.in_flight, o.in_flight_bytes) == (1, 7)
    assert (o.orphaned, o.orphaned_bytes) == (1, 3)
    assert (o.staging, o.staging_bytes) == (1, 6)
    assert o.foreign == 1
    assert (o.gc_objects, o.gc_bytes) == (0, 0)  # everything is younger than the grace
    o = resumelog.open(url, create=False).status(gc_grace=0, outputs=[root]).outputs[0]
    assert (o.gc_objects, o.gc_bytes) == (2, 3 + 6)  # the orphan and the spool file
    assert (st.outputs[1].committed, st.outputs[1].committed_bytes, st.outputs[1].orphaned) == (1, 1, 0)
    assert resumelog.open(url, create=False).status().outputs == []
    # the same figures as scan() and a dry-run gc, from one code path
    sc = scan(resumelog.open(url, create=False), root)
    assert sc.counts() == {"committed": 2, "in_flight": 1, "orphaned": 1, "staging": 1, "foreign": 1}
