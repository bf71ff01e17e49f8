"""The facade: open, fingerprint, compaction, loading, GC, reset, clear, bad input.

Tests taking ``backend`` run on local disk, memory and the S3 servers (moto, SeaweedFS).
"""

from __future__ import annotations

import os
import struct
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from s3_support import S3_KINDS, bucket_of

import resumelog
from resumelog import compactor, paths
from resumelog.errors import CorruptSnapshot, FingerprintMismatch, ObjectNotFound, UnsupportedFormat
from resumelog.format import FORMAT_VERSION, PREAMBLE_SIZE
from resumelog.format import crc32c as crc
from resumelog.storage import LocalStore, Store, open_store


@dataclass
class Backend:
    url: str
    opts: dict[str, Any] = field(default_factory=dict)

    def open(self, **kw: Any) -> resumelog.Checkpoint:
        return resumelog.open(self.url, storage_options=self.opts, **kw)

    def store(self) -> Store:
        return open_store(self.url, self.opts)

    def objects(self) -> dict[str, bytes]:
        st = self.store()
        return {o.path: st.read(o.path) for o in st.list("")}

    def replace(self, key: str, data: bytes) -> None:
        st = self.store()
        st.delete([key])
        st.put_if_absent(key, data)


@pytest.fixture(params=["local", "memory", *[f"s3-{k}" for k in S3_KINDS]])
def backend(request: pytest.FixtureRequest, tmp_path) -> Backend:
    if request.param == "local":
        return Backend(str(tmp_path / "ck"))
    if request.param == "memory":
        return Backend(f"memory://ckpt-{uuid.uuid4().hex}")
    server = request.getfixturevalue("s3_pool").get(request.param.removeprefix("s3-"))
    return Backend(f"s3://{bucket_of(server)}/{uuid.uuid4().hex}", server.storage_options())


def fill(ck, n, prefix="s", writer="w1"):
    with ck.writer(writer) as w:
        for i in range(n):
            w.complete(f"{prefix}{i}")


def test_roundtrip_and_views(backend):
    ck = backend.open()
    fill(ck, 5)
    assert ck.is_completed("s3") and not ck.is_completed("s9")
    assert len(ck.completed) == 5 and "s0" in ck.completed and 7 not in ck.completed
    assert sorted(ck.completed) == [f"s{i}" for i in range(5)]
    assert ck.pending(["s9", "s1", "s8", "s1"]) == ["s9", "s8"]
    again = backend.open()
    assert sorted(again.completed) == sorted(ck.completed)


def test_closing_a_writer_reloads_the_view_at_the_next_read_only(tmp_path):
    ck = resumelog.open(str(tmp_path / "ck"), run_id="r1")
    req = ck.store.requests
    n = req["list"]
    fill(ck, 1, prefix="x")
    assert req["list"] == n  # the close only marks the view stale
    ck.refresh()
    per_reload = req["list"] - n  # listings of a refresh that finds something new
    n = req["list"]
    ck.refresh()
    per_check = req["list"] - n  # nothing new: the two listings that tell so, no fold
    assert per_check == 2 and per_reload > per_check
    n = req["list"]
    compactor.load(ck.store)
    assert req["list"] - n == per_reload  # a reload lists no more than a plain load: it reuses the check's
    fill(ck, 5)
    n = req["list"]
    assert len(ck.completed) == 6  # the first read reloads...
    assert req["list"] == n + per_reload
    assert sorted(ck.completed) == ["s0", "s1", "s2", "s3", "s4", "x0"] and ck.is_completed("s4")
    assert req["list"] == n + per_reload  # ...once
    # compact() right after a close: the compactor's fold and the view's reload from the
    # new snapshot, and no reload of the journal tail at the close
    fill(ck, 3, prefix="t", writer="w2")
    n = req["list"]
    r = ck.compact()
    assert req["list"] == n + 2 * per_reload
    assert r.completed == 9 and ck.is_completed("t2") and len(ck.completed) == 9
    assert req["list"] == n + 2 * per_reload


def test_a_refresh_with_nothing_new_keeps_the_view_and_reads_nothing(tmp_path):
    root = tmp_path / "ck"
    ck = resumelog.open(str(root), run_id="r1")
    fill(ck, 5)
    ck.refresh()
    view, req = ck._view, ck.store.requests
    gets = req["get"]
    for _ in range(3):
        ck.refresh()
    assert req["get"] == gets and ck._view is view  # no object read, no fold
    # another process's flush: the next refresh folds it
    fill(resumelog.open(str(root), run_id="r2"), 2, prefix="o")
    ck.refresh()
    assert ck._view is not view and req["get"] > gets
    assert ck.is_completed("o1") and len(ck.completed) == 7
    # an object rewritten in place (same name and size; an operator's hand): reloaded too
    view = ck._view
    seg = next(p for p in (root / "journal").rglob("*") if p.is_file())
    data = seg.read_bytes()
    seg.write_bytes(data)
    os.utime(seg, ns=(seg.stat().st_atime_ns, seg.stat().st_mtime_ns + 1_000_000))
    ck.refresh()
    assert ck._view is not view and len(ck.completed) == 7


def test_compaction_then_tail(backend):
    ck = backend.open()
    fill(ck, 100)
    r = ck.compact()
    assert r.written and r.snapshot == 1 and r.completed == 100
    fill(ck, 10, prefix="t", writer="w2")
    fresh = backend.open()
    assert len(fresh.completed) == 110
    assert fresh.compact().snapshot == 2
    # idempotent: nothing new -> no new snapshot
    r3 = fresh.compact()
    assert not r3.written and r3.snapshot == 2
    assert len(compactor.list_snapshots(fresh.store)) == 2


def test_fingerprint(backend):
    backend.open(fingerprint={"num_records": 10, "model": "x"})
    backend.open(fingerprint={"num_records": 10, "model": "x"})
    backend.open()  # no fingerprint given: accept
    before = backend.objects()
    with pytest.raises(FingerprintMismatch) as info:
        backend.open(fingerprint={"num_records": 20, "model": "x", "extra": True})
    assert set(info.value.differences) == {"num_records", "extra"}
    assert info.value.differences["num_records"] == (10, 20)
    assert "num_records" in str(info.value)
    assert backend.objects() == before  # a failed open changes nothing
    ck = backend.open(fingerprint={"num_records": 20}, on_mismatch="reset")
    assert ck.fingerprint == {"num_records": 20}


def test_a_deleted_meta_is_never_silently_replaced_under_a_fingerprint(backend, caplog):
    """meta.msgpack holds the fingerprint: deleted under a checkpoint with records, a
    given fingerprint cannot be checked (typed error, nothing written); without one
    a new meta is created with a warning, and the records, stamped with the old one's
    epoch, are ignored (a missing meta is what a deletion under way or a resurrected
    checkpoint looks like: RFC 0004); ``on_mismatch="reset"`` starts over."""
    ck = backend.open(fingerprint={"num_records": 10})
    fill(ck, 3)
    backend.store().delete([paths.META])
    before = backend.objects()
    with pytest.raises(FingerprintMismatch) as info:
        backend.open(fingerprint={"num_records": 10})
    assert paths.META in str(info.value) and "cannot be checked" in str(info.value)
    assert info.value.differences == {"num_records": (None, 10)}
    assert backend.objects() == before  # nothing written, the meta still missing
    with caplog.at_level("WARNING", logger="resumelog"):
        adopted = backend.open()  # no fingerprint to check: a new meta, a new epoch
    assert "missing" in caplog.text and paths.META in caplog.text
    assert sorted(adopted.completed) == [] and adopted.fingerprint == {}
    assert adopted.status().foreign_objects == len(before)
    backend.store().delete([paths.META])
    fresh = backend.open(fingerprint={"num_records": 20}, on_mismatch="reset")
    assert fresh.fingerprint == {"num_records": 20} and len(fresh.completed) == 0
    assert set(backend.objects()) == {paths.META}


def test_fingerprint_values_must_be_scalars(tmp_path):
    with pytest.raises(resumelog.InvalidId):
        resumelog.open(str(tmp_path), fingerprint={"a": [1, 2]})
    assert not list(tmp_path.iterdir())


def test_missing_checkpoint_without_create(backend):
    with pytest.raises(ObjectNotFound):
        backend.open(create=False)
    assert backend.objects() == {}


def test_invalid_run_id(tmp_path):
    with pytest.raises(resumelog.InvalidId):
        resumelog.open(str(tmp_path), run_id="../x")
    assert not list(tmp_path.iterdir())


def test_run_id_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4242")
    monkeypatch.delenv("RESUMELOG_RUN_ID", raising=False)
    assert resumelog.open(str(tmp_path)).run_id == "4242"
    monkeypatch.setenv("RESUMELOG_RUN_ID", "mine")
    assert resumelog.open(str(tmp_path)).run_id == "mine"


def _rewrite_version(data: bytes, version: int) -> bytes:
    pre = bytearray(data[:PREAMBLE_SIZE])
    struct.pack_into(">H", pre, 6, version)
    struct.pack_into(">I", pre, 20, crc(bytes(pre[:20])))
    return bytes(pre) + data[PREAMBLE_SIZE:]


def test_unknown_format_version_is_a_clear_error(backend):
    ck = backend.open()
    fill(ck, 3)
    ck.compact()
    snap = paths.snapshot_name(1)
    backend.replace(snap, _rewrite_version(backend.store().read(snap), FORMAT_VERSION + 1))
    before = backend.objects()
    with pytest.raises(UnsupportedFormat, match=f"version {FORMAT_VERSION + 1}"):
        backend.open()
    meta = _rewrite_version(backend.store().read(paths.META), 9)
    backend.replace(paths.META, meta)
    with pytest.raises(UnsupportedFormat):
        backend.open()
    assert backend.objects() == {**before, paths.META: meta}


def test_garbage_only_snapshot_is_a_clear_error(backend):
    ck = backend.open()
    fill(ck, 3)
    ck.compact()
    backend.replace(paths.snapshot_name(1), b"this is not a snapshot")
    before = backend.objects()
    with pytest.raises(CorruptSnapshot) as info:
        backend.open()
    assert paths.snapshot_name(1) in str(info.value)
    assert backend.objects() == before


def test_corrupt_latest_snapshot_falls_back_to_previous(backend, monkeypatch):
    # without the local snapshot cache, which would serve its intact copy of the same
    # snapshot write (tests/test_snapshot_cache.py)
    monkeypatch.setenv("RESUMELOG_CACHE_DIR", "off")
    ck = backend.open()
    fill(ck, 3)
    ck.compact()
    fill(ck, 3, prefix="t", writer="w2")
    ck.compact()
    data = bytearray(backend.store().read(paths.snapshot_name(2)))
    data[-3] ^= 0xFF
    backend.replace(paths.snapshot_name(2), bytes(data))
    again = backend.open()
    assert len(again.completed) == 6  # snapshot 1 + the journal tail
    assert again.status().anomaly_counts.get("snapshot_fallback") == 1
    # compaction moves past the corrupt number instead of fighting over it
    assert again.compact().snapshot == 3


def test_a_damaged_header_of_a_streams_first_segment_is_salvaged_from_its_other_segments(backend):
    """The header frame of a stream's first segment damaged before any compaction: the
    run is told by the stream's later segments and quarantined. Was: the first pass
    salvaged it so, but the second listing's pass read the segment again and told its
    run from that segment alone: the checkpoint did not open (status, repair failed)."""
    ck = backend.open(run_id="r1")
    with ck.writer("w1") as w:
        w.complete("a")
        w.flush()
        w.complete("b")
    (seg0,) = [o.path for o in ck.store.list("journal/") if o.path.endswith("/00000000000000000000.seg")]
    data = bytearray(backend.store().read(seg0))
    data[40] ^= 0xFF  # inside frame 0, the segment header
    backend.replace(seg0, bytes(data))
    again = backend.open(run_id="r2")
    st = again.status()
    assert st.anomaly_counts == {"corrupt_segment": 1}
    assert [r.run_id for r in st.runs if r.damaged] == ["r1"]
    assert sorted(again.completed) == [] and again.pending(["a", "b"]) == ["a", "b"]
    assert again.compact().written


def test_a_corrupt_middle_segment_is_salvaged_naming_it(backend, caplog):
    """One flipped bit in a segment not yet compacted: the checkpoint still opens,
    compacts and reports; the segment's run is quarantined (its uncompacted
    completions rerun, in a new run), published completions stand (issue 21)."""
    ck = backend.open(run_id="r1")
    with ck.writer("early") as w:
        w.complete("published")
    ck.compact()
    with ck.writer("w1") as w:
        for i in range(3):
            w.complete(f"s{i}")
            w.flush()
    segs = [o.path for o in ck.store.list("journal/") if "/w1/" in o.path]
    data = bytearray(backend.store().read(segs[1]))
    data[len(data) // 2] ^= 0x01
    backend.replace(segs[1], bytes(data))
    with caplog.at_level("WARNING", logger="resumelog"):
        again = backend.open(run_id="r2")
    assert "unreadable (a corrupt segment)" in caplog.text and segs[1] in caplog.text
    assert sorted(again.completed) == ["published"]
    st = again.status()
    assert st.anomaly_counts == {"corrupt_segment": 1}
    assert [r.run_id for r in st.runs if r.damaged] == ["r1"]
    assert segs[1] in st.recent_anomalies[-1]["detail"]
    assert again.compact().written  # the damage is published
    with again.writer("rerun") as w:
        w.complete_many(["s0", "s1", "s2"])
    final = backend.open(run_id="r3")
    assert sorted(final.completed) == ["published", "s0", "s1", "s2"]
    assert final.status().anomaly_counts == {"corrupt_segment": 1}


def test_torn_tail_tolerated_only_for_last_segment(tmp_path):
    ck = resumelog.open(str(tmp_path))
    w = ck.writer("w1")
    for i in range(3):
        w.complete(f"s{i}")
        w.flush()
    w.closed = True  # the process "crashed": no closing segment
    segs = [o.path for o in ck.store.list("journal/")]
    last = tmp_path / segs[-1]
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    again = resumelog.open(str(tmp_path))
    assert sorted(again.completed) == ["s0", "s1"]
    assert again.status().anomaly_counts.get("torn_tail") == 1
    # the same truncation in the middle of a stream is corruption
    last.write_bytes(data)
    mid = tmp_path / segs[1]
    mdata = mid.read_bytes()
    mid.write_bytes(mdata[:-5])
    salvaged = resumelog.open(str(tmp_path))  # its run is quarantined: nothing of it completes
    assert sorted(salvaged.completed) == []
    assert salvaged.status().anomaly_counts.get("corrupt_segment") == 1


def test_torn_tail_is_recorded_once_not_at_every_compaction(tmp_path):
    ck = resumelog.open(str(tmp_path))
    w = ck.writer("w1")
    for i in range(2):
        w.complete(f"s{i}")
        w.flush()
    w.closed = True  # the process "crashed"
    last = tmp_path / [o.path for o in ck.store.list("journal/")][-1]
    last.write_bytes(last.read_bytes()[:30])
    again = resumelog.open(str(tmp_path))
    for i in range(3):
        with again.writer(f"later{i}") as w2:
            w2.complete(f"t{i}")
        assert again.compact().written
    status = resumelog.open(str(tmp_path)).status()
    assert status.anomaly_counts.get("torn_tail") == 1
    assert status.completed == 4


def test_torn_tail_not_tolerated_on_object_store(memory_url):
    """An object store never shows a partial object: a truncated one is corruption
    (salvaged by quarantining its run), never a tolerated torn tail."""
    ck = resumelog.open(memory_url)
    with ck.writer("w1") as w:
        w.complete("a")
    (seg,) = ck.store.list("journal/")
    data = ck.store.read(seg.path)
    ck.store.delete([seg.path])
    ck.store.put_if_absent(seg.path, data[:-4])
    again = resumelog.open(memory_url)
    assert sorted(again.completed) == []
    assert again.status().anomaly_counts == {"corrupt_segment": 1}


def test_gc_keeps_three_snapshots_and_open_stream_tails(backend):
    ck = backend.open()
    w = ck.writer("open-writer")
    for round_ in range(5):
        with ck.writer(f"w{round_}") as cw:
            cw.complete(f"c{round_}")
        w.complete(f"o{round_}")
        w.flush()
        ck.compact()
    assert len(compactor.list_snapshots(ck.store)) == 5
    dry = ck.gc(grace=0, dry_run=True)
    assert dry.snapshots == 2 and dry.segments > 0
    assert len(ck.store.list("")) > 0 and len(compactor.list_snapshots(ck.store)) == 5
    res = ck.gc(grace=0)
    assert res.keys == dry.keys
    assert [n for n, _ in compactor.list_snapshots(ck.store)] == [3, 4, 5]
    remaining = [o.path for o in ck.store.list("journal/")]
    # the open writer's last segment stays; closed writers covered by snapshot 3 are gone
    assert paths.segment_name("open-writer", w.incarnation, 4) in remaining
    assert not any(p.startswith("journal/w0/") for p in remaining)
    fresh = backend.open()
    assert len(fresh.completed) == 10
    # the grace period protects recent segments
    assert ck.gc(grace=3600).segments == 0


def test_gc_collects_unclosed_streams_of_retired_runs(tmp_path):
    """A writer killed without closing (a Ray worker at shutdown) leaves an unclosed
    stream: its last segment is kept while its run is live, and collected, with its
    mark, once the run is retired."""
    url = str(tmp_path)
    old = resumelog.open(url, run_id="old")
    w = old.handle().writer("killed")
    w.complete("a")
    w.flush()
    w.closed = True  # killed: no closing segment
    old.compact()
    assert old.gc(grace=0).segments == 0  # the open stream's last segment stays
    new = resumelog.open(url, run_id="new")
    with new.writer("w") as w2:
        w2.complete("b")
    new.compact(keep_runs=1)  # retires "old"
    assert new.gc(grace=0, retain=1).segments >= 1  # retain=1: the snapshot that retired it rules
    assert not any(o.path.startswith("journal/killed/") for o in new.store.list("journal/"))
    new.compact(keep_runs=1)
    marks = compactor.load(new.store).state.streams
    assert not any(m.writer_id == "killed" for m in marks.values())  # pruned from snapshots
    assert sorted(resumelog.open(url).completed) == ["a", "b"]


def test_folding_in_rounds_reopens_provisional_completions_quietly(tmp_path, monkeypatch):
    """A long tail is evaluated every ROUND_RECORDS records: a source whose records were
    not all folded yet may complete provisionally; a later record of the same fold
    reopens it exactly, without a late-record anomaly, and the result is the same."""
    url = str(tmp_path)
    ck = resumelog.open(url, run_id="r")
    a, b, c = (ck.handle().writer(n) for n in ("a", "b", "c"))  # listed (and folded) in this order
    a.emit("s")
    a.emit("t")
    a.flush()
    b.record("s/0", "s", -1)  # after a and b, s sums to 0: provisionally complete
    b.record("t/0", "t", -1)
    b.flush()
    c.record("s/f", "s", +1)  # the fan-out that made s/0 and s/1 (flushed before them)
    c.record("s/1", "s", -1)
    c.record("t/f", "t", +1)  # t: one child still in flight
    c.flush()
    whole = compactor.load(ck.store).state
    monkeypatch.setattr(compactor, "ROUND_RECORDS", 1)
    rounds = compactor.load(ck.store).state
    assert sorted(whole.iter_completed()) == sorted(rounds.iter_completed()) == ["s"]
    assert rounds.anomaly_counts.get("late_record", 0) == 0
    assert rounds.provisional is None
    assert compactor.compact(ck.store).written
    assert sorted(resumelog.open(url).completed) == ["s"]


def test_gc_never_deletes_uncovered_segments(backend):
    ck = backend.open()
    fill(ck, 2)
    ck.compact()
    fill(ck, 2, prefix="t", writer="w2")  # not compacted yet
    ck.gc(grace=0)
    assert len(backend.open().completed) == 4


def test_reset_forgets_completion_and_survives_compaction(backend):
    ck = backend.open(run_id="r1")
    fill(ck, 3)
    ck.compact()
    assert ck.reset(["s1", "never-done"]) == ["s1"]
    assert not ck.is_completed("s1")
    ck.compact()
    fresh = backend.open(run_id="r2")
    assert sorted(fresh.completed) == ["s0", "s2"]
    fill(fresh, 3)  # rerun in r2 completes it again
    assert sorted(backend.open().completed) == ["s0", "s1", "s2"]
    fresh.compact()
    counts = {r.run_id: r.completed_sources for r in fresh.status().runs}
    assert counts == {"r1": 2, "r2": 1}


def test_clear_deletes_only_resumelog_objects(backend):
    ck = backend.open(fingerprint={"a": 1})
    backend.store().put_if_absent("user-data.txt", b"keep me")
    fill(ck, 3)
    ck.compact()
    ck.clear()
    assert backend.objects() == {"user-data.txt": b"keep me"}
    assert len(backend.open().completed) == 0


def test_status_counts(backend):
    ck = backend.open(run_id="r1", fingerprint={"n": 5})
    fill(ck, 4)
    with ck.writer("w2") as w:
        w.emit("p1")
        w.emit("p2")
    st = ck.status()
    assert (st.completed, st.pending, st.snapshot) == (4, 2, 0)
    assert st.fingerprint == {"n": 5}
    assert {w.writer_id for w in st.writers} == {"w1", "w2"}
    assert st.journal_objects == 2 and st.journal_bytes > 0
    (run,) = st.runs
    assert (run.run_id, run.pending_sources, run.completed_sources) == ("r1", 2, 4)
    ck.compact()
    st2 = ck.status()
    assert st2.snapshot == 1 and st2.snapshot_objects == 1 and st2.unfolded_segments == 0


def test_keep_runs_retires_old_runs(backend):
    for run in ["a", "b", "c"]:
        ck = backend.open(run_id=run)
        with ck.writer("w") as w:
            w.emit(f"pending-{run}")
            w.complete(f"done-{run}")
        ck.compact()
    ck = backend.open(run_id="c")
    r = ck.compact(keep_runs=1)
    assert sorted(r.retired_runs) == ["a", "b"]
    st = ck.status()
    assert {x.run_id: x.retired for x in st.runs} == {"a": True, "b": True, "c": False}
    assert st.pending == 1
    assert sorted(ck.completed) == ["done-a", "done-b", "done-c"]  # completion is sticky


class RacyListingStore(LocalStore):
    """Local store whose journal listing is not a point-in-time snapshot: a hook
    writes segments *during* the first listing, and the listing returns the later
    one but not the earlier one (what a directory walk or paginated LIST can do)."""

    def __init__(self, root, hook):
        super().__init__(root)
        self.hook = hook

    def list(self, prefix=""):
        before = super().list(prefix)
        if prefix == "journal/" and self.hook is not None:
            hook, self.hook = self.hook, None
            early, late = hook()
            after = super().list(prefix)
            return sorted(
                [o for o in after if o.path != early and (o in before or o.path == late)], key=lambda o: o.path
            )
        return before


def test_listing_race_never_completes_early(tmp_path):
    # emit (+1) is durable; during the compactor's listing the fan-out (+2) is flushed
    # by writer "b-fan" and then a sink's -1 by writer "a-sink"; the racy listing sees
    # the -1 but not the +2.
    base = resumelog.open(str(tmp_path), run_id="r")
    with base.writer("src") as w:
        w.emit("s")

    def hook():
        store = LocalStore(str(tmp_path))
        fan = resumelog.journal.Writer(store, "b-fan", "r")
        fan.record("f", "s", 2)
        fan.flush()
        sink = resumelog.journal.Writer(store, "a-sink", "r")
        sink.record("x", "s", -1)
        sink.flush()
        return (paths.segment_name("b-fan", fan.incarnation, 0), paths.segment_name("a-sink", sink.incarnation, 0))

    store = RacyListingStore(str(tmp_path), hook)
    result = compactor.compact(store)
    assert result.written
    ck = resumelog.open(str(tmp_path), run_id="r")
    assert not ck.is_completed("s")  # sum is +2: two sinks outstanding
    with ck.writer("a-sink2") as w:
        w.record("y", "s", -1)
        w.record("z", "s", -1)
    ck.compact()
    assert ck.is_completed("s")


def test_the_view_never_completes_from_own_flushes_alone(tmp_path):
    ck = resumelog.open(str(tmp_path), run_id="r")
    w1 = ck.writer("w1")
    w1.emit("s")
    w1.flush()
    other = resumelog.open(str(tmp_path), run_id="r").writer("w2")
    other.record("fan", "s", 1)  # another process fans out: two children
    other.flush()
    w1.record("child-0", "s", -1)
    w1.flush()
    assert not ck.is_completed("s")  # the view has not seen the fan-out: it must not guess
    w1.record("child-1", "s", -1)
    w1.close()  # closing refreshes the view from storage
    other.close()
    assert ck.is_completed("s")
    with ck.writer("w3") as w3:
        w3.complete("own")
    assert ck.is_completed("own")


def test_completed_leaves_survive_into_a_new_run(backend):
    ck = backend.open(run_id="r1")
    with ck.writer("w") as w:
        w.emit("s")
        w.record("s::0", "s", 2)  # fan-out into three leaves
        w.record("s::0::0", "s", -1)
        w.record("s::0::1", "s", -1)
        # the job dies before leaf 2
    ck2 = backend.open(run_id="r2")
    assert not ck2.is_completed("s")
    assert ck2.completed_leaves("s") == {"s::0::0", "s::0::1"}
    assert ck2.completed_leaves("other") == set()
    with ck2.writer("w") as w:  # the rerun skips the written leaves but still records them
        w.emit("s")
        w.record("s::0", "s", 2)
        for leaf in ["s::0::0", "s::0::1", "s::0::2"]:
            w.record(leaf, "s", -1)
    ck2.compact()
    again = backend.open()
    assert again.is_completed("s") and again.completed_run("s") == "r2"
    assert again.completed_leaves("s") == {"s::0::0", "s::0::1", "s::0::2"}


def test_completed_leaves_with_another_prefix(backend):
    """Keys that are not lineage keys (NeMo Curator's task ids): ``prefix=""`` gives
    every key of the source whose final delta in a live run is -1, nothing else."""
    ck = backend.open(run_id="r1")
    with ck.writer("w") as w:
        w.record("0_s", "s", 1, emission=True)
        w.record("0_s_0", "s", 2)  # fan-out: not a leaf
        w.record("0_s_0_0", "s", -1)
        w.record("0_s_1_0", "s", 0)  # failed: not written
        w.record("0_t", "t", 1, emission=True)
        w.record("0_t_0", "t", -1)  # another source
    ck2 = backend.open(run_id="r2")
    assert ck2.completed_leaves("s", prefix="") == {"0_s_0_0"}
    assert ck2.completed_leaves("s", prefix="0_s_1") == set()
    assert ck2.completed_leaves("s") == set()  # the default prefix is "s::"


class LaggingSnapshotListStore(LocalStore):
    """The first snapshot listing misses the newest snapshot (it was published, and GC
    ran, between our listing of snapshots and our listing of the journal)."""

    def __init__(self, root):
        super().__init__(root)
        self.lag = True

    def list(self, prefix=""):
        out = super().list(prefix)
        if prefix == "snapshots/" and self.lag:
            self.lag = False
            return out[:-1]
        return out


def test_loader_reloads_when_gc_moved_past_its_snapshot(tmp_path):
    ck = resumelog.open(str(tmp_path), run_id="r")
    w = ck.writer("w")
    w.emit("s")
    w.record("f", "s", 2)
    w.flush()
    ck.compact()  # snapshot 1 covers seq 0
    w.record("a", "s", -1)
    w.flush()
    w.record("b", "s", -1)
    w.flush()
    w.record("c", "s", -1)
    w.flush()
    ck.compact()  # snapshot 2 covers seq 3: "s" complete
    w.closed = True
    # GC: delete segments 1 and 2 (covered by snapshot 2), keep the last one
    for o in ck.store.list("journal/"):
        if o.path.endswith(("1.seg", "2.seg")):
            ck.store.delete([o.path])
    store = LaggingSnapshotListStore(str(tmp_path))
    loaded = compactor.load(store)
    assert loaded.snapshot == 2 and loaded.state.is_completed("s")
    assert "journal_gap" not in loaded.state.anomaly_counts


def test_reset_forgets_leaf_completions_too(tmp_path):
    ck = resumelog.open(str(tmp_path), run_id="r1")
    with ck.writer("w") as w:
        w.emit("a")
        w.record("a::0", "a", 1)
        w.record("a::0::0", "a", -1)  # one leaf written, the other never
    ck2 = resumelog.open(str(tmp_path), run_id="r2")
    assert ck2.completed_leaves("a") == {"a::0::0"}
    with ck2.writer("w") as w:
        w.emit("a")
        w.record("a::0", "a", 1)
        w.record("a::0::0", "a", -1)
        w.record("a::0::1", "a", -1)
    assert ck2.is_completed("a")
    assert ck2.reset(["a"]) == ["a"]
    ck3 = resumelog.open(str(tmp_path), run_id="r3")
    assert not ck3.is_completed("a")
    assert ck3.completed_leaves("a") == set()  # a reset means: redo all of it
