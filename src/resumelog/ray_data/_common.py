"""Shared pieces of :mod:`resumelog.ray_data`: constants, errors, row helpers.

The names of the journal keys the pipeline records under, the two public errors,
and the small vectorised helpers the read, the accounted map, the sinks and the
filter all use: Ray's ``path`` form of a path, the deterministic digests that key
retried tasks, the split of a block by source, and the driver-side schema check.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import ray
import ray.data

from resumelog.errors import ResumelogError

ROW_HASH_COLUMN = "row_hash"
"""The deterministic per-row hash column: Ray's ``include_row_hash=True`` hash of file
path and row position, carried as ``int64`` (the same 64 bits as Ray's ``uint64``).

:func:`~resumelog.ray_data.read_parquet` reinterprets Ray's ``uint64`` as ``int64``
because Ray's row-based steps (``Dataset.map``, ``flat_map``) rebuild columns from
Python ints, and a Python int of 2**63 or more does not fit Arrow's inferred
``int64``: Ray then stores the column as pickled Python objects. The writes and
:func:`~resumelog.ray_data.map_batches` read the column whatever type it arrives in
(any integer, decimal strings, 8-byte binary, Ray's pickled objects).
"""

_ROWS_KEY = "ray_data:rows:"  # + path: the read's +N per input file
_SINK_KEY = "ray_data:sink:"  # + digest: a write task's -k per source
_MAP_KEY = "ray_data:map:"  # + stage + digest: a map's out - in per source


# ---------------------------------------------------------------------- errors


class UnfilterableDataset(ResumelogError, ValueError):
    """The dataset has no column to attribute rows to sources (an id or source column).

    Checkpointing it would silently reprocess (or silently skip) data. Read with
    :func:`read_parquet` / :func:`read` (they add Ray's ``path`` column), or name a
    column that holds the source id of each row.

    Also raised when a step between :func:`read_parquet` and the write dropped the
    ``row_hash`` column (e.g. ``select_columns`` without it): the write keys and names
    each task's output by those hashes, which content cannot replace (two tasks with
    identical rows of one file would share a key and an output name). Keep
    ``"row_hash"`` in the selection; the write drops it from its output. Fix the
    pipeline; retrying does not help.
    """


class UnsafeWriteMode(ResumelogError, ValueError):
    """The write mode would delete or skip outputs that earlier runs completed.

    A resumed run appends: files of completed sources stay, and the sources being
    redone are published under the new run's names (``read_committed`` shows the run
    that completed each). Only ``mode="append"`` is accepted. Fix the call.
    """


# ---------------------------------------------------------------------- small helpers


def _ray_path(path: str) -> str:
    """The form Ray puts in its ``path`` column: the protocol stripped."""
    try:
        from ray.data.datasource.path_util import _unwrap_protocol
    except ImportError:  # pragma: no cover - older/newer Ray layout
        m = re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", path)
        return path[m.end() :] if m else path
    return str(_unwrap_protocol(path))  # type: ignore[no-untyped-call]


def _hash16(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


_U64_MASK = (1 << 64) - 1


def _row_hash_values(col: pa.Array | pa.ChunkedArray) -> Any:
    """The 64-bit values of a ``row_hash`` column as a ``uint64`` numpy array, or ``None``.

    Accepts the types Ray Data steps hand the column back in: any integer type
    (``int64``/``uint64`` reinterpreted bit for bit, narrower ones widened), decimal
    strings, 8-byte (fixed-size) binary, and Ray's pickled-object extension type (what
    a row-based ``map`` produces from Python ints that do not fit ``int64``; decoded
    one value at a time, the only non-vectorised case). ``None`` for a column with
    nulls or of another type (floats: a lossy conversion already happened).
    """
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if col.null_count:
        return None
    t = col.type
    if isinstance(t, pa.ExtensionType):
        storage = col.storage
        if pa.types.is_integer(storage.type) or pa.types.is_fixed_size_binary(storage.type):
            return _row_hash_values(storage)
        try:
            objs = col.to_numpy(zero_copy_only=False)  # Ray's pickled objects: Python / numpy ints
            return np.fromiter((int(v) & _U64_MASK for v in objs), dtype=np.uint64, count=len(objs))
        except (TypeError, ValueError, OverflowError, pa.ArrowException):
            return None
    if pa.types.is_integer(t):
        if t.bit_width != 64:
            col = pc.cast(col, pa.int64())
        return col.view(pa.uint64()).to_numpy(zero_copy_only=False)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        try:
            return pc.cast(col, pa.uint64()).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid:
            try:
                return pc.cast(col, pa.int64()).view(pa.uint64()).to_numpy(zero_copy_only=False)
            except pa.ArrowInvalid:
                return None
    if pa.types.is_fixed_size_binary(t) and t.byte_width == 8:
        buf = col.buffers()[1]
        return np.frombuffer(buf, dtype="<u8", count=len(col), offset=col.offset * 8).copy()
    if (pa.types.is_binary(t) or pa.types.is_large_binary(t)) and len(col):
        if pc.all(pc.equal(pc.binary_length(col), 8)).as_py():
            fixed = pa.Array.from_buffers(pa.binary(8), len(col), [None, pc.cast(col, pa.large_binary()).buffers()[2]])
            return _row_hash_values(fixed)
        return None
    return None


def _normalize_row_hash(table: pa.Table) -> pa.Table:
    """``table`` with its ``row_hash`` column as ``int64`` (see :data:`ROW_HASH_COLUMN`),
    whatever type a Ray Data step left it in; unchanged if absent or undecodable."""
    i = table.schema.get_field_index(ROW_HASH_COLUMN)
    if i < 0 or table.schema.field(i).type == pa.int64():
        return table
    values = _row_hash_values(table.column(i))
    if values is None:
        return table
    return table.set_column(i, ROW_HASH_COLUMN, pa.array(values.view(np.int64), type=pa.int64()))


def _signed_row_hash(table: pa.Table) -> pa.Table:
    """The read's batch step: Ray's ``uint64`` ``row_hash`` reinterpreted as ``int64``."""
    return _normalize_row_hash(table)


def _digest(table: pa.Table) -> str:
    """Deterministic digest of a group of rows: their ``row_hash`` values in order when
    present (in any type :func:`_row_hash_values` decodes; the same digest for the same
    64 bits), else the Arrow IPC bytes of the rows (content). A retried task sees the
    same rows in the same order, so it gets the same digest."""
    h = hashlib.blake2b(digest_size=8)
    if ROW_HASH_COLUMN in table.column_names:
        values = _row_hash_values(table.column(ROW_HASH_COLUMN))
        if values is not None:
            h.update(b"rh")
            h.update(np.ascontiguousarray(values, dtype="<u8").tobytes())
            return h.hexdigest()
    sink = pa.BufferOutputStream()
    combined = table.combine_chunks()
    with pa.ipc.new_stream(sink, combined.schema) as ipc:
        ipc.write_table(combined)
    h.update(b"ipc")
    h.update(sink.getvalue())
    return h.hexdigest()


def _groups(table: pa.Table, column: str, source_id: Callable[[str], str] | None) -> dict[str, pa.Table]:
    """Split ``table`` by source (the value of ``column``, mapped by ``source_id``), vectorised."""
    if table.num_rows == 0:
        return {}
    if column not in table.column_names:
        raise UnfilterableDataset(
            f"a block has no {column!r} column (columns: {table.column_names}); rows cannot be "
            "attributed to sources. Keep the source column until the write (drop it there)."
        )
    col = table.column(column)
    if col.null_count:
        raise UnfilterableDataset(f"{col.null_count} rows have a null {column!r}: every row needs a source")
    enc = pc.dictionary_encode(col).combine_chunks()
    values = enc.dictionary.to_pylist()
    out: dict[str, list[pa.Table]] = {}
    if len(values) == 1:
        parts: list[tuple[str, pa.Table]] = [(values[0], table)]
    else:
        codes = enc.indices.to_numpy(zero_copy_only=False)
        order = np.argsort(codes, kind="stable")
        counts = np.bincount(codes, minlength=len(values))
        ordered = table.take(pa.array(order))
        parts = []
        start = 0
        for v, c in zip(values, counts.tolist()):
            if c:
                parts.append((v, ordered.slice(start, c)))
                start += c
    for v, t in parts:
        if not isinstance(v, str):
            raise UnfilterableDataset(f"source column {column!r} must hold strings, got {type(v).__name__}")
        out.setdefault(source_id(v) if source_id else v, []).append(t)
    return {s: ts[0] if len(ts) == 1 else pa.concat_tables(ts) for s, ts in out.items()}


def _filesystem(path: str, filesystem: pafs.FileSystem | None) -> tuple[pafs.FileSystem, str]:
    if filesystem is not None:
        return filesystem, _ray_path(path)
    fs, p = pafs.FileSystem.from_uri(path if "://" in path else os.path.abspath(path))
    return fs, p


def _check_row_hash(ds: ray.data.Dataset) -> None:
    """Refuse on the driver a dataset that visibly lost :data:`ROW_HASH_COLUMN`.

    Looks at the known schema, and at the column projections of the logical plan
    (``select_columns`` or ``rename_columns``, Ray's ``Project``): one that neither keeps
    every column nor names ``row_hash`` drops it. Steps that drop it otherwise (a
    batch function's output) are caught by the first write task, before it writes.
    """
    try:
        schema = ds.schema(fetch_if_missing=False)
    except TypeError:  # pragma: no cover - older signature
        schema = None
    names = getattr(schema, "names", None)
    if names is not None and ROW_HASH_COLUMN not in names:
        raise UnfilterableDataset(_row_hash_dropped(list(names)))
    try:
        todo = [ds._logical_plan.dag]
    except AttributeError:  # pragma: no cover - another Ray layout: the write task checks
        return
    while todo:
        op = todo.pop()
        exprs = getattr(op, "exprs", None) if type(op).__name__ == "Project" else None
        if exprs is not None:
            star = any(type(e).__name__ == "StarExpr" for e in exprs)
            renamed = any(
                getattr(e, "_is_rename", False) and getattr(getattr(e, "expr", None), "name", None) == ROW_HASH_COLUMN
                for e in exprs
            )
            kept = [getattr(e, "name", None) for e in exprs]
            if (not star or renamed) and ROW_HASH_COLUMN not in kept:
                raise UnfilterableDataset(_row_hash_dropped([str(k) for k in kept if k is not None]))
        todo.extend(getattr(op, "input_dependencies", None) or [])


def _row_hash_dropped(columns: list[str]) -> str:
    return (
        f"the dataset lost the {ROW_HASH_COLUMN!r} column read_parquet added (columns: {columns}): the write "
        "keys and names each task's output by it. Keep it in select_columns/drop_columns steps (write_parquet "
        "drops it from the output), or change row counts with resumelog.ray_data.map_batches, which re-adds it"
    )


def _check_schema(ds: ray.data.Dataset, column: str) -> None:
    """Refuse on the driver a dataset whose known schema lacks ``column`` (no execution)."""
    try:
        schema = ds.schema(fetch_if_missing=False)
    except TypeError:  # pragma: no cover - older signature
        schema = None
    names = getattr(schema, "names", None)
    if names is not None and column not in names:
        raise UnfilterableDataset(
            f"the dataset has no {column!r} column (columns: {list(names)}): rows cannot be attributed "
            "to sources, so resumelog cannot skip or record them. Read with resumelog.ray_data.read_parquet"
            "/read (adds 'path'), or name a column that holds each row's source or id."
        )
