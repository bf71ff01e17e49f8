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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import ray
import ray.data

from resumelog.errors import ResumelogError

ROW_HASH_COLUMN = "row_hash"
"""Ray's deterministic per-row hash column (``include_row_hash=True``)."""

_ROWS_KEY = "ray_data:rows:"  # + path: the read's +N per input file
_SINK_KEY = "ray_data:sink:"  # + digest: a write task's -k per source
_MAP_KEY = "ray_data:map:"  # + stage + digest: a map's out - in per source


# ---------------------------------------------------------------------- errors


class UnfilterableDataset(ResumelogError, ValueError):
    """The dataset has no column to attribute rows to sources (an id or source column).

    Checkpointing it would silently reprocess (or silently skip) data. Read with
    :func:`read_parquet` / :func:`read` (they add Ray's ``path`` column), or name a
    column that holds the source id of each row.
    """


class UnsafeWriteMode(ResumelogError, ValueError):
    """The write mode would delete or skip outputs that earlier runs completed.

    A resumed run appends: files of completed sources stay, files of sources being
    redone are replaced by name. Only ``mode="append"`` is accepted.
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


def _digest(table: pa.Table) -> str:
    """Deterministic digest of a group of rows: their ``row_hash`` values in order when
    present, else the Arrow IPC bytes of the rows (content). A retried task sees the
    same rows in the same order, so it gets the same digest."""
    h = hashlib.blake2b(digest_size=8)
    if ROW_HASH_COLUMN in table.column_names:
        col = table.column(ROW_HASH_COLUMN)
        if col.null_count == 0:
            h.update(b"rh")
            h.update(np.ascontiguousarray(col.to_numpy(), dtype="<u8").tobytes())
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
