"""The completed-id index as a stack of immutable layers (no I/O here).

A snapshot names its layers, oldest first (``docs/format.md`` §5a, RFC 0005). A layer
holds *entries* (completed ids, each with its completing run and the shape of its final
entries) and *tombstones* (ids of the layers below that it masks). An id is completed
iff, reading the layers from the newest, the first layer that mentions it holds it as
an entry (an id a layer both masks and holds was completed again: the entry wins).

Two invariants make the count exact without reading anything: every tombstone of a
layer masks an id visible in the layers below it, and every entry of a layer is an id
not visible below it unless the same layer masks it. A compaction's fold is exactly
such a delta (``FoldState.added`` / ``FoldState.removed``), so a compaction writes one
new layer holding what changed and never rewrites the layers below: its cost follows
what is new, not what was ever completed. :func:`plan_merges` keeps the stack short by
merging the newest layers when they reach the size of the one below (a binary counter:
``log2(N / tick)`` layers, each id rewritten ``log2`` times over its life).

Since format version 6 (RFC 0006) a layer's entries are cut into **blocks** in key
order, each a small sorted-hash index with its own CRC, behind a block index of first
ids. A reader reads a layer's head (one ranged read) and then only the blocks its
lookups fall in (:meth:`LayerIndex.prefetch` batches them); a version-5 layer is one
block covering every id.
"""

from __future__ import annotations

import contextlib
import mmap
import operator
import os
import secrets
import tempfile
from array import array
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import accumulate, compress, repeat
from typing import Final, NamedTuple

import msgspec

from resumelog import paths
from resumelog._compiled import native
from resumelog._crc import crc32c
from resumelog.done_shapes import BaseDone, DoneShapeMap, ShapeTable
from resumelog.errors import CorruptSnapshot
from resumelog.format import (
    EMPTY_SHAPE_TABLE,
    FORMAT_VERSION,
    FRAME_HEADER_SIZE,
    KIND_LAYER,
    LAYER_HEAD_FRAMES,
    PREAMBLE_SIZE,
    BlockIndex,
    LayerHead,
    LayerHeader,
    LayerRef,
    decode_layer,
    decode_layer_block,
    decode_layer_head,
    encode,
    encode_layer_block,
    frame_header,
    frames_of,
    layer_version,
    object_parts,
    verify_layer_head_shapes,
    verify_layer_shapes,
)
from resumelog.idset import CompletedIndex, counted_uints, encoded_key, pack_uints

__all__ = [
    "BLOCK_BYTES",
    "MIN_LAYER",
    "SPOOL_BYTES",
    "Block",
    "Layer",
    "LayerIndex",
    "LayerSource",
    "LayeredDone",
    "LayeredIndex",
    "build_layer",
    "encode_new_layer",
    "make_layer",
    "merge_layers",
    "merge_newest",
    "open_layer",
    "plan_merges",
    "spool_dir",
]

MIN_LAYER = 1 << 15
"""Layers with fewer entries are merged into the next one regardless of its size, so
a checkpoint compacted every few records does not grow a layer per compaction."""

MAX_LAYERS = 24
"""Beyond this many layers the newest two are merged whatever their sizes (a lookup
bisects every layer it reaches)."""

PREFETCH_THREADS = 16
"""Layers read in parts whose blocks :meth:`LayeredIndex.prefetch` reads at once (each
a batch of ranged GETs): a tick's lookups on an object store cost one round trip, not
one per layer."""

BLOCK_BYTES = 128 << 10
"""A writer closes a block once its payload reaches this many bytes (~2,000 ids of 50
bytes): a lookup reads one block, a shard of consecutive ids a few adjacent ones, and
the block index of 10^8 ids of 50 bytes is ~3 MB."""


SPOOL_BYTES = 8 << 20
"""A :class:`LayerWriter` holds a new layer's block frames in memory up to this many
bytes (a compaction's usual small layer stays fileless); past it, it *spools* them to an
unnamed temporary file in :func:`spool_dir`, so that a merge of large layers (or a large
new layer) holds a few blocks in memory, not the layer. The layer then reads its blocks
through a read-only memory map of that file (pages the kernel can drop and read again),
and :func:`encode_new_layer` writes the stored object's head into the same file: the
object's bytes are a view of the map, never copied into anonymous memory. The bytes are
the same either way. ``0``: spool every layer that has a block."""

SPOOL_RESERVE = 64 << 20
"""Bytes a spool file leaves unwritten before its blocks (a hole, on filesystems with
sparse files: no disk space) for the head of the stored object, which
:func:`encode_new_layer` writes right before the blocks, so the object is the file's tail.
A head larger than this (a block index of more than about a million blocks, or many
tombstones) is written into a second file, followed by a copy of the blocks."""

_COPY_CHUNK = 8 << 20


def spool_dir() -> str:
    """Where a :class:`LayerWriter` spools large layers (:data:`SPOOL_BYTES`):
    ``$RESUMELOG_SPOOL_DIR`` if set, else the system's temporary directory
    (:func:`tempfile.gettempdir`: ``$TMPDIR``, ...). It needs room for the largest layer;
    the files are unnamed (removed when created), so nothing is left behind."""
    return os.environ.get("RESUMELOG_SPOOL_DIR") or tempfile.gettempdir()


READ_AHEAD = 8
"""Blocks read at once by a lookup that needs the block after one already read (a
worker walking its shard in order: one read per ~1 MiB of ids instead of per block)."""


@dataclass(frozen=True, slots=True)
class Block:
    """One block of a layer: a sorted-hash index and its entries' shape ids."""

    index: CompletedIndex
    tags: Sequence[int] | None
    """Shape id of each entry (numbered in the layer's shape table); ``None``: all 0."""


LAST_KEY_SCAN: Final = 1 << 16
"""Largest last block whose ids :meth:`LayerIndex.last_key` scans for the largest."""

BlockLoader = Callable[[list[int]], list[Block]]
"""Reads and checks blocks ``ks`` of a layer (ascending, not yet loaded)."""


class LayerIndex:
    """The entries of one layer: blocks in key order, read on first use.

    Positions are layer-wide (block ``k``'s entry ``i`` is ``starts[k] + i``)."""

    __slots__ = ("_blocks", "_last", "_load", "ascii_ids", "count", "fences", "starts")

    def __init__(
        self,
        fences: list[bytes],
        counts: Sequence[int],
        blocks: list[Block | None],
        load: BlockLoader | None = None,
        ascii_ids: bool = True,
    ) -> None:
        self.fences = fences
        self.starts = [0, *accumulate(counts)]
        self.count = self.starts[-1]
        self._blocks = blocks
        self._load = load
        self.ascii_ids = ascii_ids
        self._last: bytes | bool | None = False  # (False: not known yet)

    @classmethod
    def single(cls, index: CompletedIndex, tags: Sequence[int] | None = None) -> LayerIndex:
        """One block holding every id (a version-5 layer, a format 1-4 snapshot's index)."""
        if not index.count:
            return cls([], [], [], None, index.ascii_ids)
        return cls([b""], [index.count], [Block(index, tags)], None, index.ascii_ids)

    @property
    def nblocks(self) -> int:
        return len(self.fences)

    def block(self, k: int) -> Block:
        """Block ``k`` (read on first use; when lookups walk the blocks in order, the
        next :data:`READ_AHEAD` ones with it, in the same read)."""
        b = self._blocks[k]
        if b is None:
            if k and self._blocks[k - 1] is not None:
                self._fill(list(range(k, min(k + READ_AHEAD, len(self._blocks)))))
            else:
                self._fill([k])
            b = self._blocks[k]
            assert b is not None
        return b

    def _fill(self, ks: list[int]) -> None:
        ks = [k for k in ks if self._blocks[k] is None]
        if not ks:
            return
        if self._load is None:  # pragma: no cover - every lazy index has a loader
            raise CorruptSnapshot("a layer block is not loaded and has no reader")
        for k, b in zip(ks, self._load(ks)):
            if b.index.count != self.starts[k + 1] - self.starts[k]:
                raise CorruptSnapshot("a layer block holds another count than its block index says")
            self._blocks[k] = b

    def blocks(self) -> list[Block]:
        """Every block, in key order (reads those not loaded, in one batch)."""
        self._fill(list(range(self.nblocks)))
        return [b for b in self._blocks if b is not None]

    def last_key(self) -> bytes | None:
        """The largest id's UTF-8 bytes, found in the last block when first asked for
        (``None``: empty, or a last block too large to scan, e.g. a version-5 layer's one
        block): ids above it are in no block, however far the last block's range reaches."""
        if self._last is False:
            k = len(self.fences) - 1
            small = k >= 0 and self.starts[k + 1] - self.starts[k] <= LAST_KEY_SCAN
            self._last = self.block(k).index.max_encoded() if small else None
        return self._last  # type: ignore[return-value]

    def is_above(self, b: bytes) -> bool:
        """Whether the UTF-8 id ``b`` is above every id of the layer (its largest read
        only where ``b`` is in the last block's range, as a lookup of ``b`` reads it)."""
        fences = self.fences
        if not fences:
            return True
        if b < fences[-1]:
            return False
        top = self.last_key()
        return top is not None and b > top

    def _block_of(self, b: bytes) -> int:
        return bisect_right(self.fences, b) - 1

    def prefetch(self, keys: Sequence[bytes]) -> None:
        """Read, in one batch, the blocks that lookups of the ids ``keys`` (UTF-8, in
        ascending order) need."""
        if self._load is None or not self.fences:
            return
        fences = self.fences
        n = len(keys)
        if len(fences) < n:  # a bisect per block (of the ids), not per id
            at = [bisect_left(keys, f) for f in fences] + [n]
            ks = [k for k in range(len(fences)) if at[k + 1] > at[k]]
        else:
            ks = sorted({bisect_right(fences, b) - 1 for b in keys} - {-1})
        self._fill(ks)

    def find(self, source: str) -> int:
        """Position of ``source`` in the layer, or ``-1``."""
        key = encoded_key(source)
        return -1 if key is None else self.find_encoded(*key)

    def find_encoded(self, b: bytes, h: int) -> int:
        """:meth:`find` of the id whose UTF-8 bytes are ``b`` and hash ``h``."""
        fences = self.fences
        if not fences:
            return -1
        k = bisect_right(fences, b) - 1
        if k < 0:
            return -1
        if k == len(fences) - 1 and self.is_above(b):
            return -1
        blk = self._blocks[k] or self.block(k)
        i = blk.index.find_encoded(b, h)
        return self.starts[k] + i if i >= 0 else -1

    def find_sorted(self, bs: list[bytes], hs: list[int]) -> list[int]:
        """:meth:`find_encoded` of each ``(bs[j], hs[j])``, ``bs`` in ascending order: the
        ids cut into runs by block (a bisect per block reached, none per id), the
        blocks missing read in one batch, each block searched once for all its ids."""
        out = [-1] * len(bs)
        fences = self.fences
        n = len(bs)
        if not fences or not n:
            return out
        if bs[-1] >= fences[-1]:  # some ids fall in the last block's range: not those above its largest
            top = self.last_key()
            if top is not None:
                n = bisect_right(bs, top, 0, n)
                if not n:
                    return out
        a = 0
        k = bisect_right(fences, bs[0]) - 1
        if k < 0:  # ids before the first block are in no block
            a = bisect_left(bs, fences[0])
            k = 0
        runs: list[tuple[int, int, int]] = []
        last = len(fences) - 1
        while a < n:
            b = bisect_left(bs, fences[k + 1], a) if k < last else n
            if b > a:  # (none: the ids before the first block were skipped into the next)
                runs.append((k, a, b))
            a = b
            if a < n:
                k = bisect_right(fences, bs[a], k + 1) - 1  # the block of the next id
        self._fill([k for k, _, _ in runs])
        blocks, starts = self._blocks, self.starts
        for k, a, b in runs:
            blk = blocks[k]
            assert blk is not None
            found = blk.index.find_many_encoded(bs[a:b], hs[a:b])
            if max(found) >= 0:
                start = starts[k]
                for i, f in enumerate(found, a):
                    if f >= 0:
                        out[i] = start + f
        return out

    def locate(self, pos: int) -> tuple[int, int]:
        """``(block, entry)`` of a position."""
        k = bisect_right(self.starts, pos) - 1
        return k, pos - self.starts[k]

    def run_at(self, pos: int) -> int:
        """Index in the layer's run table of the run that completed entry ``pos``."""
        k, i = self.locate(pos)
        return self.block(k).index.run_at(i)

    def tag_at(self, pos: int) -> int:
        """Shape id of entry ``pos`` (``0``: none stored)."""
        k, i = self.locate(pos)
        tags = self.block(k).tags
        return int(tags[i]) if tags is not None else 0

    def run_counts(self) -> dict[int, int]:
        """How many ids each run index completed (reads every block)."""
        counts: Counter[int] = Counter()
        for b in self.blocks():
            counts.update(b.index.run_counts())
        return dict(counts)

    def ids(self) -> list[str]:
        """All ids, block by block (each block in its stored order)."""
        out: list[str] = []
        for b in self.blocks():
            out.extend(b.index.ids())
        return out

    def __len__(self) -> int:
        return self.count

    def __contains__(self, source: object) -> bool:
        return isinstance(source, str) and self.find(source) >= 0

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids())


@dataclass(eq=False)
class Layer:
    """One layer of a loaded or freshly built index."""

    index: LayerIndex
    run_names: list[str]
    """The layer's run table (``index.run_at(i)`` indexes it)."""
    shapes: Callable[[], ShapeTable] | None = None
    """Reads (and checks) the layer's shape table; ``None``: no entry has stored shapes."""
    tombstones: frozenset[str] = frozenset()
    ref: LayerRef | None = None
    """Where the layer is stored; ``None`` until it is written (or for the index of a
    format 1-4 snapshot, which is written as a layer by the first version-6 compaction)."""
    runmap: array[int] = field(default_factory=lambda: array("I"))
    """``run_names`` as indexes into the fold state's run table (set by :meth:`bind`)."""
    data: bytes | memoryview | None = None
    """The stored object's bytes when read whole or built in memory (for in-memory
    round trips, :class:`~resumelog.snapshot.EncodedSnapshot`); a read-only view of a
    memory-mapped temporary file for a new layer that was spooled (:data:`SPOOL_BYTES`),
    ``None`` for one until :func:`encode_new_layer` writes it."""
    source: LayerSource | None = None
    """Its head and block reader when read in parts (``data`` is then ``None``)."""
    legacy: BaseDone | None = None
    """The shapes of a version-5 layer or a format 1-4 snapshot's index (one block)."""
    header: LayerHeader | None = None
    """The stored header (``None`` for a format 1-4 snapshot's index)."""
    _table: ShapeTable | None = None
    spool: BlockSpool | None = None
    """The temporary file holding the blocks of a new layer that was spooled (until
    :func:`encode_new_layer` writes the object there)."""
    frames: RawBlocks | None = None
    """A version-6 layer's block frames as stored (a merge copies the blocks no entry of
    the other layer falls between without decoding them: :func:`merge_layers`)."""

    @property
    def count(self) -> int:
        return self.index.count

    @property
    def has_shapes(self) -> bool:
        return self.shapes is not None or self.legacy is not None

    def bind(self, run_order: Sequence[str], path: str = "") -> None:
        """Map the layer's run table onto the state's ``run_order``."""
        where = {r: i for i, r in enumerate(run_order)}
        try:
            self.runmap = array("I", [where[r] for r in self.run_names])
        except KeyError as exc:
            raise CorruptSnapshot(f"a layer names run {exc.args[0]!r}, missing from the run table", path) from None

    def table(self) -> ShapeTable:
        """The layer's shape table (empty when it stores none)."""
        if self.legacy is not None:
            return self.legacy.table()
        if self._table is None:
            self._table = self.shapes() if self.shapes is not None else ShapeTable()
        return self._table

    def entries_of(self, pos: int, source: str) -> Mapping[str, int] | None:
        """The stored final entries of entry ``pos`` (id ``source``), or ``None``."""
        if self.legacy is not None:
            return self.legacy.get(source)
        if self.shapes is None:
            return None
        sid = self.index.tag_at(pos)
        if not sid:
            return None
        table = self.table()
        if sid > len(table):
            name = self.ref.name if self.ref is not None else ""
            raise CorruptSnapshot(f"shape id {sid} outside the shape table ({len(table)} shapes)", name)
        return table.entries(sid, source)


def _utf8(sources: Sequence[str]) -> tuple[list[int], list[bytes]]:
    """The positions and UTF-8 bytes of the ``sources`` that have them (an id with a lone
    surrogate has none: never stored, never found)."""
    try:
        return list(range(len(sources))), list(map(str.encode, sources))
    except UnicodeEncodeError:
        at: list[int] = []
        bs: list[bytes] = []
        for i, s in enumerate(sources):
            with contextlib.suppress(UnicodeEncodeError):
                bs.append(s.encode())
                at.append(i)
        return at, bs


class LayeredIndex:
    """The completed ids of a stack of layers (oldest first), with the interface of
    :class:`~resumelog.idset.CompletedIndex` the fold uses: positions returned by
    :meth:`find` are global (layer ``k``'s entry ``i`` is ``starts[k] + i``) and
    :meth:`run_at` gives indexes into the fold state's run table."""

    __slots__ = ("_masked", "_starts", "count", "layers")

    def __init__(self, layers: Sequence[Layer] = ()) -> None:
        self.layers = list(layers)
        self._starts = [0]
        for layer in self.layers:
            self._starts.append(self._starts[-1] + layer.count)
        self.count = sum(layer.count - len(layer.tombstones) for layer in self.layers)
        self._masked: set[str] = set().union(*(layer.tombstones for layer in self.layers))

    @classmethod
    def empty(cls) -> LayeredIndex:
        """An index with no layer."""
        return cls()

    def __len__(self) -> int:
        return self.count

    def __contains__(self, source: object) -> bool:
        return isinstance(source, str) and self.find(source) >= 0

    def find(self, source: str, below: int | None = None) -> int:
        """Global position of ``source``'s visible entry, or ``-1``; ``below``: in the
        stack under layer ``below`` only."""
        layers = self.layers
        top = len(layers) if below is None else below
        if top <= 1:
            return layers[0].index.find(source) if top else -1
        try:
            b = source.encode()
        except UnicodeEncodeError:
            return -1
        h = crc32c(b)
        masked = self._masked
        for k in range(top - 1, -1, -1):
            layer = layers[k]
            i = layer.index.find_encoded(b, h)
            if i >= 0:
                return self._starts[k] + i
            if masked and source in layer.tombstones:
                return -1
        return -1

    def find_many(self, sources: Sequence[str]) -> list[int]:
        """:meth:`find` of each of ``sources``: their UTF-8 bytes sorted once, then one
        pass per layer, the newest first, over the ids not found or masked yet."""
        out = [-1] * len(sources)
        layers = self.layers
        if not layers:
            return out
        todo, bs = _utf8(sources)
        if not bs:
            return out
        lowest = min(bs)
        if all(layer.index.is_above(lowest) for layer in layers):
            return out  # (new ids of a fold that completes them in about key order: no sort, no hash)
        order = sorted(range(len(bs)), key=bs.__getitem__)  # (the layers search sorted ids)
        bs = list(map(bs.__getitem__, order))
        todo = list(map(todo.__getitem__, order))
        hs = list(map(crc32c, bs))
        starts = self._starts
        masked = self._masked
        for k in range(len(layers) - 1, -1, -1):
            layer = layers[k]
            found = layer.index.find_sorted(bs, hs)
            tombstones = layer.tombstones if masked else None
            if not tombstones and max(found, default=-1) < 0:
                continue  # none here: look every one up below
            start = starts[k]
            keep = []
            for j, (i, f) in enumerate(zip(todo, found)):
                if f >= 0:
                    out[i] = start + f
                elif not (tombstones and sources[i] in tombstones):
                    keep.append(j)
            if len(keep) < len(todo):
                if not keep:
                    break
                todo = [todo[j] for j in keep]
                bs = [bs[j] for j in keep]
                hs = [hs[j] for j in keep]
        return out

    def prefetch(self, sources: Iterable[str]) -> None:
        """Read, in one batch per layer read in parts, the blocks lookups of ``sources``
        need (a reader answering a list of ids, or a compaction folding a segment, on an
        object store: a few ranged reads, not one per id). Layers in hand whole (read
        whole, memory-mapped, built in memory) are left to the lookups."""
        ranged = [layer for layer in self.layers if layer.source is not None]
        if not ranged:
            return
        keys = sorted(set(_utf8(list(sources))[1]))
        if len(ranged) == 1:
            ranged[0].index.prefetch(keys)
            return
        # the layers' reads at once: one round trip for all, not one per layer
        with ThreadPoolExecutor(max_workers=min(len(ranged), PREFETCH_THREADS)) as pool:
            for done in [pool.submit(layer.index.prefetch, keys) for layer in ranged]:
                done.result()  # (an error of any is raised here)

    def locate(self, pos: int) -> tuple[int, int]:
        """``(layer, entry)`` of a global position."""
        k = bisect_right(self._starts, pos) - 1
        return k, pos - self._starts[k]

    def run_at(self, pos: int) -> int:
        """Index in the fold state's run table of the run that completed ``pos``."""
        k, i = self.locate(pos)
        layer = self.layers[k]
        try:
            return int(layer.runmap[layer.index.run_at(i)])
        except IndexError:
            raise CorruptSnapshot("a completed id refers to a run missing from its layer's run table") from None

    def run_counts(self) -> dict[int, int]:
        """How many visible ids each run (state run index) completed."""
        counts: Counter[int] = Counter()
        for k, layer in enumerate(self.layers):
            rm = layer.runmap
            for r, n in layer.index.run_counts().items():
                counts[int(rm[r])] += n
            for t in layer.tombstones:
                pos = self.find(t, below=k)
                if pos >= 0:
                    counts[self.run_at(pos)] -= 1
        return dict(+counts)

    def ids(self) -> list[str]:
        """The visible ids (newest layer first)."""
        out: list[str] = []
        above: set[str] = set()
        for layer in reversed(self.layers):
            ids = layer.index.ids()
            out.extend(ids if not above else [s for s in ids if s not in above])
            above |= layer.tombstones
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids())


class LayeredDone:
    """The stored final entries of a layered index's completions (each layer's own
    shapes), plus the snapshot's done-writers frame. Completions of runs retired when
    the snapshot was written have none (their records are ignored)."""

    def __init__(self, index: LayeredIndex, writers: BaseDone, retired: Iterable[int] = ()) -> None:
        self.index = index
        self._writers = writers
        self._retired = frozenset(retired)

    legacy = False

    def get(self, source: str) -> Mapping[str, int] | None:
        pos = self.index.find(source)
        if pos < 0:
            return None
        k, i = self.index.locate(pos)
        layer = self.index.layers[k]
        if not layer.has_shapes or int(layer.runmap[layer.index.run_at(i)]) in self._retired:
            return None
        return layer.entries_of(i, source)

    def has_writers(self) -> bool:
        return self._writers.has_writers()

    def writers(self, source: str) -> list[int | list[int]] | None:
        return self._writers.writers(source)

    def all_writers(self) -> tuple[list[str], dict[str, list[int | list[int]]]]:
        return self._writers.all_writers()


# --------------------------------------------------------------------------- reading

RangeReader = Callable[[list[tuple[int, int]]], "list[bytes | memoryview]"]
"""Reads byte ranges ``[start, end)`` of one stored layer object (in one batch)."""


def open_layer(
    data: bytes | memoryview | None,
    path: str,
    *,
    head: bytes | memoryview | None = None,
    read: RangeReader | None = None,
    size: int | None = None,
    defer: bool = True,
    check_blocks: bool | None = None,
) -> Layer:
    """A layer from its whole bytes ``data``, or (version 6) from its ``head`` (the first
    ``LayerRef.head`` bytes, object length ``size``) and a reader of its blocks.

    ``defer``: the shape table is checked when first used (a reader), not now.
    ``check_blocks`` (default: ``not defer``): read and check every block now;
    otherwise each block is checked when a lookup (or a merge) first reads it, and a
    damaged block then raises :class:`~resumelog.errors.CorruptSnapshot` naming the
    layer from that read. A compactor checks the head now and the blocks as it reads
    them: a layer it carries by reference is not read at all (``docs/format.md`` §8).
    Raises :class:`~resumelog.errors.CorruptSnapshot`."""
    if data is not None:
        view = memoryview(data)
        if layer_version(view[:PREAMBLE_SIZE], path) < 6:
            return _open_v5(data, path, defer)
        lh = decode_layer_head(view, path, defer_shapes_crc=defer)

        def read_whole(ranges: list[tuple[int, int]]) -> list[bytes | memoryview]:
            return [view[a:b] for a, b in ranges]

        read = read_whole
    else:
        assert head is not None and read is not None
        lh = decode_layer_head(head, path, size=size, defer_shapes_crc=defer)
    layer = _open_v6(lh, read, path)
    layer.data = data
    if data is None:
        assert head is not None and read is not None
        layer.source = LayerSource(head, read)
    layer.header = lh.header
    if not defer:
        layer.table()
    if check_blocks if check_blocks is not None else not defer:
        layer.index.blocks()
    return layer


def _open_v6(lh: LayerHead, read: RangeReader, path: str) -> Layer:
    h = lh.header
    bi = lh.blocks
    ends = list(accumulate(bi.sizes, initial=lh.head))
    counts = bi.counts
    ascii_ids = h.ascii_ids

    def load(ks: list[int]) -> list[Block]:
        runs: list[tuple[int, int]] = []  # (first block, last block) of each range
        for k in ks:
            if runs and runs[-1][1] == k - 1:
                runs[-1] = (runs[-1][0], k)
            else:
                runs.append((k, k))
        got = read([(ends[a], ends[b + 1]) for a, b in runs])
        out: list[Block] = []
        for (a, b), chunk in zip(runs, got):
            view = memoryview(chunk)
            if len(view) != ends[b + 1] - ends[a]:
                raise CorruptSnapshot("a layer block read came back short", path)
            for k in range(a, b + 1):
                frame = view[ends[k] - ends[a] : ends[k + 1] - ends[a]]
                hashes, offsets, run_ix, shape_ids, blob = decode_layer_block(frame, counts[k], path)
                try:
                    index = CompletedIndex(hashes, offsets, run_ix, blob, ascii_ids)
                    tags = counted_uints(shape_ids, counts[k]) if shape_ids else None
                except ValueError as exc:
                    raise CorruptSnapshot(f"layer block {k}: {exc}", path) from None
                out.append(Block(index, tags))
        return out

    index = LayerIndex(list(bi.firsts), counts, [None] * len(counts), load, ascii_ids)
    shapes = None
    if bytes(lh.shapes) != EMPTY_SHAPE_TABLE:

        def shapes() -> ShapeTable:
            verify_layer_head_shapes(lh, path)
            try:
                return ShapeTable.decode(lh.shapes)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise CorruptSnapshot(f"malformed shape table: {exc}", path) from None

    def frame(k: int) -> memoryview:
        (chunk,) = read([(ends[k], ends[k + 1])])
        view = memoryview(chunk)
        if len(view) != ends[k + 1] - ends[k]:
            raise CorruptSnapshot("a layer block read came back short", path)
        return view

    layer = Layer(index, list(h.runs), shapes, frozenset(lh.tombstones))
    layer.frames = RawBlocks(list(bi.sizes), frame, path)
    return layer


def _open_v5(data: bytes | memoryview, path: str, defer: bool) -> Layer:
    """A version-5 layer (one hash-ordered index, read whole) as a one-block layer."""
    lf = decode_layer(data, path, defer_done_crc=defer)
    h = lf.header
    try:
        ci = CompletedIndex(lf.hashes, lf.offsets, lf.runs, lf.blob, h.ascii_ids)
    except ValueError as exc:
        raise CorruptSnapshot(str(exc), path) from None
    legacy = None
    if lf.shape_ids:
        legacy = BaseDone(ci, lf.shape_ids, lf.shapes, lambda: verify_layer_shapes(lf, path), path)
    layer = Layer(LayerIndex.single(ci), list(h.runs), None, frozenset(lf.tombstones), legacy=legacy)
    layer.data = data
    layer.header = h
    return layer


class RawBlocks(NamedTuple):
    """The block frames of a version-6 layer, undecoded: ``sizes[k]`` bytes each,
    ``read(k)`` the frame of block ``k`` (header included, not checked)."""

    sizes: list[int]
    read: Callable[[int], memoryview]
    path: str
    """The layer's name (for errors)."""


class LayerSource(NamedTuple):
    """A stored version-6 layer read in parts: its head and a reader of its blocks."""

    head: bytes | memoryview
    """The object's first ``LayerRef.head`` bytes."""
    read: RangeReader


# --------------------------------------------------------------------------- building


def build_layer(
    added: Mapping[str, str],
    removed: Iterable[str],
    tags: Mapping[str, int],
    shapes: ShapeTable,
) -> Layer:
    """The layer of one fold's delta: ``added`` (id -> completing run name) with the
    shapes ``tags`` (id -> id in ``shapes``; absent: none), masking ``removed``."""
    run_names = sorted(set(added.values()))
    where = {r: i for i, r in enumerate(run_names)}
    table = ShapeTable()
    entries = None
    if native is not None and isinstance(added, (dict, native.SourceMap)) and isinstance(tags, (dict, DoneShapeMap)):
        # the C loop of the lines below (ASCII ids), reading the tags a fold added in bulk
        # where they are (DoneShapeMap.parts) unless they do not line up with ``added``
        found = native.sorted_entries(added, tags.parts() if isinstance(tags, DoneShapeMap) else tags, where)
        if found is False:
            assert isinstance(tags, DoneShapeMap)
            found = native.sorted_entries(added, tags.settle(), where)
        entries = found if isinstance(found, tuple) else None
    ends: Sequence[int] | None = None
    if entries is not None:
        encoded, runs, raw, packed_ends = entries
        ends = memoryview(packed_ends).cast("q")
    else:
        ids = sorted(added)
        encoded = list(map(str.encode, ids))
        runs = list(map(where.__getitem__, map(added.__getitem__, ids)))
        raw = list(map(tags.get, ids, repeat(0)))
    remap = {0: 0}  # shape ids renumbered in the order of their first id (C loops)
    for sid in dict.fromkeys(raw):
        if sid not in remap:
            remap[sid] = table.add(shapes.shapes[sid - 1])
    if any(map(operator.ne, remap, remap.values())):  # (else each keeps its number: no copy)
        raw = list(map(remap.__getitem__, raw))
    return _new_layer(encoded, runs, raw, table, run_names, frozenset(removed), ends)


class BlockSpool:
    """The block frames of a new layer in an unnamed temporary file (:data:`SPOOL_BYTES`),
    from byte :data:`SPOOL_RESERVE` on; the file is removed when created, and its space
    freed once the file and every view of its memory map are gone."""

    __slots__ = ("_file", "_view", "frames", "reserve", "size")

    def __init__(self) -> None:
        self.reserve = SPOOL_RESERVE
        self._file = tempfile.TemporaryFile(dir=spool_dir())
        self._file.seek(self.reserve)
        self.size = 0
        """Bytes of block frames written."""
        self._view: memoryview | None = None
        self.frames: list[tuple[bytes, int]] = []
        """``(payload, CRC)`` of the layer's head frames 0-3 (set by :meth:`LayerWriter.finish`)."""

    def write(self, payload: bytes, crc: int) -> None:
        """Append the frame of ``payload`` (CRC-32C ``crc``)."""
        self._file.write(frame_header(payload, crc))
        self._file.write(payload)
        self.size += FRAME_HEADER_SIZE + len(payload)

    def blocks(self) -> memoryview:
        """The block frames, as a read-only view of the file's memory map (once every
        block is written)."""
        if self._view is None:
            self._file.flush()
            self._view = memoryview(mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ))[self.reserve :]
        return self._view

    def stamp(self, head: bytes) -> memoryview:
        """The object made of ``head`` (preamble and frames 0-3) and the block frames, as
        a read-only view of a memory map: ``head`` is written into the reserve right
        before the blocks, or (larger than the reserve) into a second file followed by
        a copy of the blocks. The spool takes no more writes."""
        blocks = self.blocks()
        n = len(head)
        if n <= self.reserve:
            f, start = self._file, self.reserve - n
            f.seek(start)
            f.write(head)
        else:
            f, start = tempfile.TemporaryFile(dir=spool_dir()), 0
            try:
                f.write(head)
                for i in range(0, self.size, _COPY_CHUNK):  # through the map: file pages, not anonymous memory
                    f.write(blocks[i : i + _COPY_CHUNK])
            except BaseException:
                f.close()
                raise
        try:
            f.flush()
            view = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))[start : start + n + self.size]
        finally:
            f.close()  # the map holds the file (and the blocks' views the spool's)
            self._file.close()
        return view


class LayerWriter:
    """Builds a new version-6 layer from entries given in key order, cutting blocks as
    they fill: only the block being cut is held as Python objects, the rest as encoded
    bytes, in memory up to :data:`SPOOL_BYTES`, then in a temporary file (a merge of two
    large layers streams through it in a few blocks of memory)."""

    def __init__(self) -> None:
        self._frames: list[tuple[bytes, int]] = []  # (payload, CRC) of the blocks held in memory
        self._held = 0
        self._spool_at = SPOOL_BYTES
        self._spool: BlockSpool | None = None
        self._counts: list[int] = []
        self._sizes: list[int] = []
        self._firsts: list[bytes] = []
        self._ascii = True
        self._tagged = False
        self.count = 0
        self._ids: list[bytes] = []
        self._runs: list[int] = []
        self._tags: list[int] = []
        self._size = 0

    def add(self, b: bytes, run: int, tag: int) -> None:
        """Append the entry of id ``b`` (UTF-8, above every id added so far)."""
        self._ids.append(b)
        self._runs.append(run)
        self._tags.append(tag)
        self._size += len(b) + 10
        if self._size >= BLOCK_BYTES:
            self._cut()

    def add_many(
        self, encoded: list[bytes], runs: Sequence[int], tags: Sequence[int], ends: Sequence[int] | None = None
    ) -> None:
        """:meth:`add` of many entries (in key order), cut into blocks in bulk; ``ends``:
        the running totals of their lengths (``accumulate(map(len, encoded))``), if the
        caller has them."""
        n = len(encoded)
        if not n:
            return
        cum = list(accumulate(map(len, encoded))) if ends is None else ends
        i = 0
        while i < n:
            # the first j whose entries from i fill the block: size + Σ(len + 10) >= BLOCK_BYTES
            base = cum[i - 1] if i else 0
            room = BLOCK_BYTES - self._size
            lo, hi = i, n
            while lo < hi:  # smallest j in [i, n) with cum[j] - base + 10 * (j - i + 1) >= room
                mid = (lo + hi) // 2
                if cum[mid] - base + 10 * (mid - i + 1) >= room:
                    hi = mid
                else:
                    lo = mid + 1
            j = lo + 1 if lo < n else n
            self._ids.extend(encoded[i:j])
            self._runs.extend(runs[i:j])
            self._tags.extend(tags[i:j])
            self._size += cum[j - 1] - base + 10 * (j - i)
            if self._size >= BLOCK_BYTES:
                self._cut()
            i = j

    def _cut(self) -> None:
        encoded, runs, tags = self._ids, self._runs, self._tags
        if not encoded:
            return
        arrays = native.hash_order(encoded) if native is not None else None
        if arrays is not None:  # the C loop of the lines below (ids under 4 GiB in all)
            order, hashes, blob, packed_offsets = arrays
        else:
            hs = [crc32c(b) for b in encoded]
            order = sorted(range(len(encoded)), key=hs.__getitem__)
            ordered = list(map(encoded.__getitem__, order))
            blob = b"".join(ordered)
            hashes = pack_uints([hs[i] for i in order], (4,))
            offsets = array("I" if len(blob) < 1 << 32 else "Q", [0])
            offsets.extend(accumulate(map(len, ordered)))
            packed_offsets = offsets.tobytes() if offsets.itemsize == 4 else pack_uints(offsets, (8,))
        self._ascii = self._ascii and blob.isascii()
        block_tags = list(map(tags.__getitem__, order)) if any(tags) else []
        self._tagged = self._tagged or bool(block_tags)
        one_run = runs.count(runs[0]) == len(runs)
        payload = encode_layer_block(
            hashes,
            packed_offsets,
            pack_uints([runs[0]] * len(runs) if one_run else list(map(runs.__getitem__, order))),
            pack_uints(block_tags) if block_tags else b"",
            blob,
            len(encoded),
        )
        self._emit(payload, crc32c(payload), len(encoded), encoded[0])
        self._ids, self._runs, self._tags, self._size = [], [], [], 0

    def _emit(self, payload: bytes, crc: int, count: int, first: bytes) -> None:
        if self._spool is not None:
            self._spool.write(payload, crc)
        else:
            self._frames.append((payload, crc))
            self._held += FRAME_HEADER_SIZE + len(payload)
            if self._held >= self._spool_at:
                self._spool = BlockSpool()
                for p, c in self._frames:
                    self._spool.write(p, c)
                self._frames, self._held = [], 0
        self._sizes.append(FRAME_HEADER_SIZE + len(payload))
        self._counts.append(count)
        self._firsts.append(first)
        self.count += count

    def add_frame(self, frame: memoryview, count: int, first: bytes, *, ascii_ids: bool, path: str) -> None:
        """Append a stored block frame as it is (its ``count`` entries, smallest id
        ``first``, all above every id added so far), after the entries added before it
        (cut into a block of their own). Its run indexes and shape ids must mean the
        same in this layer; ``ascii_ids``: whether its layer's ids are all ASCII. The
        frame's CRC is checked (:class:`~resumelog.errors.CorruptSnapshot` naming
        ``path``): a damaged block is never copied into a new layer."""
        shape_ids = decode_layer_block(frame, count, path)[3]  # (checks the CRC, widths and sizes)
        self._cut()
        self._ascii = self._ascii and ascii_ids
        self._tagged = self._tagged or len(shape_ids) > 0
        crc = int.from_bytes(frame[4:FRAME_HEADER_SIZE], "big")  # (the frame header's, checked)
        self._emit(bytes(frame[FRAME_HEADER_SIZE:]), crc, count, first)

    def finish(self, table: ShapeTable, run_names: list[str], tombstones: frozenset[str]) -> Layer:
        """The layer (not yet written: :func:`encode_new_layer` names and stamps it)."""
        self._cut()
        index = BlockIndex(self._counts, self._sizes, self._firsts)
        header = LayerHeader(FORMAT_VERSION, bytes(16), b"", 0, self.count, self._ascii, run_names, len(tombstones))
        shapes = table.encode() if self._tagged and len(table) else EMPTY_SHAPE_TABLE
        head_frames = [(p, crc32c(p)) for p in (encode(header), encode(index), shapes, encode(sorted(tombstones)))]
        spool, self._spool = self._spool, None
        if spool is None:
            data = b"".join(object_parts(KIND_LAYER, [*head_frames, *self._frames]))
            self._frames = []
            return open_layer(data, "(new layer)", defer=False)
        spool.frames = head_frames
        head = b"".join(object_parts(KIND_LAYER, head_frames, tail=spool.size))
        blocks = spool.blocks()
        n = len(head)

        def read(ranges: list[tuple[int, int]]) -> list[bytes | memoryview]:
            return [blocks[a - n : b - n] for a, b in ranges]

        layer = open_layer(None, "(new layer)", head=head, read=read, size=n + spool.size, defer=False)
        layer.spool = spool
        return layer


def make_layer(
    ids: list[str],
    runs: Sequence[int],
    tags: Sequence[int],
    table: ShapeTable,
    run_names: list[str],
    tombstones: frozenset[str],
) -> Layer:
    """A new (unwritten) version-6 layer of the entries ``ids`` (sorted, distinct), their
    run indexes into ``run_names`` and shape ids in ``table``, masking ``tombstones``."""
    return _new_layer(list(map(str.encode, ids)), runs, tags, table, run_names, tombstones)


def _new_layer(
    encoded: list[bytes],
    runs: Sequence[int],
    tags: Sequence[int],
    table: ShapeTable,
    run_names: list[str],
    tombstones: frozenset[str],
    ends: Sequence[int] | None = None,
) -> Layer:
    """:func:`make_layer` of ids already UTF-8 encoded (``ends``: as
    :meth:`LayerWriter.add_many` takes them)."""
    w = LayerWriter()
    w.add_many(encoded, runs, tags, ends)
    return w.finish(table, run_names, tombstones)


def encode_new_layer(layer: Layer, *, number: int, epoch: bytes, created_ms: int) -> tuple[str, bytes | memoryview]:
    """Name and bytes of ``layer`` (built by :func:`make_layer`, not yet written), and its
    reference set on it: the placeholder header is replaced, the rest kept byte for byte.
    A spooled layer's bytes are a read-only view of a memory-mapped temporary file."""
    assert layer.ref is None and (layer.data is not None or layer.spool is not None)
    old = layer.index
    nonce = secrets.token_bytes(16)
    header = LayerHeader(
        FORMAT_VERSION,
        nonce,
        epoch,
        created_ms,
        old.count,
        old.ascii_ids,
        layer.run_names,
        len(layer.tombstones),
    )
    hdr = encode(header)
    data: bytes | memoryview
    spool = layer.spool
    if spool is None:
        assert layer.data is not None
        frames = frames_of(layer.data)
        data = b"".join(object_parts(KIND_LAYER, [(hdr, crc32c(hdr)), *frames[1:]]))
        head = PREAMBLE_SIZE + sum(FRAME_HEADER_SIZE + len(p) for p, _ in [(hdr, 0), *frames[1:LAYER_HEAD_FRAMES]])
    else:
        prefix = b"".join(object_parts(KIND_LAYER, [(hdr, crc32c(hdr)), *spool.frames[1:]], tail=spool.size))
        data = spool.stamp(prefix)
        head = len(prefix)
        layer.spool = None
    name = paths.layer_name(number, nonce[:8].hex())
    layer.ref = LayerRef(name, nonce, old.count, len(layer.tombstones), len(data), head)
    layer.data = data
    return name, data


Entries = tuple[list[bytes], list[int], list[int]]
"""Entries of a block in key order, as parallel lists: UTF-8 ids, run indexes, shape ids."""


def _block_entries(layer: Layer, k: int, table: ShapeTable | None) -> Entries:
    """The entries of block ``k`` of ``layer`` in key order (a version-5 or format 1-4
    layer is one block: its shape ids are numbered in ``table``, into which a version-1
    one interns its entries)."""
    blk = layer.index.block(k)
    n = blk.index.count
    _, offsets, _, blob = blk.index.raw()
    off = counted_uints(offsets, n + 1, (4, 8))
    runs = blk.index.arrays()[1]
    tags = layer.legacy.shape_ids(table) if layer.legacy is not None else blk.tags
    one_run = tags is None and n > 0 and runs.count(runs[0]) == n  # one run, no shapes: the ids alone
    if native is not None:  # the lines below in one C pass: split, sort
        try:
            ids, order = native.key_order(blob, offsets, off.itemsize)
        except ValueError as exc:
            raise CorruptSnapshot(f"a layer block's ids cannot be read ({exc})") from None
        if one_run:
            return ids, [runs[0]] * n, [0] * n
    else:
        raw = bytes(blob)
        unsorted = [raw[off[i] : off[i + 1]] for i in range(n)]
        if one_run:
            unsorted.sort()
            return unsorted, [runs[0]] * n, [0] * n
        order = sorted(range(n), key=unsorted.__getitem__)
        ids = list(map(unsorted.__getitem__, order))
    return (
        ids,
        list(map(runs.__getitem__, order)),
        [int(tags[i]) for i in order] if tags is not None else [0] * n,
    )


def _key_ordered(layer: Layer, table: ShapeTable | None) -> Iterator[tuple[bytes, int, int]]:
    """``(UTF-8 id, run index, shape id)`` of every entry of ``layer``, in key order."""
    for k in range(layer.index.nblocks):
        yield from zip(*_block_entries(layer, k, table))


def _used_shapes(layer: Layer, table: ShapeTable | None, dead_runs: set[int]) -> set[int]:
    """Shape ids of ``layer``'s entries that a merge keeps (not those of ``dead_runs``)."""
    if not layer.has_shapes:
        return set()
    if layer.legacy is not None or dead_runs:
        return {t for _, r, t in _key_ordered(layer, table) if t and r not in dead_runs}
    used: set[int] = set()
    for blk in layer.index.blocks():
        if blk.tags is not None:
            used.update(blk.tags)
    used.discard(0)
    return used


def _carry_shapes(used: set[int], source: ShapeTable, into: ShapeTable) -> dict[int, int]:
    """Add the shapes ``used`` of ``source`` to ``into``: their new ids, by old id."""
    remap = {0: 0}
    for sid in sorted(used):
        if sid > len(source):
            raise CorruptSnapshot(f"a completed id names shape {sid}, outside the shape table ({len(source)} shapes)")
        remap[sid] = into.add(source.shapes[sid - 1])
    return remap


class _Cursor:
    """A merge's position in one layer, in key order: at block ``k`` (not read yet, its
    ids from ``fences[k]`` up to ``fences[k + 1]``) or at entry ``i`` of ``entries``, the
    block before it, read and renumbered for the merged layer by ``fix``."""

    __slots__ = ("entries", "fences", "fix", "i", "k", "layer", "n", "plain", "table")

    def __init__(self, layer: Layer, table: ShapeTable | None, fix: Callable[[Entries], Entries]) -> None:
        self.layer = layer
        self.table = table
        self.fix = fix
        self.fences = layer.index.fences
        self.n = layer.index.nblocks
        self.k = 0
        self.entries: Entries | None = None
        self.i = 0
        self.plain: int | None = None
        """The run of every entry read, if they have one run and no shapes."""

    def done(self) -> bool:
        return self.entries is None and self.k >= self.n

    def lo(self) -> bytes:
        """The smallest id left."""
        return self.fences[self.k] if self.entries is None else self.entries[0][self.i]

    def hi(self) -> bytes | None:
        """Above every id of block ``k`` (``None``: the last block)."""
        return self.fences[self.k + 1] if self.k + 1 < self.n else None

    def read(self) -> None:
        """Read block ``k``: be at its first entry (none left if all were masked)."""
        self.entries = self.fix(_block_entries(self.layer, self.k, self.table))
        self.i = 0
        self.k += 1
        ids, runs, tags = self.entries
        if not ids:
            self.entries = None
        else:
            self.plain = runs[0] if runs.count(runs[0]) == len(runs) and not any(tags) else None

    def seek(self, i: int) -> None:
        """Be at entry ``i`` of the entries read (past the last: none left)."""
        assert self.entries is not None
        self.i = i
        if i >= len(self.entries[0]):
            self.entries = None

    def take(self, j: int, into: Entries) -> None:
        """Move entries ``i..j-1`` to ``into``."""
        assert self.entries is not None
        i = self.i
        ids, runs, tags = self.entries
        into[0].extend(ids[i:j])
        into[1].extend(runs[i:j])
        into[2].extend(tags[i:j])
        self.seek(j)


_PENDING = 4096
"""A merge hands the entries it merged entry by entry to its :class:`LayerWriter` by this
many at a time (``add_many``: a bisect per block, not a call per entry)."""


def _merge_entries(low: _Cursor, up: _Cursor, into: Entries) -> None:
    """Merge the read entries of both cursors into ``into`` until one's run out (the
    same id in both: the upper entry)."""
    assert low.entries is not None and up.entries is not None
    lids, lruns, ltags = low.entries
    uids, uruns, utags = up.entries
    li, ui, nl, nu = low.i, up.i, len(lids), len(uids)
    ids, runs, tags = into
    if low.plain is not None and low.plain == up.plain:  # one run, no shapes: merge the ids in C
        top = min(lids[-1], uids[-1])  # (one block runs out there: its next ids are above)
        lj, uj = bisect_right(lids, top, li), bisect_right(uids, top, ui)
        lower_ids, upper_ids = lids[li:lj], uids[ui:uj]
        if set(lower_ids).isdisjoint(upper_ids):  # (no id completed again above)
            merged = lower_ids + upper_ids
            merged.sort()  # two sorted runs: one linear merge
            ids.extend(merged)
            runs.extend([low.plain] * len(merged))
            tags.extend([0] * len(merged))
            low.seek(lj)
            up.seek(uj)
            return
    add_id, add_run, add_tag = ids.append, runs.append, tags.append
    while li < nl and ui < nu:
        b = lids[li]
        ub = uids[ui]
        if b < ub:
            add_id(b)
            add_run(lruns[li])
            add_tag(ltags[li])
            li += 1
        else:
            add_id(ub)
            add_run(uruns[ui])
            add_tag(utags[ui])
            ui += 1
            if b == ub:
                li += 1  # completed again above: the upper entry wins
    low.seek(li)
    up.seek(ui)


def merge_layers(lower: Layer, upper: Layer, *, bottom: bool, retired: frozenset[str] = frozenset()) -> Layer:
    """One layer equivalent to ``upper`` stacked on ``lower``, streamed in key order
    (memory: the merged layer's bytes and one block of each as Python objects).

    A block of either layer that no entry of the other falls between (nor, for
    ``lower``, a tombstone of ``upper``) is copied as it is stored, not decoded, when
    its run indexes and shape ids mean the same in the merged layer and it is at least a
    quarter of :data:`BLOCK_BYTES` (smaller ones are re-cut, so copies never fragment a
    layer into ever smaller blocks): ids that arrive in key order (a pipeline's shards)
    make a merge cost about what is new, not what is merged. Entries of blocks that
    overlap are merged run by run (a bisect per run of ids from one layer).

    ``bottom``: ``lower`` is the lowest layer, so tombstones mask nothing below and are
    dropped. Completions of ``retired`` runs lose their shapes (their records are
    ignored), as a format-4 snapshot did.
    """
    run_names = list(lower.run_names)
    where = {r: i for i, r in enumerate(run_names)}
    for name in upper.run_names:
        if name not in where:
            where[name] = len(run_names)
            run_names.append(name)
    umap = [where[name] for name in upper.run_names]
    dead = {i for i, name in enumerate(run_names) if name in retired}
    # the merged shape table: the shapes some kept entry uses, lower's first
    ltable = ShapeTable(list(lower.table().shapes))  # a copy: a version-1 layer interns into it
    utable = upper.table()
    lused = _used_shapes(lower, ltable, dead)
    uused = _used_shapes(upper, ShapeTable(list(utable.shapes)), {r for r, m in enumerate(umap) if m in dead})
    table = ShapeTable()
    lmap = _carry_shapes(lused, ltable, table)
    umap_t = _carry_shapes(uused, utable, table)
    tombs = sorted(t.encode() for t in upper.tombstones)
    drop = set(tombs)
    lsame = all(lmap[t] == t for t in lused)  # lower's shape ids unchanged
    usame_runs = umap == list(range(len(umap)))
    usame = all(umap_t[t] == t for t in uused)
    copy_lower = lower.frames is not None and not dead and lsame
    copy_upper = upper.frames is not None and not dead and usame_runs and usame

    def dead_tags(runs: list[int], tags: list[int]) -> list[int]:
        return [0 if r in dead else t for r, t in zip(runs, tags)] if dead else tags

    def fix_lower(e: Entries) -> Entries:
        ids, runs, tags = e
        if drop and not drop.isdisjoint(ids):  # masked by the upper layer
            kept = list(map(operator.not_, map(drop.__contains__, ids)))
            ids, runs, tags = list(compress(ids, kept)), list(compress(runs, kept)), list(compress(tags, kept))
        if not lsame:
            tags = [lmap.get(t, 0) for t in tags]
        return ids, runs, dead_tags(runs, tags)

    def fix_upper(e: Entries) -> Entries:
        ids, runs, tags = e
        if not usame_runs:
            runs = list(map(umap.__getitem__, runs))
        if not usame:
            tags = [umap_t.get(t, 0) for t in tags]
        return ids, runs, dead_tags(runs, tags)

    out = LayerWriter()
    pending: Entries = ([], [], [])  # entries merged, not yet handed to ``out``
    low = _Cursor(lower, ltable, fix_lower)
    up = _Cursor(upper, ShapeTable(list(utable.shapes)), fix_upper)
    small = BLOCK_BYTES // 4

    def flush(least: int = 0) -> None:
        """Hand the merged entries to ``out`` (if there are at least ``least``)."""
        if len(pending[0]) >= least:
            out.add_many(*pending)
            for x in pending:
                x.clear()

    def masks(lo: bytes, hi: bytes | None) -> bool:  # a tombstone in [lo, hi)
        i = bisect_left(tombs, lo)
        return i < len(tombs) and (hi is None or tombs[i] < hi)

    def copy(c: _Cursor, below: bytes | None) -> bool:
        """Copy block ``c.k`` if it may be and every id left in the other layer is at
        least ``below`` (``None``: none is left)."""
        layer = c.layer
        assert layer.frames is not None
        k = c.k
        hi = c.hi()
        if below is not None and (hi is None or below < hi):
            return False
        if layer.frames.sizes[k] < small or (layer is lower and masks(c.fences[k], hi)):
            return False
        flush()
        count = layer.index.starts[k + 1] - layer.index.starts[k]
        frame = layer.frames.read(k)
        out.add_frame(frame, count, c.fences[k], ascii_ids=layer.index.ascii_ids, path=layer.frames.path)
        c.k += 1
        return True

    while not low.done() and not up.done():
        lo_l, lo_u = low.lo(), up.lo()
        if low.entries is None and copy_lower and copy(low, lo_u):
            continue
        if up.entries is None and copy_upper and copy(up, lo_l):
            continue
        if low.entries is None and lo_l <= lo_u:
            low.read()
            continue
        if up.entries is None and lo_u <= lo_l:
            up.read()
            continue
        le, ue = low.entries, up.entries
        if le is not None and ue is not None:  # both at entries: merge until one block runs out
            _merge_entries(low, up, pending)
        elif le is not None:  # the upper layer at a block above: the lower's ids below it
            low.take(bisect_left(le[0], lo_u, low.i), pending)
        else:
            assert ue is not None
            up.take(bisect_left(ue[0], lo_l, up.i), pending)
        flush(_PENDING)
    for c, ok in ((low, copy_lower), (up, copy_upper)):
        while not c.done():  # the other layer has run out
            if c.entries is None and not (ok and copy(c, None)):
                c.read()
            if c.entries is not None:
                c.take(len(c.entries[0]), pending)
                flush(_PENDING)
    flush()
    tombstones: frozenset[str] = frozenset()
    if not bottom:
        tombstones = lower.tombstones | frozenset(t for t in upper.tombstones if lower.index.find(t) < 0)
    return out.finish(table, run_names, tombstones)


def merge_newest(stack: list[Layer], k: int, *, retired: frozenset[str], lowest: bool = True) -> None:
    """Merge the ``k`` newest layers of ``stack`` (oldest first) into one, in place, each
    upper layer onto the one below (:func:`merge_layers`); ``lowest``: ``stack[0]`` is
    the index's lowest layer (tombstones merged into it mask nothing and are dropped).
    No name keeps a merged-away layer (or its spool file) alive."""
    for _ in range(k - 1):
        stack[-2:] = [merge_layers(stack[-2], stack[-1], bottom=lowest and len(stack) == 2, retired=retired)]


def plan_merges(sizes: Sequence[int], *, deferred: bool = False) -> int:
    """How many of the newest layers (of ``sizes``, oldest first) to merge into one: the
    newest two are merged while the lower is no larger than the upper (or smaller than
    :data:`MIN_LAYER`), or while there are more than :data:`MAX_LAYERS`.

    ``deferred`` (a tick whose large merges are left to ``compactor.merge``): only while
    the lower is smaller than :data:`MIN_LAYER`, unless there are more than
    :data:`MAX_LAYERS` (nobody merged: then as above)."""
    if deferred and len(sizes) <= MAX_LAYERS:
        stack = list(sizes)
        merged = 1
        while len(stack) >= 2 and stack[-2] < MIN_LAYER:
            top = stack.pop()
            stack[-1] += top
            merged += 1
        return merged
    stack = list(sizes)
    merged = 1
    while len(stack) >= 2 and (stack[-2] <= max(stack[-1], MIN_LAYER) or len(stack) > MAX_LAYERS):
        top = stack.pop()
        stack[-1] += top
        merged += 1
    return merged if merged > 1 else 1
