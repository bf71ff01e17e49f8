"""A checkpoint deleted or cleared under live writers, compactors or ingest tasks stays
deleted: what they write afterwards belongs to the old checkpoint's *epoch* (the nonce
of its ``meta.msgpack``), and every reader ignores objects of another epoch
(docs/format.md §7, RFC 0004; issue 22, defect 1).

Real files and a real S3-compatible server; deletions as the tools users run do them
(``shutil.rmtree``, Ray's ``filesystem.delete_dir``, ``resumelog clear``).
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

import resumelog
from resumelog import compactor, paths
from resumelog.errors import CheckpointReplaced
from resumelog.format import decode_segment, decode_snapshot_frames
from resumelog.snapshot import encode_snapshot
from resumelog.storage import LocalStore, ObjectInfo


def _rm(url: str, store: resumelog.storage.Store) -> None:
    """Delete the whole checkpoint as a foreign tool would (no resumelog code)."""
    if "://" in url:
        store.delete([o.path for o in store.list("")])
    else:
        shutil.rmtree(url)


def test_a_writer_and_compactor_outliving_a_deleted_checkpoint_do_not_bring_it_back(local_or_s3):
    url, opts = local_or_s3
    ck = resumelog.open(url, storage_options=opts)
    w = ck.writer("w")
    w.complete("a")
    w.flush()
    _rm(url, ck.store)
    w.complete("b")  # the job goes on writing: its records land in the deleted checkpoint's place
    w.close()
    with pytest.raises(CheckpointReplaced):
        ck.compact()
    fresh = resumelog.open(url, storage_options=opts)
    assert sorted(fresh.completed) == []
    assert fresh.pending(["a", "b"]) == ["a", "b"]
    # a new job on the new checkpoint counts; the old epoch's debris still does not
    w2 = fresh.writer("w2")
    w2.complete("c")
    w2.close()
    fresh.compact()
    again = resumelog.open(url, storage_options=opts)
    assert sorted(again.completed) == ["c"]
    assert again.status().foreign_objects >= 1


def test_a_snapshot_published_after_the_delete_is_ignored_and_collected(local_or_s3):
    url, opts = local_or_s3
    ck = resumelog.open(url, storage_options=opts)
    with ck.writer("w") as w:
        w.complete_many(["a", "b"])
    ck.compact()
    old_epoch = ck.meta.nonce
    state = compactor.load(ck.store, verify=True)
    _rm(url, ck.store)
    # a compactor that loaded before the delete publishes after it (the race of issue 22)
    from resumelog.snapshot import encode_snapshot

    compactor.put_snapshot(ck.store, state.state.number, encode_snapshot(state.state, state.frames, epoch=old_epoch))
    new = resumelog.open(url, storage_options=opts)
    assert sorted(new.completed) == []
    assert new.meta.nonce != old_epoch
    with new.writer("w") as w:
        w.complete("z")
    foreign = state.state.number
    assert foreign == 2
    r = new.compact()
    # numbered after this epoch's snapshots only: the foreign one's number does not count
    # (counted, it left numbers below it free: RFC 0004, Amendment)
    assert r.snapshot == 1
    assert sorted(resumelog.open(url, storage_options=opts).completed) == ["z"]
    assert paths.snapshot_name(foreign) in new.gc(grace=0, dry_run=True).keys  # debris
    with new.writer("w2") as w:
        w.complete("y")
    r = new.compact()  # onto the foreign one's number: it collects that debris first
    assert r.snapshot == foreign
    header = decode_snapshot_frames(new.store.read(paths.snapshot_name(foreign))).header
    assert header.epoch == new.meta.nonce
    assert sorted(resumelog.open(url, storage_options=opts).completed) == ["y", "z"]
    g = new.gc(grace=0)
    assert paths.snapshot_name(foreign) not in g.keys
    assert sorted(resumelog.open(url, storage_options=opts).completed) == ["y", "z"]


class _HeldStore(LocalStore):
    """Real local storage that holds one thread (by name) once, at ``list(prefix)`` or
    at its first put, until released: a slow compaction or GC, at a chosen point."""

    def __init__(self, root: str, thread: str, *, at_list: str | None = None, at_put: bool = False) -> None:
        super().__init__(root)
        self.thread, self.at_list, self.at_put = thread, at_list, at_put
        self.held, self.go = threading.Event(), threading.Event()

    def _hold(self) -> None:
        if threading.current_thread().name == self.thread and not self.held.is_set():
            self.held.set()
            assert self.go.wait(60)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        if self.at_list is not None and prefix.startswith(self.at_list):
            self._hold()
        return super().list(prefix)

    def put_if_absent(self, key: str, data: bytes | memoryview) -> None:
        if self.at_put:
            self._hold()
        super().put_if_absent(key, data)

    def put_if_absent_parts(self, key: str, parts: Sequence[bytes | memoryview]) -> None:
        if self.at_put:
            self._hold()
        super().put_if_absent_parts(key, parts)


def _in_thread(name: str, fn: Callable[[], object]) -> tuple[threading.Thread, dict[str, object]]:
    out: dict[str, object] = {}
    t = threading.Thread(name=name, target=lambda: out.setdefault("result", fn()))
    t.start()
    return t, out


def test_a_foreign_snapshot_above_the_latest_does_not_make_a_higher_number_cover_less(tmp_path):
    # A compactor of a deleted checkpoint publishes its snapshot 4 after the delete.
    # A slow compaction A lists [1, 4 (foreign)] and loads base 1. GC collects the
    # foreign 4; s fans out in a closed stream X; two ticks publish 2 and 3, folding X.
    # Had A numbered past the foreign 4, it published 5 from base 1 (never seeing X),
    # GC judged X by the oldest retained snapshot (2) and deleted it, and the next
    # compaction completed s with one of its two children never drained.
    url = str(tmp_path / "ck")
    old = resumelog.open(url, run_id="old")
    for i in range(3):
        with old.writer(f"o{i}") as w:
            w.complete(f"old-{i}")
        old.compact()
    stale = compactor.load(old.store, verify=True)  # it loads, then the checkpoint is cleared
    old.clear()
    ck = resumelog.open(url, run_id="r")
    with ck.writer("Y") as w:
        w.emit("s")
    assert ck.compact().snapshot == 1
    compactor.put_snapshot(ck.store, stale.state.number, encode_snapshot(stale.state, stale.frames, epoch=stale.epoch))
    assert stale.state.number == 4
    with ck.writer("W") as w:
        w.complete("other")
    slow = _HeldStore(url, "A", at_put=True)
    t, out = _in_thread("A", lambda: compactor.compact(slow, expect_epoch=ck.meta.nonce))
    assert slow.held.wait(60)
    assert paths.snapshot_name(4) in compactor.gc(ck.store, grace=0).keys  # the foreign one
    with ck.writer("X") as w:
        w.record("s/fan", "s", +1)  # two children: +2 for them, -1 for the task that made them
    assert ck.compact().snapshot == 2
    with ck.writer("U") as w:
        w.complete("u")
    assert ck.compact().snapshot == 3
    slow.go.set()
    t.join(60)
    result = out["result"]
    assert isinstance(result, compactor.CompactResult)
    # it lost number 2 to the tick and loaded again: 3 holds all it folded
    assert (result.snapshot, result.written, result.attempts) == (3, False, 2)
    with ck.writer("Z") as w:
        w.record("s/child-1", "s", -1)  # child 1 drained; child 2 never did
    compactor.gc(ck.store, grace=0)
    resumelog.open(url, run_id="r2").compact()
    reader = resumelog.open(url, create=False)
    assert not reader.is_completed("s") and reader.pending(["s"]) == ["s"]
    assert sorted(reader.completed) == ["other", "u"]


def test_gc_judges_segments_by_every_retained_snapshot(tmp_path):
    # A higher number covering less (a compaction that loaded before a snapshot was
    # freed below the latest, by an operator's delete or repair, and published there):
    # GC deletes a segment only once every retained snapshot covers it.
    url = str(tmp_path / "ck")
    ck = resumelog.open(url, run_id="r")
    with ck.writer("Y") as w:
        w.emit("s")
    assert ck.compact().snapshot == 1
    early = compactor.load(ck.store, verify=True)  # never sees X
    with ck.writer("X") as w:
        w.record("s/fan", "s", +1)
    assert ck.compact().snapshot == 2
    early.state.number = 3
    compactor.put_snapshot(ck.store, 3, encode_snapshot(early.state, early.frames, epoch=early.epoch))
    with ck.writer("Z") as w:
        w.record("s/child-1", "s", -1)
    g = compactor.gc(ck.store, grace=0, retain=2)  # keeps 2 (covers X) and 3 (does not)
    assert paths.snapshot_name(1) in g.keys
    assert not [k for k in g.keys if k.startswith("journal/X/")]
    assert [k for k in g.keys if k.startswith("journal/Y/")]  # covered by both: collected
    resumelog.open(url, run_id="r2").compact()
    reader = resumelog.open(url, create=False)
    assert not reader.is_completed("s") and reader.pending(["s"]) == ["s"]
    assert not [k for k in compactor.gc(ck.store, grace=0, retain=2).keys if k.startswith("journal/X/")]  # 3, 4
    with ck.writer("V") as w:
        w.complete("v")
    assert ck.compact().snapshot == 5
    g = compactor.gc(ck.store, grace=0, retain=2)  # now 4 and 5: both folded X
    assert [k for k in g.keys if k.startswith("journal/X/")]
    assert not resumelog.open(url, create=False).is_completed("s")


def test_a_gc_that_spans_a_clear_deletes_nothing_of_the_new_checkpoint(tmp_path):
    # GC reads the epoch, then lists; meanwhile the checkpoint is cleared and a new job
    # starts in it. Every object of the new checkpoint has another epoch than the one
    # GC read: as first written, GC deleted them all as debris, flushed records too.
    url = str(tmp_path / "ck")
    old = resumelog.open(url, run_id="old")
    with old.writer("w-old") as w:
        w.complete("old-src")
    old.compact()
    held = _HeldStore(url, "gc", at_list=paths.SNAPSHOT_PREFIX)
    t, out = _in_thread("gc", lambda: compactor.gc(held, grace=0))
    assert held.held.wait(60)
    old.clear()
    new = resumelog.open(url, run_id="new")
    w = new.writer("w-new")
    w.complete("s1")
    w.flush()
    w.complete("s2")
    w.close()
    assert new.compact().snapshot == 1
    held.go.set()
    t.join(60)
    result = out["result"]
    assert isinstance(result, compactor.GcResult) and result.keys == []
    reader = resumelog.open(url, create=False)
    assert sorted(reader.completed) == ["s1", "s2"]
    g = compactor.gc(new.store, grace=0)  # a GC of the new checkpoint: what snapshot 1 covers
    assert paths.snapshot_name(1) not in g.keys
    assert sorted(resumelog.open(url, create=False).completed) == ["s1", "s2"]


def test_gc_deletes_only_snapshots_still_as_listed(tmp_path):
    # A new epoch numbers its snapshots from 1 again: a GC that listed the old epoch's
    # snapshot 1 as foreign debris must not delete the new snapshot 1 under that name.
    url = str(tmp_path / "ck")
    old = resumelog.open(url, run_id="old")
    with old.writer("w") as w:
        w.complete("a")
    old.compact()
    stale = compactor.load(old.store, verify=True)
    shutil.rmtree(url)
    ck = resumelog.open(url, run_id="r")
    compactor.put_snapshot(ck.store, 1, encode_snapshot(stale.state, stale.frames, epoch=stale.epoch))
    store = ck.store
    epoch = compactor.read_epoch(store)
    assert epoch is not None
    (listed,) = store.list(paths.SNAPSHOT_PREFIX)
    store.delete([listed.path])  # collected (and the name taken again) since GC listed
    with ck.writer("w") as w:
        w.complete("b")
    assert ck.compact().snapshot == 1
    doomed = [listed]
    result = compactor.GcResult(False, snapshots=1, snapshot_bytes=listed.size)
    assert compactor._still_as_listed(store, epoch, doomed, result)
    assert doomed == [] and result.snapshots == 0
    assert sorted(resumelog.open(url, create=False).completed) == ["b"]


def test_only_foreign_objects_and_no_meta_is_an_empty_checkpoint_for_a_reader(tmp_path):
    url = str(tmp_path / "ck")
    ck = resumelog.open(url)
    w = ck.writer("w")
    w.complete("a")
    w.flush()
    (Path(url) / paths.META).unlink()  # e.g. Ray's delete_dir interrupted after meta.msgpack
    w.close()
    ro = resumelog.open(url, create=False)
    assert sorted(ro.completed) == []
    assert ro.status().foreign_objects == 2  # its two segments (the last one written by close)


def test_an_ingest_that_starts_after_the_delete_cannot_recreate_the_checkpoint(tmp_path):
    """A handle made before the delete writes into the old epoch, whichever process
    opens it and whenever (a Ray task scheduled late)."""
    url = str(tmp_path / "ck")
    ck = resumelog.open(url)
    h = ck.handle("late")
    shutil.rmtree(url)
    w = h.writer()
    w.complete_many(["x", "y"])
    w.close()
    with pytest.raises(CheckpointReplaced):
        compactor.compact(w.store, expect_epoch=h.epoch)
    assert sorted(resumelog.open(url).completed) == []
    seg = next(Path(url).rglob("*.seg"))
    assert decode_segment(seg.read_bytes()).header.epoch == h.epoch


def test_a_load_from_no_snapshot_beside_a_foreign_one_is_not_stale_forever(tmp_path):
    url = str(tmp_path / "ck")
    ck = resumelog.open(url)
    with ck.writer("w") as w:
        w.complete("a")
    ck.compact()
    shutil.rmtree(url)
    fresh = resumelog.open(url)  # nothing of its own yet
    stale = resumelog.open(str(tmp_path / "other"))
    with stale.writer("w") as w:
        w.complete("q")
    stale.compact()
    snap = (Path(tmp_path / "other") / paths.snapshot_name(1)).read_bytes()
    (Path(url) / "snapshots").mkdir(parents=True, exist_ok=True)
    (Path(url) / paths.snapshot_name(1)).write_bytes(snap)  # an epoch not this one's
    assert decode_snapshot_frames(snap).header.epoch == stale.meta.nonce
    fresh.refresh()
    assert sorted(fresh.completed) == []
    with fresh.writer("w") as w:
        w.complete("b")
    assert sorted(resumelog.open(url).completed) == ["b"]


def test_resumelog_clear_deletes_meta_first(tmp_path):
    """A reader racing ``clear`` sees the old checkpoint whole or not at all: with meta
    gone, every object of its epoch is foreign."""
    url = str(tmp_path / "ck")
    ck = resumelog.open(url)
    with ck.writer("w") as w:
        w.complete("a")
    order: list[list[str]] = []
    store = ck.store
    real = store.delete

    def spy(keys):
        keys = list(keys)
        order.append(keys)
        return real(keys)

    store.delete = spy  # type: ignore[method-assign]
    ck.clear()
    assert order[0] == [paths.META]
    assert not any(Path(url).rglob("*.seg"))


def test_status_names_the_foreign_objects(tmp_path):
    from resumelog.cli import main

    url = str(tmp_path / "ck")
    ck = resumelog.open(url)
    w = ck.writer("w")
    w.complete("a")
    shutil.rmtree(url)
    w.close()  # lands in the deleted checkpoint's place
    resumelog.open(url)  # a new checkpoint there
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["status", url]) == 0
    assert "foreign      1 object of a deleted checkpoint" in buf.getvalue()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["gc", url, "--grace", "0", "--json"]) == 0
    assert resumelog.open(url).status().foreign_objects == 0


def test_a_handle_made_by_hand_stamps_the_epoch_of_the_checkpoint_it_finds(tmp_path):
    url = str(tmp_path / "ck")
    ck = resumelog.open(url)
    w = resumelog.WriterHandle(url, "r1").writer("w")
    w.complete("a")
    w.close()
    (seg,) = Path(url).rglob("*.seg")
    assert decode_segment(seg.read_bytes()).header.epoch == ck.meta.nonce
    shutil.rmtree(url)
    w2 = resumelog.WriterHandle(url, "r1").writer("w")  # no checkpoint: one is created, as open() does
    w2.complete("b")
    w2.close()
    assert sorted(resumelog.open(url).completed) == ["b"]
