"""Row level: the completed ids as one Arrow array, and a filter dropping their rows.

:func:`completed_ids` builds the array zero-copy from the snapshot;
:class:`_IdMatcher` matches a block's id column against it with vectorised
lookups (also used by the native :class:`~resumelog.ray_data.ResumelogCheckpointFilter`);
:func:`filter_completed` applies it per block.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data

from resumelog.checkpoint import Checkpoint
from resumelog.ray_data._common import UnfilterableDataset, _check_schema

logger = logging.getLogger("resumelog")

_LARGE_SET = 65_536  # above this, string ids are matched through a reusable hash index

_U64_MAX = np.uint64(0xFFFFFFFFFFFFFFFF)
_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)


def _string_hashes(arr: Any, chunk: int = 1 << 16) -> Any:
    """64-bit hashes of the strings of a ``large_string`` array, vectorised over rows.

    Reads the Arrow buffers in place: pass ``k`` takes each string's bytes
    ``8k .. 8k+7`` as one little-endian word (a strided ``uint64`` view of the data
    buffer at every byte offset, gathered by the rows' offsets; bytes past the string
    are masked off) and mixes it in, so strings of up to ``L`` bytes take
    ``ceil(L / 8)`` numpy passes and no Python object per string. Rows are hashed
    ``chunk`` at a time, so the temporaries stay small beside the 8-byte result.
    Null rows hash as empty strings (callers mask them).
    """
    n = len(arr)
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int64, count=n + 1, offset=arr.offset * 8)
    data = bufs[2]
    blob = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    if len(blob) < 8:  # the sliding view needs one full word
        blob = np.concatenate([blob, np.zeros(8, np.uint8)])
    last = len(blob) - 8
    windows = np.ndarray(shape=(last + 1,), dtype="<u8", buffer=blob, offset=0, strides=(1,))
    out = np.empty(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for lo in range(0, n, chunk):
            starts = offsets[lo : lo + chunk + 1]
            lens = starts[1:] - starts[:-1]
            starts = starts[:-1]
            h = lens.astype(np.uint64) * _M1
            rows = np.arange(len(lens))
            for k in range(0, int(lens.max()) if len(lens) else 0, 8):
                if k:
                    rows = rows[lens[rows] > k]
                pos = starts[rows] + k
                q = np.minimum(pos, last)
                word = windows[q] >> ((pos - q).astype(np.uint64) * np.uint64(8))
                left = np.minimum(lens[rows] - k, 8).astype(np.uint64)
                word &= np.where(left >= 8, _U64_MAX, (np.uint64(1) << (left * np.uint64(8))) - np.uint64(1))
                x = (h[rows] ^ word) * _M2
                x ^= x >> np.uint64(31)
                h[rows] = x * _M3
            h ^= h >> np.uint64(30)
            h *= _M2
            h ^= h >> np.uint64(27)
            h *= _M3
            h ^= h >> np.uint64(31)
            out[lo : lo + len(h)] = h
    return out


class _StringIndex:
    """A hash index over a ``large_string`` array, built once, probed per block.

    Holds the sorted 64-bit hashes of the ids (8 bytes per id) and the position of
    each in the array (4 bytes per id below 2**32 ids) beside the Arrow buffers
    themselves: no Python object per id. A probe hashes the block's strings
    (:func:`_string_hashes`), binary-searches the sorted hashes and confirms each
    candidate by comparing the strings themselves (``pyarrow.compute.equal`` on the
    taken rows), so a hash collision never drops a row that is not in the set.
    """

    def __init__(self, ids: Any) -> None:
        self.ids = ids
        h = _string_hashes(ids)
        order = np.argsort(h)
        self.perm = order.astype(np.uint32) if len(ids) < 2**32 else order
        del order
        h.sort()
        self.hashes = h

    @staticmethod
    def index_bytes(n: int) -> int:
        """Bytes the index holds for ``n`` ids beside the Arrow array (12 per id)."""
        return n * (8 + (4 if n < 2**32 else 8))

    @staticmethod
    def peak_bytes(n: int) -> int:
        """Bytes beside the Arrow array while the index is built: the hashes, ``argsort``'s
        ``int64`` order and the positions taken from it (20 per id), then 12 per id."""
        return _StringIndex.index_bytes(n) + (n * 8 if n < 2**32 else 0)

    def mask(self, col: Any) -> Any:
        """Boolean numpy mask of ``col`` (a ``large_string`` array) rows found in the set."""
        n = len(self.hashes)
        q = _string_hashes(col)
        first = np.searchsorted(self.hashes, q)
        found = np.zeros(len(col), dtype=bool)
        rows = np.nonzero(first < n)[0]
        k = 0
        while rows.size:
            j = first[rows] + k
            inside = j < n
            rows, j = rows[inside], j[inside]
            same = self.hashes[j] == q[rows]
            rows, j = rows[same], j[same]
            if not rows.size:
                break
            stored = self.ids.take(pa.array(self.perm[j]))
            probe = col.take(pa.array(rows))
            eq = pc.fill_null(pc.equal(stored, probe), False).to_numpy(zero_copy_only=False)
            found[rows[eq]] = True
            rows = rows[~eq]  # another id with the same hash may follow
            k += 1
        return found


def completed_ids(ckpt: Checkpoint) -> pa.Array:
    """Every completed source id of ``ckpt`` as one Arrow string array.

    Built without decoding the snapshot's ids into Python strings: the snapshot's id
    blob and offsets become the array's buffers (zero-copy), then sources completed
    or reset since the snapshot are applied.

    Returns
    -------
    pyarrow.LargeStringArray
    """
    try:
        return _completed_ids_fast(ckpt)
    except Exception:  # internal layout changed: take the slow, public way
        logger.debug("resumelog: zero-copy completed ids unavailable", exc_info=True)
        return pa.array(list(ckpt.completed), type=pa.large_string())


def _completed_ids_fast(ckpt: Checkpoint) -> pa.Array:
    state = ckpt._state
    parts = []
    masked: set[str] = set()  # tombstones of the layers above: what they uncompleted
    for layer in reversed(state.base.layers):
        value_set = pa.array(sorted(masked), type=pa.large_string()) if masked else None
        for block in layer.index.blocks():
            index = block.index
            n = index.count
            view = memoryview(index._offsets)
            offsets = pa.py_buffer(view.cast("B"))
            if view.itemsize == 4:  # u32 offsets (blob under 4 GiB): widened at C speed
                u32 = pa.Array.from_buffers(pa.uint32(), n + 1, [None, offsets])
                offsets = u32.cast(pa.int64()).buffers()[1]
            part = pa.LargeStringArray.from_buffers(n, offsets, pa.py_buffer(index._blob))
            if value_set is not None:
                part = pc.filter(part, pc.invert(pc.is_in(part, value_set=value_set)))
            parts.append(part)
        masked |= layer.tombstones
    arr = pa.concat_arrays(parts) if parts else pa.array([], type=pa.large_string())
    n = len(arr)
    drop = set(state.removed) | set(state.added)
    if drop and n:
        arr = pc.filter(arr, pc.invert(pc.is_in(arr, value_set=pa.array(sorted(drop), type=pa.large_string()))))
    if state.added:
        arr = pa.concat_arrays([arr, pa.array(list(state.added), type=pa.large_string())])
    return arr


class _IdMatcher:
    """Vectorised membership of a block's id column in a fixed set of ids.

    Integer columns: a sorted ``int64`` array and ``numpy.searchsorted``. Strings:
    ``pyarrow.compute.is_in``, whose hash table is rebuilt on every call, so above
    ``_LARGE_SET`` ids a :class:`_StringIndex` (sorted 64-bit hashes over the Arrow
    buffers, built once, reused per block; no Python object per id).
    """

    def __init__(self, ids: Any) -> None:
        if isinstance(ids, np.ndarray):
            ids = pa.array(ids)
        if isinstance(ids, pa.ChunkedArray):
            ids = ids.combine_chunks()
        self._raw = ids
        self._strs: Any = None
        self._ints: Any = None
        self._index: Any = None
        self._values: dict[str, Any] = {}
        self.size = len(ids)

    @property
    def ids(self) -> Any:
        """The ids as a large-string array."""
        if self._strs is None:
            raw = self._raw
            self._strs = raw if pa.types.is_large_string(raw.type) else pc.cast(raw, pa.large_string())
        return self._strs

    def _int_ids(self) -> Any:
        if self._ints is None:
            raw = self._raw
            if pa.types.is_integer(raw.type) and not pa.types.is_uint64(raw.type):
                ints = pc.cast(raw.drop_null(), pa.int64())
            else:
                ok = pc.match_substring_regex(self.ids, r"^-?[0-9]{1,18}$")
                ints = pc.cast(pc.filter(self.ids, ok), pa.int64())
            self._ints = np.sort(ints.to_numpy())
        return self._ints

    def mask(self, col: Any) -> Any:
        """Boolean numpy mask: ``True`` where the row's id is in the set (nulls: False)."""
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        n = len(col)
        if not self.size or not n:
            return np.zeros(n, dtype=bool)
        t = col.type
        valid = col.is_valid().to_numpy(zero_copy_only=False) if col.null_count else None
        if pa.types.is_integer(t) and not pa.types.is_uint64(t):
            ints = self._int_ids()
            vals = pc.fill_null(col, 0).cast(pa.int64()).to_numpy()
            pos = np.searchsorted(ints, vals)
            pos[pos >= len(ints)] = 0
            found = ints[pos] == vals if len(ints) else np.zeros(n, dtype=bool)
        else:
            if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
                col = pc.cast(col, pa.string())
            if self.size > _LARGE_SET:
                found = self._hash_mask(col)
            else:
                key = str(col.type)
                vs = self._values.get(key)
                if vs is None:
                    vs = self._values[key] = pc.SetLookupOptions(value_set=pc.cast(self.ids, col.type))
                found = pc.is_in(col, options=vs).to_numpy(zero_copy_only=False)
        return found & valid if valid is not None else found

    def _hash_mask(self, col: Any) -> Any:
        if self._index is None:
            self._index = _StringIndex(self.ids)
        if not pa.types.is_large_string(col.type):
            col = pc.cast(col, pa.large_string())
        return self._index.mask(col)

    @staticmethod
    def footprint(ids: Any) -> int:
        """Bytes a matcher over ``ids`` needs: the array plus its index, at its peak.

        What :class:`~resumelog.ray_data.ResumelogCheckpointManager` reports to Ray
        (Ray reserves 1.5x this per filter actor): integer ids add a sorted ``int64``
        copy (8 bytes each); string ids (cast to ``large_string`` if they are not)
        add the :class:`_StringIndex` while it is built (20 bytes each; it keeps 12).
        """
        if isinstance(ids, np.ndarray):
            ids = pa.array(ids)
        n = len(ids)
        t = ids.type
        if pa.types.is_integer(t) and not pa.types.is_uint64(t):
            return int(ids.nbytes) + 8 * n
        nbytes = int(ids.nbytes)
        if not pa.types.is_large_string(t):
            nbytes += 4 * (n + 1)  # 64-bit offsets
            if not (pa.types.is_string(t) or pa.types.is_binary(t)):
                nbytes += 20 * n  # a decimal (or other) text form of each value
        return nbytes + _StringIndex.peak_bytes(n)

    def keep(self, table: pa.Table, column: str) -> pa.Table:
        """``table`` without the rows whose ``column`` value is in the set."""
        m = self.mask(table.column(column))
        if not m.any():
            return table
        return table.filter(pa.array(~m))


_MATCHERS: dict[str, _IdMatcher] = {}
_MATCHERS_LOCK = threading.Lock()


def _matcher(ref: Any) -> _IdMatcher:
    """This process's matcher for the id array behind ``ref`` (built once per process)."""
    key = ref.hex() if hasattr(ref, "hex") else str(id(ref))
    with _MATCHERS_LOCK:
        m = _MATCHERS.get(key)
        if m is None:
            if len(_MATCHERS) > 8:
                _MATCHERS.clear()
            m = _MATCHERS[key] = _IdMatcher(ray.get(ref))
        return m


class _RowFilter:
    def __init__(self, ref: Any, id_column: str) -> None:
        self.ref = ref
        self.id_column = id_column

    def __call__(self, table: pa.Table) -> pa.Table:
        if self.id_column not in table.column_names:
            raise UnfilterableDataset(
                f"a block has no id column {self.id_column!r} (columns: {table.column_names}); "
                "completed rows cannot be filtered out"
            )
        return _matcher(self.ref).keep(table, self.id_column)


def filter_completed(ds: ray.data.Dataset, ckpt: Checkpoint, id_column: str, **kwargs: Any) -> ray.data.Dataset:
    """Drop the rows of ``ds`` whose ``id_column`` value is a completed source id.

    The completed ids are gathered once on the driver (:func:`completed_ids`), put
    in the object store once, and matched per block with vectorised Arrow/NumPy
    code (no Python per row). Integer ids match their decimal string form.

    Parameters
    ----------
    ds : ray.data.Dataset
    ckpt : Checkpoint
        Holds the completed ids (e.g. from ``write_parquet(..., id_column=...)``).
    id_column : str
        Column of unique row ids.
    **kwargs
        Passed to ``Dataset.map_batches``.

    Returns
    -------
    ray.data.Dataset
        ``ds`` itself if nothing is complete.

    Raises
    ------
    UnfilterableDataset
        ``ds``'s schema has no ``id_column`` (e.g. ``ray.data.from_items`` of rows
        without ids): refusing beats silently reprocessing everything. If the
        schema is only known at run time, the first block without the column
        raises it in its task.
    """
    _check_schema(ds, id_column)
    ids = completed_ids(ckpt)
    if not len(ids):
        return ds
    return ds.map_batches(_RowFilter(ray.put(ids), id_column), batch_format="pyarrow", **kwargs)
