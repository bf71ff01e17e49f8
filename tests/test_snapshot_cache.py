"""The local snapshot cache for object stores (issue 17, lookups without downloading
everything): a warm open reads one ranged GET of the snapshot instead of the whole
object, and a cached copy is never stale (a cleared checkpoint reuses snapshot names).
Real S3-compatible servers on loopback."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
from s3_support import S3_KINDS, bucket_of

import resumelog
from resumelog import compactor
from resumelog.storage._fsspec import FsspecStore


@pytest.fixture(params=S3_KINDS)
def s3(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, dict, Path]:
    server = request.getfixturevalue("s3_pool").get(request.param)
    cache = tmp_path / "cache"
    monkeypatch.setenv("RESUMELOG_CACHE_DIR", str(cache))
    return f"s3://{bucket_of(server)}/{uuid.uuid4().hex}", server.storage_options(), cache


def _fill(url: str, opts: dict, ids: list[str]) -> resumelog.Checkpoint:
    ck = resumelog.open(url, storage_options=opts, run_id="r1")
    with ck.writer("w") as w:
        w.complete_many(ids)
    ck.compact()
    return ck


def _load(url: str, opts: dict) -> tuple[compactor.Loaded, dict[str, int], int]:
    store = FsspecStore(url, opts)
    loaded = compactor.load(store)
    return loaded, dict(store.requests), store.requests.get("GetObject", 0)


def test_a_warm_open_does_not_download_the_snapshot_again(s3):
    url, opts, cache = s3
    ids = [f"doc-{i:06d}" for i in range(20_000)]
    _fill(url, opts, ids)
    shutil.rmtree(cache)  # the compacting process cached its own snapshot: start cold
    cold, _, cold_gets = _load(url, opts)
    assert len(list(cache.rglob("*.snap"))) == len(list(cache.rglob("*.layer"))) == 1
    warm, _, warm_gets = _load(url, opts)
    # the snapshot's ranged header read stays; its full download and the layer's are gone
    assert warm_gets == cold_gets - 2
    assert sorted(warm.state.iter_completed()) == sorted(cold.state.iter_completed()) == ids
    assert warm.snapshot == cold.snapshot == 1


def test_a_cached_copy_is_never_stale_after_a_clear(s3):
    url, opts, _ = s3
    ck = _fill(url, opts, ["a", "b"])
    assert sorted(resumelog.open(url, storage_options=opts).completed) == ["a", "b"]  # cached now
    ck.clear()
    _fill(url, opts, ["c"])  # snapshot 1 again, another write
    assert sorted(resumelog.open(url, storage_options=opts).completed) == ["c"]


def test_a_damaged_copy_is_dropped_and_the_snapshot_read_again(s3):
    url, opts, cache = s3
    _fill(url, opts, [f"s{i}" for i in range(100)])
    _load(url, opts)
    (copy,) = cache.rglob("*.snap")
    data = bytearray(copy.read_bytes())
    data[-3] ^= 0xFF  # inside a frame after the header: the nonce still matches
    copy.write_bytes(bytes(data))
    loaded, _, _ = _load(url, opts)
    assert loaded.state.completed_count() == 100 and loaded.snapshot == 1
    assert loaded.state.anomaly_counts.get("snapshot_fallback") is None


def test_a_damaged_layer_copy_is_dropped_and_the_layer_read_again(s3):
    url, opts, cache = s3
    _fill(url, opts, [f"s{i}" for i in range(100)])
    _load(url, opts)
    (copy,) = cache.rglob("*.layer")
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the id arrays: the header's nonce still matches
    copy.write_bytes(bytes(data))
    store = FsspecStore(url, opts)
    # a compaction that does not read the block carries the layer by reference, unread
    loaded = compactor.load(store, verify=True)
    assert loaded.state.completed_count() == 100 and loaded.snapshot == 1
    assert copy.read_bytes() == bytes(data)
    # one that reads it (an id completed again is looked up in the base) checks it: the
    # copy is dropped, the layer read again, and the compaction goes on from snapshot 1
    ck = resumelog.open(url, storage_options=opts, run_id="r1")
    with ck.writer("w2") as w:
        w.complete("s5")
    loaded = compactor.load(store, verify=True)
    assert loaded.state.completed_count() == 100 and loaded.snapshot == 1
    assert loaded.state.anomaly_counts.get("snapshot_fallback") is None
    assert copy.read_bytes() != bytes(data)  # the copy was replaced by an intact one
    # a reader checks a block when a lookup first reads it: the same, at that lookup
    copy.write_bytes(bytes(data))
    ck = resumelog.open(url, storage_options=opts, create=False)
    assert sorted(ck.completed) == sorted(f"s{i}" for i in range(100))
    assert ck._loaded.snapshot == 1 and ck._loaded.state.anomaly_counts.get("snapshot_fallback") is None
    assert copy.read_bytes() != bytes(data)


def test_off_and_bounded(s3, monkeypatch):
    url, opts, cache = s3
    monkeypatch.setenv("RESUMELOG_CACHE_DIR", "off")
    _fill(url, opts, ["a"])
    _load(url, opts)
    assert not cache.exists()
    monkeypatch.setenv("RESUMELOG_CACHE_DIR", str(cache))
    monkeypatch.setenv("RESUMELOG_CACHE_MAX_BYTES", "1")
    _load(url, opts)  # written, then trimmed to the bound: nothing stays
    assert list(cache.rglob("*.snap")) == list(cache.rglob("*.layer")) == []


def test_a_large_layer_is_streamed_into_its_copy_and_mapped(s3, monkeypatch, tmp_path):
    """A large layer read whole goes by one streamed GET into its cached copy (a
    temporary name, renamed), which is memory-mapped: not held in the process's own
    memory, and the next reader's hit. A cache that cannot be written falls back to an
    unnamed file in the spool directory."""
    import mmap

    from resumelog import snapshot_cache

    url, opts, cache = s3
    monkeypatch.setattr(snapshot_cache, "RANGED_MIN", 0)  # every layer is large
    _fill(url, opts, [f"s{i}" for i in range(300)])
    store = FsspecStore(url, opts)
    (ref,) = compactor.load(store).frames.layers  # type: ignore[union-attr]
    stored = store.read(ref.name)
    shutil.rmtree(cache)
    before = store.requests["GetObject"]
    data, hit = snapshot_cache.read_layer(store, ref)
    assert not hit and store.requests["GetObject"] - before == 1
    assert isinstance(data, memoryview) and isinstance(data.obj, mmap.mmap) and bytes(data) == stored
    (copy,) = cache.rglob("*.layer")
    assert copy.read_bytes() == stored and list(cache.rglob("*.partial")) == []
    again, hit = snapshot_cache.read_layer(store, ref)
    assert hit and bytes(again) == stored and store.requests["GetObject"] - before == 1
    # a cache directory that cannot be made: the spool directory instead, nothing left
    blocked, spool = tmp_path / "a-file", tmp_path / "spool"
    blocked.write_bytes(b"not a directory")
    spool.mkdir()
    monkeypatch.setenv("RESUMELOG_CACHE_DIR", str(blocked / "cache"))
    monkeypatch.setenv("RESUMELOG_SPOOL_DIR", str(spool))
    data, hit = snapshot_cache.read_layer(store, ref)
    assert not hit and isinstance(data, memoryview) and isinstance(data.obj, mmap.mmap)
    assert bytes(data) == stored and list(spool.iterdir()) == []


def test_local_and_memory_stores_are_read_in_place(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("RESUMELOG_CACHE_DIR", str(cache))
    ck = resumelog.open(str(tmp_path / "ck"))
    with ck.writer("w") as w:
        w.complete("a")
    ck.compact()
    assert sorted(resumelog.open(str(tmp_path / "ck")).completed) == ["a"]
    assert not cache.exists()


def test_a_remote_snapshot_corrupted_after_it_was_cached_is_read_from_the_intact_copy(s3):
    """The copy is the same snapshot write (same nonce) and passed its CRC checks when it
    was cached: a reader uses it; `verify` still reports the remote object."""
    url, opts, _ = s3
    _fill(url, opts, [f"s{i}" for i in range(50)])
    store = FsspecStore(url, opts)
    key = "snapshots/00000000000000000001.snap"
    data = bytearray(store.read(key))
    data[-3] ^= 0xFF
    store.delete([key])
    store.put_if_absent(key, bytes(data))
    loaded, _, _ = _load(url, opts)
    assert loaded.snapshot == 1 and loaded.state.completed_count() == 50
    assert "snapshot_fallback" not in loaded.state.anomaly_counts
