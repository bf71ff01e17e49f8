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
    base = state.base
    n = base.count
    if n:
        view = memoryview(base._offsets)
        offsets = pa.py_buffer(view.cast("B"))
        if view.itemsize == 4:  # u32 offsets (format v2, blob under 4 GiB): widened at C speed
            u32 = pa.Array.from_buffers(pa.uint32(), n + 1, [None, offsets])
            offsets = u32.cast(pa.int64()).buffers()[1]
        blob = pa.py_buffer(base._blob)
        arr = pa.LargeStringArray.from_buffers(n, offsets, blob)
    else:
        arr = pa.array([], type=pa.large_string())
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
    ``_LARGE_SET`` ids a ``pandas.Index`` (hash table built once, reused per block).
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
                found = self._pandas_mask(col)
            else:
                key = str(col.type)
                vs = self._values.get(key)
                if vs is None:
                    vs = self._values[key] = pc.SetLookupOptions(value_set=pc.cast(self.ids, col.type))
                found = pc.is_in(col, options=vs).to_numpy(zero_copy_only=False)
        return found & valid if valid is not None else found

    def _pandas_mask(self, col: Any) -> Any:
        if self._index is None:
            import pandas as pd  # type: ignore[import-untyped]

            self._index = pd.Index(self.ids.to_numpy(zero_copy_only=False))
        return self._index.get_indexer(col.to_numpy(zero_copy_only=False)) >= 0

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
