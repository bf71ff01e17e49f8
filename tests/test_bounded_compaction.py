"""Bounded compaction memory (issue 17 part 4): a fold spills its completions into
in-memory layers (``compactor.SPILL_COMPLETIONS``) and publishes exactly what a fold
that keeps them in Python objects publishes, layer boundaries and nonces aside.

Every comparison folds the same journal (a byte-for-byte copy of the store) twice,
evaluated in rounds of one record (every segment ends a round), once spilling at every
round and once never, and compares the published snapshots whole: marks, runs, pending
states, resets, anomalies and counters, the done-writers frame, every completed id with
its run, final entries and writers (the layers read back from the store), and a fresh
client's ``status()``.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_layer_reads import _maps_into

import resumelog
from resumelog import compactor, layers, paths
from resumelog._provisional import ProvisionalSet
from resumelog.errors import StorageError
from resumelog.storage import LocalStore, MemoryStore, Store
from resumelog.testing.compaction import copy_store, published, spilling
from resumelog.testing.stateful import HookedStore, crash_writer

POLICY = resumelog.FlushPolicy(max_records=3)


@pytest.fixture(autouse=True)
def small_layers(monkeypatch):
    """Every compaction and every spill writes a layer of its own (stacks grow and merge)."""
    monkeypatch.setattr(layers, "MIN_LAYER", 1)


def mem() -> MemoryStore:
    return MemoryStore(f"bounded-{uuid.uuid4().hex}")


def journal(store: Store) -> None:
    """A journal with everything a fold meets; the tail after the latest snapshot holds
    all of it but the retirement (compactions before the tail retire run r0)."""
    r0 = resumelog.open(store, run_id="r0", flush_policy=POLICY)
    with r0.writer("old") as w:
        w.complete("a0")
        w.emit("a1")  # pending in r0 when it is retired
    r0.compact()
    r1 = resumelog.open(store, run_id="r1", flush_policy=POLICY)
    a, b, c = (r1.writer(n) for n in ("a", "b", "c"))  # listed (and folded) in this order
    for i in range(12):
        a.complete(f"s{i}")
    a.flush()
    assert r1.compact(keep_runs=1).retired_runs == ["r0"]  # the base of the tail
    with r0.writer("zombie") as z:
        z.complete("z")  # records of a retired run: ignored
    for i in range(6):  # provisional completions reopened quietly by a later stream
        a.emit(f"p{i}")
        b.record(f"p{i}/0", f"p{i}", -1)  # after a and b: sums to 0
        c.record(f"p{i}/f", f"p{i}", +1)  # the fan-out, in a stream folded later
        if i % 2:
            c.record(f"p{i}/1", f"p{i}", -1)  # drained again (odd ones)
    b.record("k", "x", +1, emission=True)  # a conflict: two streams, other deltas
    c.record("k", "x", +2)
    b.record("k2", "x", -1)
    a.record("late", "s0", +1)  # a late record of a completed source (anomaly)
    a.record("s1-dup", "s1", 0)  # a new key with delta 0: the completion stands
    a.complete("s2")  # a duplicate: changes nothing
    r1.reset(["s3"])  # an operator's reset
    a.close()
    b.close()
    dead = r1.writer("dead")  # a crashed writer: its flushed records count, the rest is lost
    dead.complete("d0")
    dead.emit("d1")
    dead.flush()
    dead.record("d1/x", "d1", -1)
    crash_writer(dead)
    c.close()
    r2 = resumelog.open(store, run_id="r2", flush_policy=POLICY)
    with r2.writer("e") as e:
        for i in range(5):
            e.complete(f"t{i}")
        e.complete("s0")  # r2 drains s0 too (r1 reopened it): r2 holds it
        e.emit("q")  # pending in r2
    r3 = resumelog.open(store, run_id="r3", flush_policy=POLICY)
    with r3.writer("f") as f:
        f.complete("u0")
        f.complete("t1")  # a second run drains t1: the smaller run id holds it
    with r3.writer("g") as g:
        for i in range(8):
            g.complete(f"v{i}")
            g.record(f"v{i}/0", f"w{i}", +1, emission=True)
            g.record(f"v{i}/1", f"w{i}", -1)


def both(store: Store, **compact_kw) -> tuple[dict, dict, list]:
    """Compact copies of ``store`` without and with spills; their publications and results."""
    out, results = [], []
    for spill in (None, 1):
        copy = mem()
        copy_store(store, copy)
        with spilling(1, spill):
            r = compactor.compact(copy, **compact_kw)
        results.append(r)
        out.append(published(copy))
    assert results[0].spills == 0
    return out[0], out[1], results


def test_spilling_at_every_round_publishes_the_same():
    store = mem()
    journal(store)
    kept, spilled, (r0, r1) = both(store)
    assert r1.spills > 3  # the test spilled
    assert (r0.records_folded, r0.segments_folded, r0.completed) == (
        r1.records_folded,
        r1.segments_folded,
        r1.completed,
    )
    assert kept == spilled
    # and the journal holds what it is meant to
    counts = kept["status"]["anomaly_counts"]
    assert counts.get("late_record") and counts.get("conflict") and counts.get("retired_run")
    assert "s3" not in kept["completed"] and "d0" in kept["completed"] and "d1" not in kept["completed"]
    assert kept["completed"]["t1"][0] == "r2" and kept["completed"]["s0"][0] == "r2"
    assert {f"p{i}" for i in (1, 3, 5)} <= set(kept["completed"]) and "p0" not in kept["completed"]
    assert kept["status"]["pending"] > 0


@pytest.mark.parametrize("keep_runs", [1, None])
def test_spilling_with_retirement_in_the_same_compaction(keep_runs):
    store = mem()
    journal(store)
    kept, spilled, (r, _) = both(store, keep_runs=keep_runs, protect_runs=frozenset({"r3"}))
    assert kept == spilled
    assert r.retired_runs == (["r1"] if keep_runs else [])  # r2 and r3 are new in the tail


def test_spilling_onto_an_empty_checkpoint_and_a_large_stack():
    """No snapshot yet (the first fold), then many spilled layers on a base of many."""
    store = mem()
    ck = resumelog.open(store, run_id="r", flush_policy=POLICY)
    with ck.writer("w") as w:
        for i in range(30):
            w.complete(f"a{i:03d}")
    kept, spilled, (_, r) = both(store)
    assert kept == spilled and r.spills >= 9
    for k in range(3):  # a base of several layers
        with ck.writer(f"x{k}") as w:
            for i in range(40):
                w.complete(f"b{k}-{i:03d}")
        ck.compact()
    with ck.writer("y") as w:
        for i in range(60):
            w.complete(f"c{i:03d}")
    kept, spilled, (_, r) = both(store)
    assert kept == spilled and r.spills >= 19
    assert len(kept["completed"]) == 30 + 120 + 60


class LosingStore(MemoryStore):
    """Segment ``lose`` is deleted after the journal listing, before it is read (a GC
    of someone else's, an operator's mistake): a real deletion, found mid-fold."""

    lose = ""

    def read(self, key: str) -> bytes:
        if key == self.lose:
            self.delete([key])
        return super().read(key)


def test_a_run_quarantined_after_spills_voids_its_spilled_completions():
    """A segment of run R found lost late in the fold quarantines R: the completions
    earlier rounds made in R are voided even once they were spilled into layers (they
    are still provisional), and the same pending states result."""
    store = mem()
    ck = resumelog.open(store, run_id="R", flush_policy=POLICY)
    a, b = ck.writer("a"), ck.writer("b")
    for i in range(9):
        a.complete(f"s{i}")  # folded first: completed (and spilled) in early rounds
    a.emit("S")
    a.flush()
    b.record("f", "S", +2)  # this segment gets lost
    b.flush()
    b.record("f/0", "S", -1)
    b.close()
    a.close()
    lost = paths.segment_name("b", b.incarnation, 0)
    pubs = []
    for spill in (None, 1):
        copy = LosingStore(f"losing-{uuid.uuid4().hex}")
        copy_store(store, copy)
        copy.lose = lost
        with spilling(1, spill):
            r = compactor.compact(copy)
        assert r.spills >= 3 if spill else r.spills == 0
        pubs.append(published(copy))
    assert pubs[0] == pubs[1]
    assert not pubs[0]["completed"]  # every completion of R voided: R lost a segment
    assert [r["damaged"] for r in pubs[0]["status"]["runs"]] == [True]


def test_spilled_layers_are_written_and_survive_gc(tmp_path):
    """On local storage: the layers a spill made and the snapshot names are written
    (and none it does not name); GC keeps them; a fresh client reads every id."""
    store = LocalStore(str(tmp_path / "ck"))
    ck = resumelog.open(store, run_id="r", flush_policy=POLICY)
    with ck.writer("w") as w:
        for i in range(50):
            w.complete(f"s{i:02d}")
    with spilling(1, 4):
        r = compactor.compact(store)
    assert r.written and r.spills > 3
    assert published(store)["count"] == 50
    names = {o.path for o in store.list(paths.LAYER_PREFIX)}
    snap = compactor.list_snapshots(store)[-1][1].path
    from resumelog.format import decode_snapshot_frames

    named = {ref.name for ref in decode_snapshot_frames(store.read(snap), snap).layers or ()}
    assert names == named  # merged-away spill layers were never written
    compactor.gc(store, retain=1, grace=0)
    assert {o.path for o in store.list(paths.LAYER_PREFIX)} == named
    assert sorted(resumelog.open(str(tmp_path / "ck")).completed) == [f"s{i:02d}" for i in range(50)]


def test_a_reader_folding_a_long_tail_spills_too():
    """``load`` (a client's open) folds in rounds and spills as well: same view."""
    store = mem()
    journal(store)
    views = []
    for spill in (None, 1):
        with spilling(1, spill):
            loaded = compactor.load(store)
        s = loaded.state
        views.append(
            (
                sorted((x, s.completed_run(x)) for x in s.iter_completed()),
                sorted((k, v.signature()[:2]) for k, v in s.pending.items()),
                list(s.anomalies),
                loaded.spills > 0,
            )
        )
    assert views[0][:3] == views[1][:3]
    assert views[1][3]


def test_no_round_after_the_last_segment():
    """The final evaluation follows the last segment: a round there (and the spill it
    may start: a snapshot encoded and loaded back) would be work for nothing. A fold
    whose records reach a round only at its last segment with records (the writer's
    closing segment holds none) neither evaluates a round nor spills, and publishes
    what a fold with no rounds publishes."""
    store = mem()
    with resumelog.open(store, run_id="r1", flush_policy=POLICY).writer("a") as w:
        for i in range(30):
            w.complete(f"s{i}")  # 60 records: 15 segments of 4, a closing one of none
    segments = [o.path for o in store.list(paths.JOURNAL_PREFIX) if paths.parse_segment(o.path)]
    out, spills = [], []
    for round_records in (57, 56, 10**9):  # a round due at the last segment with records; before it; never
        copy = mem()
        copy_store(store, copy)
        with spilling(round_records, 1):
            r = compactor.compact(copy)
        assert r.records_folded == 60 and r.segments_folded == len(segments) > 2
        out.append(published(copy))
        spills.append(r.spills)
    assert spills == [0, 1, 0]  # (56: a round after 14 segments, then a spill)
    assert out[0] == out[1] == out[2]
    assert len(out[0]["completed"]) == 30


# --------------------------------------------------------------------------- the set


def test_provisional_set_is_a_set():
    p = ProvisionalSet({"a", "b"})
    p.freeze()
    assert "a" in p and "c" not in p and p
    p.discard("a")
    assert "a" not in p
    p.update(["a", "c"])
    p.freeze()  # runs merge: b+... and a, c
    assert sorted(p) == ["a", "b", "c"] and len(p) == 3
    p.discard("b")
    p.add("d")
    assert sorted(p) == ["a", "c", "d"]
    p.freeze()
    p.discard("c")
    p.freeze()
    assert sorted(p) == ["a", "d"] and "c" not in p
    big = ProvisionalSet(f"id-{i:06d}" for i in range(10_000))
    big.freeze()
    assert all(f"id-{i:06d}" in big for i in range(0, 10_000, 7)) and "id-x" not in big
    assert big.nbytes < 10_000 * 10  # a few bytes per id


def test_spilled_layers_are_not_merged_back_together():
    """Each spill moves fewer completions than the top layer holds (the rest wait for
    the next), so ``plan_merges`` keeps every spilled layer apart: the published
    snapshot names one layer per spill (plus the publish's own) in strictly decreasing
    sizes, and not one merge rewrote an id. (A merge holds both layers' ids as Python
    objects; equal spills would merge like a binary counter, half the fold at once.)"""
    from resumelog.format import decode_snapshot_frames

    store = mem()
    ck = resumelog.open(store, run_id="r", flush_policy=resumelog.FlushPolicy(max_records=10))
    with ck.writer("w") as w:
        for i in range(100):
            w.complete(f"s{i:03d}")
    kept, spilled, (_, r) = both(store)
    assert kept == spilled
    copy = mem()
    copy_store(store, copy)
    with spilling(10, 16):
        r = compactor.compact(copy)
    snap = compactor.list_snapshots(copy)[-1][1].path
    sizes = [ref.count for ref in decode_snapshot_frames(copy.read(snap), snap).layers or ()]
    assert r.spills >= 4 and len(sizes) in (r.spills, r.spills + 1), (r.spills, sizes)
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes), sizes
    assert sum(sizes) == 100


# --------------------------------------------------------------------------- spooled layers


def _fixed_nonces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nonces (of layers and snapshots) from a counter: two runs write the same bytes."""
    counter = itertools.count()
    monkeypatch.setattr(layers.secrets, "token_bytes", lambda n: next(counter).to_bytes(n, "big"))


def _left_in(d: Path) -> list[str]:
    """Files in ``d``, and files under it this process holds open or mapped."""
    gc.collect()
    return [p.name for p in d.iterdir()] + _maps_into(d)


@pytest.fixture
def spool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Layers spooled whenever they have a block, into a directory of the test's own."""
    if not Path("/proc/self/maps").exists():
        pytest.skip("needs /proc")
    d = tmp_path / "spool"
    d.mkdir()
    monkeypatch.setenv("RESUMELOG_SPOOL_DIR", str(d))
    monkeypatch.setattr(layers, "BLOCK_BYTES", 64)  # a few ids a block: many blocks
    return d


def _count_spools(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    made = [0]

    class Counted(layers.BlockSpool):
        def __init__(self) -> None:
            made[0] += 1
            super().__init__()

    monkeypatch.setattr(layers, "BlockSpool", Counted)
    return made


def test_spooled_compactions_publish_the_same_bytes(tmp_path, spool_dir, monkeypatch):
    """Compactions (a merge as plan_merges decides, then every layer merged into one)
    of the same journal on local storage write the same objects, byte for byte, whether
    their layers are built in memory or spooled to temporary files (threshold 0); the
    spool directory is empty afterwards, with nothing in it left open or mapped."""
    store = mem()
    journal(store)
    made = _count_spools(monkeypatch)
    written = []
    for spool_bytes in (layers.SPOOL_BYTES, 0):
        monkeypatch.setattr(layers, "SPOOL_BYTES", spool_bytes)
        _fixed_nonces(monkeypatch)
        copy = LocalStore(str(tmp_path / f"ck-{spool_bytes}"))
        copy_store(store, copy)
        assert compactor.compact(copy, clock=lambda: 1000.0).written
        assert compactor.compact(copy, clock=lambda: 1001.0, merge=True).written
        written.append({o.path: copy.read(o.path) for o in copy.list("")})
        assert made[0] > 0 if not spool_bytes else made[0] == 0
    assert written[0] == written[1]
    assert sum(k.startswith(paths.LAYER_PREFIX) for k in written[0]) >= 4
    assert _left_in(spool_dir) == []


@contextlib.contextmanager
def copy_writer(store: Store) -> Iterator[resumelog.Writer]:
    """A writer of run r9 on ``store``."""
    ck = resumelog.open(store, run_id="r9", flush_policy=POLICY)
    w = ck.writer("late")
    try:
        yield w
    finally:
        w.close()


def test_spooled_spills_publish_the_same(spool_dir, monkeypatch):
    """A fold spilling at every round into spooled layers (loaded back from their maps,
    written with the snapshot) publishes what one that never spills publishes."""
    store = mem()
    journal(store)
    reference, _, _ = both(store)
    monkeypatch.setattr(layers, "SPOOL_BYTES", 0)
    made = _count_spools(monkeypatch)
    kept, spilled, (_, r) = both(store)
    assert r.spills > 3 and made[0] > r.spills
    assert kept == spilled == reference
    assert _left_in(spool_dir) == []


class FailingLayerStore(LocalStore):
    """Refuses to write layers (a full disk, a lost connection)."""

    def put_if_absent(self, key: str, data: bytes | memoryview) -> None:
        if key.startswith(paths.LAYER_PREFIX):
            raise StorageError(f"injected failure writing {key}")
        super().put_if_absent(key, data)


def test_spooled_layers_are_released_after_a_lost_race_and_a_failure(tmp_path, spool_dir, monkeypatch):
    """A compaction that loses the put-if-absent of its snapshot to another compactor
    (and publishes on its second attempt), and one whose layer writes fail, leave
    nothing in the spool directory, open or mapped."""
    monkeypatch.setattr(layers, "SPOOL_BYTES", 0)
    made = _count_spools(monkeypatch)
    inner = LocalStore(str(tmp_path / "ck"))
    journal(inner)
    assert made[0] > 0  # the journal's compactions spooled already
    with copy_writer(inner) as w:
        w.complete_many([f"n{i:03d}" for i in range(40)])
    hooked = HookedStore(inner)
    hooked.before_snapshot_put = lambda: compactor.compact(inner)  # publishes the same number first
    before = made[0]
    r = compactor.compact(hooked, merge=True)
    assert r.attempts == 2 and made[0] > before + 1
    assert _left_in(spool_dir) == []
    failing = FailingLayerStore(str(tmp_path / "ck"))
    with copy_writer(failing) as w:
        w.complete_many([f"m{i:03d}" for i in range(40)])
    snapshots = compactor.list_snapshots(inner)
    with pytest.raises(StorageError, match="injected"):
        compactor.compact(failing, merge=True)
    assert compactor.list_snapshots(inner) == snapshots  # nothing published
    assert _left_in(spool_dir) == []


@pytest.mark.parametrize("multipart", [False, True])
def test_spooled_layers_on_s3(s3_url, spool_dir, monkeypatch, multipart):
    """On S3 (a real server) the spooled layers' maps are written as one ``PUT`` each
    (copied into bytes: botocore takes no memoryview), or, above the store's multipart
    threshold (0 here), as create-only multipart uploads read from the map; a fresh
    client reads every id back."""
    from resumelog.storage import FsspecStore

    url, opts = s3_url
    monkeypatch.setattr(layers, "SPOOL_BYTES", 0)
    made = _count_spools(monkeypatch)
    ck = resumelog.open(url, storage_options=opts, run_id="r", flush_policy=POLICY)
    with ck.writer("w") as w:
        w.complete_many([f"s{i:03d}" for i in range(200)])
    store = FsspecStore(url, opts, multipart_threshold=0 if multipart else 16 << 20)
    assert compactor.compact(store, merge=True).written and made[0] > 0
    uploads = store.requests["CreateMultipartUpload"]
    assert uploads >= (2 if multipart else 0) and (multipart or uploads == 0)  # the layer and the snapshot
    assert sorted(resumelog.open(url, storage_options=opts, create=False).completed) == [
        f"s{i:03d}" for i in range(200)
    ]
    assert _left_in(spool_dir) == []
