"""Bounded compaction memory (issue 17 part 4): spilling changes nothing but layer boundaries.

A compaction evaluates a long tail in rounds and, once it holds enough completions,
*spills* them into in-memory layers (``compactor.SPILL_COMPLETIONS``) so that its
memory does not grow with the records it folds. Random journals written through the
public writer API — several runs and writers, records with few keys and sources (so
duplicates, rewrites, cross-stream conflicts and over-drained sources happen), late
records after a compaction, operators' resets, writers that crash with unflushed
records, compactions between them that retire runs and stack layers — are compacted
twice from byte-for-byte copies of the store, with the same evaluation rounds (1 to 3
records), once spilling at 1 to 3 completions held and once never. The two published
snapshots must be the same in everything but how their index is cut into layers:
marks, runs, pending states (entries, streams, ordinals, flags), resets, anomalies and
counters, the done-writers frame, every completed id with its run, final entries and
writers (layers read back from the store: an unwritten one fails), and a fresh
client's ``status()``. The pipeline machine also runs with spills at every round.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test
from pt_settings import budget

import resumelog
from resumelog import compactor
from resumelog._provisional import ProvisionalSet, _merged, _Run
from resumelog.storage import MemoryStore
from resumelog.testing.compaction import copy_store, published, spilling
from resumelog.testing.stateful import PipelineMachine, crash_writer, memory_store_factory

SOURCES = ("s0", "s1", "s2", "s3", "s4", "ü")
KEYS = ("a", "b", "c", "d")
RUNS = ("r1", "r2", "r3")
POLICY = resumelog.FlushPolicy(max_records=2)

op = st.one_of(
    st.tuples(
        st.just("record"),
        st.integers(0, 2),
        st.sampled_from(SOURCES),
        st.sampled_from(KEYS),
        st.integers(-2, 2),
        st.booleans(),
    ),
    st.tuples(st.just("complete"), st.integers(0, 2), st.sampled_from(SOURCES)),
    st.tuples(st.just("emit"), st.integers(0, 2), st.sampled_from(SOURCES)),
    st.tuples(st.just("complete_many"), st.integers(0, 2), st.integers(0, 40)),
    st.tuples(st.just("flush"), st.integers(0, 2)),
    st.tuples(st.just("close"), st.integers(0, 2)),
    st.tuples(st.just("crash"), st.integers(0, 2)),
    st.tuples(st.just("reset"), st.lists(st.sampled_from(SOURCES), min_size=1, max_size=2)),
    st.tuples(st.just("compact"), st.sampled_from([None, None, 1, 2])),
    st.tuples(st.just("run"), st.sampled_from(RUNS)),
)


class Journal:
    """Writes the operations into a memory store through the public API."""

    def __init__(self) -> None:
        self.store = MemoryStore(f"spill-{uuid.uuid4().hex}")
        self.run = "r1"
        self.views: dict[str, resumelog.Checkpoint] = {}
        self.writers: dict[tuple[str, int], Any] = {}
        self.batch = 0
        self.view()  # the checkpoint exists (meta.msgpack)

    def view(self) -> resumelog.Checkpoint:
        if self.run not in self.views:
            self.views[self.run] = resumelog.open(self.store, run_id=self.run, flush_policy=POLICY)
        return self.views[self.run]

    def writer(self, i: int) -> Any:
        w = self.writers.get((self.run, i))
        if w is None:
            w = self.writers[(self.run, i)] = self.view().writer(f"w{i}")
        return w

    def apply(self, o: tuple[Any, ...]) -> None:
        kind = o[0]
        if kind == "record":
            _, i, src, key, delta, emission = o
            self.writer(i).record(key, src, delta, emission=emission)
        elif kind == "emit":
            self.writer(o[1]).emit(o[2])
        elif kind == "complete":
            self.writer(o[1]).complete(o[2])
        elif kind == "complete_many":  # fresh sources, enough for several rounds and spills
            self.batch += 1
            for j in range(o[2]):
                self.writer(o[1]).complete(f"b{self.batch}-{j}")
        elif kind == "flush":
            self.writer(o[1]).flush()
        elif kind in ("close", "crash"):
            w = self.writers.pop((self.run, o[1]), None)
            if w is not None:
                w.close() if kind == "close" else crash_writer(w)
        elif kind == "reset":
            self.view().reset(o[1])
        elif kind == "compact":
            self.view().compact(keep_runs=o[1])
        elif kind == "run":
            self.run = o[1]

    def finish(self) -> None:
        for w in self.writers.values():
            crash_writer(w)  # unflushed records are lost, as in a crash
        self.writers.clear()


def compacted(store: MemoryStore, round_records: int, spill: int | None, keep_runs: int | None) -> tuple[Any, ...]:
    copy = MemoryStore(f"{store.name}-{spill}")
    try:
        copy_store(store, copy)
        with spilling(round_records, spill):
            r = compactor.compact(copy, keep_runs=keep_runs)
        return (r.written, r.records_folded, r.segments_folded, r.completed, r.retired_runs), published(copy), r.spills
    finally:
        copy.clear()


@given(
    ops=st.lists(op, max_size=40),
    round_records=st.integers(1, 3),
    spill=st.integers(1, 3),
    keep_runs=st.sampled_from([None, None, 1, 2]),
)
@example(  # the writers frame's stream table in stream-id order, not in the fold's (found by `deep`)
    ops=[
        ("record", 0, "s0", "a", 0, False),
        ("complete", 0, "s0"),
        ("record", 0, "s0", "a", 0, False),
        ("record", 0, "s0", "a", 0, False),
        ("crash", 0),
        ("compact", None),
        ("complete", 0, "s1"),
        ("complete", 1, "s0"),
    ],
    round_records=1,
    spill=1,
    keep_runs=None,
)
@budget(3)
def test_spilling_publishes_what_keeping_publishes(ops, round_records, spill, keep_runs):
    j = Journal()
    try:
        for o in ops:
            j.apply(o)
        j.finish()
        kept = compacted(j.store, round_records, None, keep_runs)
        spilled = compacted(j.store, round_records, spill, keep_runs)
        assert kept[2] == 0
        assert kept[:2] == spilled[:2]
    finally:
        j.store.clear()


@pytest.mark.parametrize("round_records", [1, 2])
def test_pipeline_machine_spilling_at_every_round(monkeypatch, round_records):
    """The pipeline machine (safety, convergence, no loss against its model) with every
    fold evaluated every 1-2 records and spilling at every round."""
    monkeypatch.setattr(compactor, "ROUND_RECORDS", round_records)
    monkeypatch.setattr(compactor, "SPILL_COMPLETIONS", 1)
    run_state_machine_as_test(lambda: PipelineMachine(memory_store_factory()), settings=budget(0.3))


@pytest.mark.parametrize("round_records, spill", [(3, 3), (2, 2), (3, 2), (4, 3)])
def test_a_partial_spill_keeps_the_writers_a_duplicate_gave_a_base_completion(round_records, spill):
    """A spill moves at most as many completions as keep its layer smaller than the one
    below (the rest wait): the writers a duplicate from another open stream added to a
    completion of the base (``FoldState.done_writers``) go with the spill all the same,
    so the base completion's later rewrite by its first writer is still a conflict."""
    ops = [
        ("emit", 1, "S"),
        ("record", 1, "S", "k", -1, False),  # S drained by w1
        ("flush", 1),
        ("compact", None),  # S is a completion of the base
        ("complete_many", 0, 12),  # w0 (folded first): fresh completions, a first spill
        ("record", 0, "S", "k", -1, False),  # a duplicate of k from another open stream
        ("complete_many", 0, 30),  # more: later spills take part of what is held
        ("flush", 0),
        ("record", 1, "S", "k", 0, False),  # w1 rewrites k: w0 still says -1, a conflict
        ("record", 1, "S", "k2", -1, False),
        ("close", 1),
        ("close", 0),
    ]
    j = Journal()
    try:
        for o in ops:
            j.apply(o)
        j.finish()
        kept = compacted(j.store, round_records, None, None)
        spilled = compacted(j.store, round_records, spill, None)
        assert spilled[2] >= 3
        assert kept[:2] == spilled[:2]
        assert "S" not in kept[1]["completed"]
    finally:
        j.store.clear()


DUPLICATE_AFTER_CLOSE = [
    ("record", 0, "s0", "a", 0, False),
    ("complete", 0, "s0"),  # s0 completes with w0 open (its closing segment comes later)...
    ("record", 0, "s0", "a", 0, False),
    ("record", 0, "s0", "a", 0, False),
    ("close", 0),  # ...then w0 closes: s0's values are final, its writers left out
    ("complete", 1, "s1"),  # (a completion to spill)
    ("complete", 1, "s0"),  # duplicates of s0's reserved keys from the open stream w1
]


def _writers_by_writer(published: dict[str, Any], src: str) -> Any:
    """``src``'s writers as published, each stream by its writer id (incarnations differ
    from journal to journal)."""
    ws = published["completed"][src][2]
    return None if ws is None else [sorted(s.split("/")[0] for s in e) for e in ws]


@pytest.mark.parametrize("through", ["spill", "snapshot"])
def test_a_duplicate_from_an_open_stream_is_kept_after_its_completions_writers_closed(through):
    """Found by the ``deep`` profile (test_spilling_publishes_what_keeping_publishes):
    a completion whose writers all closed loses them at a spill or a snapshot (final
    values); a duplicate of one of its keys from a stream still open must still join
    the key's writers, as it does in a fold that held the closed writers, or the
    published writers depend on when the fold spilled or compacted."""
    one = Journal()
    cut = Journal()
    try:
        for o in DUPLICATE_AFTER_CLOSE:
            one.apply(o)
            cut.apply(o)
            if through == "snapshot" and o == ("complete", 1, "s1"):
                cut.apply(("compact", None))  # between the close and the duplicates
        one.finish()
        cut.finish()
        kept = compacted(one.store, 1, None, None)
        other = compacted(cut.store if through == "snapshot" else one.store, 1, 1 if through == "spill" else None, None)
        if through == "spill":
            assert other[2] == 2
            assert kept[:2] == other[:2]
        want = [["\x00reopened", "w1"], ["\x00reopened", "w1"], ["\x00reopened"]]  # shape order: done, emit, a
        assert _writers_by_writer(kept[1], "s0") == want
        assert _writers_by_writer(other[1], "s0") == want
    finally:
        one.store.clear()
        cut.store.clear()


def test_a_freeze_merges_runs_without_holding_their_ids():
    """The runs a freeze merges (a binary counter: at the 2^k-th spill, every run so
    far) stream through in chunks: the merge never holds their ids as Python strings
    (a list of 10M ids held 800 MB at spill 17 of a 64M-record compaction)."""
    import tracemalloc

    p = ProvisionalSet()
    n = 100_000
    for k in range(2):  # two runs of n ids, interleaved in key order
        p.update(f"s3://bucket/part-{i:09d}.jsonl" for i in range(k, 2 * n, 2))
        if k == 0:
            p.freeze()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        p.freeze()  # the recent ids frozen, then both runs merged into one
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert len(p.runs) == 1 and p.runs[0].n == 2 * n
    strings = 2 * n * (len("s3://bucket/part-000000000.jsonl") + 49)  # the ids as str objects
    assert peak < strings / 3, f"the merge held {peak} bytes ({strings} as strings)"
    assert f"s3://bucket/part-{2 * n - 1:09d}.jsonl" in p and f"s3://bucket/part-{2 * n:09d}.jsonl" not in p


@given(
    st.lists(st.integers(0, 2000), max_size=900),
    st.lists(st.integers(0, 2000), max_size=900),
    st.sets(st.integers(0, 2000), max_size=40),
)
@budget(2)
def test_merging_two_frozen_runs_is_their_sorted_union_less_the_discarded(a, b, gone) -> None:
    """The merge of :meth:`ProvisionalSet.freeze` (windows of two runs sorted in C) gives
    the run of ``sorted((A | B) - gone)``, cut into the same chunks as a run made from
    that list (runs of up to 900 ids: several chunks, overlapping anywhere)."""
    ids = lambda xs: sorted({f"s{x:05d}" for x in xs})  # noqa: E731
    gone_ids = set(ids(gone))
    lower, upper = _Run(ids(a)), _Run(ids(b))
    merged = _Run.of_lists(_merged(lower, upper, gone_ids))
    want = _Run(sorted((set(ids(a)) | set(ids(b))) - gone_ids))
    assert (merged.firsts, merged.chunks, merged.n) == (want.firsts, want.chunks, want.n)


@given(
    st.lists(st.integers(0, 999), max_size=900),
    st.lists(st.integers(1000, 1999), max_size=900),
    st.sets(st.integers(0, 2000), max_size=40),
    st.booleans(),
)
@budget(2)
def test_joining_two_disjoint_frozen_runs_keeps_their_chunks(a, b, gone, swap) -> None:
    """Runs whose ranges do not overlap (ids completed in key order) are joined chunk by
    chunk: the ids are the sorted union less the discarded, each chunk's first id is its
    first, the count exact, and a chunk holding no discarded id is kept as it was."""
    ids = lambda xs: sorted({f"s{x:05d}" for x in xs})  # noqa: E731
    gone_ids = set(ids(gone))
    lower, upper = _Run(ids(a)), _Run(ids(b))
    ps = ProvisionalSet()
    runs = [upper, lower] if swap else [lower, upper]  # (either range first)
    ps.runs = sorted(runs, key=lambda r: r.n)  # (the smaller last but one: freeze merges them)
    ps.gone = set(gone_ids)
    ps.freeze()
    (joined,) = ps.runs
    want = sorted((set(ids(a)) | set(ids(b))) - gone_ids)
    assert list(joined) == want and joined.n == len(want)
    assert [joined._chunk(i)[0] for i in range(len(joined.chunks))] == joined.firsts
    if lower.n and upper.n:
        untouched = {c for c in lower.chunks + upper.chunks if not gone_ids.intersection(_decode_chunk(c))}
        assert untouched <= set(joined.chunks)


def _decode_chunk(chunk: bytes) -> list[str]:
    import zlib

    import msgspec

    return msgspec.msgpack.decode(zlib.decompress(chunk), type=list[str])


_FEW = st.integers(0, 6)  # (ids added, discarded and added again)
_SET_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), _FEW),
        st.tuples(st.just("update"), st.lists(st.one_of(_FEW, st.integers(0, 600)), max_size=400)),
        st.tuples(st.just("discard"), _FEW),
        st.tuples(st.just("freeze"), st.none()),
        st.tuples(st.just("in"), _FEW),
        st.tuples(st.just("iter"), st.none()),
    ),
    max_size=40,
)


@given(_SET_OPS)
@example([("update", [1]), ("freeze", None), ("discard", 1), ("update", [1, 2]), ("freeze", None)])  # re-added
@example([("add", 0), ("freeze", None), ("discard", 0)])  # empty: its one frozen id discarded
@budget(6)
def test_a_provisional_set_is_a_set_under_any_operations(ops) -> None:
    """:class:`ProvisionalSet` against a ``set``: any sequence of ``add``, ``update``
    (kept as lists until another operation or a freeze needs them), ``discard``,
    ``freeze`` (runs merged or joined, several chunks) and the reads gives the same
    members, answers and length at every step, and frozen runs of distinct ids."""
    p, model = ProvisionalSet(), set()
    name = "s{:05d}".format
    for op, arg in ops:
        if op == "add":
            p.add(name(arg))
            model.add(name(arg))
        elif op == "update":
            p.update(map(name, arg))
            model.update(map(name, arg))
        elif op == "discard":
            p.discard(name(arg))
            model.discard(name(arg))
        elif op == "freeze":
            p.freeze()
        elif op == "in":
            assert (name(arg) in p) == (name(arg) in model)
        else:
            assert sorted(p) == sorted(model) and len(p) == len(model)
        assert bool(p) == bool(model)
    p.freeze()
    assert sorted(p) == sorted(model) and len(p) == len(model)
    for run in p.runs:  # each frozen run: sorted distinct ids, counted exactly
        ids = list(run)
        assert ids == sorted(set(ids)) and run.n == len(ids)
