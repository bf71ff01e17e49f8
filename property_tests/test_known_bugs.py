"""Open library bugs the property suite found, each as a minimal reproduction.

Marked ``known_bug`` (``mutants.py`` deselects them: they must not count as kills) and
``xfail(strict=True)``: the suite stays green while they are open, and a fix makes
them XPASS, which fails until the marker is removed (then move the test to
``test_regressions.py``). Each docstring names the DESIGN §4 invariant broken and the
state machine switch that tolerates it today (``STRICT_CONVERGENCE``).
"""

from __future__ import annotations

import uuid

import pytest

import resumelog
from resumelog import compactor, paths
from resumelog.algebra import FoldState
from resumelog.format import decode_segment
from resumelog.storage import MemoryStore

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


@pytest.mark.xfail(
    strict=True,
    reason="open bug: the same torn tail is recorded as a new anomaly at every fold, "
    "so snapshots grow with the number of compactions (issue 5)",
)
def test_a_torn_tail_is_recorded_once_not_at_every_compaction(tmp_path):
    """Bounded (5): the fold re-records the same ``torn_tail`` anomaly every time it
    meets the torn object, and every compaction keeps it, so the snapshot (and
    ``status().anomaly_counts``) grows with the number of compactions — up to the
    1000-anomaly cap — instead of with completed ids and pending state."""
    from resumelog.storage import LocalStore
    from resumelog.testing.stateful import crash_writer, leave_torn_tail

    store = LocalStore(str(tmp_path), fsync=False)
    ck = resumelog.open(store, run_id="r")
    dead = ck.writer("dead")
    dead.complete("x")
    assert leave_torn_tail(store, dead, 0.5)
    crash_writer(dead)
    live = ck.writer("live")
    for i in range(5):
        live.complete(f"s{i}")
        live.flush()
        compactor.compact(store)
    assert compactor.load(store).state.anomaly_counts["torn_tail"] == 1
