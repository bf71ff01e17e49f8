"""The loader's journal rules, searched directly (the state machines reach them only
with luck inside the CI budget):

* the torn-tail rule (DESIGN §5, docs/format.md §8): a truncated segment is tolerated
  only as the *last* of its stream on storage that can tear writes; anywhere else it is
  :class:`~resumelog.errors.CorruptSegment`, never skipped;
* the second listing: a journal listing is not a point-in-time snapshot, so a fan-out
  ``+k`` flushed in a stream the listing had already walked must still count when the
  sinks' ``-1`` are in streams it reached later (safety, DESIGN §4 invariant 1).
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from pt_settings import budget

import resumelog
from resumelog import compactor, paths
from resumelog.snapshot import load_snapshot
from resumelog.testing.stateful import HookedStore, local_store_factory, memory_store_factory


@given(
    segments=st.integers(2, 5),
    torn=st.integers(0, 4),
    fraction=st.floats(0.0, 0.99),
)
@budget(0.5)
def test_a_truncated_segment_is_a_torn_tail_only_if_it_is_the_last(segments, torn, fraction):
    torn = min(torn, segments - 1)
    store, cleanup = local_store_factory()()
    try:
        ck = resumelog.open(store, run_id="run1")
        w = ck.handle().writer("w")
        for i in range(segments):
            w.complete(f"s{i}")
            w.flush()
        w.closed = True  # the process died: no closing segment, the last flush is the tail
        key = paths.segment_name("w", w.incarnation, torn)
        path = Path(store.root) / key  # type: ignore[attr-defined]
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])
        if torn == segments - 1:
            state = compactor.load(store).state
            assert sorted(state.iter_completed()) == [f"s{i}" for i in range(segments - 1)]
            assert state.anomaly_counts["torn_tail"] == 1
        else:  # corruption, salvaged: the run is quarantined, nothing of it completes
            loaded = compactor.load(store)
            assert loaded.corrupt == [key]
            assert sorted(loaded.state.iter_completed()) == []
            assert loaded.state.runs["run1"].damaged
            assert (
                loaded.state.anomaly_counts["corrupt_segment"] == 1 and "torn_tail" not in loaded.state.anomaly_counts
            )
    finally:
        cleanup()


@given(
    children=st.integers(1, 4),
    hide=st.sampled_from(["fan-out", "fan-out and sinks", "nothing"]),
    backend=st.sampled_from(["memory", "local"]),
)
@budget(0.5)
def test_a_fan_out_the_first_listing_missed_still_counts(children, hide, backend):
    factory = memory_store_factory() if backend == "memory" else local_store_factory()
    inner, cleanup = factory()
    store = HookedStore(inner)
    try:
        ck = resumelog.open(store, run_id="run1")
        source, fanout, sink = (ck.handle().writer(n) for n in ("a-source", "b-fanout", "c-sink"))
        source.record("r0", "s", +1, emission=True)
        source.flush()
        fanout.record("r0_0", "s", children)  # r0 -> children + 1 outputs: +children
        fanout.flush()  # the barrier: durable before the children are dispatched
        for j in range(children):
            sink.record(f"r0_0_{j}", "s", -1)
        sink.flush()  # all but one child drained: s is one task short
        hidden = {paths.segment_name("b-fanout", fanout.incarnation, 0)} if hide != "nothing" else set()
        if hide == "fan-out and sinks":
            hidden.add(paths.segment_name("c-sink", sink.incarnation, 0))
        store.hide_in_next_listing = hidden
        result = compactor.compact(store, progress=False)
        assert result.written
        _, published = load_snapshot(
            inner.read(paths.snapshot_name(result.snapshot)), read_layer=lambda ref: inner.read(ref.name)
        )
        assert not published.is_completed("s"), "the snapshot completes s with a task still in flight"
        assert not compactor.load(store).state.is_completed("s"), "completed with a task still in flight"
        sink.record(f"r0_0_{children}", "s", -1)
        sink.flush()  # the last child drains
        compactor.compact(store, progress=False)
        assert compactor.load(store).state.is_completed("s")
    finally:
        cleanup()


@given(
    folded=st.integers(0, 4),
    unfolded=st.integers(1, 4),
    closed=st.booleans(),
    retain=st.integers(1, 3),
    backend=st.sampled_from(["memory", "local"]),
)
@budget(0.5)
def test_gc_deletes_only_what_a_retained_snapshot_covers(folded, unfolded, closed, retain, backend):
    """No loss (invariant 4): GC never deletes a segment the retained snapshots do not
    cover, nor the last segment of a stream that may still grow."""
    inner, cleanup = (memory_store_factory() if backend == "memory" else local_store_factory())()
    try:
        ck = resumelog.open(inner, run_id="run1")
        w = ck.handle().writer("w")
        for i in range(folded):
            w.complete(f"f{i}")
            w.flush()
        compactor.compact(inner, progress=False)
        for i in range(unfolded):
            w.complete(f"u{i}")
            w.flush()
        if closed:
            w.close()
        before = {o.path for o in inner.list(paths.JOURNAL_PREFIX)}
        compactor.gc(inner, retain=retain, grace=0)
        after = {o.path for o in inner.list(paths.JOURNAL_PREFIX)}
        uncovered = {paths.segment_name("w", w.incarnation, folded + i) for i in range(unfolded)}
        assert uncovered <= after, f"GC deleted uncovered segments {sorted(uncovered - after)}"
        assert after <= before
        expected = {f"f{i}" for i in range(folded)} | {f"u{i}" for i in range(unfolded)}
        assert set(compactor.load(inner).state.iter_completed()) == expected
    finally:
        cleanup()
