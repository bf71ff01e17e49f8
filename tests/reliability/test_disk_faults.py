"""Local disk faults on real filesystems (no mocks): a full disk and a read-only mount
(small tmpfs mounts; skipped without root / CAP_SYS_ADMIN), and files deleted underneath
an open checkpoint (a writer's journal, segments, snapshots, an interrupted GC).

What must hold: every failure is a typed :class:`~resumelog.errors.ResumelogError`
(never a raw ``OSError``/``FileNotFoundError``), a failed flush keeps its records for a
retry, a failed write leaves no object behind, what was durable stays readable, and no
source is ever reported complete early. The strict xfails below are faults where that
does not hold yet.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import resumelog
from resumelog import compactor, paths
from resumelog.errors import FlushError, ObjectNotFound, ResumelogError, StorageError
from resumelog.format import decode_segment
from resumelog.storage import LocalStore

# ---------------------------------------------------------------------- helpers


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Mount small tmpfs filesystems under ``tmp_path``; always unmounted afterwards."""
    mounted: list[Path] = []

    def mount(size: str = "256k") -> Path:
        if not sys.platform.startswith("linux") or shutil.which("mount") is None:
            pytest.skip("needs Linux and mount(8) to mount a tmpfs")
        mnt = tmp_path / f"tmpfs-{len(mounted)}"
        mnt.mkdir()
        r = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mnt))
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs (needs root / CAP_SYS_ADMIN): {' '.join(r.stderr.split())}")
        mounted.append(mnt)
        return mnt

    yield mount
    stuck = []
    for mnt in reversed(mounted):
        if _run("umount", str(mnt)).returncode != 0 and _run("umount", "-l", str(mnt)).returncode != 0:
            stuck.append(str(mnt))
    assert not stuck, f"could not unmount {stuck}"


def remount(mnt: Path, mode: str) -> None:
    r = _run("mount", "-o", f"remount,{mode}", str(mnt))
    if r.returncode != 0:
        if mode == "ro":
            pytest.skip(f"cannot remount a tmpfs read-only: {r.stderr.strip()}")
        raise AssertionError(f"remount,{mode} {mnt} failed: {r.stderr.strip()}")


def fill(mnt: Path) -> Path:
    """Fill the filesystem to the last byte; return the filler file (unlink it to free space)."""
    path = mnt / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    chunk = 1 << 16
    try:
        while True:
            try:
                os.write(fd, b"\0" * chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if chunk == 1:
                    break
                chunk //= 2
    finally:
        os.close(fd)
    with pytest.raises(OSError) as info:  # the disk really is full: not even one byte fits
        (mnt / "probe").write_bytes(b"x")
    assert info.value.errno == errno.ENOSPC
    (mnt / "probe").unlink(missing_ok=True)
    return path


def files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (temporaries included) and its bytes."""
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read()
    return out


def assert_errno(exc: BaseException, code: int) -> None:
    """``exc`` is a typed OSError and ``code`` is visible in its cause chain and message."""
    assert isinstance(exc, StorageError) and isinstance(exc, OSError)
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    assert any(isinstance(c, OSError) and c.errno == code for c in chain), [repr(c) for c in chain]
    assert os.strerror(code) in str(exc)


def journal_segments(store: LocalStore) -> list[tuple[int, int, bool]]:
    """(seq, record count, closed) of every segment, in order."""
    out = []
    for o in store.list(paths.JOURNAL_PREFIX):
        seg = decode_segment(store.read(o.path), o.path)
        out.append((seg.header.seq, seg.record_count, seg.footer.closed))
    return out


def open_or_typed(url: str) -> resumelog.Checkpoint | ResumelogError:
    """Open a checkpoint; a failure must be typed (a raw OSError fails the test)."""
    try:
        return resumelog.open(url, create=False)
    except ResumelogError as exc:
        return exc


# ---------------------------------------------------------------------- full disk


def test_full_disk_flush_raises_typed_error_keeps_buffer_then_recovers(tmpfs):
    mnt = tmpfs()
    url = str(mnt / "ck")
    ck = resumelog.open(url, run_id="r")
    w = ck.handle().writer("w")
    w.complete("before")
    w.flush()
    filler = fill(mnt)
    before = files(mnt / "ck")
    sources = [f"s{i}" for i in range(50)]
    w.complete_many(sources)
    with pytest.raises(FlushError) as info:
        w.flush()
    assert_errno(info.value, errno.ENOSPC)
    assert w.buffered == 100
    w.complete("late")  # more records while the disk is full: retried with the failed segment
    with pytest.raises(FlushError):
        w.flush()
    with pytest.raises(FlushError):
        w.close()  # closing flushes too: same error, still open, nothing dropped
    assert not w.closed and w.buffered == 102
    # nothing half-written is visible: no new object, no temporary left behind
    assert files(mnt / "ck") == before
    view = resumelog.open(url, run_id="r2")
    assert sorted(view.completed) == ["before"]
    assert view.status().anomaly_counts == {}
    # space comes back: the same writer carries on and loses nothing
    filler.unlink()
    w.flush()
    assert w.buffered == 0
    w.close()
    assert sorted(resumelog.open(url).completed) == sorted(["before", "late", *sources])
    # the failed segment was written once, at the seq it was built for
    assert journal_segments(ck.store) == [(0, 2, False), (1, 100, False), (2, 2, False), (3, 0, True)]


def test_full_disk_compaction_raises_typed_error_previous_state_stays_valid(tmpfs):
    mnt = tmpfs()
    url = str(mnt / "ck")
    ck = resumelog.open(url, run_id="r")
    with ck.writer("w1") as w:
        w.complete_many(f"a{i}" for i in range(10))
    assert ck.compact().snapshot == 1
    with ck.writer("w2") as w:
        w.complete_many(f"b{i}" for i in range(10))
        w.emit("p")  # never drains
    expected = sorted([*(f"a{i}" for i in range(10)), *(f"b{i}" for i in range(10))])
    filler = fill(mnt)
    before = files(mnt / "ck")
    with pytest.raises(StorageError) as info:
        ck.compact()
    assert_errno(info.value, errno.ENOSPC)
    other = resumelog.open(url, run_id="r2")  # a second compactor fails the same way
    with pytest.raises(StorageError):
        other.compact()
    assert files(mnt / "ck") == before
    # snapshot 1 and the journal tail are intact and still load
    view = resumelog.open(url, run_id="r3")
    assert sorted(view.completed) == expected and view.pending(["p"]) == ["p"]
    st = view.status()
    assert (st.snapshot, st.unfolded_segments, st.anomaly_counts) == (1, 1, {})
    filler.unlink()
    r = ck.compact()
    assert (r.written, r.snapshot, r.completed) == (True, 2, 20)
    st = resumelog.open(url).status()
    assert (st.snapshot, st.completed, st.pending, st.unfolded_segments) == (2, 20, 1, 0)


def test_creating_a_checkpoint_on_a_full_disk_is_a_typed_error(tmpfs):
    mnt = tmpfs()
    url = str(mnt / "ck")
    filler = fill(mnt)
    with pytest.raises(StorageError) as info:
        resumelog.open(url, fingerprint={"n": 1})
    assert_errno(info.value, errno.ENOSPC)
    assert files(mnt / "ck") == {}  # no half-written meta.msgpack
    with pytest.raises(ObjectNotFound):
        resumelog.open(url, create=False)
    filler.unlink()
    ck = resumelog.open(url, fingerprint={"n": 1})
    assert ck.fingerprint == {"n": 1}


def test_flush_error_carries_the_errno_of_the_storage_failure(tmpfs):
    mnt = tmpfs()
    ck = resumelog.open(str(mnt / "ck"), run_id="r")
    w = ck.handle().writer("w")
    filler = fill(mnt)
    w.complete("a")
    with pytest.raises(FlushError) as info:
        w.flush()
    filler.unlink()
    w.close()
    assert info.value.errno == errno.ENOSPC


# ---------------------------------------------------------------------- read-only filesystem


def test_read_only_filesystem_reads_work_writes_raise_typed_errors(tmpfs):
    mnt = tmpfs("1m")
    url = str(mnt / "ck")
    ck = resumelog.open(url, run_id="r1")
    with ck.writer("w1") as w:
        w.complete_many(f"a{i}" for i in range(5))
    ck.compact()  # snapshot 1 covers w1 (closed): GC would delete its segment
    with ck.writer("w2") as w:
        w.complete_many(["b0", "b1", "b2"])
        w.emit("p")
    expected = ["a0", "a1", "a2", "a3", "a4", "b0", "b1", "b2"]
    live = ck.handle().writer("w3")
    live.complete("c0")  # buffered when the filesystem turns read-only
    before = files(mnt)
    remount(mnt, "ro")

    view = resumelog.open(url, run_id="r2")  # opening an existing checkpoint only reads
    assert sorted(view.completed) == expected
    assert view.pending(["a0", "p", "new"]) == ["p", "new"]
    st = view.status()
    assert (st.completed, st.pending, st.snapshot, st.anomaly_counts) == (8, 1, 1, {})
    with pytest.raises(FlushError) as info:
        live.flush()
    assert_errno(info.value, errno.EROFS)
    assert live.buffered == 2
    w4 = view.handle().writer("w4")
    w4.complete("d0")
    with pytest.raises(FlushError):
        w4.flush()
    assert w4.buffered == 2
    with pytest.raises(StorageError) as info:
        view.compact()
    assert_errno(info.value, errno.EROFS)
    with pytest.raises(StorageError) as info:
        view.gc(grace=0)
    assert_errno(info.value, errno.EROFS)
    with pytest.raises(StorageError):
        resumelog.open(str(mnt / "elsewhere"))  # creating a checkpoint needs a write
    assert files(mnt) == before  # nothing was modified

    remount(mnt, "rw")
    live.close()
    w4.close()
    assert view.compact().written
    assert sorted(resumelog.open(url).completed) == [*expected, "c0", "d0"]


# ---------------------------------------------------------------------- files deleted underneath


class DeleteAfterListing(LocalStore):
    """A real local store that unlinks ``victim`` right after its next listing of
    ``prefix``: the deletion lands between a load's listing and its read."""

    def __init__(self, root: str, prefix: str, victim: str) -> None:
        super().__init__(root)
        self.prefix = prefix
        self.victim: str | None = victim

    def list(self, prefix: str = "") -> list:
        out = super().list(prefix)
        if prefix == self.prefix and self.victim is not None:
            os.unlink(self._path(self.victim))
            self.victim = None
        return out


def test_deleting_a_folded_writers_journal_changes_nothing(tmp_path):
    url = str(tmp_path / "ck")
    ck = resumelog.open(url, run_id="r")
    with ck.writer("w1") as w:
        w.complete_many(f"a{i}" for i in range(5))
    with ck.writer("w2") as w:
        w.complete_many(["b0", "b1"])
        w.emit("p")
    ck.compact()
    expected = sorted(ck.completed)
    shutil.rmtree(tmp_path / "ck" / "journal" / "w1")  # while the checkpoint is open
    ck.refresh()
    assert sorted(ck.completed) == expected and ck.pending(["p"]) == ["p"]
    assert sorted(resumelog.open(url).completed) == expected
    assert ck.compact().written  # drops the vanished stream's mark
    shutil.rmtree(tmp_path / "ck" / "journal")  # every journal: the snapshot has it all
    ck.refresh()
    assert sorted(ck.completed) == expected
    ck.compact()
    fresh = resumelog.open(url)
    assert sorted(fresh.completed) == expected and fresh.pending(["p"]) == ["p"]
    assert fresh.status().anomaly_counts == {}


def one_segment_per_source(url: str, n: int) -> tuple[resumelog.Checkpoint, resumelog.journal.Writer]:
    """A checkpoint of run ``r`` with writer ``w`` that flushed ``s0..s{n-1}``, one segment each."""
    ck = resumelog.open(url, run_id="r")
    w = ck.handle().writer("w")
    for i in range(n):
        w.complete(f"s{i}")
        w.flush()
    return ck, w


def test_folded_journal_deleted_under_an_open_writer(tmp_path):
    url = str(tmp_path / "ck")
    ck, w = one_segment_per_source(url, 3)
    ck.compact()  # folds seq 0..2
    shutil.rmtree(tmp_path / "ck" / "journal" / "w")
    ck.refresh()
    assert sorted(ck.completed) == ["s0", "s1", "s2"]
    w.complete("s3")
    w.flush()  # recreates the stream's directory; seq 3 follows the snapshot's mark
    w.close()
    assert sorted(resumelog.open(url).completed) == ["s0", "s1", "s2", "s3"]
    assert ck.compact().written
    assert sorted(resumelog.open(url).completed) == ["s0", "s1", "s2", "s3"]


def test_unfolded_journal_deleted_under_an_open_writer_only_reruns(tmp_path):
    url = str(tmp_path / "ck")
    ck, w = one_segment_per_source(url, 3)
    shutil.rmtree(tmp_path / "ck" / "journal" / "w")  # no snapshot holds these records
    ck.refresh()
    assert sorted(ck.completed) == []  # lost records: the sources rerun, nothing breaks
    w.complete("s3")
    w.flush()  # seq 3 of a stream whose 0..2 are gone: a gap, the stream is not folded past it
    w.close()
    ck.refresh()
    assert sorted(ck.completed) == []
    assert ck.status().anomaly_counts.get("journal_gap") == 1
    ck.compact()
    ck.compact()
    assert sorted(resumelog.open(url).completed) == []
    # the run lost records: it is quarantined (completes nothing more), shown in status
    assert [r.damaged for r in ck.status().runs if r.run_id == "r"] == [True]
    with ck.writer("w") as same_run:
        same_run.complete("s0")
    assert not resumelog.open(url).is_completed("s0")
    rerun = resumelog.open(url, run_id="r2")  # the rerun: a new run
    with rerun.writer("w") as again:
        again.complete_many(["s0", "s1", "s2", "s3"])
    rerun.compact()
    assert sorted(resumelog.open(url).completed) == ["s0", "s1", "s2", "s3"]
    assert resumelog.open(url).status().anomaly_counts.get("journal_gap") == 1


def snapshots_with_gc(url: str) -> tuple[resumelog.Checkpoint, list[str], resumelog.journal.Writer]:
    """Five snapshots, a writer whose stream spans them (sources drain across snapshots),
    then a default GC (retain 3): snapshots 3..5 remain."""
    ck = resumelog.open(url, run_id="r")
    slow = ck.handle().writer("slow")
    for n in range(5):
        with ck.writer(f"w{n}") as w:
            w.complete_many(f"c{n}-{i}" for i in range(3))
        slow.emit(f"p{n}")
        if n:
            slow.record(f"p{n - 1}/sink", f"p{n - 1}", -1)
        slow.flush()
        ck.compact()
    ck.gc(grace=0)
    assert [n for n, _ in compactor.list_snapshots(ck.store)] == [3, 4, 5]
    expected = sorted(ck.completed)
    assert len(expected) == 15 + 4 and not ck.is_completed("p4")
    return ck, expected, slow


def test_deleted_newest_snapshots_fall_back_to_older_ones(tmp_path):
    url = str(tmp_path / "ck")
    ck, expected, slow = snapshots_with_gc(url)
    (tmp_path / "ck" / paths.snapshot_name(5)).unlink()  # between open and refresh
    ck.refresh()
    assert sorted(ck.completed) == expected
    assert ck.status().snapshot == 4
    (tmp_path / "ck" / paths.snapshot_name(4)).unlink()
    fresh = resumelog.open(url)
    assert sorted(fresh.completed) == expected and fresh.pending(["p4"]) == ["p4"]
    st = fresh.status()
    assert st.snapshot == 3 and st.anomaly_counts == {}
    r = ck.compact()  # republishes the next number after the newest one left
    assert (r.written, r.snapshot) == (True, 4)
    slow.record("p4/sink", "p4", -1)
    slow.close()
    assert sorted(resumelog.open(url).completed) == sorted([*expected, "p4"])


def test_newest_snapshot_deleted_between_listing_and_reading(tmp_path):
    url = str(tmp_path / "ck")
    _ck, expected, slow = snapshots_with_gc(url)
    store = DeleteAfterListing(url, paths.SNAPSHOT_PREFIX, paths.snapshot_name(5))
    view = resumelog.open(store)
    assert store.victim is None  # it fired
    assert sorted(view.completed) == expected
    assert view.status().snapshot == 4
    slow.closed = True


def test_every_snapshot_deleted_before_gc_falls_back_to_the_journals(tmp_path):
    url = str(tmp_path / "ck")
    ck = resumelog.open(url, run_id="r")
    w = ck.handle().writer("w")
    for n in range(3):
        w.emit(f"p{n}")
        w.complete(f"c{n}")
        if n:
            w.record(f"p{n - 1}/sink", f"p{n - 1}", -1)
        w.flush()
        ck.compact()
    expected = sorted(ck.completed)
    assert expected == ["c0", "c1", "c2", "p0", "p1"]
    shutil.rmtree(tmp_path / "ck" / "snapshots")
    ck.refresh()
    assert sorted(ck.completed) == expected and ck.pending(["p2"]) == ["p2"]
    assert ck.compact().snapshot == 1
    w.close()
    assert sorted(resumelog.open(url).completed) == expected


def test_gc_interrupted_after_any_of_its_deletions(tmp_path):
    """A crash mid-GC leaves some prefix of its deletions done: after every prefix, the
    checkpoint loads the same completions and a later GC finishes the job."""
    url = str(tmp_path / "ck")
    ck, expected, slow = snapshots_with_gc(url)
    for n in range(3):  # three more snapshots so GC has segments and snapshots to delete
        with ck.writer(f"x{n}") as w:
            w.complete(f"x{n}")
        ck.compact()
    expected = sorted([*expected, "x0", "x1", "x2"])
    plan = compactor.gc(ck.store, grace=0, dry_run=True).keys
    assert any(k.startswith("journal/") for k in plan) and any(k.startswith("snapshots/") for k in plan)
    for key in plan:  # the order GC deletes in
        (tmp_path / "ck" / key).unlink()
        view = resumelog.open(url)
        assert sorted(view.completed) == expected, f"after deleting up to {key}"
        assert view.status().anomaly_counts == {}
    assert compactor.gc(ck.store, grace=0).keys == []
    slow.close()
    assert sorted(resumelog.open(url).completed) == expected


def fan_out_in_flight(url: str) -> str:
    """Source ``s`` fanned out into three parts (``+2`` flushed in its own segment before
    dispatch, as the barrier requires); one part drained on another writer, two still
    run. Returns the key of the fan-out segment. ``s`` is not complete: 1 + 2 - 1 = 2."""
    ck = resumelog.open(url, run_id="r")
    a, c = ck.handle().writer("a"), ck.handle().writer("c")
    a.emit("s")
    a.flush()  # seg 0: +1
    a.record("s/f", "s", 2)
    a.flush()  # seg 1: +2
    a.complete("other")
    a.flush()  # seg 2
    c.record("s/f/0", "s", -1)
    c.flush()
    a.close()
    c.close()
    assert not resumelog.open(url).is_completed("s")
    return paths.segment_name("a", a.incarnation, 1)


@pytest.mark.parametrize("when", ["before_open", "between_listing_and_reading"])
def test_deleted_middle_segment_never_yields_a_false_completion(tmp_path, when):
    url = str(tmp_path / "ck")
    victim = fan_out_in_flight(url)
    if when == "before_open":
        (tmp_path / "ck" / victim).unlink()
        view = open_or_typed(url)
    else:
        store = DeleteAfterListing(url, paths.JOURNAL_PREFIX, victim)
        try:
            view = resumelog.open(store, create=False)
        except ResumelogError as exc:
            view = exc
        assert store.victim is None
    if isinstance(view, ResumelogError):
        return  # refusing to load is safe
    assert not view.is_completed("s"), "completed although two of its parts never drained"


def test_compaction_over_a_deleted_middle_segment_leaves_an_openable_checkpoint(tmp_path):
    url = str(tmp_path / "ck")
    ck, w = one_segment_per_source(url, 4)
    w.close()
    (tmp_path / "ck" / paths.segment_name("w", w.incarnation, 1)).unlink()
    ck.refresh()  # loads, with a journal_gap anomaly
    try:
        ck.compact()
    except ResumelogError:
        pass  # refusing to compact over the gap would be fine too
    view = resumelog.open(url)  # openable: the gap quarantines run r (records lost)
    assert sorted(view.completed) == []
    assert [r.damaged for r in view.status().runs] == [True]
    assert view.compact().written is False  # nothing new: no loop on the gap
    rerun = resumelog.open(url, run_id="r2")
    with rerun.writer("w") as again:
        again.complete_many(f"s{i}" for i in range(4))
    rerun.compact()
    assert sorted(resumelog.open(url).completed) == ["s0", "s1", "s2", "s3"]


@pytest.mark.xfail(
    strict=True,
    reason="DESIGN LIMIT: a writer's whole journal deleted before any snapshot folded it is "
    "undetectable (nothing else records that the stream existed); if it held a fan-out +k "
    "whose parts drained on other writers, the source completes early",
)
def test_deleting_an_unfolded_writers_journal_never_yields_a_false_completion(tmp_path):
    url = str(tmp_path / "ck")
    ck = resumelog.open(url, run_id="r")
    a, b, c = (ck.handle().writer(x) for x in "abc")
    a.emit("s")
    a.flush()
    b.record("s/f", "s", 2)  # the fan-out stage ran on writer b
    b.flush()
    c.record("s/f/0", "s", -1)  # one of three parts drained on writer c
    c.flush()
    for x in (a, b, c):
        x.close()
    assert not resumelog.open(url).is_completed("s")
    shutil.rmtree(tmp_path / "ck" / "journal" / "b")
    view = open_or_typed(url)
    if isinstance(view, ResumelogError):
        return
    assert not view.is_completed("s"), "completed although two of its parts never drained"
