"""The fold's fast path (``resumelog._fastfold``) gives exactly what the reference fold gives.

Random journals — several streams of two or three runs, batches with repeated keys
(redeliveries and rewrites), keys that several streams write with the same or other
values (conflicts), late records after a completion, resets, sources named twice in a
batch, empty source ids and keys holding the characters the fast path's cache marks
with, deltas beyond 64 bits — are folded twice, operation by operation: once with every
batch sent through the fast path (``MIN_RECORDS = 0``), once with the fast path off.
Between segments the operations include evaluations (``finish``, also provisional
rounds), snapshot round trips, quarantined and retired runs and latecomers' positive
records. After every operation that exposes state, *everything* must be equal: the
returned completions, the completed set in order, pending states in order (with their
entries in order and their flags), done shapes and writers, the shape table,
anomalies and warnings, marks, and the snapshot's bytes (nonce fixed).

The model-based machines (``test_machine_memory.py`` and the other fold tests) run
under both paths as well: CI runs the property suite again with
``RESUMELOG_FOLD=python`` and with ``RESUMELOG_FOLD_MIN_RECORDS=0``.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pt_settings import budget

from resumelog import _fastfold
from resumelog._columns import decode_batch
from resumelog.algebra import FoldState
from resumelog.format import EMISSION, Batch, Reset, SegmentHeader, encode
from resumelog.snapshot import encode_snapshot, load_snapshot

pytestmark = pytest.mark.skipif(_fastfold.np is None, reason="NumPy is not installed: no fast path to compare")

RUNS = ("r1", "r2", "r3")
STREAMS = (("w1", "r1"), ("w2", "r1"), ("w3", "r2"), ("w4", "r3"), ("w5", "r2"))
SOURCES = ("s0", "s1", "s2", "s3", "", "s\x1f", "s4")
BIG = (1 << 62, -(1 << 62), (1 << 63) + 5, -(1 << 63))


@st.composite
def keys(draw: st.DrawFn, source: str) -> str:
    kind = draw(st.integers(0, 9))
    if kind <= 4:
        return draw(st.sampled_from(["a", "b", "c", "d"]))
    if kind <= 6:
        return f"0_{source}_{draw(st.integers(0, 2))}"  # a lineage key: the source id in it
    if kind == 7:
        return draw(st.sampled_from(["\x00emit", "\x00done"]))
    return draw(st.sampled_from(["k\x1e", "k\x1f", "k\x00x", "k\x1d\x1c"]))


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    sources = draw(st.lists(st.sampled_from(SOURCES), min_size=1, max_size=4))  # repeats allowed
    n = draw(st.integers(0, 8))
    index = [draw(st.integers(0, len(sources) - 1)) for _ in range(n)]
    ks = [draw(keys(sources[i])) for i in index]
    small = st.integers(-2, 2)
    deltas = [
        draw(st.one_of(small, small, small, st.sampled_from(BIG)) if draw(st.integers(0, 30)) == 0 else small)
        for _ in range(n)
    ]
    flags = bytes(draw(st.sampled_from([0, 0, EMISSION, 2])) for _ in range(n))  # bit 1: reserved, still "flagged"
    resets = []
    if draw(st.integers(0, 12)) == 0:
        resets = [Reset(draw(st.sampled_from(SOURCES)), sorted(draw(st.sets(st.sampled_from(RUNS), min_size=1))))]
    return Batch(sources, index, ks, deltas, flags, resets)


def batch_of(records: list[tuple[str, list[tuple[str, int, int]]]]) -> Batch:
    """One batch of each source's records ``(key, delta, flags)``, source by source."""
    index: list[int] = []
    ks: list[str] = []
    ds: list[int] = []
    flags = bytearray()
    for i, (_, recs) in enumerate(records):
        for k, d, f in recs:
            index.append(i)
            ks.append(k)
            ds.append(d)
            flags.append(f)
    return Batch([src for src, _ in records], index, ks, ds, bytes(flags))


@st.composite
def drained_batch(draw: st.DrawFn) -> Batch:
    """The common case the fast path is for: whole sources emitted and drained."""
    sources = draw(st.lists(st.sampled_from(SOURCES), min_size=1, max_size=3, unique=True))
    records = []
    for src in sources:
        fan = draw(st.integers(1, 3))
        emission = draw(st.sampled_from([EMISSION, EMISSION, EMISSION, 0]))  # sometimes drained, never entered
        recs = [(f"0_{src}", 1, emission), (f"0_{src}_0", fan - 1, 0)] + [(f"0_{src}_{j}_0", -1, 0) for j in range(fan)]
        records.append((src, recs))
    return batch_of(records)


COMPLETED = ("mi", "s0", "e", "zz", "")
"""Sources of ``completed_batch``: ``mi`` and ``e`` are found in the reserved key
``\\x00emit``, where their id is cut out of a shape key."""


@st.composite
def completed_batch(draw: st.DrawFn) -> Batch:
    """``complete()`` calls (emit +1 on ``\\x00emit``, done -1 on ``\\x00done``) and
    look-alikes: a first key with the source id in it (``\\x00e<id>t``, whose shape key
    with the id cut out is that of ``mi``'s ``complete()``), or the deltas on the other
    keys (done +1, emit -1)."""
    sources = draw(st.lists(st.sampled_from(COMPLETED), min_size=2, max_size=4, unique=True))
    records = []
    for src in sources:
        first = draw(st.sampled_from(["\x00emit", f"\x00e{src}t", "\x00done"]))
        records.append((src, [(first, 1, EMISSION), ("\x00emit" if first == "\x00done" else "\x00done", -1, 0)]))
    return batch_of(records)


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("segment"),
            st.integers(0, len(STREAMS) - 1),
            st.lists(st.one_of(batches(), drained_batch()), max_size=3),
            st.booleans(),
        ),
        st.tuples(
            st.just("segment"),
            st.integers(0, len(STREAMS) - 1),
            st.lists(st.one_of(drained_batch(), completed_batch()), min_size=1, max_size=3),
            st.just(False),
        ),
        st.tuples(st.just("finish"), st.booleans()),
        st.tuples(st.just("roundtrip")),
        st.tuples(st.just("damage"), st.sampled_from(RUNS)),
        st.tuples(st.just("retire"), st.sets(st.sampled_from(RUNS))),
        st.tuples(st.just("positive"), st.integers(0, len(STREAMS) - 1), st.lists(batches(), max_size=2)),
    ),
    max_size=14,
)


def fingerprint(state: FoldState, warnings: list[str]) -> dict[str, Any]:
    """Everything a fold state holds that a user, a later fold or a snapshot can see,
    in order where the state keeps an order."""
    assert not state._deferred, "a state waits in the fast path's columns after an evaluation"
    return {
        "pending": [
            (
                k,
                s.emitted,
                s.tainted,
                s.reported,
                s.overdrawn,
                s.multi,
                [(key, e if type(e) is tuple else sorted(e.items())) for key, e in s.entries.items()],
            )
            for k, s in state.pending.items()
        ],
        "pending_order_of_entries": [(k, list(s.entries)) for k, s in state.pending.items()],
        "added": list(state.added.items()),
        "removed": sorted(state.removed),
        "done_shapes": list(state.done_shapes.items()),
        "shapes": state.shapes.shapes,
        "done_writers": list(state.done_writers.items()),
        "stream_ids": list(state.stream_ids),
        "streams": list(state.streams.items()),
        "runs": [(r, i.first_snapshot, i.last_snapshot, i.retired, i.damaged) for r, i in state.runs.items()],
        "resets": sorted((s, sorted(r)) for s, r in state.resets.items()),
        "anomalies": list(state.anomalies),
        "anomaly_counts": dict(state.anomaly_counts),
        "provisional": None if state.provisional is None else sorted(state.provisional),
        "records_folded": state.records_folded,
        "completed": list(state.iter_completed()),
        "completed_count": state.completed_count(),
        "warnings": list(warnings),
    }


class Fold:
    """One fold driven by the operations (``fast``: every batch may take the fast path)."""

    def __init__(self, fast: bool, rounds: bool, columns: bool = False, few: bool = False) -> None:
        self.fast = fast
        self.columns = columns  # batches as the compaction decodes them (ColumnBatch where it can)
        self.few = few  # states made pending by an evaluation: their records worked out alone
        self.warnings: list[str] = []
        self.state = self.new(FoldState())
        if rounds:
            self.state.provisional = set()
        self.seq: dict[int, int] = defaultdict(int)

    def new(self, state: FoldState) -> FoldState:
        state.warn = self.warnings.append
        return state

    def run(self, op: tuple[Any, ...], monkeypatch: pytest.MonkeyPatch) -> object:
        monkeypatch.setattr(_fastfold, "ENABLED", self.fast)
        monkeypatch.setattr(_fastfold, "MIN_RECORDS", 0)
        monkeypatch.setattr(_fastfold, "FEW_RECORDS", 0 if self.few else 1 << 40)
        kind = op[0]
        st_ = self.state
        if kind == "segment":
            _, i, bs, closed = op
            writer, run = STREAMS[i]
            header = SegmentHeader(writer, "01J" + "0" * 23, self.seq[i], run, bytes(16), 1000 + self.seq[i])
            self.seq[i] += 1
            if self.columns:
                bs = [decode_batch(encode(b)) or b for b in bs]
            return st_.apply_segment(header, bs, closed)
        if kind == "finish":
            return st_.finish(final=op[1])
        if kind == "roundtrip":
            st_.finish()
            provisional = st_.provisional
            with pytest.MonkeyPatch.context() as zero:  # layer nonces too: both paths' bytes equal
                zero.setattr(secrets, "token_bytes", lambda n: bytes(n))
                encoded = encode_snapshot(st_, None)
            _, loaded = load_snapshot(encoded)
            self.state = self.new(loaded)
            self.state.provisional = provisional
            return None
        if kind == "damage":
            return st_.damage_run(op[1], f"lost segment of {op[1]}")
        if kind == "retire":
            return st_.retire_runs(op[1])
        if kind == "positive":
            _, i, bs = op
            writer, run = STREAMS[i]
            st_.apply_positive(SegmentHeader(writer, "01J" + "0" * 23, self.seq[i] + 7, run, bytes(16)), bs)
            return None
        raise AssertionError(kind)

    def snapshot(self, monkeypatch: pytest.MonkeyPatch) -> bytes:
        import resumelog.snapshot as snapshot

        monkeypatch.setattr(snapshot.secrets, "token_bytes", lambda n: bytes(n))
        return encode_snapshot(self.state, None, created_ms=1)


def compare(
    operations: list[tuple[Any, ...]], rounds: bool = False, columns: bool = False, few: bool | None = None
) -> None:
    """Run ``operations`` on both paths (``columns``: the fast path's batches decoded as
    the compaction decodes them; ``few``: the records of states an evaluation makes
    pending worked out alone or from full columns, both if ``None``); assert equal
    results and states."""
    if few is None:
        for one in (False, True):
            compare(operations, rounds, columns, one)
        return
    with pytest.MonkeyPatch.context() as mp:
        fast, ref = Fold(True, rounds, columns, few), Fold(False, rounds)
        for op in operations:
            got, want = fast.run(op, mp), ref.run(op, mp)
            assert got == want, op
            if op[0] in ("finish", "roundtrip"):
                assert fingerprint(fast.state, fast.warnings) == fingerprint(ref.state, ref.warnings), op
        for f in (fast, ref):
            f.run(("finish", True), mp)
        assert fingerprint(fast.state, fast.warnings) == fingerprint(ref.state, ref.warnings)
        assert fast.snapshot(mp) == ref.snapshot(mp)


@given(operations=ops, rounds=st.booleans(), columns=st.booleans(), few=st.booleans())
@budget(3)
def test_fast_path_equals_the_reference(operations, rounds, columns, few):
    compare(operations, rounds, columns, few)


def drained(*sources: str, pending: tuple[str, ...] = ()) -> Batch:
    """One batch draining ``sources`` (emit +1, fan-out +1, sinks -1 -1) and entering
    ``pending`` (emit +1 only)."""
    records = []
    for src in [*sources, *pending]:
        recs = [(f"0_{src}", 1, EMISSION)]
        if src in sources:
            recs += [(f"0_{src}_0", 1, 0), (f"0_{src}_0_0", -1, 0), (f"0_{src}_1_0", -1, 0)]
        records.append((src, recs))
    return batch_of(records)


def closing(src: str) -> Batch:
    """The records that drain a source ``drained(pending=(src,))`` entered."""
    return Batch([src], [0, 0, 0], [f"0_{src}_0", f"0_{src}_0_0", f"0_{src}_1_0"], [1, -1, -1], bytes(3))


def test_completions_by_the_same_writers_in_another_entry_order():
    """``s0`` and ``s1`` complete in bulk in one evaluation, each written by the same two
    open streams in the same record order, with the same shape but their keys in the
    other order: each entry keeps the stream that wrote it (writers are found once per
    distinct streams *and* entry order)."""
    w1 = Batch(["s0", "s1"], [0, 1], ["0_s0", "0_s1_0"], [1, -1], bytes([EMISSION, 0]))
    w2 = Batch(["s0", "s1"], [0, 1], ["0_s0_0", "0_s1"], [-1, 1], bytes([0, EMISSION]))
    for columns in (False, True):
        compare([("segment", 0, [w1], False), ("segment", 1, [w2], False), ("finish", False)], columns=columns)


def test_a_drained_source_never_emitted_does_not_complete():
    b = drained("s0", "s1")
    compare([("segment", 0, [Batch(b.sources, b.source_index, b.keys, b.deltas, bytes(len(b.keys)))], False)])


def test_a_key_written_twice_is_one_entry():
    """``0_s0`` written twice (a redelivery): the sum over distinct keys is -1, the sum
    of the records 0; and the same with another stream writing a different value."""
    b = drained("s0")
    twice = Batch(b.sources, [*b.source_index, 0], [*b.keys, "0_s0"], [*b.deltas, 1], b.flags + b"\0")
    compare([("segment", 0, [twice], False)])
    compare(
        [("segment", 0, [drained("s0")], False), ("segment", 1, [Batch(["s0"], [0], ["0_s0_0"], [2], b"\0")], False)]
    )


def test_a_source_complete_in_one_run_drained_fresh_in_another():
    """s0 completes in r1; r2 drains it in the next evaluation: r1 holds it (the
    smaller run id), r2's drained state stays pending."""
    compare([("segment", 0, [drained("s0")], False), ("finish", True), ("segment", 2, [drained("s0", "s1")], False)])
    compare([("segment", 2, [drained("s0")], False), ("finish", True), ("segment", 0, [drained("s0", "s1")], False)])


def test_a_completion_taken_over_twice_in_one_evaluation():
    """r3 holds s0; r2 then r1 drain it (fresh): r2 takes it over (r3's state becomes
    pending), then r1 takes it from r2 (r2's state, pending already, keeps its place).
    Found by the ``deep`` profile."""
    one = [drained("s0")]
    compare([("segment", 3, one, False), ("finish", False), ("segment", 2, one, False), ("segment", 0, one, False)])


def test_two_runs_drain_a_fresh_source_in_one_evaluation():
    """The larger run's state comes first: it completes, then the smaller run takes the
    completion in the same evaluation and the larger run's drained state stays pending
    (neither may complete in bulk)."""
    compare([("segment", 2, [drained("s0", "s1")], False), ("segment", 0, [drained("s0")], False), ("finish", True)])


def test_a_completion_taken_over_is_pending_after_the_fresh_states():
    """A completion held by r2 since an earlier evaluation is taken over by r1 (its
    state, ``(r2, s0)``, becomes pending) in an evaluation that also leaves fresh
    states pending, created before and after r1's: in the reference they were pending
    before the evaluation began, so the taken-over state comes last."""
    compare(
        [
            ("segment", 2, [drained("s0")], False),
            ("finish", True),
            ("segment", 0, [drained("s0", pending=("s1", "s2"))], False),
            ("segment", 1, [drained("s4", pending=("s3",))], False),
            ("finish", True),
        ]
    )


def test_a_source_completed_by_a_touched_state_in_the_evaluation_of_a_fresh_one():
    """``s0`` is pending in one run; a round drains it there (a touched state) and
    drains it fresh in another run. The touched state completes first, in the same
    evaluation: the fresh state, numbered while ``s0`` was not complete, must not
    complete in bulk (the larger run keeps its drained state pending; the smaller one
    takes the completion over)."""
    for held, fresh in ((0, 2), (2, 0)):
        ops = [("segment", held, [drained(pending=("s0",))], False), ("finish", True)]
        ops += [("segment", held, [closing("s0")], False), ("segment", fresh, [drained("s0", "s1")], False)]
        for columns in (False, True):
            compare([*ops, ("finish", True)], columns=columns)
    # the touched state takes over a completion of the base (r2's): r3's fresh state,
    # numbered while the base held ``s0``, must not complete in bulk either
    ops = [("segment", 2, [drained("s0")], False), ("finish", True)]
    ops += [("segment", 0, [drained(pending=("s0",))], False), ("roundtrip",)]
    ops += [("segment", 0, [closing("s0")], False), ("segment", 3, [drained("s0", "s1")], False)]
    for columns in (False, True):
        compare([*ops, ("finish", True)], columns=columns)


def test_fresh_states_of_a_damaged_run_do_not_complete():
    """A run found damaged (a lost segment) completes nothing more: its fresh states
    that drain afterwards, in a round of that run only or beside another run's, stay
    pending (the round's one-run check and the per-run check)."""
    for other in ((), (("segment", 2, [drained("s2")], False),)):
        for columns in (False, True):
            compare(
                [
                    ("segment", 0, [drained(pending=("s0",))], False),
                    ("damage", "r1"),
                    *other,
                    ("segment", 0, [drained("s1")], False),
                    ("segment", 1, [closing("s0")], False),
                    ("finish", True),
                ],
                columns=columns,
            )


def test_a_pending_state_touched_after_a_fresh_one_keeps_the_evaluation_order():
    """``s0`` is pending from an earlier evaluation; a batch enters ``s1`` (fresh) and
    then drains ``s0``: the reference touches ``s1`` first, so it completes first."""
    b = drained("s1")
    b = Batch(
        ["s1", "s0"],
        [*b.source_index, 1, 1, 1],
        [*b.keys, "0_s0_0", "0_s0_0_0", "0_s0_1_0"],
        [*b.deltas, 1, -1, -1],
        b.flags + bytes(3),
    )
    compare(
        [
            ("segment", 0, [drained(pending=("s0",))], False),
            ("finish", True),
            ("segment", 0, [b], False),
            ("finish", True),
        ]
    )


def test_fresh_states_of_two_runs_numbered_by_both_ways_keep_their_runs():
    """In one round r1's fresh state ``a`` is numbered the common way, and r2's ``b``
    by the way of a batch with a pending state (``p``, touched first in the round):
    the round holds two runs, and each completion keeps its own."""
    touch = Batch(["p"], [0], ["0_p_x"], [0], b"\0")
    mixed = batch_of(
        [
            ("p", [("0_p_y", 0, 0)]),
            ("b", [("0_b", 1, EMISSION), ("0_b_0", 1, 0), ("0_b_0_0", -1, 0), ("0_b_1_0", -1, 0)]),
        ]
    )
    ops = [("segment", 2, [drained(pending=("p",))], False), ("finish", True)]
    ops += [("segment", 2, [touch], False), ("segment", 0, [drained("a")], False), ("segment", 4, [mixed], False)]
    for columns in (False, True):
        compare([*ops, ("finish", True)], columns=columns)


def test_a_large_drained_journal_completes_in_bulk(monkeypatch):
    """The common case at a realistic size, through the real thresholds: the fast path
    is taken (no state is pending before the evaluation) and equals the reference."""
    monkeypatch.setattr(_fastfold, "ENABLED", True)

    def journal() -> list[tuple[SegmentHeader, list[Batch]]]:
        out = []
        for w in range(3):
            bs = []
            for b in range(4):
                sources = [f"shard-{w}-{b}-{i:04d}" for i in range(100)]
                index, ks, ds, fl = [], [], [], bytearray()
                for i, s in enumerate(sources):
                    last = 0 if b == 3 else -1  # the last batch leaves its sources pending
                    for k, d, f in [
                        (f"0_{s}", 1, 1),
                        (f"0_{s}_0", 2, 0),
                        (f"0_{s}_0_0", -1, 0),
                        (f"0_{s}_1_0", -1, 0),
                        (f"0_{s}_2_0", last, 0),
                    ]:
                        index.append(i)
                        ks.append(k)
                        ds.append(d)
                        fl.append(f)
                bs.append(Batch(sources, index, ks, ds, bytes(fl)))
            out.append((SegmentHeader(f"w{w}", "i", 0, "r1", bytes(16)), bs))
        return out

    states = []
    for fast in (True, False):
        monkeypatch.setattr(_fastfold, "ENABLED", fast)
        state = FoldState()
        for header, bs in journal():
            state.apply_segment(header, bs)
        if fast:
            assert not state.pending and len(state._deferred) == 1200
        done = state.finish()
        states.append((done, fingerprint(state, [])))
    assert states[0] == states[1]
    assert len(states[0][0]) == 900 and len(states[0][1]["pending"]) == 300


def test_simple_completions_are_told_once_per_shape_key_but_ids_found_in_a_reserved_key():
    """``complete()`` calls (emit +1 and done -1 on the reserved keys) are found simple once
    per shape key; a source id found in a reserved key is checked alone. Two such pairs,
    each sharing a shape key (keys with the id cut out, and deltas) with a source whose
    keys only look like the reserved ones: ``mi``'s ``\\x00emit`` and ``zz``'s
    ``\\x00ezzt`` (the simple one first), ``xq``'s ``\\x00xqmit`` and ``e``'s
    ``\\x00emit`` (the other first). Taking one's answer for the other would complete
    a source with the wrong final entries."""

    def completed(*specs: tuple[str, str]) -> Batch:
        return batch_of([(src, [(emit_key, 1, EMISSION), ("\x00done", -1, 0)]) for src, emit_key in specs])

    plain = [(f"a{i}", "\x00emit") for i in range(6)]
    tricky = [("mi", "\x00emit"), ("zz", "\x00ezzt"), ("xq", "\x00xqmit"), ("e", "\x00emit")]
    for columns in (False, True):
        compare(
            [("segment", 0, [completed(*plain[:3], *tricky, *plain[3:])], False), ("finish", True)], columns=columns
        )
    fold = Fold(True, False)
    with pytest.MonkeyPatch.context() as mp:
        fold.run(("segment", 0, [completed(*plain, *tricky)], False), mp)
        fold.run(("finish", True), mp)
    shaped = set(fold.state.done_shapes)
    assert set(fold.state.added) == {src for src, _ in plain + tricky}
    assert shaped == {"zz", "xq"}  # the simple ones keep no shape


def test_keys_holding_a_mark_share_no_shape_key_with_other_keys():
    """The shape cache's key of a state is its keys joined by a separator, its source id
    replaced by a cut mark (and its deltas): a key holding either mark must not be
    cached, or states with other keys share its cache key and take its shape. ``s1``'s
    keys ``a\\x1fb``, ``c`` and ``s2``'s ``a``, ``b\\x1fc`` both join to ``a\\x1fb\\x1fc``;
    ``s3``'s ``a\\x1e``, ``c`` and ``s4``'s ``as4``, ``c`` (its id cut out) both give
    ``a\\x1e\\x1fc``. Each pair completes in bulk in one evaluation, with the same deltas,
    and must keep shapes of its own (the reference interns each)."""
    pairs = [
        [("s1", [("a\x1fb", 1, EMISSION), ("c", -1, 0)]), ("s2", [("a", 1, EMISSION), ("b\x1fc", -1, 0)])],
        [("s3", [("a\x1e", 1, EMISSION), ("c", -1, 0)]), ("s4", [("as4", 1, EMISSION), ("c", -1, 0)])],
    ]
    for columns in (False, True):
        for pair in pairs:
            compare([("segment", 0, [batch_of(pair)], False), ("finish", True)], columns=columns)
            compare(
                [
                    ("segment", 0, [batch_of(pair[:1])], False),
                    ("finish", False),
                    ("segment", 0, [batch_of(pair[1:])], False),
                    ("finish", True),
                ],
                columns=columns,
            )


def test_an_emptied_shape_cache_changes_nothing(monkeypatch):
    """The shape cache is emptied when it grows past its bound (keys unlike from source
    to source): evaluations after that intern again and give the same shape ids."""
    monkeypatch.setattr(_fastfold, "_CACHE_MAX", 0)
    compare(
        [
            ("segment", 0, [drained("s0", "s1")], False),
            ("finish", False),
            ("segment", 1, [drained("s2", "s3", pending=("s4",))], False),
            ("finish", True),
            ("segment", 2, [drained("s1", "s4")], False),
        ]
    )


def test_a_late_record_first_after_an_evaluation_numbers_nothing():
    """s0 completes in r1; after the evaluation, the first batch names a new source s1
    and s0 again (a late record): the fast path leaves it to the reference loop and must
    not keep the number it gave s1 (no state waits in its columns, so nothing clears
    them). The next batch enters s2 and names s1 again: with a stale number, s1's records
    would land in s2's state."""
    late = Batch(["s1", "s0"], [0, 1], ["0_s1", "0_s0_9"], [1, 1], bytes([EMISSION, 0]))
    then = Batch(["s2", "s1"], [0, 0, 1, 1], ["0_s2", "0_s2_0", "0_s1_0", "0_s1_1"], [1, -1, -1, 0], b"\x01\0\0\0")
    compare([("segment", 0, [drained("s0")], False), ("finish", True), ("segment", 0, [late, then], False)])


def test_a_late_record_of_a_base_completion_numbers_nothing():
    """As above, s0's completion loaded from a snapshot (the base): the kernel numbers s1
    and finds no late record (s0 is not in ``added``), the base lookup finds s0's, and
    the fast path must take s1's number back."""
    late = Batch(["s1", "s0"], [0, 1], ["0_s1", "0_s0_9"], [1, 1], bytes([EMISSION, 0]))
    then = Batch(["s2", "s1"], [0, 0, 1, 1], ["0_s2", "0_s2_0", "0_s1_0", "0_s1_1"], [1, -1, -1, 0], b"\x01\0\0\0")
    ops = [
        ("segment", 0, [drained("s0")], False),
        ("finish", True),
        ("roundtrip",),
        ("segment", 0, [late, then], False),
    ]
    compare(ops)
