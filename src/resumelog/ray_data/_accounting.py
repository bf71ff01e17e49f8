"""Row-count changes between the read and the write: the accounted ``map_batches``.

:func:`map_batches` wraps a batch function (or class) so each batch records
``out - in`` per source, keyed on the stage and a digest of its input rows, and
gives rows of a changed source new deterministic ``row_hash`` values.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.data
from ray.data.block import BlockAccessor

from resumelog.checkpoint import Checkpoint, WriterHandle
from resumelog.ray_data._common import (
    _MAP_KEY,
    ROW_HASH_COLUMN,
    UnfilterableDataset,
    _digest,
    _groups,
    _hash16,
    _normalize_row_hash,
)
from resumelog.ray_data._planning import _PLANS
from resumelog.ray_data._worker import _worker_writer


def _restamp(digest: str, n: int) -> Any:
    """``n`` new deterministic row hashes derived from a group digest (splitmix64), as
    ``int64`` (the type of :data:`~resumelog.ray_data.ROW_HASH_COLUMN`)."""
    seed = np.uint64(int(digest, 16))
    with np.errstate(over="ignore"):
        k = seed + np.arange(n, dtype=np.uint64)
        k ^= k >> np.uint64(30)
        k *= np.uint64(0xBF58476D1CE4E5B9)
        k ^= k >> np.uint64(27)
        k *= np.uint64(0x94D049BB133111EB)
        k ^= k >> np.uint64(31)
    return pa.array(k.view(np.int64), type=pa.int64())


class _Accounting:
    """Records ``out - in`` per source around a batch function (see :func:`map_batches`)."""

    def __init__(
        self,
        handle: WriterHandle,
        stage: str,
        source_column: str,
        source_id: Callable[[str], str] | None,
        batch_format: str,
    ) -> None:
        self.handle = handle
        self.stage = stage
        self.source_column = source_column
        self.source_id = source_id
        self.batch_format = batch_format

    def __call__(self, fn: Callable[..., Any], table: pa.Table, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        table = _normalize_row_hash(table)  # int64 whatever an earlier native step made of it
        ins = _groups(table, self.source_column, self.source_id)
        batch = (
            table
            if self.batch_format == "pyarrow"
            else BlockAccessor.for_block(table).to_batch_format(self.batch_format)
        )
        result = fn(batch, *args, **kwargs)
        if isinstance(result, Iterator):
            parts = [_to_arrow(r) for r in result]
            out = pa.concat_tables(parts, promote_options="default") if parts else table.schema.empty_table()
        else:
            out = _to_arrow(result)
        out = _normalize_row_hash(out)  # e.g. uint64 back from a numpy or pandas batch
        if out.num_rows and self.source_column not in out.column_names:
            raise UnfilterableDataset(
                f"map_batches stage {self.stage!r} dropped the source column {self.source_column!r}; keep it "
                "until the write (resumelog.ray_data.write_parquet drops bookkeeping columns)"
            )
        outs = _groups(out, self.source_column, self.source_id)
        has_hash = ROW_HASH_COLUMN in table.column_names
        records: list[tuple[str, str, int]] = []
        digests = {s: _digest(t) for s, t in ins.items()}
        restamped: list[pa.Table] = []
        changed = False
        for s in dict.fromkeys([*ins, *outs]):
            n_in = ins[s].num_rows if s in ins else 0
            t_out = outs.get(s)
            n_out = t_out.num_rows if t_out is not None else 0
            d = digests.get(s) or _digest(t_out)
            if n_out > n_in and not has_hash:
                # keyed by content, two batches of equal rows of one source would share
                # the key of their +k, which the fold counts once: the source would
                # drain while rows of the second batch are still on their way
                raise UnfilterableDataset(
                    f"map_batches stage {self.stage!r} adds rows to source {s!r}, whose rows have no "
                    f"{ROW_HASH_COLUMN!r}: its record would be keyed by the rows' content, which two batches of "
                    "equal rows share; read with a reader that gives row hashes (rd.read_parquet, or rd.read "
                    "with a Ray reader that takes include_row_hash=True)"
                )
            if n_out != n_in:
                records.append((f"{_MAP_KEY}{self.stage}:{d}", s, n_out - n_in))
            if t_out is None:
                continue
            if has_hash and (n_out != n_in or ROW_HASH_COLUMN not in t_out.column_names):
                changed = True
                t_out = _set_column(t_out, ROW_HASH_COLUMN, _restamp(_hash16(f"{self.stage}:{d}"), n_out))
            restamped.append(t_out)
        if records:  # a positive delta is durable before its rows move on (the barrier)
            _worker_writer(self.handle).commit(records, sync=any(d > 0 for _, _, d in records))
        if changed:
            return pa.concat_tables(restamped, promote_options="default")
        return out


def _set_column(table: pa.Table, name: str, values: Any) -> pa.Table:
    i = table.schema.get_field_index(name)
    if i >= 0:
        return table.set_column(i, name, values)
    return table.append_column(name, values)


def _to_arrow(batch: Any) -> pa.Table:
    if isinstance(batch, pa.Table):
        return batch
    block = BlockAccessor.batch_to_block(batch)
    return BlockAccessor.for_block(block).to_arrow()


class _AccountedFn:
    def __init__(self, fn: Callable[..., Any], acct: _Accounting) -> None:
        self.fn = fn
        self.acct = acct

    def __call__(self, table: pa.Table, *args: Any, **kwargs: Any) -> Any:
        return self.acct(self.fn, table, args, kwargs)


def _accounted_class(cls: type, acct: _Accounting) -> type:
    class Accounted:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._inner = cls(*args, **kwargs)

        def __call__(self, table: pa.Table, *args: Any, **kwargs: Any) -> Any:
            return acct(self._inner, table, args, kwargs)

    Accounted.__name__ = Accounted.__qualname__ = cls.__name__
    return Accounted


def map_batches(
    ds: ray.data.Dataset,
    ckpt: Checkpoint,
    fn: Callable[..., Any] | type,
    *,
    stage: str | None = None,
    source_column: str = "path",
    source_id: Callable[[str], str] | None = None,
    batch_format: str = "pyarrow",
    **kwargs: Any,
) -> ray.data.Dataset:
    """``ds.map_batches(fn)`` that accounts for rows the function drops or adds.

    For each batch and source it records ``out - in`` (filters: negative, explode:
    positive, flushed before the batch moves on), keyed on the stage and a digest of
    the input rows, so retries deduplicate. Output rows of a source whose count
    changed get new deterministic ``row_hash`` values. A 1:1 function records
    nothing; plain ``ds.map_batches`` is fine for those.

    Parameters
    ----------
    ds : ray.data.Dataset
        From :func:`read_parquet` / :func:`read` (needs the source column).
    ckpt : Checkpoint
        The checkpoint of the read.
    fn : callable or class
        As for ``Dataset.map_batches``; a class runs in an actor pool (pass
        ``concurrency``). It must keep the source column in its output.
    stage : str, optional
        Unique name of this step in the pipeline (default: ``fn``'s qualified
        name); two accounted steps must not share one.
    source_column : str, default "path"
    source_id : callable, optional
        As given to the read (default: the one the read of ``ckpt`` used).
    batch_format : str, default "pyarrow"
        The format ``fn`` receives (``"pandas"``, ``"numpy"``, ``"pyarrow"``).
    **kwargs
        Passed to ``Dataset.map_batches`` (``batch_size``, ``concurrency``,
        ``fn_args``, ``fn_constructor_args``...).

    Returns
    -------
    ray.data.Dataset

    Raises
    ------
    UnfilterableDataset
        In a task, if ``fn``'s output lacks the source column.
    """
    plan = _PLANS.get(ckpt)
    if source_id is None and plan is not None and plan.source_column == source_column:
        source_id = plan.source_id
    name = stage or getattr(fn, "__qualname__", None) or type(fn).__name__
    acct = _Accounting(ckpt.handle(), re.sub(r"[^A-Za-z0-9._<>-]", "_", name), source_column, source_id, batch_format)
    wrapped: Any = _accounted_class(fn, acct) if isinstance(fn, type) else _AccountedFn(fn, acct)
    kwargs.pop("batch_format", None)
    return ds.map_batches(wrapped, batch_format="pyarrow", **kwargs)
