"""Regression tests for issue 16: the reproductions in ``shared/repros/`` (r1-r6), each
cut down to a fast, minimal case on a real store.

Each names the DESIGN §4 invariant it protects and what the library did before the fix.
"""

from __future__ import annotations

import os
import time

import pytest

import resumelog
import resumelog.layers
from resumelog import compactor, paths
from resumelog import format as fmt
from resumelog.errors import StorageError
from resumelog.format import FRAME_HEADER_SIZE, PREAMBLE_SIZE, decode_snapshot_frames
from resumelog.storage import MemoryStore


def age_journal(store, seconds: float = 7200) -> None:
    """Pretend every segment was written ``seconds`` ago (past GC's 1 h grace)."""
    for o in store.list(paths.JOURNAL_PREFIX):
        store.set_mtime(o.path, time.time() - seconds)


def nonzero(counts) -> dict[str, int]:
    return {k: v for k, v in dict(counts).items() if v}


# --------------------------------------------------------------------------- r1


class GcDiesAfterFirstDelete(MemoryStore):
    """A GC process killed after its first delete request (the rest never happen)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.deletes = 0

    def delete(self, keys):
        self.deletes += 1
        if self.deletes > 1:
            raise StorageError("the GC process died")
        super().delete(keys)


@pytest.mark.parametrize("gc_dies", [False, True], ids=["gc-completes", "gc-dies-after-first-delete"])
def test_reader_racing_compaction_and_gc_does_not_complete_an_undrained_source(store, gc_dies):
    """Safety (1), r1. Was: a reader that loaded snapshot N, then listed the journal
    after other processes had published N+1..N+3 and GC had collected a closed
    stream's segment N did not cover (a fan-out ``+1``), saw no gap, folded the tail
    without the ``+1`` and reported ``is_completed('S') = True`` with a task in flight.
    With ``gc_dies`` the GC stops after its first delete request: the reader's check
    (its snapshot still listed?) is sound only because GC deletes old snapshots first."""
    ck = resumelog.open(store, run_id="run1")
    y = ck.writer("Y")  # long-lived writer, stays open
    y.emit("S")
    y.flush()  # barrier
    ck.compact()  # snapshot 1: S pending {emit: +1}
    x = ck.writer("X")  # a short-lived writer
    x.record(key="S/fanout", source="S", delta=+1)  # fan-out 1 -> 2
    x.close()
    y.record(key="S/sink/0", source="S", delta=-1)  # one of the two outputs drained
    y.flush()  # the other (S/sink/1) is still in flight: sum = +1
    age_journal(store)

    def concurrent_compact_and_gc() -> None:
        other = resumelog.open(store, run_id="other")
        other.compact()  # covers X/0 and Y/1
        for i in range(2):  # two more snapshots of unrelated work
            with other.writer(f"Z{i}") as z:
                z.complete(f"unrelated-{i}")
            other.compact()
        age_journal(store)
        if gc_dies:
            with pytest.raises(StorageError):
                compactor.gc(GcDiesAfterFirstDelete(store.name))
        else:
            other.gc()  # retain=3, grace=1 h: may collect X/0 (closed, covered)

    fired = []

    class RacyStore(MemoryStore):
        def list(self, prefix=""):
            if prefix == paths.JOURNAL_PREFIX and not fired:
                fired.append(True)
                concurrent_compact_and_gc()  # between the reader's two listings
            return super().list(prefix)

    reader = resumelog.open(RacyStore(store.name), run_id="reader")
    assert fired, "the race was not exercised"
    assert not resumelog.open(store, run_id="fresh").is_completed("S")  # storage is right
    assert not reader.is_completed("S"), "a reader racing compaction + GC reports an undrained source complete"
    assert reader.pending(["S"]) == ["S"]


# --------------------------------------------------------------------------- r2


class LosingStore(MemoryStore):
    """Stream B's segment 0 is deleted after the journal listing, before it is read."""

    def read(self, key):
        if key.startswith("journal/B/") and paths.parse_segment(key).seq == 0:
            self.delete([key])
        return super().read(key)


@pytest.mark.parametrize("rounds", [True, False], ids=["rounds", "one-evaluation"])
def test_round_completion_does_not_survive_quarantine_of_its_run(store, monkeypatch, rounds):
    """Safety (1), r2. Was: ``fold_journal`` evaluated the fold every ``ROUND_RECORDS``
    records and collapsed a provisional completion into the completed set; when a later
    segment of that run was found gone (quarantine), the completion stood and was
    published (``True`` with rounds, ``False`` with one evaluation), although the lost
    segment held a fan-out ``+2``."""
    monkeypatch.setattr(compactor, "ROUND_RECORDS", 3 if rounds else 10**12)
    ck = resumelog.open(store, run_id="R")
    a, b = ck.writer("A"), ck.writer("B")
    a.emit("S")
    a.flush()  # +1 emission of S
    b.record(key="t0_0", source="S", delta=+2)
    b.flush()  # fan-out 1 -> 3, flushed before dispatch (this segment gets lost)
    b.record(key="t0_0_sink", source="S", delta=-1)
    b.flush()  # output 0 reached the sink
    a.record(key="t0_1_sink", source="S", delta=-1)  # output 1 reached the sink
    for i in range(4):  # filler records (other sources): a round falls due here
        a.complete(f"filler-{i}")
    a.flush()
    with ck.writer("A2") as a2:  # folded after A, before B: the round due runs before its records
        a2.complete("filler-a2")
    # output 2 is still in flight: true sum of S is +1
    compactor.compact(LosingStore(store.name))  # B/0 listed, gone when read
    view = resumelog.open(store, run_id="viewer")
    damaged = [r.run_id for r in view.status().runs if r.damaged]
    assert "R" in damaged  # the loss was seen: run R quarantined
    assert not view.is_completed("S"), f"a completion of quarantined run R was published (rounds={rounds})"
    assert view.completed_run("S") is None


# --------------------------------------------------------------------------- r3


def test_snapshot_stream_ids_bounded_by_live_streams(store):
    """Bounded (5), r3. Was: the snapshot's ``stream_ids`` table kept every writer
    incarnation ever folded, after its stream was closed, collected by GC and its mark
    pruned: with a constant completed set the snapshot grew linearly with writer opens."""
    ck = resumelog.open(store, run_id="R")
    empty_journal_sizes = []
    for rnd in range(3):
        for i in range(20):
            with ck.writer(f"task-{i}") as w:  # one writer per task
                w.complete("S")  # the same, already complete source: duplicates
        ck.compact()
        for _ in range(2):
            age_journal(store)
            ck.gc(retain=1)  # collects the closed streams
            ck.compact()  # prunes the marks of collected closed streams
        _, info = compactor.list_snapshots(store)[-1]
        body = decode_snapshot_frames(store.read(info.path)).body
        assert len(ck.completed) == 1
        referenced = {s for p in body.pending for s in p.streams}  # pending may name streams
        assert len(body.stream_ids) <= len(body.streams) + len(referenced) + 4, (
            f"after {20 * (rnd + 1)} writer opens: {len(body.stream_ids)} stream ids for {len(body.streams)} marks"
        )
        if not store.list(paths.JOURNAL_PREFIX):
            empty_journal_sizes.append(info.size)
    assert len(empty_journal_sizes) >= 2, "the journal was never collected: test setup"
    # counters (records folded, snapshot number) are varints: a few bytes of slack
    assert max(empty_journal_sizes) <= empty_journal_sizes[0] + 8, empty_journal_sizes


# --------------------------------------------------------------------------- r4


def one_shot_and_through_snapshots(store, scenario):
    """``scenario(store, compact_between)`` on a fresh store with no compaction in
    between (the reference: one fold of everything), and on ``store`` with them."""
    other = MemoryStore(f"{store.name}-oneshot")
    try:
        one_shot = scenario(other, compact_between=False)
    finally:
        other.clear()
    return one_shot, scenario(store, compact_between=True)


def _rewrite_after_drain(store, compact_between: bool):
    ck = resumelog.open(store, run_id="R")
    w = ck.writer("w")
    w.emit("S")
    w.record(key="k", source="S", delta=-1)
    w.flush()  # A: drained (sum 0)
    if compact_between:
        ck.compact()
    w.record(key="k", source="S", delta=0)  # B: the same stream rewrites k
    w.record(key="k2", source="S", delta=-1)  # ... and drains via k2
    w.close()
    ck.compact()
    v = resumelog.open(store, run_id="v")
    return v.is_completed("S"), nonzero(v.status().anomaly_counts)


def test_same_stream_rewrite_converges_across_a_snapshot(store):
    """Convergence (2), r4 case 1. Was: after a compaction the collapsed completion had
    forgotten which stream wrote ``k``, so a same-stream rewrite (the later record wins)
    was judged a cross-stream conflict: ``(False, {late_record, conflict})`` with a
    compaction in between, ``(True, {})`` without."""
    one_shot, through_snapshot = one_shot_and_through_snapshots(store, _rewrite_after_drain)
    assert one_shot == (True, {})  # DESIGN §4: within one stream the later record wins
    # the same answer; through the snapshot the rewrite came after a published completion,
    # which DESIGN §4 reports as one late record (un-completed, then drained again)
    assert through_snapshot == (True, {"late_record": 1}), "fold(snapshot(fold(A)), B) != fold(A ∪ B)"


def _rewrite_after_a_duplicate(store, compact_between: bool):
    ck = resumelog.open(store, run_id="R")
    a, b = ck.writer("a"), ck.writer("b")
    a.emit("S", key="e")
    a.record(key="k", source="S", delta=-1)
    a.flush()  # drained: S completes
    if compact_between:
        ck.compact()
    b.record(key="k", source="S", delta=-1)  # a duplicate of k from another open stream
    b.flush()
    if compact_between:
        ck.compact()
    a.record(key="k", source="S", delta=0)  # a rewrites k: b still says -1, a conflict
    a.record(key="k2", source="S", delta=-1)
    a.close()
    b.close()
    ck.compact()
    v = resumelog.open(store, run_id="v")
    return v.is_completed("S"), v.status().anomaly_counts.get("conflict", 0)


def test_a_duplicate_from_another_stream_makes_it_a_writer_across_a_snapshot(store):
    """Convergence (2). A duplicate of a completed source's key from another open
    stream makes that stream one more writer of the key (as in one fold, where both
    streams' values are kept): a later rewrite by the first stream is a conflict, not
    a clean rewrite, also when compactions collapsed the completion in between."""
    one_shot, through_snapshot = one_shot_and_through_snapshots(store, _rewrite_after_a_duplicate)
    assert one_shot == (False, 1)
    assert through_snapshot == one_shot


def test_done_writers_are_kept_only_while_a_writer_is_open(store):
    """Bounded (5), RFC 0003: frame 8 names a completion's writers while one of them
    may still write, and is empty again once they closed; complete() completions never
    need it."""
    ck = resumelog.open(store, run_id="R")
    a, b = ck.writer("a"), ck.writer("b")
    a.emit("S", key="e")
    b.record(key="k", source="S", delta=-1)
    a.complete("T")
    a.flush()
    b.flush()
    ck.compact()
    frames = decode_snapshot_frames(store.read(compactor.list_snapshots(store)[-1][1].path))
    dw = fmt.decode_done_writers(frames.writers)
    assert dw.sources == ["S"] and len(dw.writers[0]) == 2 and sorted(dw.writers[0]) == [0, 1]
    assert sorted(s.split("/")[0] for s in dw.streams) == ["a", "b"]
    a.close()
    ck.compact()
    dw = fmt.decode_done_writers(
        decode_snapshot_frames(store.read(compactor.list_snapshots(store)[-1][1].path)).writers
    )
    assert dw.sources == ["S"] and sorted(dw.writers[0]) == [-1, 0] and [s.split("/")[0] for s in dw.streams] == ["b"]
    b.close()
    ck.compact()
    frames = decode_snapshot_frames(store.read(compactor.list_snapshots(store)[-1][1].path))
    assert bytes(frames.writers) == b""
    assert resumelog.open(store, run_id="v").completed_run("S") == "R"


def _two_runs_drain(store, compact_between: bool):
    ck2 = resumelog.open(store, run_id="r2")
    with ck2.writer("a") as a:
        a.complete("S")  # A: run r2 drains S
    if compact_between:
        ck2.compact()
    ck1 = resumelog.open(store, run_id="r1")
    with ck1.writer("b") as b:
        b.complete("S")  # B: run r1 drains S too
    ck1.compact()
    return resumelog.open(store, run_id="v").completed_run("S")


def test_completing_run_independent_of_compaction_schedule(store):
    """Convergence (2), r4 case 2. Was: when two runs both drained ``S``, one fold gave
    the completion to the smaller run id (``r1``), a fold through a snapshot to the run
    that drained first (``r2``): the answer depended on the compaction schedule."""
    one_shot, through_snapshot = one_shot_and_through_snapshots(store, _two_runs_drain)
    assert one_shot == "r1"  # the smaller run id holds a completion two runs drained
    assert through_snapshot == one_shot, (
        f"completed_run: {through_snapshot!r} through a snapshot, {one_shot!r} in one fold"
    )


def test_round_evaluation_keeps_a_same_stream_rewrite(store, monkeypatch):
    """Convergence (2), r4b. Was: with round evaluation inside one fold
    (``ROUND_RECORDS`` = 2) a same-stream rewrite after a provisional completion became
    a permanent conflict, ``(False, {conflict: 1})``, where one evaluation gave
    ``(True, {})``; ``ROUND_RECORDS`` promises the same result whatever the round size."""

    def run(st: MemoryStore, round_records: int):
        ck = resumelog.open(st, run_id="R", flush_policy=resumelog.FlushPolicy(max_records=2))
        w = ck.writer("w")
        w.emit("S")
        w.record(key="k", source="S", delta=-1)
        w.flush()  # segment 0: drained
        w.record(key="k", source="S", delta=0)  # segment 1: the same stream rewrites k
        w.record(key="k2", source="S", delta=-1)  # and drains via k2
        w.close()
        monkeypatch.setattr(compactor, "ROUND_RECORDS", round_records)
        v = resumelog.open(st, run_id="v")  # folds the journal (no snapshot)
        monkeypatch.setattr(compactor, "ROUND_RECORDS", 2_000_000)
        return v.is_completed("S"), nonzero(v.status().anomaly_counts)

    other = MemoryStore(f"{store.name}-oneshot")
    try:
        one_evaluation = run(other, 10**12)
    finally:
        other.clear()
    rounds = run(store, 2)
    assert one_evaluation == (True, {})
    assert rounds == (True, {}), f"round evaluation: {rounds}"


# --------------------------------------------------------------------------- r5


def _frames(data: bytes) -> list[tuple[int, int]]:
    """(payload start, length) of every frame of a snapshot."""
    pos, out = PREAMBLE_SIZE, []
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        out.append((pos + FRAME_HEADER_SIZE, length))
        pos += FRAME_HEADER_SIZE + length
    return out


def test_flip_in_deferred_crc_frame_falls_back_to_older_snapshot(tmp_path, monkeypatch):
    """Safety / no loss (1, 4), r5. Was (format 4): a bit flip in the latest snapshot's
    shape table (frame 7, CRC deferred because large) was not caught at load, so the
    loader did not fall back to the intact older snapshot; it surfaced later as
    ``CorruptSnapshot`` from the fold or ``encode_snapshot``: every later compaction,
    and ``open`` with a late record in the tail, failed for good. Format 5 keeps the
    shapes in layers (deferred the same way): a flip in the latest snapshot's own
    layer, found when a late record needs its entries, makes the load fall back."""
    monkeypatch.setattr(fmt, "DEFER_CRC_MIN", 256)  # defer with a few hundred sources, not 70k
    monkeypatch.setattr(resumelog.layers, "MIN_LAYER", 1)  # snapshot 2 adds a layer of its own
    root = str(tmp_path / "ck")
    n_sources = 300
    ck = resumelog.open(root, run_id="R")
    with ck.writer("w", flush_policy=None) as w:
        for i in range(n_sources):  # own key names: one shape per source
            w.emit(f"s{i}", key="e")
            w.record(key=f"x{i}", source=f"s{i}", delta=-1)
    ck.compact()  # snapshot 1: intact
    m = n_sources // 2  # fewer than the layer below: not merged into it
    with ck.writer("w2", flush_policy=None) as w:
        for i in range(m):
            w.emit(f"t{i}", key="e")
            w.record(key=f"y{i}", source=f"t{i}", delta=-1)
    ck.compact()  # snapshot 2: the latest, its own layer damaged below
    snaps = compactor.list_snapshots(ck.store)
    assert [n for n, _ in snaps] == [1, 2]
    frames = decode_snapshot_frames(ck.store.read(snaps[-1][1].path))
    assert frames.layers is not None and len(frames.layers) == 2
    path = os.path.join(root, frames.layers[-1].name)
    with open(path, "rb") as f:
        data = bytearray(f.read())
    start, length = _frames(bytes(data))[2]  # the shape table (layer frame 2 in format 6)
    assert length >= fmt.DEFER_CRC_MIN  # the deferred case
    assert fmt.decode_layer_head(bytes(data), defer_shapes_crc=True).shapes_crc is not None
    data[start + length // 2] ^= 0x01
    os.chmod(path, 0o644)
    with open(path, "wb") as f:
        f.write(bytes(data))

    assert resumelog.open(root, run_id="v").is_completed("t0")  # an open does not touch the shapes

    late = resumelog.open(root, run_id="R").writer("w3")
    late.record(key="t0-retry", source="t0", delta=0)  # new key, delta 0: harmless
    late.record(key="z", source="t1", delta=+1)  # a real late record: reopens t1
    late.close()
    c = resumelog.open(root, run_id="v2")  # the late record needs t1's entries: falls back
    assert c.is_completed("t0") and not c.is_completed("t1")
    assert c.is_completed(f"t{m - 1}") and c.is_completed(f"s{n_sources - 1}")
    fallbacks = c.status().anomaly_counts.get("snapshot_fallback", 0)
    with c.writer("new") as nw:
        nw.complete("brand-new-source")  # ordinary new work
    c.compact()  # was: CorruptSnapshot, at every compaction, for good
    fallbacks += c.status().anomaly_counts.get("snapshot_fallback", 0)
    after = resumelog.open(root, run_id="v3")
    assert after.is_completed("brand-new-source") and after.is_completed("t7")
    assert after.is_completed("t0") and not after.is_completed("t1")
    assert len(after.completed) == n_sources + m - 1 + 1
    assert fallbacks >= 1, "the damaged snapshot was not reported"


# --------------------------------------------------------------------------- r6


def test_segments_of_a_retired_live_writer_are_collectable(store):
    """Bounded (5), r6. Was: a writer of a run retired by ``compact(keep_runs=...)``
    but still alive lost its mark once GC collected its segments; every later segment
    sat in a markless stream (a "gap"): never collected by ``gc`` and decoded again by
    every ``open`` (20 segments kept, 21 reads per open)."""
    old = resumelog.open(store, run_id="old")
    w = old.writer("slow")  # long-lived, never closed
    w.complete("a")
    w.flush()
    old.compact()
    for r in ("new1", "new2"):
        with resumelog.open(store, run_id=r).writer("x") as x:
            x.complete(f"src-{r}")
        resumelog.open(store, run_id=r).compact(keep_runs=1)  # retires "old"
    for k in range(3):  # until GC collected the slow stream and its mark was pruned
        age_journal(store)
        with resumelog.open(store, run_id="new2").writer("y") as y:
            y.complete(f"pre{k}")
        c = resumelog.open(store, run_id="new2")
        c.compact(keep_runs=1)
        c.gc()
    slow_prefix = f"{paths.JOURNAL_PREFIX}slow/"
    for i in range(20):  # the slow writer goes on
        w.complete(f"b{i}")
        w.flush()
    assert len(store.list(slow_prefix)) >= 20
    for t in range(4):  # compactions until the oldest retained snapshot covers them
        age_journal(store)
        with resumelog.open(store, run_id="new3").writer("y") as y:
            y.complete(f"tick{t}")
        resumelog.open(store, run_id="new3").compact()
    age_journal(store)
    dry = [k for k in resumelog.open(store, run_id="z").gc(dry_run=True).keys if k.startswith(slow_prefix)]
    assert len(dry) >= 19, f"gc would delete {len(dry)} of the retired writer's segments"
    resumelog.open(store, run_id="z").gc()
    left = store.list(slow_prefix)
    assert len(left) <= 1, f"{len(left)} segments of the retired writer survive gc"  # at most an open stream's last

    reads = []

    class Counting(MemoryStore):
        def read(self, key):
            if key.startswith(slow_prefix):
                reads.append(key)
            return super().read(key)

    resumelog.open(Counting(store.name), run_id="z")
    assert len(reads) <= 1, f"one open read {len(reads)} segments of the retired writer"


def test_over_drain_is_an_anomaly_warned_once(store, caplog):
    """Issue 18. Was: a source drained below zero (emit, complete, then one more -1 under
    a new key, all folded together) ended pending with no anomaly and no warning."""
    ck = resumelog.open(store, run_id="R")
    with ck.writer("w") as w:
        w.emit("S")
        w.complete("S")
        w.record("extra", "S", -1)
    with caplog.at_level("WARNING", logger="resumelog"):
        v = resumelog.open(store, run_id="v")
        assert not v.is_completed("S")
        assert v.status().anomaly_counts.get("over_drained") == 1
        v.compact()
        again = resumelog.open(store, run_id="v2")
        again.compact()
    assert again.status().anomaly_counts.get("over_drained") == 1
    assert not again.is_completed("S")
    warned = [r for r in caplog.records if "drained below zero" in r.getMessage()]
    assert len(warned) == 2  # the first open's view, and the compaction that published it; never again
