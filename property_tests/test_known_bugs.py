"""Library bugs the property suite found, each as a minimal reproduction (marked
``known_bug``; they fail until the library is fixed — see property_tests/README.md).

Each test states the DESIGN §4 invariant it breaks. When one is fixed, the matching
strictness switch of the state machine can be turned on (named in each docstring).
"""

from __future__ import annotations

import uuid

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
from resumelog.storage import MemoryStore
from resumelog.testing import strategies as rst
from resumelog.testing.stateful import fold_summary

pytestmark = pytest.mark.known_bug


@pytest.fixture
def store():
    s = MemoryStore(f"known-{uuid.uuid4().hex}")
    yield s
    s.clear()


def fold_all_segments(store) -> FoldState:
    """One fold of every segment on storage (no snapshot): the reference of convergence."""
    state = FoldState()
    for o in store.list(paths.JOURNAL_PREFIX):
        seg = decode_segment(store.read(o.path), o.path)
        state.apply_segment(seg.header, seg.batches, seg.footer.closed)
    state.finish()
    return state


def test_view_completes_a_source_another_process_fanned_out(store):
    """Safety (1): ``Checkpoint`` folds its own writers' flushes with
    ``finish(sole_stream=...)`` and completes a state whose entries all come from that
    stream — but another process's records for it (a fan-out ``+1``) are invisible to
    the view, so it reports a source complete while a task is still in flight.
    (``PipelineMachine.WRITERS_FROM_ANY_VIEW``.)"""
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


@pytest.mark.xfail(
    strict=True,
    reason="open bug: sticky completion collapses a source's state at a snapshot, so a "
    "late non-duplicate record un-completes it only if a snapshot came between (issue 5)",
)
def test_late_zero_record_uncompletes_only_if_a_snapshot_came_between(store):
    """Convergence (2): a buffered ``0`` (a pass-through stage) flushed after the sink's
    ``-1`` completed the source un-completes it in a fold through a snapshot, but not
    in one fold of the same segments. DESIGN allows buffering non-positive records, so
    a plain pipeline reruns sources it finished. (``STRICT_CONVERGENCE``.)"""
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
    assert compactor.load(store).state.is_completed("s"), "fold(snapshot(fold(A)), B) != fold(A ∪ B)"


@pytest.mark.xfail(
    strict=True,
    reason="open bug: a second run's completion of the same source is not kept "
    "while the first run's stands, so voiding the first loses it (issue 5)",
)
def test_reset_forgets_a_completion_collapsed_into_the_voided_one(store):
    """Convergence (2): two runs both drain ``s``; a fold keeps one completion (run1)
    and drops run2's state. A reset naming run1 (what the operator saw) then leaves
    ``s`` incomplete through a snapshot, while one fold of the same segments keeps
    run2's completion — which DESIGN says survives. (``STRICT_CONVERGENCE``.)"""
    for run in ("run1", "run2"):
        with resumelog.open(store, run_id=run).writer(f"w-{run}") as w:
            w.complete("s")
    compactor.compact(store)
    ck = resumelog.open(store, run_id="run3")
    assert ck.reset(["s"]) == ["s"]
    assert ck.completed_run("s") is None or ck.completed_run("s") == "run2"
    assert fold_all_segments(store).completed_run("s") == "run2"
    assert compactor.load(store).state.is_completed("s"), "run2's completion was lost"


def test_snapshot_drops_a_reset_naming_a_run_it_has_not_seen():
    """Convergence (2): ``encode_snapshot`` keeps only tombstones naming runs in its
    run table, so a reset folded before the records of the run it names is lost in a
    snapshot, and that run's completion then stands. (``CAUSAL_RESETS = False``.)"""
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
    """The general property behind the previous test (no restriction on resets)."""
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
    """Typed errors only: a snapshot whose completing-run array points past its run
    table loads, then ``completed_run`` raises ``IndexError`` (found by
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
        frames.done,
    )
    try:
        _, loaded = load_snapshot(encode_snapshot_frames(bad))
        loaded.completed_run("s")
    except resumelog.ResumelogError:
        pass  # the fix: refuse it (CorruptSnapshot) at load
