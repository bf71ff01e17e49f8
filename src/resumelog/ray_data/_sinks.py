"""Checkpointed writes: sinks that record completion after their outputs exist.

:class:`ParquetSink` publishes one file per source per write task as an exactly-once
output (:meth:`Writer.output <resumelog.Writer.output>`, the same protocol as every
other adapter) and :class:`CheckpointingDatasink` wraps any ``Datasink``; both record
each task's ``-rows`` per source, or its row ids, after the task's outputs exist.
:func:`write_parquet` and :func:`write_datasink` run them and wait for the read's
sources to drain; :func:`read_committed` reads back the committed Parquet outputs.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
import ray.data
from ray.data.block import BlockAccessor
from ray.data.datasource import Datasink

from resumelog.checkpoint import Checkpoint, WriterHandle
from resumelog.journal import Writer
from resumelog.outputs import _ckpt_options, committed, output_name, output_store
from resumelog.ray_data._common import (
    _SINK_KEY,
    ROW_HASH_COLUMN,
    UnfilterableDataset,
    UnsafeWriteMode,
    _check_row_hash,
    _check_schema,
    _digest,
    _groups,
    _normalize_row_hash,
    _row_hash_dropped,
)
from resumelog.ray_data._planning import _PLANS, _Plan
from resumelog.ray_data._worker import _worker_writer
from resumelog.storage import LocalStore, split_url

logger = logging.getLogger("resumelog")

PART_NAME = "part.parquet"
"""The output name of each Parquet file :class:`ParquetSink` publishes (its key tells
the write task's files apart)."""
_IDS_PART = "ray_data:id-part:"
"""Row level: prefix of the source an id-column write task's file is published under
(``+ <run id>:<digest of its rows>``), completed with the task's row ids."""


def _await_drain(ckpt: Checkpoint, sources: Sequence[str], settle: float = 1.0, limit: float = 60.0) -> list[str]:
    """Refresh until every source is complete, or until none completed for ``settle`` s.

    Write tasks flush their records in the background just after they return; this
    waits for those flushes to become visible (normally one or two refreshes).
    """
    start = last_change = time.monotonic()
    best = len(sources) + 1
    delay = 0.02
    while True:
        ckpt.refresh()
        left = ckpt.pending(sources)
        now = time.monotonic()
        if not left:
            return left
        if len(left) < best:
            best, last_change = len(left), now
        if now - last_change >= settle or now - start >= limit:
            return left
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


@dataclass
class WriteSummary:
    """What a checkpointed write did (returned by :func:`write_parquet` / :func:`write_datasink`).

    Attributes
    ----------
    files : list of str
        Output files published, as object names under ``root``
        (``<run>/<source>/<key>/part.parquet``, escaped; empty for
        :func:`write_datasink`). A file a retried task found already published (by
        its first attempt) is listed once per attempt that reported it.
    rows : int
        Rows written.
    sources_completed : int
        Sources of the read's plan that are complete after the write.
    undrained : list of str
        Sources of the plan still pending after a successful write: rows were
        dropped or added by a step that was not accounted (use :func:`map_batches`).
        They rerun next time.
    root : str
        The outputs root (``""`` for :func:`write_datasink`): read it back with
        :func:`read_committed`.
    """

    files: list[str] = field(default_factory=list, repr=False)
    rows: int = 0
    sources_completed: int = 0
    undrained: list[str] = field(default_factory=list)
    root: str = ""


def _check_mode(mode: object) -> None:
    value = getattr(mode, "value", mode)
    if value != "append":
        raise UnsafeWriteMode(
            f"mode={value!r} is refused: a resumed run must keep the outputs of sources that earlier runs "
            "completed ('overwrite' would delete them, 'ignore'/'error'/'create' would skip or fail the "
            "rerun). Use mode='append' (the default): each run publishes under its own name, and "
            "read_committed() shows only the outputs of the run that completed each source."
        )


class _SinkBase(Datasink):  # type: ignore[misc,type-arg]
    """Shared accounting of the checkpointing sinks."""

    def __init__(
        self,
        handle: WriterHandle,
        *,
        source_column: str | None,
        source_id: Callable[[str], str] | None,
        id_column: str | None,
        drop_columns: Sequence[str],
    ) -> None:
        if (source_column is None) == (id_column is None):
            raise ValueError("give exactly one of source_column (file-level sources) or id_column (row ids)")
        self.handle = handle
        self.source_column = source_column
        self.source_id = source_id
        self.id_column = id_column
        self.drop_columns = tuple(drop_columns)
        self.write_returns: list[Any] = []
        self.sync_flush = True  # the driver sets False when it waits for the records
        self.require_row_hash = False  # the driver sets True when the read added ROW_HASH_COLUMN

    @property
    def _column(self) -> str:
        c = self.source_column or self.id_column
        assert c is not None
        return c

    def _block(self, block: Any) -> pa.Table:
        """A block as Arrow, its ``row_hash`` back to ``int64`` whatever a step made of it
        (so the blocks of a task concatenate), checked present when the read added it."""
        table = _normalize_row_hash(BlockAccessor.for_block(block).to_arrow())
        if self.require_row_hash and table.num_rows and ROW_HASH_COLUMN not in table.column_names:
            raise UnfilterableDataset(_row_hash_dropped(table.column_names))
        return table

    def _strip(self, table: pa.Table) -> pa.Table:
        drop = [c for c in self.drop_columns if c in table.column_names]
        return table.drop_columns(drop) if drop else table

    def _row_ids(self, table: pa.Table) -> list[str]:
        """Row-level mode: the ids of the rows (as strings) to record complete."""
        assert self.id_column is not None
        if self.id_column not in table.column_names:
            raise UnfilterableDataset(f"a block has no id column {self.id_column!r} (columns: {table.column_names})")
        col = table.column(self.id_column)
        if col.null_count:
            raise UnfilterableDataset(f"{col.null_count} rows have a null id in {self.id_column!r}")
        ids = col if pa.types.is_string(col.type) else pc.cast(col, pa.string())
        out: list[str] = ids.to_pylist()
        return out

    def _commit(self, records: list[tuple[str, str, int]], completed: list[str]) -> None:
        # after the outputs exist. With a read plan the driver waits for the records to
        # land, so the (non-positive) records are flushed by the background thread;
        # otherwise (row ids) they are durable when the task returns.
        _worker_writer(self.handle).commit(records, completed, sync=self.sync_flush)

    def on_write_complete(self, write_result: Any) -> None:
        self.write_returns = list(write_result.write_returns)


class ParquetSink(_SinkBase):
    """A Datasink publishing Parquet as exactly-once outputs, then recording completion.

    Each write task writes one Parquet file per source it holds into a local spool
    file and publishes it with put-if-absent through this process's writer
    (:meth:`Writer.output <resumelog.Writer.output>` with ``record=False``, as
    :func:`resumelog.ray.output` does) under
    ``<root>/<run>/<source>/<sink key>/part.parquet`` (ids escaped, the key
    ``ray_data:sink:<digest of the rows>``); only then does it record ``-rows`` per
    source. A retried task publishes the same names, which keeps its first attempt's
    files; a rerun publishes under its own run. Read the files back with
    :func:`read_committed` (:func:`resumelog.outputs.committed`): those of the run that
    completed each source, nothing of a voided attempt, and nothing is ever deleted.

    Row level (``id_column``): each task's file is one output of the source
    ``ray_data:id-part:<run>:<digest>``, completed together with the task's row ids
    (first, so that a crash between the two can only show rows twice, never lose them).

    Used by :func:`write_parquet`; build it yourself only to pass it to
    ``Dataset.write_datasink``.
    """

    def __init__(
        self,
        path: str,
        handle: WriterHandle,
        *,
        source_column: str | None = "path",
        source_id: Callable[[str], str] | None = None,
        id_column: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
        drop_columns: Sequence[str] = (ROW_HASH_COLUMN,),
        parquet_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            handle, source_column=source_column, source_id=source_id, id_column=id_column, drop_columns=drop_columns
        )
        proto, rest = split_url(str(path))
        # a local root is made absolute here, on the driver: workers may run elsewhere
        self.root = os.path.abspath(rest) if proto in ("file", "local") else str(path)
        self.path = path
        self.storage_options = None if storage_options is None else dict(storage_options)
        self.parquet_kwargs = dict(parquet_kwargs or {})

    def write(self, blocks: Iterable[Any], ctx: Any) -> list[tuple[str, str, int]]:
        """Publish this task's rows (one file per source), then record (flushed in the background)."""
        tables = [self._block(b) for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return []
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")
        writer = _worker_writer(self.handle).writer
        published: list[tuple[str, str, int]] = []
        records: list[tuple[str, str, int]] = []
        completed: list[str] = []
        if self.source_column is not None:
            for source, rows in _groups(table, self.source_column, self.source_id).items():
                key = _SINK_KEY + _digest(rows)
                published.append((source, self._publish(writer, source, key, rows), rows.num_rows))
                records.append((key, source, -rows.num_rows))
        else:
            ids = self._row_ids(table)  # checked before anything is published
            part = f"{_IDS_PART}{writer.run_id}:{_digest(table)}"
            published.append((part, self._publish(writer, part, None, table), table.num_rows))
            completed = [part, *ids]  # the file's source first: never rows without it
        self._commit(records, completed)  # only after every file of this task is published
        return published

    def _publish(self, writer: Writer, source: str, key: str | None, rows: pa.Table) -> str:
        """Write ``rows`` to a spool file and publish it as the output ``(source, key,
        part.parquet)`` of this run; its object name under the root."""
        with writer.output(
            source, self.root, key=key, name=PART_NAME, record=False, storage_options=self.storage_options
        ) as f:
            pq.write_table(self._strip(rows), f, **self.parquet_kwargs)
        return output_name(writer.run_id, source, key, PART_NAME)


class CheckpointingDatasink(_SinkBase):
    """Wrap any ``ray.data.Datasink``: record completion after its ``write`` returns.

    The inner sink sees the blocks without the bookkeeping columns
    (``drop_columns``). A task's records are written only after the inner
    ``write`` returned, so a crash in between reruns the source (at-least-once:
    for exactly-once the inner sink must be idempotent per row, e.g. an upsert, or
    name its outputs deterministically). Used by :func:`write_datasink`.
    """

    def __init__(
        self,
        inner: Datasink,  # type: ignore[type-arg]
        handle: WriterHandle,
        *,
        source_column: str | None = "path",
        source_id: Callable[[str], str] | None = None,
        id_column: str | None = None,
        drop_columns: Sequence[str] = (ROW_HASH_COLUMN,),
    ) -> None:
        super().__init__(
            handle, source_column=source_column, source_id=source_id, id_column=id_column, drop_columns=drop_columns
        )
        self.inner = inner

    def on_write_start(self, schema: pa.Schema | None = None) -> None:
        """The inner sink's ``on_write_start``."""
        self.inner.on_write_start(schema)

    def write(self, blocks: Iterable[Any], ctx: Any) -> Any:
        """Pass the blocks to the inner sink, counting rows per source; then record."""
        seen: list[pa.Table] = []

        def tap() -> Iterator[Any]:
            for b in blocks:
                t = self._block(b)
                if t.num_rows:
                    seen.append(t)
                    yield self._strip(t)

        result = self.inner.write(tap(), ctx)
        records: list[tuple[str, str, int]] = []
        row_ids: list[str] = []
        if seen:
            table = seen[0] if len(seen) == 1 else pa.concat_tables(seen, promote_options="default")
            if self.source_column is not None:
                for source, rows in _groups(table, self.source_column, self.source_id).items():
                    records.append((_SINK_KEY + _digest(rows), source, -rows.num_rows))
            else:
                row_ids = self._row_ids(table)
        self._commit(records, row_ids)
        return result

    def on_write_complete(self, write_result: Any) -> None:
        """The inner sink's ``on_write_complete``."""
        self.inner.on_write_complete(write_result)

    def on_write_failed(self, error: Exception) -> None:
        """The inner sink's ``on_write_failed``."""
        self.inner.on_write_failed(error)

    def get_name(self) -> str:
        """The inner sink's name."""
        return str(self.inner.get_name())

    @property
    def supports_distributed_writes(self) -> bool:
        """As the inner sink."""
        return bool(self.inner.supports_distributed_writes)

    @property
    def min_rows_per_write(self) -> int | None:
        """As the inner sink."""
        v = self.inner.min_rows_per_write
        return None if v is None else int(v)


def _resolve(
    ckpt: Checkpoint,
    source_column: str | None,
    source_id: Callable[[str], str] | None,
    id_column: str | None,
) -> tuple[str | None, Callable[[str], str] | None, _Plan | None]:
    """The source column, ``source_id`` and read plan a write uses (row ids: no plan)."""
    plan = _PLANS.get(ckpt)
    if id_column is not None:
        return None, None, None
    if plan is None or plan.run_id != ckpt.run_id:
        raise ValueError(
            "a file-level checkpointed write needs the read's row counts: read the dataset with "
            "resumelog.ray_data.read_parquet/read(ckpt, ...) on this same Checkpoint object first (or "
            "record row ids with id_column=...)"
        )
    if source_id is None and plan.source_column == source_column:
        source_id = plan.source_id
    return source_column, source_id, plan


def _requires_row_hash(ds: ray.data.Dataset, plan: _Plan | None, sink: _SinkBase) -> bool:
    """Whether the write requires :data:`ROW_HASH_COLUMN` (the read added it and the write
    is file level); refuses now a dataset whose known schema already lost it."""
    if plan is None or not plan.row_hash or sink.source_column is None:
        return False
    _check_row_hash(ds)
    return True


def _summarize(ckpt: Checkpoint, plan: _Plan | None, summary: WriteSummary) -> WriteSummary:
    ckpt.refresh()
    if plan is not None:
        left = _await_drain(ckpt, plan.sources)
        summary.sources_completed = len(plan.sources) - len(left)
        summary.undrained = left
        if left:
            logger.warning(
                "resumelog: %d of %d sources did not drain after a successful write (first: %r): a step "
                "changed row counts without resumelog.ray_data.map_batches; they will rerun",
                len(left),
                len(plan.sources),
                left[0],
            )
    return summary


def write_parquet(
    ds: ray.data.Dataset,
    ckpt: Checkpoint,
    path: str,
    *,
    source_column: str = "path",
    source_id: Callable[[str], str] | None = None,
    id_column: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    mode: Any = "append",
    drop_columns: Sequence[str] = (ROW_HASH_COLUMN,),
    ray_remote_args: dict[str, Any] | None = None,
    concurrency: int | None = None,
    filesystem: Any = None,
    **parquet_kwargs: Any,
) -> WriteSummary:
    """Write ``ds`` as Parquet exactly-once outputs under ``path``, recording completion
    after each file is published.

    File level (default): ``ds`` comes from :func:`read_parquet` / :func:`read` with
    the same ``ckpt``; each write task publishes one file per source it holds as an
    exactly-once output (:class:`ParquetSink`), then records ``-rows`` for it. Read
    the result with :func:`read_committed`: every row of every completed source
    exactly once, whatever crashed before. Files of interrupted attempts stay where
    they are, invisible, until ``ckpt.gc(outputs=[path])`` deletes them. Row level
    (``id_column=...``): each task's file is published, then its row ids recorded
    complete (filter the next run with :func:`filter_completed`).

    Parameters
    ----------
    ds : ray.data.Dataset
    ckpt : Checkpoint
    path : str
        The outputs root (local path or fsspec URL: ``s3://bucket/out``).
    source_column : str, default "path"
        Column holding each row's source (Ray's ``path`` column).
    source_id : callable, optional
        As given to the read (default: the read's).
    id_column : str, optional
        Row-level mode: record each row id instead of file-level sources. A task's
        file becomes visible with its first record; if its ids need more than one
        journal segment (over ~1 MiB of ids) and the worker dies between two, the
        rows whose ids were not recorded are written again next time (at-least-once
        for that window); the file-level mode is exactly-once.
    storage_options : mapping, optional
        fsspec options for ``path`` (default: the checkpoint's if ``path`` uses its
        protocol).
    mode : str or ray.data.SaveMode, default "append"
        Anything else raises :class:`UnsafeWriteMode`.
    drop_columns : sequence of str, default ("row_hash",)
        Bookkeeping columns not written (add ``"path"`` to drop the source column).
    ray_remote_args, concurrency
        As for ``Dataset.write_datasink``.
    filesystem
        Not supported: outputs are published through resumelog's stores
        (put-if-absent), so give fsspec ``storage_options`` instead of a pyarrow
        filesystem (``TypeError``).
    **parquet_kwargs
        Passed to ``pyarrow.parquet.write_table`` (``compression``...).

    Returns
    -------
    WriteSummary

    Raises
    ------
    UnsafeWriteMode
        ``mode`` is not ``"append"``.
    UnfilterableDataset
        ``ds`` has no source/id column (e.g. ``ray.data.from_items`` without ids).
    """
    if filesystem is not None:
        raise TypeError(
            "write_parquet publishes its files with put-if-absent through resumelog's stores, not through a "
            "pyarrow filesystem: pass storage_options={...} (fsspec options for the path) instead of filesystem="
        )
    _check_mode(mode)
    col, sid, plan = _resolve(ckpt, source_column, source_id, id_column)
    sink = ParquetSink(
        path,
        ckpt.handle(),
        source_column=col,
        source_id=sid,
        id_column=id_column,
        storage_options=storage_options,
        drop_columns=drop_columns,
        parquet_kwargs=parquet_kwargs,
    )
    _check_schema(ds, sink._column)
    sink.sync_flush = plan is None
    sink.require_row_hash = _requires_row_hash(ds, plan, sink)
    summary = WriteSummary(root=sink.root)
    ds.write_datasink(sink, ray_remote_args=ray_remote_args, concurrency=concurrency)
    for _, name, n in (x for r in sink.write_returns for x in (r or [])):
        summary.files.append(name)
        summary.rows += n
    return _summarize(ckpt, plan, summary)


def write_datasink(
    ds: ray.data.Dataset,
    ckpt: Checkpoint,
    datasink: Datasink,  # type: ignore[type-arg]
    *,
    source_column: str = "path",
    source_id: Callable[[str], str] | None = None,
    id_column: str | None = None,
    drop_columns: Sequence[str] = (ROW_HASH_COLUMN,),
    ray_remote_args: dict[str, Any] | None = None,
    concurrency: int | None = None,
) -> WriteSummary:
    """``ds.write_datasink(datasink)`` recording completion after each task's write.

    See :class:`CheckpointingDatasink`: sources complete once all their rows went
    through ``datasink.write``. This path is at-least-once: resumelog cannot route an
    arbitrary sink's writes through its exactly-once outputs (it neither sees the
    sink's files nor controls their names), so what an interrupted attempt wrote
    stays, and a source redone after a crash is written again. Make the sink
    idempotent (upsert by id, names derived from the rows) for exactly-once, or use
    :func:`write_parquet` (or :func:`resumelog.ray.output` in your own tasks).

    Parameters
    ----------
    ds : ray.data.Dataset
    ckpt : Checkpoint
    datasink : ray.data.Datasink
        The sink doing the writing; it does not see the ``drop_columns``.
    source_column, source_id, id_column, drop_columns
        As for :func:`write_parquet`.
    ray_remote_args, concurrency
        As for ``Dataset.write_datasink``.

    Returns
    -------
    WriteSummary
        Without ``files``/``rows`` (the sink's business).

    Raises
    ------
    UnfilterableDataset
        ``ds`` has no source/id column.
    """
    col, sid, plan = _resolve(ckpt, source_column, source_id, id_column)
    sink = CheckpointingDatasink(
        datasink, ckpt.handle(), source_column=col, source_id=sid, id_column=id_column, drop_columns=drop_columns
    )
    _check_schema(ds, sink._column)
    sink.sync_flush = plan is None
    sink.require_row_hash = _requires_row_hash(ds, plan, sink)
    ds.write_datasink(sink, ray_remote_args=ray_remote_args, concurrency=concurrency)
    return _summarize(ckpt, plan, WriteSummary())


def read_committed(
    checkpoint: Checkpoint | str,
    output_root: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    checkpoint_storage_options: Mapping[str, Any] | None = None,
    run: str | None = None,
    **read_parquet_kwargs: Any,
) -> ray.data.Dataset:
    """A Ray Dataset over the committed Parquet outputs under ``output_root``.

    The files are :func:`resumelog.outputs.committed`'s (the checkpoint read first,
    then the root listed): for each completed source, the ``*.parquet`` outputs of
    the run that completed it — what :func:`write_parquet` (or ``Writer.output``)
    published — and nothing of pending sources, voided attempts or staging debris.
    Each row written for a completed source is in it exactly once.

    Parameters
    ----------
    checkpoint : Checkpoint or str
        The checkpoint, or its URL (opened read-only with
        ``checkpoint_storage_options``).
    output_root : str
        The ``path`` given to :func:`write_parquet`: a local or shared path or an
        object-store URL (Ray's workers read it).
    storage_options : mapping, optional
        fsspec options for ``output_root`` (default: the checkpoint's if it uses the
        same protocol).
    checkpoint_storage_options : mapping, optional
        For a checkpoint given by URL.
    run : str, optional
        Only outputs of this run.
    **read_parquet_kwargs
        Passed to ``ray.data.read_parquet`` (``columns``, ``include_paths``...;
        ``partitioning`` defaults to ``None``: output names are not Hive partitions).

    Returns
    -------
    ray.data.Dataset
        Empty (no blocks) if nothing is committed yet.
    """
    if isinstance(checkpoint, Checkpoint):
        ckpt = checkpoint
    else:
        import resumelog

        ckpt = resumelog.open(checkpoint, storage_options=checkpoint_storage_options, create=False)
    outs = [o for o in committed(ckpt, output_root, storage_options, run=run) if o.name.endswith(".parquet")]
    read_parquet_kwargs.setdefault("partitioning", None)
    if not outs:
        return ray.data.from_items([])
    store = output_store(
        output_root, storage_options if storage_options is not None else _ckpt_options(ckpt, output_root)
    )
    if isinstance(store, LocalStore):
        return ray.data.read_parquet([o.url for o in outs], **read_parquet_kwargs)
    fs = getattr(store, "fs", None)
    if fs is None:
        raise ValueError(
            f"read_committed needs an outputs root that Ray's workers can read (a local or shared path, or an "
            f"object store), not {type(store).__name__}"
        )
    root = getattr(store, "root", "")
    handler = pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    return ray.data.read_parquet([f"{root}/{o.path}" for o in outs], filesystem=handler, **read_parquet_kwargs)
