"""Format version 6: a reader looks ids up without downloading every layer.

A layer's entries are cut into key-ordered blocks behind a block index (docs/format.md
§5a). On an object store a reader's open reads each large layer's head with one ranged
GET, and ``pending(ids)`` reads the blocks those ids fall in, in one batch of ranged
GETs; a layer that a reader would read most of is read whole (and cached) instead.
Real S3-compatible servers on 127.0.0.1 (moto, SeaweedFS); the cache is off so that
every read is a request."""

from __future__ import annotations

import random
import uuid
from array import array
from pathlib import Path

import pytest
from tests.s3_support import S3_KINDS, bucket_of

import resumelog
from resumelog import _fastfold, compactor, layers, snapshot_cache
from resumelog.done_shapes import ShapeTable
from resumelog.errors import ObjectNotFound
from resumelog.format import decode_snapshot_frames
from resumelog.idset import CompletedIndex
from resumelog.layers import LayeredIndex, make_layer, open_layer
from resumelog.storage._fsspec import FsspecStore

N = 6000
IDS = [f"shard-{i // 1000:03d}/doc-{i:07d}" for i in range(N)]


@pytest.fixture(params=S3_KINDS)
def s3(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> tuple[str, dict]:
    server = request.getfixturevalue("s3_pool").get(request.param)
    monkeypatch.setenv("RESUMELOG_CACHE_DIR", "off")
    monkeypatch.setattr(layers, "BLOCK_BYTES", 4096)  # ~70 ids a block: many blocks at a small N
    monkeypatch.setattr(snapshot_cache, "RANGED_MIN", 0)
    return f"s3://{bucket_of(server)}/{uuid.uuid4().hex}", server.storage_options()


def _fill(url: str, opts: dict) -> None:
    ck = resumelog.open(url, storage_options=opts, run_id="r1")
    with ck.writer("w") as w:
        w.complete_many(IDS[: N // 2 : 2])  # even ids complete
    ck.compact()
    with ck.writer("w2") as w:
        w.complete_many(IDS[N // 2 :: 2])
    ck.compact(merge=True)  # snapshot 2: one layer of every completed id


def _layer_size(ck: resumelog.Checkpoint) -> int:
    (ref,) = ck._loaded.frames.layers  # type: ignore[union-attr]
    return ref.size


def test_a_shard_of_lookups_reads_a_few_blocks_not_the_layer(s3):
    url, opts = s3
    _fill(url, opts)
    ck = resumelog.open(url, storage_options=opts, create=False)
    gets_open = ck.store.requests["GetObject"]
    bytes_open = ck.store.bytes_read
    shard = [*IDS[2000:3000], "shard-002/never"]
    assert ck.pending(shard) == [s for s in shard if s not in set(IDS[::2])]
    gets = ck.store.requests["GetObject"] - gets_open
    read = ck.store.bytes_read - bytes_open
    size = _layer_size(ck)
    assert gets == 1, gets  # neighbouring blocks: one ranged GET
    assert read < size / 4, (read, size)
    assert bytes_open < size / 4  # the open read the head, not the blocks
    assert ck.is_completed(IDS[2500]) and not ck.is_completed(IDS[2501])
    assert ck.store.requests["GetObject"] - gets_open == 1  # those blocks are in memory now


def test_a_compaction_reads_the_blocks_its_new_ids_fall_in_not_the_base(s3, monkeypatch: pytest.MonkeyPatch):
    url, opts = s3
    _fill(url, opts)
    monkeypatch.setattr(layers, "MIN_LAYER", 16)  # the new ids become a layer of their own
    ck = resumelog.open(url, storage_options=opts, run_id="r1")
    base_size = _layer_size(ck)
    new = IDS[2001:2200:2]  # 100 ids of one shard, none completed yet
    with ck.writer("w3") as w:
        w.complete_many(new)
    store = FsspecStore(url, opts)
    r = compactor.compact(store)
    assert r.written and r.completed == N // 2 + len(new)
    read = store.bytes_read
    gets = store.requests["GetObject"]
    # meta.msgpack (3 epoch checks), the snapshot, the segment, the layer's head and the
    # blocks of those ids (one ranged GET: the segment's sources prefetched together);
    # the rest of the base is carried by reference, unread
    assert read < base_size / 4, (read, base_size)
    assert gets == 7, dict(store.requests)
    ck2 = resumelog.open(url, storage_options=opts, create=False)
    assert len(ck2._loaded.frames.layers) == 2  # the base, carried by reference, and the new ids
    done = set(IDS[::2]) | set(new)
    assert ck2.pending(IDS) == [s for s in IDS if s not in done]


def test_a_shard_walked_one_id_at_a_time_is_read_ahead(s3):
    url, opts = s3
    _fill(url, opts)
    ck = resumelog.open(url, storage_options=opts, create=False)
    before = ck.store.requests["GetObject"]
    shard = IDS[2000:3000]  # ~15 blocks of ~70 ids
    assert [ck.is_completed(s) for s in shard] == [i % 2 == 0 for i in range(2000, 3000)]
    assert ck.store.requests["GetObject"] - before <= 3  # a block, then READ_AHEAD at a time


def test_scattered_lookups_fall_back_to_one_whole_read(s3):
    url, opts = s3
    _fill(url, opts)
    ck = resumelog.open(url, storage_options=opts, create=False)
    before = ck.store.requests["GetObject"]
    rng = random.Random(7)
    probes = [rng.choice(IDS) for _ in range(3000)]
    for s in probes[:50]:  # one at a time: a bounded number of ranged reads, then the whole
        assert ck.is_completed(s) == (int(s[-7:]) % 2 == 0)
    assert ck.store.requests["GetObject"] - before <= snapshot_cache.RANGED_CALLS + 1
    done = set(IDS[::2])
    assert ck.pending(probes) == [s for s in probes if s not in done]
    assert sorted(ck.completed) == sorted(done)


def test_a_layer_read_whole_is_a_map_of_an_unnamed_file(s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """With the cache off, a large layer read whole (by a reader whose lookups scatter,
    or at once) is streamed by one GET into a file in the spool directory, unlinked at
    once, and memory-mapped: its bytes never sit whole in the process's own memory."""
    import mmap

    url, opts = s3
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setenv("RESUMELOG_SPOOL_DIR", str(spool))
    _fill(url, opts)
    store = FsspecStore(url, opts)
    (ref,) = compactor.load(store).frames.layers  # type: ignore[union-attr]
    stored = store.read(ref.name)
    ranged = snapshot_cache.RangedLayer(store, ref, None, None)
    whole_at = [(0, ref.size)]  # a quarter of the object at once: read whole
    before = store.requests["GetObject"]
    (got,) = ranged(whole_at)
    assert store.requests["GetObject"] - before == 1
    assert isinstance(got, memoryview) and isinstance(got.obj, mmap.mmap)
    assert bytes(got) == stored and list(spool.iterdir()) == []
    assert [bytes(b) for b in ranged([(0, 10), (100, 200)])] == [stored[:10], stored[100:200]]
    assert store.requests["GetObject"] - before == 1  # (from the map)
    data, hit = snapshot_cache.read_layer(store, ref)  # not lazy: read whole at once
    assert not hit and isinstance(data, memoryview) and isinstance(data.obj, mmap.mmap)
    assert bytes(data) == stored and list(spool.iterdir()) == []
    gone = ref.__class__(**{**{f: getattr(ref, f) for f in ref.__struct_fields__}, "name": "layers/9-gone.layer"})
    with pytest.raises(ObjectNotFound):
        snapshot_cache.read_layer(store, gone)
    assert list(spool.iterdir()) == []
    ck = resumelog.open(url, storage_options=opts, create=False)
    probes = random.Random(3).sample(IDS, 400)  # scattered: ranged reads, then one whole read
    assert [ck.is_completed(s) for s in probes] == [int(s[-7:]) % 2 == 0 for s in probes]
    assert list(spool.iterdir()) == []


def test_a_damaged_block_read_in_parts_makes_the_reader_fall_back(s3):
    """Blocks are checked when first read: the damage surfaces in a lookup, after the
    open. The view is then reloaded from the snapshot before (and the journal after
    it), as a load that found the damage at once would; the answers stay right."""
    url, opts = s3
    _fill(url, opts)
    ck = resumelog.open(url, storage_options=opts, create=False)
    (ref,) = ck._loaded.frames.layers  # type: ignore[union-attr]
    data = bytearray(ck.store.read(ref.name))
    data[ref.head + 40] ^= 0xFF  # inside the first block
    ck.store.delete([ref.name])
    ck.store.put_if_absent(ref.name, bytes(data))
    again = resumelog.open(url, storage_options=opts, create=False)  # the head is intact
    assert again._loaded.snapshot == 2
    assert again.is_completed(IDS[0]) and not again.is_completed(IDS[1])
    assert again._loaded.snapshot == 1 and again._loaded.state.anomaly_counts["snapshot_fallback"] == 1
    assert again.pending(IDS) == IDS[1::2]


def test_a_damaged_block_on_local_disk_is_found_by_the_lookup_that_reads_it(tmp_path: Path):
    ck = resumelog.open(tmp_path / "ck", run_id="r")
    with ck.writer("w") as w:
        w.complete_many(IDS[: N // 2])
    ck.compact()
    with ck.writer("w2") as w:
        w.complete_many(IDS[N // 2 :])
    ck.compact(merge=True)  # snapshot 2: one layer of every id
    frames = decode_snapshot_frames((tmp_path / "ck" / "snapshots" / f"{2:020d}.snap").read_bytes())
    (ref,) = frames.layers or []
    path = tmp_path / "ck" / ref.name
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # inside the last block: the open does not read it
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    view = resumelog.open(tmp_path / "ck", create=False)
    assert view._loaded.snapshot == 2 and view.is_completed(IDS[0])
    assert view.is_completed(IDS[-1])  # the damaged block: reloaded from snapshot 1 + the journal
    assert view._loaded.snapshot == 1 and view._loaded.state.anomaly_counts["snapshot_fallback"] == 1
    assert len(view.completed) == N and view.pending([*IDS, "x"]) == ["x"]
    with pytest.raises(resumelog.CorruptSnapshot):
        open_layer(bytes(data), ref.name, defer=False)  # a compactor's load checks every block


@pytest.mark.parametrize("block_bytes", [64, 4096, 1 << 20])
def test_every_id_is_found_in_its_block_and_no_other(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block_bytes):
    monkeypatch.setattr(layers, "BLOCK_BYTES", block_bytes)
    rng = random.Random(block_bytes)
    ids = sorted({"".join(rng.choice("ab\u00e9\U0001f600z/") for _ in range(rng.randint(1, 12))) for _ in range(3000)})
    done = set(ids[::3])
    ck = resumelog.open(tmp_path / "ck", run_id="r")
    with ck.writer("w") as w:
        w.complete_many(sorted(done))
    ck.compact(merge=True)
    frames = decode_snapshot_frames((tmp_path / "ck" / "snapshots" / f"{1:020d}.snap").read_bytes())
    (ref,) = frames.layers or []
    layer = open_layer((tmp_path / "ck" / ref.name).read_bytes(), ref.name)
    assert layer.index.nblocks == (1 if block_bytes == 1 << 20 else layer.index.nblocks) and layer.index.nblocks >= 1
    if block_bytes == 64:
        assert layer.index.nblocks > 100
    view = resumelog.open(tmp_path / "ck", create=False)
    assert view.pending(ids) == [s for s in ids if s not in done]
    assert sorted(view.completed) == sorted(done)
    assert sorted(layer.index.ids()) == sorted(done)


@pytest.mark.parametrize("numpy", [True, False])
@pytest.mark.parametrize("block_bytes", [64, 4096])
def test_bulk_lookups_answer_as_one_at_a_time(monkeypatch: pytest.MonkeyPatch, block_bytes, numpy):
    if numpy:
        pytest.importorskip("numpy")
    monkeypatch.setattr(_fastfold, "ENABLED", numpy and _fastfold.np is not None)
    monkeypatch.setattr(layers, "BLOCK_BYTES", block_bytes)
    rng = random.Random(block_bytes)
    ids = sorted({"".join(rng.choice("ab\u00e9\U0001f600z/") for _ in range(rng.randint(1, 9))) for _ in range(4000)})
    stack = []
    for k in range(3):  # three layers, each masking some ids of those below
        mine = sorted(rng.sample(ids, 1200))
        tombs = frozenset(rng.sample([s for s in ids if s not in mine], 150)) if k else frozenset()
        stack.append(make_layer(mine, [k] * len(mine), [0] * len(mine), ShapeTable(), ["r0", "r1", "r2"], tombs))
    index = LayeredIndex(stack)
    queries = [*ids, *rng.sample(ids, 500), "\ud800", "", "never"]  # repeats, a lone surrogate, misses
    expect = [index.find(s) for s in queries]
    assert sum(p >= 0 for p in expect) > 1000 and min(expect) == -1
    assert index.find_many(queries) == expect
    # hashes that collide: a block of ids sharing one hash, each found by its bytes
    blob = b"".join(f"id{i:02d}".encode() for i in range(40))
    offsets = array("I", [4 * i for i in range(41)]).tobytes()
    shared = CompletedIndex(array("I", [7] * 40).tobytes(), offsets, bytes(40), blob, True)
    keys = [f"id{i:02d}".encode() for i in range(40)] + [b"id40", b"id01"]
    hs = [7] * 41 + [8]
    assert shared.find_many_encoded(keys, hs) == [*range(40), -1, -1]
    assert shared.find_many_encoded(keys, hs) == list(map(shared.find_encoded, keys, hs))


def test_a_layer_collected_under_a_reader_makes_it_read_the_current_snapshot(s3):
    url, opts = s3
    _fill(url, opts)
    reader = resumelog.open(url, storage_options=opts, create=False)  # heads read, no block yet
    ck = resumelog.open(url, storage_options=opts, run_id="r2")
    with ck.writer("w3") as w:
        w.complete_many(IDS[1:100:2])  # odd ids of the first shard complete now
    ck.compact(merge=True)
    gone = ck.gc(retain=1, grace=0)
    assert gone.layers >= 1  # the layer the reader's view names is collected
    assert reader._loaded.snapshot == 2
    assert reader.pending(IDS[:200]) == IDS[101:200:2]  # answered from snapshot 3
    assert reader._loaded.snapshot == 3


@pytest.mark.parametrize("block_bytes", [1, 48, 4096, 128 << 10])
def test_blocks_cut_in_bulk_are_the_blocks_cut_one_entry_at_a_time(monkeypatch: pytest.MonkeyPatch, block_bytes):
    from resumelog.done_shapes import ShapeTable

    monkeypatch.setattr(layers, "BLOCK_BYTES", block_bytes)
    rng = random.Random(block_bytes)
    ids = sorted({"".join(rng.choice("abc\u00e9/") for _ in range(rng.randint(1, 30))) for _ in range(5000)})
    runs = [rng.randrange(3) for _ in ids]
    tags = [rng.choice([0, 0, 1, 2]) for _ in ids]
    table = ShapeTable([[[["a", ""], 1]], [[["b", ""], -1]]])
    bulk = layers.make_layer(ids, runs, tags, table, ["r0", "r1", "r2"], frozenset({"zz"}))
    one = layers.LayerWriter()
    for s, r, t in zip(ids, runs, tags):
        one.add(s.encode(), r, t)
    assert bulk.data == one.finish(table, ["r0", "r1", "r2"], frozenset({"zz"})).data
    assert [bulk.index.tag_at(bulk.index.find(s)) for s in ids] == tags
    assert [bulk.run_names[bulk.index.run_at(bulk.index.find(s))] for s in ids] == [f"r{r}" for r in runs]


# --------------------------------------------------------------------------- spooled layers


def _fixed_nonces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nonces from a counter: two runs that stamp the same layers write the same bytes."""
    import itertools

    counter = itertools.count()
    monkeypatch.setattr(layers.secrets, "token_bytes", lambda n: next(counter).to_bytes(n, "big"))


def _maps_into(d: Path) -> list[str]:
    """The open files and memory maps of this process under directory ``d``."""
    out = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue
        if target.startswith(str(d)):
            out.append(target)
    with open("/proc/self/maps") as f:
        out += [line.strip() for line in f if str(d) in line]
    return out


@pytest.mark.parametrize("block_bytes", [1, 48, 4096, 128 << 10])
@pytest.mark.parametrize("reserve", [layers.SPOOL_RESERVE, 0])  # 0: the head does not fit, blocks copied
def test_a_spooled_layer_is_the_layer_built_in_memory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, block_bytes: int, reserve: int
):
    """A writer that spools its blocks to a temporary file (threshold 0) builds the same
    layer, byte for byte once stamped, as one that holds them in memory, and so does a
    merge of spooled layers; the spooled layer reads its blocks from the file (no bytes
    of its own until stamped) and the stamped object is a read-only view of a map.
    Nothing is left in the spool directory, open or mapped, once the layers are gone."""
    import gc

    from resumelog.done_shapes import ShapeTable

    if not Path("/proc/self/maps").exists():
        pytest.skip("needs /proc")
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setenv("RESUMELOG_SPOOL_DIR", str(spool))
    monkeypatch.setattr(layers, "BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(layers, "SPOOL_RESERVE", reserve)
    rng = random.Random(block_bytes)
    ids = sorted({"".join(rng.choice("abc\u00e9/") for _ in range(rng.randint(1, 30))) for _ in range(5000)})
    runs = [rng.randrange(3) for _ in ids]
    tags = [rng.choice([0, 0, 1, 2]) for _ in ids]
    table = ShapeTable([[[["a", ""], 1]], [[["b", ""], -1]]])
    names = ["r0", "r1", "r2"]
    lo, up = ids[::2], ids[1::3]

    def build(spool_bytes: int) -> list[bytes]:
        monkeypatch.setattr(layers, "SPOOL_BYTES", spool_bytes)
        _fixed_nonces(monkeypatch)
        whole = layers.make_layer(ids, runs, tags, table, names, frozenset({"zz"}))
        lower = layers.make_layer(lo, runs[::2], tags[::2], table, names, frozenset())
        upper = layers.make_layer(up, runs[1::3], tags[1::3], table, ["r2", "r9", "r1"], frozenset(lo[::5]))
        merged = layers.merge_layers(lower, upper, bottom=False, retired=frozenset({"r1"}))
        out = []
        for layer in (whole, merged):
            assert (layer.spool is not None, layer.data is None) == (not spool_bytes,) * 2
            assert sorted(layer.index.ids()) == sorted(ids if layer is whole else (set(lo) - set(lo[::5])) | set(up))
            _, data = layers.encode_new_layer(layer, number=7, epoch=b"e" * 16, created_ms=1234)
            assert layer.spool is None and layer.data is data and layer.ref is not None
            assert layer.ref.size == len(data)
            if not spool_bytes:
                assert isinstance(data, memoryview) and data.readonly
                assert _maps_into(spool)  # a map of an unnamed file in the spool directory
            back = open_layer(data, "x", defer=False)  # the stored object reads back whole
            assert back.index.ids() == layer.index.ids()
            assert [back.index.tag_at(i) for i in range(back.count)] == [
                layer.index.tag_at(i) for i in range(layer.count)
            ]
            out.append(bytes(data))
        return out

    in_memory = build(layers.SPOOL_BYTES)
    spooled = build(0)
    assert spooled == in_memory
    gc.collect()
    assert _maps_into(spool) == [] and list(spool.iterdir()) == []


def test_a_merge_never_copies_a_damaged_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A merge copies the blocks of ids completed in key order as stored, after checking
    each frame's CRC: a damaged block fails the compaction's read of its layer, which
    falls back (its snapshot skipped, the one before it and the journals folded again)
    and writes no layer holding the damaged bytes."""
    monkeypatch.setattr(layers, "BLOCK_BYTES", 4096)
    ck = resumelog.open(tmp_path / "ck", run_id="r")
    third = N // 3
    for k in range(2):
        with ck.writer(f"w{k}") as w:
            w.complete_many(IDS[k * third : (k + 1) * third])
        ck.compact(merge=True)  # snapshot 2: one layer of the first two thirds, ~50 blocks
    frames = decode_snapshot_frames((tmp_path / "ck" / "snapshots" / f"{2:020d}.snap").read_bytes())
    (ref,) = frames.layers or []
    path = tmp_path / "ck" / ref.name
    data = bytearray(path.read_bytes())
    sizes = open_layer(bytes(data), ref.name).frames.sizes  # type: ignore[union-attr]
    k = len(sizes) // 2
    data[ref.head + sum(sizes[:k]) + 8 + 20] ^= 0xFF  # inside the payload of a block in the middle
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    with ck.writer("w2") as w:
        w.complete_many(IDS[2 * third :])  # above every id of the layer: its blocks would be copied
    fresh = resumelog.open(tmp_path / "ck", run_id="r")  # (ck holds the layer it wrote in memory)
    result = fresh.compact(merge=True)
    assert result.snapshot == 3 and result.completed == N
    assert result.records_folded == 2 * (N - third)  # snapshot 2 skipped: snapshot 1 and the journals after it
    new = decode_snapshot_frames((tmp_path / "ck" / "snapshots" / f"{3:020d}.snap").read_bytes())
    assert ref.name not in {r.name for r in new.layers or []}
    for r in new.layers or []:  # every block of every layer it names is intact
        open_layer((tmp_path / "ck" / r.name).read_bytes(), r.name, defer=False)
    view = resumelog.open(tmp_path / "ck", create=False)
    assert view._loaded.snapshot == 3 and sorted(view.completed) == sorted(IDS)


def test_an_open_reads_the_heads_of_its_layers_at_once(s3, monkeypatch: pytest.MonkeyPatch):
    """A fresh open of a snapshot of several layers reads their heads (and its small
    layers whole) concurrently, not one round trip per layer: as many GETs as one at a
    time, several in flight together (counted on the S3 client's own events)."""
    url, opts = s3
    monkeypatch.setattr(layers, "MIN_LAYER", 1)  # every tick a layer of its own
    ck = resumelog.open(url, storage_options=opts, run_id="r1")
    for k in range(5):
        with ck.writer(f"w{k}") as w:
            w.complete_many(IDS[k * 1000 : (k + 1) * 1000])
        ck.compact(defer_merges=True)
    expect = {s: True for s in IDS[:5000]}

    def open_counting() -> tuple[int, int, resumelog.Checkpoint]:
        store = FsspecStore(url, opts)
        store._hook()
        events = store.fs.s3.meta.events
        flight = [0, 0]

        def before(**_: object) -> None:
            flight[0] += 1
            flight[1] = max(flight[1], flight[0])

        def after(**_: object) -> None:
            flight[0] -= 1

        events.register("before-call.s3.GetObject", before)
        events.register("after-call.s3.GetObject", after)
        view = resumelog.open(store, create=False)
        return store.requests["GetObject"], flight[1], view

    gets, most, view = open_counting()
    assert len(view._loaded.frames.layers) == 5  # type: ignore[union-attr]
    assert {s: view.is_completed(s) for s in expect} == expect and not view.is_completed(IDS[-1])
    assert most >= 2  # the layers' reads overlapped
    monkeypatch.setattr(snapshot_cache, "prefetch_layers", lambda store, refs: {})
    gets_one_by_one, most_one_by_one, view = open_counting()
    assert gets == gets_one_by_one and most_one_by_one == 1  # no layer read twice
    assert {s: view.is_completed(s) for s in expect} == expect
