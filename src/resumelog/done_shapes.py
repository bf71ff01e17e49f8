"""Final entries of completed sources, stored as shared *shapes* (no I/O here).

A completion keeps its final ``key -> delta`` entries so that a late record can be
told from a duplicate (``algebra.FoldState._late``). Lineage keys embed their source
id (``0_<src>``, ``0_<src>_0`` ...), so the entries of millions of sources differ only
by that id. A **shape** is a completion's entries with the source id cut out of every
key: key ``k`` is stored as ``k.split(source)`` and rebuilt as ``source.join(parts)``
(exact for any key and any non-empty id). Sources of one pipeline share a handful of
shapes; a snapshot stores each shape once and one small integer per completed id
(``docs/format.md`` §5, frames 6 and 7).

Shape ids start at 1; ``0`` means "no stored entries" (a ``Writer.complete``
completion, whose entries are :data:`~resumelog.algebra.SIMPLE_COMPLETION`, or a
completion by a retired run, whose records are ignored anyway).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, MutableMapping, Sequence
from itertools import compress, repeat

import msgspec

from resumelog._hashed_dicts import hashed_dict
from resumelog.errors import CorruptSnapshot
from resumelog.format import decode_done_writers
from resumelog.idset import CompletedIndex, counted_uints

__all__ = ["BaseDone", "DoneShapeMap", "Shape", "ShapeTable"]

Shape = list[tuple[list[str], int]]
"""On storage: msgpack array of ``[parts: array of str, delta: int]``, one per key."""

_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(list[list[tuple[list[str], int]]])


def _exact_key(shape: Shape) -> tuple[tuple[tuple[str, ...], ...], tuple[int, ...]]:
    return tuple(tuple(p) for p, _ in shape), tuple(d for _, d in shape)


class ShapeTable:
    """An append-only table of shapes with interning (ids ``1..len``)."""

    __slots__ = ("_fast", "_ids", "shapes")

    def __init__(self, shapes: list[Shape] | None = None) -> None:
        self.shapes: list[Shape] = []
        self._ids: dict[object, int] = {}
        self._fast: dict[object, tuple[int, tuple[int, ...]]] = {}  # lookup key -> (id, order)
        for shape in shapes or ():
            self.add(shape)

    def __len__(self) -> int:
        return len(self.shapes)

    def __iter__(self) -> Iterator[Shape]:
        return iter(self.shapes)

    def intern(self, entries: Mapping[str, int], source: str) -> int:
        """The id of the shape of ``entries`` (completed ``source``), adding it if new.

        A shape's elements are sorted by their parts, so a shape (and a snapshot's
        bytes) depends neither on the order the records were folded in nor on which
        source first completed with it.
        """
        return self.intern_keys(entries, tuple(entries.values()), source)

    def intern_keys(self, keys: Collection[str], deltas: tuple[int, ...], source: str) -> int:
        """:meth:`intern` of the entries ``zip(keys, deltas)`` (distinct keys), without
        building them: the fold's hot path, which holds keys and deltas apart."""
        return self.intern_ordered(keys, deltas, source)[0]

    def intern_ordered(
        self, keys: Collection[str], deltas: tuple[int, ...], source: str
    ) -> tuple[int, tuple[int, ...]]:
        """:meth:`intern_keys`, and the order of the shape's elements: element ``i`` of
        the shape is the entry ``order[i]`` of ``keys``."""
        # Fast lookup key, in the entries' own order (each order seen is cached; all
        # map to the one sorted shape): keys joined by NUL, the id replaced by \1 —
        # one string, under 1 us for five keys. Exact (every key's parts can be read
        # back from it) if no key holds NUL or \1 and the id holds no NUL (an id
        # with NUL could match across two keys); else the per-key form. An empty id
        # (never written by a Writer) is not cut out: keys stay whole.
        joined = "\0".join(keys)
        if source and joined.count("\0") == len(keys) - 1 and "\1" not in joined and "\0" not in source:
            fast: object = (joined.replace(source, "\1"), deltas)
        elif source:
            fast = (tuple(map(tuple, map(str.split, keys, repeat(source)))), deltas)
        else:
            fast = (tuple((k,) for k in keys), deltas)
        hit = self._fast.get(fast)
        if hit is None:
            unsorted = [(k.split(source) if source else [k], d) for k, d in zip(keys, deltas)]
            order = tuple(sorted(range(len(unsorted)), key=unsorted.__getitem__))
            hit = self._fast[fast] = (self.add([unsorted[i] for i in order]), order)
        return hit

    def add(self, shape: Shape) -> int:
        """The id of ``shape`` (an equal one already in the table, or a new one)."""
        key = _exact_key(shape)
        sid = self._ids.get(key)
        if sid is None:
            self.shapes.append(shape)
            sid = self._ids[key] = len(self.shapes)
        return sid

    def entries(self, sid: int, source: str) -> dict[str, int]:
        """The entries of ``source`` under shape ``sid`` (``1 <= sid <= len``)."""
        return {source.join(parts): d for parts, d in self.shapes[sid - 1]}

    def encode(self) -> bytes:
        """The table as frame 7 of a snapshot."""
        return _enc.encode(self.shapes)

    @classmethod
    def decode(cls, data: bytes | memoryview) -> ShapeTable:
        """Inverse of :meth:`encode`; :class:`msgspec.DecodeError` or
        :class:`msgspec.ValidationError` on malformed bytes."""
        shapes: list[Shape] = _dec.decode(data)
        table = cls()
        table.shapes = shapes
        table._ids = {_exact_key(s): i for i, s in enumerate(shapes, 1)}
        return table


class DoneShapeMap(MutableMapping[str, int]):
    """``source -> shape id`` of a fold's completions (``FoldState.done_shapes``): a dict
    (one that stores its keys' hashes, :mod:`resumelog._hashed_dicts`), except that what
    :meth:`extend` adds in bulk (the fast path's completions, ~10^6 per compaction) is
    kept as the lists it was given, and so are single entries set (the reference rule's
    completions, a few per evaluation round), until a lookup, a removal, a length or an
    iteration asks for the dict (:meth:`settle`: moved in, in order, as ``dict.update``
    would have). The new layer of a spill or a publish reads the lists where they are
    (:meth:`parts`, ``native.sorted_entries``), so a fold that only completes sources
    never inserts their shape ids into a dict: their ids are hashed into
    :attr:`FoldState.added <resumelog.algebra.FoldState.added>` already.

    Exactly a ``dict[str, int]`` for every operation (:meth:`extend` is
    ``update(zip(ids, shape_ids))``), in contents and order."""

    __slots__ = ("_dict", "_ids", "_own", "_sids")

    def __init__(self, items: Iterable[tuple[str, int]] = ()) -> None:
        self._dict: dict[str, int] = hashed_dict(items)
        self._ids: list[list[str]] = []
        self._sids: list[list[int]] = []
        self._own = False  # (the last lists are this map's own: single sets append to them)

    def extend(self, ids: list[str], shape_ids: list[int]) -> None:
        """``update(zip(ids, shape_ids))``, the lists kept as they are (the caller gives
        them up: they must not change)."""
        if len(ids) != len(shape_ids):
            raise ValueError("extend: ids and shape ids differ in length")
        if ids:
            self._ids.append(ids)
            self._sids.append(shape_ids)
            self._own = False

    def settle(self) -> dict[str, int]:
        """The dict, with every :meth:`extend` and set since moved into it."""
        if self._ids:
            d = self._dict
            for ids, sids in zip(self._ids, self._sids):
                d.update(zip(ids, sids))
            self._ids, self._sids, self._own = [], [], False
        return self._dict

    def subset(self, keys: Mapping[str, object]) -> DoneShapeMap:
        """The entries of ``keys`` (in their order), without settling: the lists are
        read for ids of ``keys`` (a membership test per listed id: a spill keeps a few
        completions of ~10^6)."""
        d = self._dict
        found = {s: d[s] for s in keys if s in d}
        for ids, sids in zip(self._ids, self._sids):  # (in order: later ones win, as settled)
            found.update(compress(zip(ids, sids), map(keys.__contains__, ids)))
        return DoneShapeMap((s, found[s]) for s in keys if s in found)

    def parts(self) -> tuple[dict[str, int], list[list[str]], list[list[int]]]:
        """The dict and the lists :meth:`extend` added since (applied after it, in
        order): the mapping's contents, as ``native.sorted_entries`` walks them."""
        return self._dict, self._ids, self._sids

    def __getitem__(self, source: str) -> int:
        return self.settle()[source]

    def __setitem__(self, source: str, shape_id: int) -> None:
        if not self._ids:
            self._dict[source] = shape_id
        elif self._own:
            self._ids[-1].append(source)
            self._sids[-1].append(shape_id)
        else:
            self._ids.append([source])
            self._sids.append([shape_id])
            self._own = True

    def __delitem__(self, source: str) -> None:
        del self.settle()[source]

    def __contains__(self, source: object) -> bool:
        return source in self.settle()

    def __iter__(self) -> Iterator[str]:
        return iter(self.settle())

    def __len__(self) -> int:
        return len(self.settle())

    def get(self, source: str, default: int | None = None) -> int | None:  # type: ignore[override]
        return self.settle().get(source, default)

    def pop(self, source: str, *default: int | None) -> int | None:  # type: ignore[override]
        return self.settle().pop(source, *default)

    def __repr__(self) -> str:
        return f"DoneShapeMap({self.settle()!r})"


class BaseDone:
    """The done entries of a loaded snapshot, decoded on first use.

    ``shape_ids`` (frame 6) gives the shape of every id of ``index`` (empty: none
    stored); ``shapes`` (frame 7) is the encoded table. ``verify`` checks the deferred
    CRCs before any byte of either is used. A format-version-1 snapshot passes
    ``legacy`` instead: a loader of its ``source -> {key: delta}`` map.
    """

    __slots__ = (
        "_legacy",
        "_legacy_map",
        "_shape_ids",
        "_shapes",
        "_table",
        "_verified",
        "_verify",
        "_writers",
        "_writers_raw",
        "index",
        "path",
    )

    def __init__(
        self,
        index: CompletedIndex,
        shape_ids: memoryview,
        shapes: memoryview,
        verify: Callable[[], None],
        path: str = "",
        legacy: Callable[[], dict[str, dict[str, int]]] | None = None,
        writers: memoryview | bytes = b"",
    ) -> None:
        self.index = index
        self._writers_raw = writers
        self._writers: tuple[list[str], dict[str, list[int | list[int]]]] | None = None
        self.path = path
        self._shape_ids = shape_ids
        self._shapes = shapes
        self._verify = verify
        self._verified = False
        self._table: ShapeTable | None = None
        self._legacy = legacy
        self._legacy_map: dict[str, dict[str, int]] | None = None

    def _checked(self) -> None:
        if not self._verified:
            self._verify()
            self._verified = True

    def raw(self) -> tuple[memoryview, memoryview]:
        """Frames 6 and 7 as stored (CRC-checked), to carry into a new snapshot."""
        self._checked()
        return self._shape_ids, self._shapes

    def table(self) -> ShapeTable:
        """The decoded shape table (empty for a version-1 snapshot)."""
        if self._table is None:
            self._checked()
            if self._legacy is not None:
                self._table = ShapeTable()
            else:
                try:
                    self._table = ShapeTable.decode(self._shapes)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    raise CorruptSnapshot(f"malformed shape table: {exc}", self.path) from None
        return self._table

    def _writer_map(self) -> tuple[list[str], dict[str, list[int | list[int]]]]:
        if self._writers is None:
            self._checked()
            dw = decode_done_writers(self._writers_raw, self.path)
            self._writers = (dw.streams, dict(zip(dw.sources, dw.writers)))
        return self._writers

    def has_writers(self) -> bool:
        """Whether frame 8 names any completion (without decoding it)."""
        return bool(self._writers_raw)

    def writers(self, source: str) -> list[int | list[int]] | None:
        """The stored writers of ``source``'s entries (frame-local stream indexes, shape
        order; :class:`~resumelog.format.DoneWriters`), or ``None``."""
        if not self._writers_raw:
            return None
        return self._writer_map()[1].get(source)

    def all_writers(self) -> tuple[list[str], dict[str, list[int | list[int]]]]:
        """``(stream table, source -> writers)`` of frame 8."""
        if not self._writers_raw:
            return [], {}
        return self._writer_map()

    @property
    def legacy(self) -> bool:
        """Loaded from a format-version-1 snapshot (entries by source, no shapes)."""
        return self._legacy is not None

    def shape_ids(self, table: ShapeTable | None) -> Sequence[int] | None:
        """The shape id of every id of the index, numbered as in ``table``: this
        snapshot's own table (:meth:`table`, possibly grown since), or for a
        version-1 snapshot the table its entries are interned into (required then).
        ``None`` when no id has stored entries."""
        if self._legacy is None:
            self._checked()
            if not self._shape_ids:
                return None
            try:
                return counted_uints(self._shape_ids, self.index.count)
            except ValueError:  # decode_snapshot_frames checked it; a bad caller
                raise CorruptSnapshot("shape ids do not match the declared count", self.path) from None
        legacy = self._legacy_entries()
        if not legacy:
            return None
        if table is None:
            raise ValueError("a version-1 snapshot's entries need a table to be interned into")
        ids = [0] * self.index.count
        for source, entries in legacy.items():
            i = self.index.find(source)
            if i >= 0:
                ids[i] = table.intern(entries, source)
        return ids

    def _legacy_entries(self) -> dict[str, dict[str, int]]:
        if self._legacy_map is None:
            self._checked()
            assert self._legacy is not None
            self._legacy_map = self._legacy()
        return self._legacy_map

    def get(self, source: str) -> Mapping[str, int] | None:
        """The stored final entries of completed ``source``, or ``None``."""
        if self._legacy is not None:
            return self._legacy_entries().get(source)
        i = self.index.find(source)
        if i < 0 or not self._shape_ids:
            return None
        table = self.table()
        ids = self.shape_ids(table)
        sid = ids[i] if ids is not None else 0
        if not sid:
            return None
        if sid > len(table):
            raise CorruptSnapshot(f"shape id {sid} outside the shape table ({len(table)} shapes)", self.path)
        return table.entries(sid, source)
