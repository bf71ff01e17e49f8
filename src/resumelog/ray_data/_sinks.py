"""Checkpointed writes: sinks that record completion after their outputs exist.

:class:`ParquetSink` (one file per source per write task, stale partial outputs
removed before a rerun) and :class:`CheckpointingDatasink` (any ``Datasink``) record
each task's ``-rows`` per source, or its row ids; :func:`write_parquet` and
:func:`write_datasink` run them and wait for the read's sources to drain.
"""

from __future__ import annotations

import logging
import os
import re
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
from resumelog.ray_data._common import (
    _SINK_KEY,
    ROW_HASH_COLUMN,
    UnfilterableDataset,
    UnsafeWriteMode,
    _check_row_hash,
    _check_schema,
    _digest,
    _filesystem,
    _groups,
    _hash16,
    _normalize_row_hash,
    _row_hash_dropped,
)
from resumelog.ray_data._planning import _PLANS, _Plan
from resumelog.ray_data._worker import _worker_writer

logger = logging.getLogger("resumelog")

_OUT_RE = re.compile(r"^([0-9a-f]{16})-(.+)-([0-9a-f]{16})\.parquet$")


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
        Output files written (empty for :func:`write_datasink`).
    rows : int
        Rows written.
    sources_completed : int
        Sources of the read's plan that are complete after the write.
    undrained : list of str
        Sources of the plan still pending after a successful write: rows were
        dropped or added by a step that was not accounted (use :func:`map_batches`).
        They rerun next time.
    stale_files_removed : list of str
        Output files of earlier, interrupted runs that the write deleted (partial
        outputs of sources it redid).
    """

    files: list[str] = field(default_factory=list, repr=False)
    rows: int = 0
    sources_completed: int = 0
    undrained: list[str] = field(default_factory=list)
    stale_files_removed: list[str] = field(default_factory=list, repr=False)


def _check_mode(mode: object) -> None:
    value = getattr(mode, "value", mode)
    if value != "append":
        raise UnsafeWriteMode(
            f"mode={value!r} is refused: a resumed run must keep the outputs of sources that earlier runs "
            "completed ('overwrite' would delete them, 'ignore'/'error'/'create' would skip or fail the "
            "rerun). Use mode='append' (the default): resumelog replaces only the partial outputs of the "
            "sources it redoes, by name."
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

    def _commit(self, records: list[tuple[str, str, int]], row_ids: list[str]) -> None:
        # after the outputs exist. With a read plan the driver waits for the records to
        # land, so the (non-positive) records are flushed by the background thread;
        # otherwise (row ids) they are durable when the task returns.
        _worker_writer(self.handle).commit(records, row_ids, sync=self.sync_flush)

    def on_write_complete(self, write_result: Any) -> None:
        self.write_returns = list(write_result.write_returns)


class ParquetSink(_SinkBase):
    """A Datasink writing Parquet and recording completion after each file exists.

    One file per source per write task, named
    ``<blake2b(source)[:16]>-<run id>-<digest of its rows>.parquet``. Used by
    :func:`write_parquet`; build it yourself only to pass it to
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
        filesystem: pafs.FileSystem | None = None,
        drop_columns: Sequence[str] = (ROW_HASH_COLUMN,),
        parquet_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            handle, source_column=source_column, source_id=source_id, id_column=id_column, drop_columns=drop_columns
        )
        self.filesystem, self.base = _filesystem(path, filesystem)
        self.path = path
        self.parquet_kwargs = dict(parquet_kwargs or {})

    def on_write_start(self, schema: pa.Schema | None = None) -> None:
        """Create the output directory (driver side)."""
        self.filesystem.create_dir(self.base, recursive=True)

    def write(self, blocks: Iterable[Any], ctx: Any) -> list[tuple[str, str, int]]:
        """Write this task's rows (one file per source), then record and flush."""
        tables = [self._block(b) for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return []
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")
        run = self.handle.run_id
        written: list[tuple[str, str, int]] = []
        records: list[tuple[str, str, int]] = []
        row_ids: list[str] = []
        if self.source_column is not None:
            for source, rows in _groups(table, self.source_column, self.source_id).items():
                digest = _digest(rows)
                name = f"{_hash16(source)}-{run}-{digest}.parquet"
                self._write_file(name, rows)
                written.append((source, name, rows.num_rows))
                records.append((_SINK_KEY + digest, source, -rows.num_rows))
        else:
            row_ids = self._row_ids(table)
            name = f"{_hash16('ids')}-{run}-{_digest(table)}.parquet"
            self._write_file(name, table)
            written.append(("", name, table.num_rows))
        self._commit(records, row_ids)  # only after every file of this task exists
        return written

    def _write_file(self, name: str, rows: pa.Table) -> None:
        path = f"{self.base.rstrip('/')}/{name}"
        pq.write_table(self._strip(rows), path, filesystem=self.filesystem, **self.parquet_kwargs)

    def remove_stale(self, ckpt: Checkpoint, sources: Iterable[str]) -> list[str]:
        """Delete output files of ``sources`` left by earlier attempts (driver side).

        Called before a run redoes ``sources`` (none of them complete): their files
        are partial outputs of an interrupted run, and this run writes every row
        again. Files of other sources are never touched. First, a tombstone per
        source voids its completion by the runs that wrote those files (their names
        hold the run id), flushed before anything is deleted: a record of the old run
        that is still on its way (a background flush, a task that outlived its
        driver) can then never complete the source with its files gone.
        """
        wanted = {_hash16(s): s for s in sources}
        if not wanted:
            return []
        infos = self.filesystem.get_file_info(pafs.FileSelector(self.base, allow_not_found=True))
        stale: list[str] = []
        runs: dict[str, set[str]] = {}
        for f in infos:
            m = _OUT_RE.match(os.path.basename(f.path)) if f.type == pafs.FileType.File else None
            if m and m.group(1) in wanted:
                stale.append(f.path)
                if m.group(2) != ckpt.run_id:
                    runs.setdefault(wanted[m.group(1)], set()).add(m.group(2))
        if runs:
            with ckpt.writer() as w:
                for source, old in runs.items():
                    w.reset(source, old)
        for p in stale:
            self.filesystem.delete_file(p)
        return stale


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
    filesystem: pafs.FileSystem | None = None,
    mode: Any = "append",
    drop_columns: Sequence[str] = (ROW_HASH_COLUMN,),
    ray_remote_args: dict[str, Any] | None = None,
    concurrency: int | None = None,
    **parquet_kwargs: Any,
) -> WriteSummary:
    """Write ``ds`` as Parquet under ``path``, recording completion after each file.

    File level (default): ``ds`` comes from :func:`read_parquet` / :func:`read` with
    the same ``ckpt``; each write task writes one file per source it holds, then
    records ``-rows`` for it. Before running, the files of the sources this run
    redoes that an interrupted earlier run left are deleted (never those of
    completed sources). Row level (``id_column=...``): each written row's id is
    recorded complete (filter the next run with :func:`filter_completed`).

    Parameters
    ----------
    ds : ray.data.Dataset
    ckpt : Checkpoint
    path : str
        Output directory (local path or URI).
    source_column : str, default "path"
        Column holding each row's source (Ray's ``path`` column).
    source_id : callable, optional
        As given to the read (default: the read's).
    id_column : str, optional
        Row-level mode: record each row id instead of file-level sources. A crash
        between a file's write and its record rewrites those rows next time
        (at-least-once for that window); the file-level mode is exactly-once.
    filesystem : pyarrow.fs.FileSystem, optional
    mode : str or ray.data.SaveMode, default "append"
        Anything else raises :class:`UnsafeWriteMode`.
    drop_columns : sequence of str, default ("row_hash",)
        Bookkeeping columns not written (add ``"path"`` to drop the source column).
    ray_remote_args, concurrency
        As for ``Dataset.write_datasink``.
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
    _check_mode(mode)
    col, sid, plan = _resolve(ckpt, source_column, source_id, id_column)
    sink = ParquetSink(
        path,
        ckpt.handle(),
        source_column=col,
        source_id=sid,
        id_column=id_column,
        filesystem=filesystem,
        drop_columns=drop_columns,
        parquet_kwargs=parquet_kwargs,
    )
    _check_schema(ds, sink._column)
    sink.sync_flush = plan is None
    sink.require_row_hash = _requires_row_hash(ds, plan, sink)
    summary = WriteSummary()
    if plan is not None:
        ckpt.refresh()  # never touch files of a source that is complete by now
        summary.stale_files_removed = sink.remove_stale(ckpt, ckpt.pending(plan.sources))
        if summary.stale_files_removed:
            logger.info(
                "resumelog: removed %d partial output files of unfinished sources", len(summary.stale_files_removed)
            )
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
    through ``datasink.write``. Partial outputs of an interrupted run cannot be
    removed by resumelog here (it does not know the sink's layout), so a source
    redone after a crash is written again: make the sink idempotent (upsert by id,
    deterministic object names) for exactly-once.

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
