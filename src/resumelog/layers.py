"""The completed-id index as a stack of immutable layers (format version 5; no I/O here).

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
"""

from __future__ import annotations

import secrets
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from resumelog import paths
from resumelog._crc import crc32c
from resumelog.done_shapes import BaseDone, ShapeTable
from resumelog.errors import CorruptSnapshot
from resumelog.format import (
    EMPTY_SHAPE_TABLE,
    FORMAT_VERSION,
    LayerFrames,
    LayerHeader,
    LayerRef,
    encode_layer,
)
from resumelog.idset import CompletedIndex, build_index, counted_uints, pack_uints

__all__ = ["MIN_LAYER", "Layer", "LayeredDone", "LayeredIndex", "build_layer", "merge_layers", "plan_merges"]

MIN_LAYER = 1 << 15
"""Layers with fewer entries are merged into the next one regardless of its size, so
a checkpoint compacted every few records does not grow a layer per compaction."""

MAX_LAYERS = 24
"""Beyond this many layers the newest two are merged whatever their sizes (a lookup
bisects every layer it reaches)."""


@dataclass(eq=False)
class Layer:
    """One layer of a loaded or freshly built index."""

    index: CompletedIndex
    run_names: list[str]
    """The layer's run table (``index.run_at(i)`` indexes it)."""
    done: BaseDone | None
    """The shapes of the entries (``None``: no entry has stored shapes)."""
    tombstones: frozenset[str] = frozenset()
    ref: LayerRef | None = None
    """Where the layer is stored; ``None`` until it is written (or for the index of a
    format 1-4 snapshot, which is written as a layer by the first version-5 compaction)."""
    runmap: array[int] = field(default_factory=lambda: array("I"))
    """``run_names`` as indexes into the fold state's run table (set by :meth:`bind`)."""
    data: bytes | memoryview | None = None
    """The stored object's bytes (the index views point into them): for in-memory
    round trips (:class:`~resumelog.snapshot.EncodedSnapshot`)."""

    @property
    def count(self) -> int:
        return self.index.count

    def bind(self, run_order: Sequence[str], path: str = "") -> None:
        """Map the layer's run table onto the state's ``run_order``."""
        where = {r: i for i, r in enumerate(run_order)}
        try:
            self.runmap = array("I", [where[r] for r in self.run_names])
        except KeyError as exc:
            raise CorruptSnapshot(f"a layer names run {exc.args[0]!r}, missing from the run table", path) from None


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
        layer = self.index.layers[self.index.locate(pos)[0]]
        if layer.done is None or self.index.run_at(pos) in self._retired:
            return None
        return layer.done.get(source)

    def has_writers(self) -> bool:
        return self._writers.has_writers()

    def writers(self, source: str) -> list[int | list[int]] | None:
        return self._writers.writers(source)

    def all_writers(self) -> tuple[list[str], dict[str, list[int | list[int]]]]:
        return self._writers.all_writers()


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
    remap: dict[int, int] = {}
    add_tags: dict[str, int] = {}
    for s, sid in tags.items():
        if s in added and sid:
            t = remap.get(sid)
            if t is None:
                t = remap[sid] = table.add(shapes.shapes[sid - 1])
            add_tags[s] = t
    built = build_index(CompletedIndex.empty(), (), {s: where[r] for s, r in added.items()}, None, add_tags)
    return _layer_of(
        built.hashes,
        built.offsets,
        built.runs,
        built.blob,
        built.ascii_ids,
        built.tags,
        table,
        run_names,
        frozenset(removed),
    )


def _layer_of(
    hashes: bytes,
    offsets: bytes,
    runs: bytes,
    blob: bytes,
    ascii_ids: bool,
    tags: array[int],
    table: ShapeTable,
    run_names: list[str],
    tombstones: frozenset[str],
) -> Layer:
    index = CompletedIndex(hashes, offsets, runs, blob, ascii_ids)
    done = None
    if any(tags):
        done = BaseDone(index, memoryview(pack_uints(tags)), memoryview(table.encode()), lambda: None)
    return Layer(index, run_names, done, tombstones)


def encode_new_layer(layer: Layer, *, number: int, epoch: bytes, created_ms: int) -> tuple[str, bytes]:
    """Name and bytes of ``layer`` (not yet written), and its reference set on it."""
    nonce = secrets.token_bytes(16)
    index = layer.index
    hashes, offsets, runs, blob = index.raw()
    if layer.done is not None:
        shape_ids, shapes = layer.done.raw()
    else:
        shape_ids, shapes = memoryview(b""), memoryview(EMPTY_SHAPE_TABLE)
    tombs = sorted(layer.tombstones)
    header = LayerHeader(
        FORMAT_VERSION, nonce, epoch, created_ms, index.count, index.ascii_ids, layer.run_names, len(tombs)
    )
    data = encode_layer(LayerFrames(header, hashes, offsets, runs, blob, shape_ids, shapes, tombs))
    name = paths.layer_name(number, nonce[:8].hex())
    layer.ref = LayerRef(name, nonce, index.count, len(tombs), len(data))
    layer.data = data
    return name, data


def merge_layers(lower: Layer, upper: Layer, *, bottom: bool, retired: frozenset[str] = frozenset()) -> Layer:
    """One layer equivalent to ``upper`` stacked on ``lower``.

    ``bottom``: ``lower`` is the lowest layer, so tombstones mask nothing below and are
    dropped. Completions of ``retired`` runs lose their shapes (their records are
    ignored), as a format-4 snapshot did.
    """
    run_names = list(lower.run_names)
    where = {r: i for i, r in enumerate(run_names)}
    for r in upper.run_names:
        if r not in where:
            where[r] = len(run_names)
            run_names.append(r)
    table = lower.done.table() if lower.done is not None else ShapeTable()
    table = ShapeTable(list(table.shapes))  # a copy: the loaded layer's stays as it is
    lower_tags = lower.done.shape_ids(table) if lower.done is not None else None
    upper_ids = upper.index.ids()
    upper_runs = upper.index.arrays()[1]
    add = {s: where[upper.run_names[r]] for s, r in zip(upper_ids, upper_runs)}
    add_tags: dict[str, int] | None = None
    if upper.done is not None:
        utable = upper.done.table()
        utags = upper.done.shape_ids(utable)
        if utags is not None:
            remap = [0] * (len(utable) + 1)
            for sid in sorted(set(utags) - {0}):
                remap[sid] = table.add(utable.shapes[sid - 1])
            add_tags = {s: remap[t] for s, t in zip(upper_ids, utags) if t}
    built = build_index(lower.index, upper.tombstones, add, lower_tags, add_tags, disjoint=True)
    tags = built.tags
    if retired and any(tags):
        dead = {i for i, r in enumerate(run_names) if r in retired}
        if dead:
            run_of = counted_uints(built.runs, built.n)
            tags = array("I", [0 if r in dead else t for r, t in zip(run_of, tags)])
    if any(tags):
        tags, table = _compact_table(tags, table)
    tombstones: frozenset[str] = frozenset()
    if not bottom:
        tombstones = lower.tombstones | frozenset(t for t in upper.tombstones if lower.index.find(t) < 0)
    return _layer_of(
        built.hashes, built.offsets, built.runs, built.blob, built.ascii_ids, tags, table, run_names, tombstones
    )


def _compact_table(tags: array[int], table: ShapeTable) -> tuple[array[int], ShapeTable]:
    """Drop the shapes no id refers to any more (renumbering the ids)."""
    used = sorted(set(tags) - {0})
    if used and used[-1] > len(table):
        raise CorruptSnapshot(f"a completed id names shape {used[-1]}, outside the shape table ({len(table)} shapes)")
    if len(used) == len(table):
        return tags, table
    kept = ShapeTable()
    remap = [0] * (len(table) + 1)
    for sid in used:
        remap[sid] = kept.add(table.shapes[sid - 1])
    return array("I", [remap[t] for t in tags]), kept


def plan_merges(sizes: Sequence[int]) -> int:
    """How many of the newest layers (of ``sizes``, oldest first) to merge into one: the
    newest two are merged while the lower is no larger than the upper (or smaller than
    :data:`MIN_LAYER`), or while there are more than :data:`MAX_LAYERS`."""
    stack = list(sizes)
    merged = 1
    while len(stack) >= 2 and (stack[-2] <= max(stack[-1], MIN_LAYER) or len(stack) > MAX_LAYERS):
        top = stack.pop()
        stack[-1] += top
        merged += 1
    return merged if merged > 1 else 1
