"""A checkpoint deleted or cleared under live writers, compactors or ingest tasks stays
deleted: what they write afterwards belongs to the old checkpoint's *epoch* (the nonce
of its ``meta.msgpack``), and every reader ignores objects of another epoch
(docs/format.md §7, RFC 0004; issue 22, defect 1).

Real files and a real S3-compatible server; deletions as the tools users run do them
(``shutil.rmtree``, Ray's ``filesystem.delete_dir``, ``resumelog clear``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import resumelog
from resumelog import compactor, paths
from resumelog.errors import CheckpointReplaced
from resumelog.format import decode_segment, decode_snapshot_frames
from resumelog.snapshot import encode_snapshot


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
