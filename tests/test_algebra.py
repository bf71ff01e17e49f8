"""One test per fold rule of DESIGN §4 (pure: no storage)."""

from __future__ import annotations

import itertools

import pytest

from resumelog.algebra import FoldState, SourceRunState, merge
from resumelog.format import EMISSION, Batch, Reset, SegmentHeader
from resumelog.journal import DONE_KEY, EMIT_KEY


class Streams:
    """Builds segments for a FoldState: one counter of seq per stream."""

    def __init__(self, state: FoldState | None = None) -> None:
        self.state = state or FoldState()
        self.seq: dict[tuple[str, str], int] = {}
        self.warnings: list[str] = []
        self.state.warn = self.warnings.append

    def segment(self, records, writer="w1", inc="A" * 26, run="r1", resets=()):
        """records: list of (key, source, delta[, emission])."""
        sources: list[str] = []
        idx = {}
        si, keys, deltas, flags = [], [], [], bytearray()
        for rec in records:
            k, s, d = rec[:3]
            em = rec[3] if len(rec) > 3 else False
            if s not in idx:
                idx[s] = len(sources)
                sources.append(s)
            si.append(idx[s])
            keys.append(k)
            deltas.append(d)
            flags.append(EMISSION if em else 0)
        seq = self.seq.get((writer, inc), 0)
        self.seq[(writer, inc)] = seq + 1
        header = SegmentHeader(writer, inc, seq, run, b"n" * 16)
        return header, [Batch(sources, si, keys, deltas, bytes(flags), list(resets))]

    def apply(self, records, **kw):
        h, b = self.segment(records, **kw)
        assert self.state.apply_segment(h, b)
        return self.state.finish()


def emit(s, key=EMIT_KEY):
    return (key, s, 1, True)


def test_emit_then_drain_completes():
    st = Streams()
    assert st.apply([emit("s"), ("f", "s", 2)]) == []
    assert st.apply([("a", "s", -1), ("b", "s", -1), ("c", "s", -1)]) == ["s"]
    assert st.state.is_completed("s")


def test_not_emitted_never_completes():
    st = Streams()
    st.apply([("k", "s", 1), ("j", "s", -1)])
    assert not st.state.is_completed("s")


def test_sink_before_fanout_in_one_fold_never_completes_early():
    # the sinks' segment is folded before the fan-out's: completion is judged after both
    st = Streams()
    h1, b1 = st.segment([emit("s"), ("a", "s", -1)], writer="sink")
    h2, b2 = st.segment([("f", "s", 2)], writer="fan", inc="B" * 26)
    st.state.apply_segment(h1, b1)
    st.state.apply_segment(h2, b2)
    assert st.state.finish() == []
    assert st.apply([("b", "s", -1), ("c", "s", -1)], writer="sink") == ["s"]


def test_negative_running_sum_then_fanout_completes_only_when_balanced():
    st = Streams()
    st.apply([emit("s"), ("a", "s", -1), ("b", "s", -1), ("c", "s", -1)], writer="sink")
    assert not st.state.is_completed("s")  # sum -2: negative never completes
    st.apply([("f", "s", 2)], writer="fan", inc="B" * 26)
    assert st.state.is_completed("s")


def test_zero_before_plus_one_does_not_complete():
    st = Streams()
    st.apply([("x", "s", 0)], writer="mid")
    assert not st.state.is_completed("s")  # not emitted
    st.apply([emit("s")], writer="src", inc="B" * 26)
    assert not st.state.is_completed("s")  # +1 outstanding
    st.apply([("y", "s", -1)], writer="sink", inc="C" * 26)
    assert st.state.is_completed("s")


def test_same_key_duplicates_change_nothing():
    st = Streams()
    st.apply([emit("s"), emit("s"), ("f", "s", 2), ("f", "s", 2)])
    st.apply([("f", "s", 2), emit("s")], writer="retry", inc="B" * 26)  # retry on another writer
    s = st.state.pending[("r1", "s")]
    assert s.total == 3 and s.conflicts == 0
    st.apply([("a", "s", -1), ("b", "s", -1), ("c", "s", -1), ("c", "s", -1)])
    assert st.state.is_completed("s")


def test_rewrite_within_one_stream_later_wins():
    st = Streams()
    st.apply([emit("s"), ("k", "s", 0)])
    assert not st.state.is_completed("s")
    st.apply([("k", "s", -1)])  # same stream, later segment: rewrite 0 -> -1
    assert st.state.is_completed("s")


def test_rewrite_order_is_by_ordinal_not_arrival():
    a = SourceRunState()
    a.apply("k", 0, 5, -1)
    a.apply("k", 0, 3, 0)  # an older record arriving late does not win
    assert a.total == -1


def test_conflict_across_streams_does_not_complete_and_is_reported():
    st = Streams()
    st.apply([emit("s"), ("f", "s", 1), ("k", "s", -1)], writer="w1")
    st.apply([("k", "s", 0)], writer="w2", inc="B" * 26)
    assert not st.state.is_completed("s")
    assert st.state.anomaly_counts["conflict"] == 1
    st.apply([("z", "s", -1)], writer="w1")
    assert st.state.anomaly_counts["conflict"] == 1  # reported once


def test_conflict_judged_on_final_values_not_arrival():
    # stream 1 writes 0 then rewrites to -1; stream 2 writes -1: finals agree
    for order in itertools.permutations(["a", "b", "c"]):
        s = SourceRunState()
        recs = {"a": ("k", 1, 1, 0), "b": ("k", 1, 2, -1), "c": ("k", 2, 1, -1)}
        for name in order:
            s.apply(*recs[name])
        assert s.conflicts == 0 and s.total == -1, order


def test_negative_sum_never_completes():
    st = Streams()
    st.apply([emit("s"), ("a", "s", -1), ("b", "s", -1)])
    assert not st.state.is_completed("s")


def test_complete_pair_completes():
    st = Streams()
    assert st.apply([emit("s"), (DONE_KEY, "s", -1)]) == ["s"]


def test_late_record_reopens_once_with_warning():
    st = Streams()
    st.apply([emit("s"), (DONE_KEY, "s", -1)])
    assert st.state.is_completed("s")
    st.apply([("late", "s", -1)])  # a record the completion did not include
    assert not st.state.is_completed("s")
    assert st.state.anomaly_counts["late_record"] == 1
    assert len([w for w in st.warnings if "after it completed" in w]) == 1
    assert st.state.anomaly_counts["over_drained"] == 1  # its sum is now -1
    st.apply([("late2", "s", 1)])  # drains again: complete, as in one fold of all four
    assert st.state.is_completed("s")
    one = Streams()
    one.apply([emit("s"), (DONE_KEY, "s", -1), ("late", "s", -1), ("late2", "s", 1)])
    assert one.state.is_completed("s")
    # a different value for a key of the (second) completion reopens it again
    st.apply([("late", "s", 0)])
    assert not st.state.is_completed("s")
    assert len([w for w in st.warnings if "after it completed" in w]) == 2


def test_late_zero_record_keeps_the_completion():
    """A pass-through ``0`` flushed after the sink's ``-1``: the sum stays zero."""
    st = Streams()
    st.apply([emit("s"), (DONE_KEY, "s", -1)])
    st.apply([("pass", "s", 0)])
    assert st.state.is_completed("s")
    assert st.warnings == []
    assert st.state.done_entries_of("s")["pass"] == 0
    st.apply([("pass", "s", 1)])  # a different value for that key later: reopened
    assert not st.state.is_completed("s")
    assert len(st.warnings) == 1


def test_second_run_takes_over_when_the_first_completion_is_reopened():
    st = Streams()
    st.apply([emit("s"), (DONE_KEY, "s", -1)], run="r1")
    st.apply([emit("s"), (DONE_KEY, "s", -1)], run="r2", inc="B" * 26)
    assert st.state.completed_run("s") == "r1"
    st.apply([("late", "s", 1)], run="r1")  # r1 is not drained any more; r2 is
    assert st.state.completed_run("s") == "r2"


def test_late_same_key_duplicate_is_ignored():
    st = Streams()
    st.apply([emit("s"), (DONE_KEY, "s", -1)])
    st.apply([(DONE_KEY, "s", -1), emit("s")], writer="retry", inc="B" * 26)
    assert st.state.is_completed("s")
    assert st.warnings == []


def test_records_of_another_run_do_not_uncomplete():
    st = Streams()
    st.apply([emit("s"), (DONE_KEY, "s", -1)], run="r1")
    st.apply([emit("s")], run="r2", inc="B" * 26)
    assert st.state.is_completed("s")
    assert st.state.completed_run("s") == "r1"


def test_pending_is_scoped_to_run():
    st = Streams()
    st.apply([emit("s"), ("f", "s", 2)], run="r1")
    # a new run reruns the source from scratch: its records alone decide
    st.apply([emit("s"), (DONE_KEY, "s", -1)], run="r2", inc="B" * 26)
    assert st.state.completed_run("s") == "r2"


def test_union_of_three_writers():
    st = Streams()
    for i, w in enumerate(["w1", "w2", "w3"]):
        st.apply([emit(f"s{i}"), (DONE_KEY, f"s{i}", -1)], writer=w, inc=chr(65 + i) * 26)
    assert sorted(st.state.iter_completed()) == ["s0", "s1", "s2"]


def test_reset_voids_named_runs_only():
    st = Streams()
    st.apply([emit("s"), (DONE_KEY, "s", -1)], run="r1")
    st.apply([], run="r9", inc="Z" * 26, resets=[Reset("s", ["r1"])])
    assert not st.state.is_completed("s")
    # a completion by a run the resetter had not seen survives
    st.apply([emit("s"), (DONE_KEY, "s", -1)], run="r2", inc="B" * 26)
    assert st.state.completed_run("s") == "r2"


def test_reset_arriving_before_the_completion_it_names_still_voids_it():
    st = Streams()
    st.apply([], run="r9", inc="Z" * 26, resets=[Reset("s", ["r1"])])
    st.apply([emit("s"), (DONE_KEY, "s", -1)], run="r1")
    assert not st.state.is_completed("s")


def test_retired_run_records_are_ignored():
    st = Streams()
    st.apply([emit("s"), ("f", "s", 2)], run="old")
    st.state.retire_runs(["new"])
    st.apply([("a", "s", -1), ("b", "s", -1)], run="old")
    assert not st.state.is_completed("s")
    assert ("old", "s") not in st.state.pending
    assert st.state.anomaly_counts["retired_run"] == 1


def test_segment_replay_is_noop_and_gap_raises():
    st = Streams()
    h, b = st.segment([emit("s")])
    assert st.state.apply_segment(h, b)
    assert not st.state.apply_segment(h, b)
    _h2, _b2 = st.segment([("x", "s", -1)])
    h3, b3 = st.segment([("y", "s", -1)])
    with pytest.raises(ValueError):
        st.state.apply_segment(h3, b3)


def test_merge_is_commutative_associative_idempotent():
    a, b, c = SourceRunState(), SourceRunState(), SourceRunState()
    a.apply("k", 0, 1, 1)
    a.emitted = True
    b.apply("k", 1, 1, 1)
    b.apply("j", 1, 2, -1)
    c.apply("k", 0, 2, 0)
    c.tainted = True
    assert merge(a, b).signature() == merge(b, a).signature()
    assert merge(merge(a, b), c).signature() == merge(a, merge(b, c)).signature()
    assert merge(a, a).signature() == a.signature()
