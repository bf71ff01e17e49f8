"""Regression tests: bugs the property suite found, fixed since (each a minimal case).

Each names the DESIGN §4 invariant it broke and what the library did before the fix.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from pt_settings import budget
from test_algebra_laws import build_segments, fold

import resumelog
from resumelog import compactor, paths
from resumelog.algebra import FoldState
from resumelog.format import Reset, decode_segment
from resumelog.journal import DONE_KEY, EMIT_KEY
from resumelog.snapshot import encode_snapshot, load_snapshot
from resumelog.testing import strategies as rst
from resumelog.testing.stateful import HookedStore, fold_summary


def test_view_completes_a_source_another_process_fanned_out(store):
    """Safety (1). Was: ``Checkpoint`` folded its own writers' flushes with
    ``finish(sole_stream=...)`` and completed a state whose entries all came from that
    stream, although another process's records for it (a fan-out ``+1``) were not
    visible to the view: a source reported complete with a task still in flight."""
    driver = resumelog.open(store, run_id="run1")
    w1 = driver.writer("w1")
    w1.record("r0", "s", +1, emission=True)
    w1.flush()  # source stage, barrier
    w2 = resumelog.open(store, run_id="run1").writer("w2")  # a worker process
    w2.record("r0_0", "s", +1)
    w2.flush()  # fan-out r0 -> 2 children, flushed before they are dispatched
    w1.record("r0_0_0", "s", -1)
    w1.flush()  # the sink wrote child 0; child 1 is still in flight
    assert not resumelog.open(store, run_id="run1").is_completed("s")  # storage is right
    assert not driver.is_completed("s"), "the driver's view reports an undrained source complete"


def fold_all_segments(store) -> FoldState:
    """One fold of every segment on storage (no snapshot): the reference of convergence."""
    state = FoldState()
    for o in store.list(paths.JOURNAL_PREFIX):
        seg = decode_segment(store.read(o.path), o.path)
        state.apply_segment(seg.header, seg.batches, seg.footer.closed)
    state.finish()
    return state


def test_late_zero_record_keeps_a_completion_across_a_snapshot(store):
    """Convergence (2). Was: sticky completion collapsed a source's state at a
    snapshot, so a buffered ``0`` (a pass-through stage) flushed after the sink's
    ``-1`` un-completed it in a fold through a snapshot but not in one fold of the
    same segments: a plain pipeline reran sources it had finished."""
    ck = resumelog.open(store, run_id="run1")
    a, b = ck.writer("a"), ck.writer("b")
    a.record("r0", "s", +1, emission=True)
    a.flush()
    a.record("r0_0", "s", 0)  # stage 2 passes r0 on: buffered
    b.record("r0_0_0", "s", -1)
    b.flush()  # the sink
    compactor.compact(store)
    a.flush()  # the buffered 0 arrives after the snapshot
    assert fold_all_segments(store).is_completed("s")
    loaded = compactor.load(store).state
    assert loaded.is_completed("s"), "fold(snapshot(fold(A)), B) != fold(A ∪ B)"
    assert loaded.anomaly_counts["late_record"] == 0


def test_late_records_that_drain_again_complete_across_a_snapshot(store):
    """Convergence (2). Was: any late non-duplicate record tainted the run, so a
    fan-out ``+1`` and its sink ``-1`` arriving after a snapshot left the source
    pending although one fold of the same segments completes it."""
    ck = resumelog.open(store, run_id="run1")
    a, b = ck.writer("a"), ck.writer("b")
    a.record("r0", "s", +1, emission=True)
    a.record("r0_0", "s", -1)
    a.flush()
    compactor.compact(store)
    assert compactor.load(store).state.is_completed("s")
    b.record("extra", "s", +1)
    b.flush()
    assert not compactor.load(store).state.is_completed("s")  # in flight again: reopened
    compactor.compact(store)
    b.record("extra_0", "s", -1)
    b.flush()
    assert fold_all_segments(store).is_completed("s")
    assert compactor.load(store).state.is_completed("s")


def test_reset_voids_every_completing_run_the_view_saw(store):
    """Convergence (2) and reset semantics. Was: when two runs both drained ``s`` the
    fold kept one completion (run1) and dropped run2's state, so a tombstone naming
    only run1 lost run2's completion through a snapshot while one fold of the same
    segments kept it. Now the second run's state is kept: a reset from a view that saw
    both names both, and a tombstone naming run1 only lets run2's completion stand."""
    for run in ("run1", "run2"):
        with resumelog.open(store, run_id=run).writer(f"w-{run}") as w:
            w.complete("s")
            w.complete("t")
    compactor.compact(store)
    ck = resumelog.open(store, run_id="run3")
    assert ck.completed_run("s") in ("run1", "run2")
    assert ck.reset(["s"]) == ["s"]
    assert not ck.is_completed("s")
    assert not fold_all_segments(store).is_completed("s")
    assert not compactor.load(store).state.is_completed("s")
    with resumelog.open(store, run_id="run4").writer("old-view") as w:
        w.reset("t", ["run1"])  # an operator who saw only run1's completion
    assert fold_all_segments(store).completed_run("t") == "run2"
    assert compactor.load(store).state.completed_run("t") == "run2"
    compactor.compact(store)
    assert compactor.load(store).state.completed_run("t") == "run2"


def test_snapshot_drops_a_reset_naming_a_run_it_has_not_seen():
    """Convergence (2). Was: ``encode_snapshot`` kept only tombstones naming runs in
    its run table, so a reset folded before the records of the run it names was lost
    in a snapshot, and that run's completion then stood."""
    state = FoldState()
    reset = build_segments([rst.SegmentSpec("Z", "r9", [("k", "other", 0, False)], [Reset("s", ["r1"])])])
    done = build_segments([rst.SegmentSpec("A", "r1", [(EMIT_KEY, "s", 1, True), (DONE_KEY, "s", -1, False)], [])])
    state.apply_segment(reset[0][1], reset[0][2])
    state.finish()
    _, restored = load_snapshot(encode_snapshot(state, None))
    restored.apply_segment(done[0][1], done[0][2])
    restored.finish()
    state.apply_segment(done[0][1], done[0][2])
    state.finish()
    assert not state.is_completed("s")  # without the snapshot the tombstone voids it
    assert not restored.is_completed("s"), "the tombstone did not survive the snapshot"


@given(a=rst.segment_specs(max_segments=6, resets=True), b=rst.segment_specs(max_segments=6, resets=True))
@budget(1)
def test_snapshot_round_trip_is_transparent_for_any_reset(a, b):
    """The general property behind the previous test (tombstones of any run)."""
    segments = build_segments(a + b)
    first, rest = segments[: len(a)], segments[len(a) :]
    in_memory = fold(first)
    _, restored = load_snapshot(encode_snapshot(in_memory, None))
    for _, header, batches in rest:
        in_memory.apply_segment(header, batches)
        restored.apply_segment(header, batches)
    in_memory.finish()
    restored.finish()
    assert fold_summary(restored) == fold_summary(in_memory)


def test_snapshot_with_out_of_range_run_index_fails_on_query():
    """Typed errors only. Was: a snapshot whose completing-run array points past its
    run table loaded, then ``completed_run`` raised ``IndexError`` (found by
    ``test_decode_robustness.py::test_snapshot_structs_that_do_not_fit_together``)."""
    state = fold(
        build_segments([rst.SegmentSpec("A", "r1", [(EMIT_KEY, "s", 1, True), (DONE_KEY, "s", -1, False)], [])])
    )
    frames, _ = load_snapshot(encode_snapshot(state, None))
    from resumelog.format import SnapshotFrames, encode_snapshot_frames

    bad = SnapshotFrames(
        frames.header,
        frames.body,
        frames.hashes,
        frames.offsets,
        memoryview((7).to_bytes(4, "little")),
        frames.blob,
        frames.shape_ids,
        frames.shapes,
    )
    with pytest.raises(resumelog.CorruptSnapshot):
        _, loaded = load_snapshot(encode_snapshot_frames(bad))
        loaded.completed_run("s")


def test_a_stale_listing_does_not_prune_a_closed_stream_with_a_segment_left(store):
    """No loss (4), found by the deep machine once writers could close. Was: a
    compaction whose first journal listing missed the last segment of a closed stream
    (its other segments collected) dropped the stream's mark; every later fold then
    saw that segment with no mark as a gap and quarantined the run, which completed
    nothing more. A mark is now dropped only if neither listing of the load holds the
    stream."""
    from resumelog.testing.stateful import HookedStore

    ck = resumelog.open(store, run_id="run1")
    w = ck.writer("w5")
    w.complete("a")
    w.flush()
    ck.compact()  # covers w5/0, the stream still open
    w.close()  # w5/1 closes it
    ck.compact()  # covers w5/1
    compactor.gc(store, retain=2, grace=0)  # the oldest retained covers w5/0 only: w5/1 stays
    assert [o.path.rsplit("/", 1)[1] for o in store.list("journal/w5/")] == [
        paths.segment_name("w", "i", 1).rsplit("/", 1)[1]
    ]
    with ck.writer("y") as y:
        y.complete("c")
    stale = HookedStore(store)
    stale.hide_in_next_listing = {o.path for o in store.list("journal/w5/")}
    compactor.compact(stale)
    with resumelog.open(store, run_id="run1").writer("z") as z:
        z.complete("d")
    view = resumelog.open(store, run_id="run1")
    assert view.is_completed("d")
    assert view.status().anomaly_counts.get("journal_gap", 0) == 0


def test_a_reset_written_under_a_run_retired_before_it_is_folded_still_applies(store):
    """Operator override, found by the deep machine once it could retire runs. Was:
    ``compact(keep_runs=1)`` retires runs *before* folding the journal tail and
    ignores the records of retired runs, so a ``reset`` tombstone written by a view of
    the run being retired was dropped with them: the source stayed complete although
    the operator had voided its completion."""
    run1 = resumelog.open(store, run_id="run1")
    with run1.writer("w1") as w:
        w.complete("s0")
    run1.compact()
    assert run1.reset(["s0"]) == ["s0"]  # the tombstone is written under run1
    resumelog.open(store, run_id="run2").compact(keep_runs=1)  # retires run1 before folding the tail
    view = resumelog.open(store, run_id="run2")
    assert "run1" in [r.run_id for r in view.status().runs if r.retired]
    assert not view.is_completed("s0"), "the operator's reset was ignored with the retired run's records"


@pytest.mark.parametrize("compact_between", [False, True], ids=["one-fold", "compact-between"])
def test_a_completion_taken_over_from_a_retired_run_keeps_the_retired_runs_state(store, compact_between):
    """Convergence, found by a deep soak of the pipeline machine. Was: a smaller run
    that took a completion over from a *retired* run dropped the retired run's drained
    state (it was kept only for a run not retired). So a view that saw the takeover
    named only the taker in its ``reset``; folded in one compaction with the taker's
    records the reset left the retired run's completion standing, folded after a
    compaction that published the takeover it left the source incomplete. Now the
    retired run's state is kept (its completion stood), the reset names it too, and
    the source is redone in both schedules."""
    w1 = resumelog.open(store, run_id="run1").writer("w1")
    w3 = resumelog.open(store, run_id="run2").writer("w3")
    operator = resumelog.open(store, run_id="run3")
    w3.complete("x")
    w3.flush()
    w1.complete("x")  # buffered: not durable yet
    compactor.compact(store)  # x completed by run2
    retired = compactor.compact(store, keep_runs=1, protect_runs=frozenset({"run3"})).retired_runs
    assert retired == ["run2"]  # what run2 completed stays complete
    w1.flush()  # run1 drains x too: the smaller run holds it
    if compact_between:
        compactor.compact(store)
    operator.refresh()
    assert operator.completed_run("x") == "run1"
    assert ("run2", "x") in operator._state.pending  # kept to take x back if run1's completion is voided
    operator.reset(["x"])  # voids run1's completion and run2's kept state
    assert operator._state.resets["x"] == {"run1", "run2"}  # the tombstone names both
    compactor.compact(store)
    fresh = resumelog.open(store, run_id="viewer")
    assert (fresh.is_completed("x"), fresh.completed_run("x")) == (False, None)
    w4 = resumelog.open(store, run_id="run4").writer("w4")
    assert fresh.pending(["x"]) == ["x"]
    w4.complete("x")
    w4.flush()
    fresh.refresh()
    assert fresh.completed_run("x") == "run4"  # redone by a new run


def test_a_compactor_that_lost_the_race_for_its_number_loads_again(store):
    """No loss (4), without threads. Compactor A folds, and right before it publishes
    snapshot N, a writer completes ``s2`` and closes, compactor B publishes N with it and
    gc (``retain=1``) collects the segments N covers. A's put-if-absent of N fails: it
    must load again from B's snapshot. Overwriting N with its own fold (which never saw
    ``s2``) would lose ``s2`` for good, its segments gone. (The threads of
    ``test_concurrency.py`` reach this race only when the OS schedules it.)"""
    hooked = HookedStore(store)
    w1 = resumelog.open(hooked, run_id="run1").writer("w1")
    w1.complete("s1")
    w1.close()
    published: list[int] = []

    def meanwhile() -> None:
        w2 = resumelog.open(hooked, run_id="run1").writer("w2")
        w2.complete("s2")
        w2.close()
        published.append(compactor.compact(hooked, progress=False).snapshot)
        compactor.gc(hooked, retain=1, grace=0)

    hooked.before_snapshot_put = meanwhile
    compactor.compact(hooked, progress=False)
    assert published, "the hook did not run: no race"
    assert not any(paths.parse_segment(o.path) for o in store.list(paths.JOURNAL_PREFIX)), (
        "gc left segments that snapshot N covers: the race did not happen as described"
    )
    fresh = resumelog.open(store, run_id="run1")
    assert (fresh.is_completed("s1"), fresh.is_completed("s2")) == (True, True)


def _late_record_after_a_retirement(url: str, plain_compact_first: bool) -> tuple[bool, str | None, list[str]]:
    old = resumelog.open(url, run_id="r1")
    w = old.writer("w1")
    w.emit("x", key="0_x")
    w.flush()
    w.record("0_x_0", "x", -1)
    w.flush()  # drained: x complete in r1
    compactor.compact(old.store)
    w.record("0_x_1", "x", +1)  # r1 dispatched more work for x: durable
    w.record("0_x_2", "x", 0)  # (a new key with delta 0 alone would leave the completion standing)
    w.close()
    new = resumelog.open(url, run_id="r2")
    if plain_compact_first:
        new.compact()
    assert new.compact(keep_runs=1).retired_runs == ["r1"]
    view = resumelog.open(url, create=False)
    return view.is_completed("x"), view.completed_run("x"), view.pending(["x"])


@pytest.mark.parametrize("plain_compact_first", [False, True])
def test_a_late_record_of_a_retired_run_voids_its_completion(tmp_path, plain_compact_first):
    """Safety (1), found by an adversarial review (2026-12-08). Was: ``compact(keep_runs)``
    retires runs before it folds the journal tail, and a retired run's records were all
    ignored, so a durable late ``+1`` of the run that completed ``x`` left ``x``
    complete while that run's records summed to ``+1``; a plain ``compact()`` first
    (folding the record, then retiring) left it pending."""
    got = _late_record_after_a_retirement(str(tmp_path / "ck"), plain_compact_first)
    assert got == (False, None, ["x"])


def test_a_duplicate_record_of_a_retired_run_leaves_its_completion(tmp_path):
    """The same rule keeps a completion a retired run's retried records repeat."""
    url = str(tmp_path / "ck")
    old = resumelog.open(url, run_id="r1")
    with old.writer("w1") as w:
        w.complete("x")
    compactor.compact(old.store)
    with old.writer("w2") as w:  # a retry of the same task in another writer of r1
        w.complete("x")
    new = resumelog.open(url, run_id="r2")
    assert new.compact(keep_runs=1).retired_runs == ["r1"]
    view = resumelog.open(url, create=False)
    assert view.completed_run("x") == "r1" and view.status().anomaly_counts.get("late_record") is None


@pytest.mark.parametrize("retire_before_takeover", [True, False])
def test_retiring_a_run_keeps_the_drained_state_a_takeover_shadows(tmp_path, retire_before_takeover):
    """Convergence (2), found by an adversarial review (2026-12-08). r2 completes x, r1
    (the smaller run id) drains it too and takes it over, r2's drained state is kept to
    take x back; then r1's completion is reopened by a late record. Was: retiring r2
    after the takeover dropped that state (``retire_runs`` dropped every pending state
    of the run), so x went pending; retiring it before the takeover kept it."""
    url = str(tmp_path / "ck")
    r1, r2 = resumelog.open(url, run_id="r1"), resumelog.open(url, run_id="r2")
    with r2.writer("w2") as w:
        w.complete("x")
    compactor.compact(r1.store)

    def retire() -> None:
        assert compactor.compact(r1.store, keep_runs=1, protect_runs=frozenset({"r1"})).retired_runs == ["r2"]

    if retire_before_takeover:
        retire()
    w1 = r1.writer("w1")
    w1.emit("x", key="0_x")
    w1.flush()
    w1.record("0_x_0", "x", -1)
    w1.flush()
    compactor.compact(r1.store)
    if not retire_before_takeover:
        retire()
    assert resumelog.open(url, create=False).completed_run("x") == "r1"
    w1.record("0_x_1", "x", +1)  # r1's completion reopened: r2's drained state takes x back
    w1.close()
    compactor.compact(r1.store)
    view = resumelog.open(url, create=False)
    assert (view.completed_run("x"), view.pending(["x"])) == ("r2", [])
