"""Regression tests: GC and snapshot numbering, found by an adversarial review (2026-12-08).

Each reproduces a sequence a reviewer's script found, with a slow compaction or GC held
at a chosen point in a thread (a real local store, subclassed only to hold that thread),
and names the DESIGN §4 invariant it broke. RFC 0004, *Amendment*; format.md §7.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Sequence

import resumelog
from resumelog import compactor, paths
from resumelog.snapshot import encode_snapshot
from resumelog.storage import LocalStore, ObjectInfo


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


def _an_old_job(url: str, snapshots: int) -> resumelog.Checkpoint:
    """A job of run ``old`` at ``url`` that completes ``old-<i>`` and compacts, ``snapshots`` times."""
    old = resumelog.open(url, run_id="old")
    for i in range(snapshots):
        with old.writer(f"o{i}") as w:
            w.complete(f"old-{i}")
        old.compact()
    return old


def _in_thread(name: str, fn: Callable[[], object]) -> tuple[threading.Thread, dict[str, object]]:
    out: dict[str, object] = {}
    t = threading.Thread(name=name, target=lambda: out.setdefault("result", fn()))
    t.start()
    return t, out


def test_a_foreign_snapshot_above_the_latest_does_not_make_a_higher_number_cover_less(tmp_path):
    """Safety (1). Was: a foreign snapshot's number counted for the next one."""
    # A compactor of a deleted checkpoint publishes its snapshot 4 after the delete.
    # A slow compaction A lists [1, 4 (foreign)] and loads base 1. GC collects the
    # foreign 4; s fans out in a closed stream X; two ticks publish 2 and 3, folding X.
    # Had A numbered past the foreign 4, it published 5 from base 1 (never seeing X),
    # GC judged X by the oldest retained snapshot (2) and deleted it, and the next
    # compaction completed s with one of its two children never drained.
    url = str(tmp_path / "ck")
    old = _an_old_job(url, 3)
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
    """Safety (1). Was: GC judged segments by the oldest retained snapshot alone."""
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
    """No loss (4). Was: GC read meta.msgpack once, before its listings."""
    # GC reads the epoch, then lists; meanwhile the checkpoint is cleared and a new job
    # starts in it. Every object of the new checkpoint has another epoch than the one
    # GC read: as first written, GC deleted them all as debris, flushed records too.
    url = str(tmp_path / "ck")
    old = _an_old_job(url, 1)
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
    """No loss (4). Was: GC deleted snapshots by the names it listed."""
    # A new epoch numbers its snapshots from 1 again: a GC that listed the old epoch's
    # snapshot 1 as foreign debris must not delete the new snapshot 1 under that name.
    url = str(tmp_path / "ck")
    old = _an_old_job(url, 1)
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
