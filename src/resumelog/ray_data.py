"""Ray Data: skip completed inputs, filter completed rows, checkpoint on write.

Import it explicitly (``import resumelog.ray_data``); it needs ``ray[data]`` and
``pyarrow``, which ``import resumelog`` never loads.

**File level** — each input file is a source. The read emits the file's row count
(from the Parquet footer) before any row is read; every block written subtracts the
rows of that file it wrote, *after* its output file exists. A file completes when all
its rows are written; a rerun never reads it again::

    import resumelog, resumelog.ray_data as rd

    ckpt = resumelog.open("s3://bucket/ckpt/job1")
    ds = rd.read_parquet(ckpt, paths)                 # only files not complete yet
    ds = rd.map_batches(ds, ckpt, drop_short_docs)    # row counts may change here
    summary = rd.write_parquet(ds, ckpt, "s3://bucket/out/")

A rerun of a finished job raises :class:`~resumelog.errors.NothingToDo` from
:func:`read_parquet` and reads nothing. Only :func:`map_batches` (this module's
wrapper) may change row counts between the read and the write: a native
``Dataset.filter``, ``flat_map`` or ``limit`` is not accounted, its files never drain
and :class:`WriteSummary.undrained <WriteSummary>` names them.

**Row level** — an id column: :func:`filter_completed` drops rows whose id is a
completed source; ``write_parquet(..., id_column="id")`` records each written row id.

**Native** ``ray.data.checkpoint.CheckpointConfig`` — :class:`ResumelogCheckpointConfig`
plugs :class:`ResumelogCheckpointManager` and :class:`ResumelogCheckpointFilter` into
Ray's own row-level checkpointing: Ray keeps writing its per-block id files (with its
two-phase commit), resumelog folds them into its compacted snapshot at the next start.

Design notes (see also ``docs/integrations.md``):

* Source ids are the paths as Ray reports them in its ``path`` column (protocol
  stripped: ``s3://b/k.parquet`` -> ``b/k.parquet``), optionally mapped by a
  ``source_id`` function.
* Keys are deterministic, so retried tasks deduplicate: the read's ``+N`` is keyed on
  the file path, each write's ``-k`` on a digest of the written rows' ``row_hash``
  (Ray's deterministic per-row hash of file path and position; a content digest when
  the reader cannot provide it).
* Output files are named ``<source hash>-<run id>-<rows digest>.parquet``, one file per
  source per write task: a retried task overwrites its own file, names never collide
  with earlier runs, and before writing a rerun deletes the files of the sources it
  is about to redo (partial output of an interrupted run), after a tombstone voids
  those sources' completion by the runs that wrote them. Files of completed sources
  are never touched. One pipeline per output directory at a time.
* Write tasks record their ``-k`` after their files exist and return; a thread of the
  worker flushes right after (non-positive records may be buffered: losing one only
  reruns a source). The driver's :func:`write_parquet` waits until the records are
  visible before it returns its :class:`WriteSummary`. Positive deltas (a fan-out in
  :func:`map_batches`) are flushed before the batch moves on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
import ray.data
from ray.data.block import BlockAccessor
from ray.data.checkpoint import CheckpointConfig
from ray.data.checkpoint.checkpoint_filter import CheckpointFilter, CheckpointManager
from ray.data.datasource import Datasink

from resumelog import paths as _paths
from resumelog.checkpoint import Checkpoint, WriterHandle
from resumelog.checkpoint import open as _open_checkpoint
from resumelog.errors import NothingToDo, ResumelogError
from resumelog.journal import Writer
from resumelog.ray import _entry as _process_entry

__all__ = [
    "ROW_HASH_COLUMN",
    "CheckpointingDatasink",
    "ParquetSink",
    "ResumelogCheckpointConfig",
    "ResumelogCheckpointFilter",
    "ResumelogCheckpointManager",
    "UnfilterableDataset",
    "UnsafeWriteMode",
    "WriteSummary",
    "completed_ids",
    "expand_paths",
    "filter_completed",
    "map_batches",
    "parquet_row_count",
    "pending_paths",
    "read",
    "read_parquet",
    "write_datasink",
    "write_parquet",
]


def __dir__() -> list[str]:
    return __all__


logger = logging.getLogger("resumelog")

ROW_HASH_COLUMN = "row_hash"
"""Ray's deterministic per-row hash column (``include_row_hash=True``)."""

_ROWS_KEY = "ray_data:rows:"  # + path: the read's +N per input file
_SINK_KEY = "ray_data:sink:"  # + digest: a write task's -k per source
_MAP_KEY = "ray_data:map:"  # + stage + digest: a map's out - in per source
_OUT_RE = re.compile(r"^([0-9a-f]{16})-(.+)-([0-9a-f]{16})\.parquet$")
_LARGE_SET = 65_536  # above this, string ids are matched through a reusable hash index


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


def _restamp(digest: str, n: int) -> Any:
    """``n`` new deterministic row hashes derived from a group digest (splitmix64)."""
    seed = np.uint64(int(digest, 16))
    with np.errstate(over="ignore"):
        k = seed + np.arange(n, dtype=np.uint64)
        k ^= k >> np.uint64(30)
        k *= np.uint64(0xBF58476D1CE4E5B9)
        k ^= k >> np.uint64(27)
        k *= np.uint64(0x94D049BB133111EB)
        k ^= k >> np.uint64(31)
    return pa.array(k, type=pa.uint64())


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


class _WriterEntry:
    """This process's writer for one handle, and a thread that flushes it in the background.

    Write tasks record their (non-positive) deltas and return; the flusher thread makes
    them durable right after, overlapping the PUT/fsync with the next task's work.
    Design §4 allows it: losing a non-positive record only leaves a source pending (it
    reruns). Positive deltas (a fan-out) are flushed synchronously (the barrier).
    """

    def __init__(self, writer: Writer, lock: threading.RLock) -> None:
        self.writer = writer
        self.lock = lock  # Writer.record is not thread-safe: every use holds this
        self.cond = threading.Condition(self.lock)
        self.dirty = False
        self.thread: threading.Thread | None = None

    def commit(self, records: Sequence[tuple[str, str, int]], completed: Sequence[str] = (), *, sync: bool) -> None:
        if not records and not completed:
            return
        with self.lock:
            for key, source, delta in records:
                self.writer.record(key, source, delta)
            for c in completed:
                self.writer.complete(c)
            if sync:
                self.writer.flush()
                return
            self.dirty = True
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="resumelog-flush", daemon=True)
                self.thread.start()
            self.cond.notify()

    def _run(self) -> None:
        while True:
            failed = False
            with self.lock:
                while not self.dirty:
                    self.cond.wait()
                self.dirty = False
                try:
                    self.writer.flush()
                except Exception:  # kept in the buffer by the writer; retried below
                    logger.warning("resumelog: background flush failed; retrying", exc_info=True)
                    self.dirty = failed = True
            if failed:
                time.sleep(1.0)


_WRITERS: dict[int, _WriterEntry] = {}
_WRITERS_LOCK = threading.Lock()


def _worker_writer(handle: WriterHandle) -> _WriterEntry:
    """This process's writer for ``handle``: the one :func:`resumelog.ray.worker_writer`
    opens (one journal stream per process, whichever module records), with its lock,
    plus this module's background flusher."""
    shared = _process_entry(handle)
    with _WRITERS_LOCK:
        entry = _WRITERS.get(id(shared))
        if entry is None or entry.writer is not shared.writer:
            entry = _WRITERS[id(shared)] = _WriterEntry(shared.writer, shared.lock)
        return entry


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


def _filesystem(path: str, filesystem: pafs.FileSystem | None) -> tuple[pafs.FileSystem, str]:
    if filesystem is not None:
        return filesystem, _ray_path(path)
    fs, p = pafs.FileSystem.from_uri(path if "://" in path else os.path.abspath(path))
    return fs, p


# ---------------------------------------------------------------------- list level


def expand_paths(
    paths: str | Sequence[str],
    *,
    filesystem: pafs.FileSystem | None = None,
    extensions: Sequence[str] | None = ("parquet",),
) -> list[str]:
    """The input files of ``paths``: directories are listed (recursively), files are kept.

    An entry whose name has an extension (``part-0.parquet``) is taken as a file
    without asking the storage; other entries are looked up and listed if they are
    directories (one request each, plus the listing).

    Parameters
    ----------
    paths : str or sequence of str
        Files or directories, local paths or URIs (``s3://bucket/prefix``).
    filesystem : pyarrow.fs.FileSystem, optional
        Used instead of the one the URI implies (e.g. an ``S3FileSystem`` with a custom
        endpoint). Returned paths are then in that filesystem's form.
    extensions : sequence of str, optional
        Keep only listed files with one of these extensions (``None``: keep all).

    Returns
    -------
    list of str
        File paths, sorted within each listed directory, in the order given.
    """
    items = [paths] if isinstance(paths, str) else list(paths)
    out: list[str] = []
    for p in items:
        if not p.endswith("/") and "." in os.path.basename(p):
            out.append(p)
            continue
        fs, inner = _filesystem(p, filesystem)
        info = fs.get_file_info(inner)
        if info.type != pafs.FileType.Directory:
            out.append(p)
            continue
        scheme = p.split("://", 1)[0] + "://" if "://" in p and filesystem is None else ""
        found = [
            f.path
            for f in fs.get_file_info(pafs.FileSelector(inner, recursive=True))
            if f.type == pafs.FileType.File
            and not os.path.basename(f.path).startswith((".", "_"))
            and (extensions is None or f.path.rsplit(".", 1)[-1] in extensions)
        ]
        out.extend(scheme + f if scheme and scheme != "file://" else f for f in sorted(found))
    return out


def pending_paths(
    ckpt: Checkpoint,
    paths: str | Iterable[str],
    *,
    source_id: Callable[[str], str] | None = None,
) -> list[str]:
    """The given input files whose source is not complete, in the given order.

    Parameters
    ----------
    ckpt : Checkpoint
        The open checkpoint (call :meth:`~resumelog.Checkpoint.refresh` to see
        progress made since it was opened).
    paths : str or iterable of str
        Input file paths or URIs (not directories: see :func:`expand_paths`).
    source_id : callable, optional
        Maps the path *as Ray reports it* (protocol stripped: ``s3://b/k`` ->
        ``b/k``) to the source id. Default: that path itself.

    Returns
    -------
    list of str
        The paths (as given) still to process; ``[]`` when all are complete (this
        function never raises :class:`~resumelog.errors.NothingToDo`; the readers do).
    """
    items = [paths] if isinstance(paths, str) else list(paths)
    is_done = ckpt.is_completed
    sid = source_id or (lambda s: s)
    return [p for p in items if not is_done(sid(_ray_path(p)))]


def parquet_row_count(path: str, filesystem: pafs.FileSystem | None = None) -> int:
    """Rows of a Parquet file, from its footer (one small read, no data pages).

    Parameters
    ----------
    path : str
        Local path or URI.
    filesystem : pyarrow.fs.FileSystem, optional
        Used instead of the one the URI implies.

    Returns
    -------
    int
    """
    fs, inner = _filesystem(path, filesystem)
    with fs.open_input_file(inner) as f:
        return int(pq.read_metadata(f).num_rows)


@dataclass(frozen=True)
class _Plan:
    sources: tuple[str, ...]
    source_column: str
    source_id: Callable[[str], str] | None
    run_id: str


_PLANS: weakref.WeakKeyDictionary[Checkpoint, _Plan] = weakref.WeakKeyDictionary()


def read(
    ckpt: Checkpoint,
    reader: Callable[..., Any],
    paths: str | Sequence[str],
    *,
    row_count: Callable[[str], int],
    source_id: Callable[[str], str] | None = None,
    filesystem: pafs.FileSystem | None = None,
    extensions: Sequence[str] | None = None,
    compact: bool = True,
    threads: int = 16,
    **reader_kwargs: Any,
) -> ray.data.Dataset:
    """Read only the input files that are not complete, emitting each file's row count.

    Call it on the driver before running the pipeline. For every pending file it
    records ``+<row count>`` (an emission keyed on the file path) and flushes, so
    the counts are durable before any row is read; then it calls
    ``reader(pending, include_paths=True, **reader_kwargs)``. Files with no rows are
    not read (their ``+0`` completes them).

    Parameters
    ----------
    ckpt : Checkpoint
        The open checkpoint; its run id is this pipeline execution's.
    reader : callable
        A Ray Data reader taking a list of paths and ``include_paths``, e.g.
        ``ray.data.read_json``. Use :func:`read_parquet` for Parquet.
    paths : str or sequence of str
        Input files or a directory (listed with :func:`expand_paths`).
    row_count : callable
        ``row_count(path) -> int``: the exact number of rows ``reader`` yields for the
        file (a cheap metadata read). Exactness matters: a file whose count is too
        high never completes (it reruns), never the reverse.
    source_id : callable, optional
        Maps a path as Ray reports it (protocol stripped) to its source id.
        Must be picklable (the write runs it in Ray workers). Default: the path.
    filesystem : pyarrow.fs.FileSystem, optional
        Passed to ``reader`` and used for listing and row counts.
    extensions : sequence of str, optional
        File extensions kept when a directory is listed.
    compact : bool, default True
        Compact the checkpoint first (folds the previous run's journals, so this and
        later opens load one snapshot).
    threads : int, default 16
        Concurrent row-count reads.
    **reader_kwargs
        Passed to ``reader``. Without ``override_num_blocks``, fewer pending files than
        Ray's ``read_op_min_num_blocks`` (200) but at least two per cluster CPU are read
        as many files to a task as a fresh run over all ``paths`` would read (one per
        task below 200 files; Ray would split each file's block instead, slower: a
        resume with 160 of 400 files left took 11.5 s that way, 6.2-6.9 s so).

    Returns
    -------
    ray.data.Dataset
        Rows of the pending files with a ``path`` column (the source of each row).

    Raises
    ------
    NothingToDo
        Every requested file is already complete: nothing is read (message
        ``"all N sources already complete"``). Not a failure; catch it to exit 0.
    """
    if compact:
        ckpt.compact(progress=False)
    else:
        ckpt.refresh()
    files = expand_paths(paths, filesystem=filesystem, extensions=extensions)
    sid = source_id or (lambda s: s)
    todo = pending_paths(ckpt, files, source_id=source_id)
    if not todo:
        raise NothingToDo(f"all {len(files)} sources already complete; nothing to read")
    logger.info("resumelog: %d of %d input files pending", len(todo), len(files))
    with ThreadPoolExecutor(max(1, min(threads, len(todo)))) as pool:
        counts = list(pool.map(row_count, todo))
    to_read: list[str] = []
    sources: list[str] = []
    with ckpt.writer() as w:
        for p, n in zip(todo, counts):
            if n < 0:
                raise ValueError(f"row_count({p!r}) returned {n}")
            rp = _ray_path(p)
            s = sid(rp)
            w.record(_ROWS_KEY + rp, s, n, emission=True)  # n == 0: complete unless siblings have rows
            if n:
                to_read.append(p)
                sources.append(s)
        w.flush()  # the durability barrier: +N is on storage before any row is read
    if not to_read:
        raise NothingToDo(f"all {len(files)} sources complete ({len(todo)} had no rows); nothing to read")
    prev = _PLANS.get(ckpt)
    if prev is not None and prev.run_id == ckpt.run_id and prev.source_id is source_id:
        sources = [*prev.sources, *sources]  # several reads of one run (e.g. a union)
    _PLANS[ckpt] = _Plan(tuple(dict.fromkeys(sources)), "path", source_id, ckpt.run_id)
    if filesystem is not None:
        reader_kwargs["filesystem"] = filesystem
    if "override_num_blocks" not in reader_kwargs:
        blocks = _read_tasks(len(to_read), len(files))
        if blocks is not None:
            reader_kwargs["override_num_blocks"] = blocks
    ds: ray.data.Dataset = reader(to_read, include_paths=True, **reader_kwargs)
    return ds


def _read_tasks(pending: int, total: int) -> int | None:
    """The read tasks for ``pending`` of ``total`` input files: as many files per task as
    a fresh run over all ``total`` files (Ray's ``read_op_min_num_blocks`` tasks, or one
    file per task below that many files), never fewer than two tasks per cluster CPU;
    ``None`` (Ray's default) when there are at least Ray's minimum pending files, or
    fewer than two per CPU.

    Below that minimum Ray splits every file's block into pieces to reach it, which a
    resume (fewer files left) hits even when the fresh run did not. On 2 CPUs, 160
    Parquet files of 50k rows took 11.1-11.9 s that way and 6.8-6.9 s with one block
    per file (100 files: 7.1 s and 4.4-4.5 s); 400 files, which Ray reads two to a
    task, are faster so (13.0-14.1 s) than one file per task (16.6-17.0 s), so the 160
    files a resume of those 400 has left are read two to a task too (6.2-6.9 s, against
    6.7-7.2 s one to a task): each task costs what it cost in the fresh run. Fewer files
    than twice the CPUs keep Ray's splitting, which then buys parallelism.
    """
    if not ray.is_initialized():
        return None
    minimum = ray.data.DataContext.get_current().read_op_min_num_blocks
    cpus = int(ray.cluster_resources().get("CPU", 0))  # type: ignore[no-untyped-call]
    if not 2 * cpus <= pending < minimum:
        return None
    fresh_tasks = min(total, minimum)
    return min(pending, max(2 * cpus, -(-pending * fresh_tasks // total)))


def read_parquet(
    ckpt: Checkpoint,
    paths: str | Sequence[str],
    *,
    source_id: Callable[[str], str] | None = None,
    filesystem: pafs.FileSystem | None = None,
    compact: bool = True,
    **kwargs: Any,
) -> ray.data.Dataset:
    """:func:`read` for Parquet: row counts from the footers, Ray's ``row_hash`` added.

    ``ray.data.read_parquet(pending, include_paths=True, include_row_hash=True,
    **kwargs)`` on the files that are not complete. Read-time row filters
    (``filter=``) are refused: they change the row count the footer announced.

    Parameters
    ----------
    ckpt : Checkpoint
        The open checkpoint; its run id is this pipeline execution's.
    paths : str or sequence of str
        Parquet files, or a directory (listed with :func:`expand_paths`).
    source_id : callable, optional
        Maps a path as Ray reports it (protocol stripped) to its source id;
        picklable. Default: the path.
    filesystem : pyarrow.fs.FileSystem, optional
        For the footers and the read (e.g. an ``S3FileSystem`` with an endpoint).
    compact : bool, default True
        Compact the checkpoint before planning.
    **kwargs
        Passed to ``ray.data.read_parquet`` (``columns``, ``override_num_blocks``...).

    Returns
    -------
    ray.data.Dataset
        The pending files' rows with ``path`` and ``row_hash`` columns.

    Raises
    ------
    NothingToDo
        Every requested file is already complete (nothing is read).
    ValueError
        ``filter`` was given.
    """
    if kwargs.get("filter") is not None:
        raise ValueError(
            "read_parquet(filter=...) drops rows the footer count includes; filter with "
            "resumelog.ray_data.map_batches after the read instead"
        )
    return read(
        ckpt,
        ray.data.read_parquet,
        paths,
        row_count=lambda p: parquet_row_count(p, filesystem),
        source_id=source_id,
        filesystem=filesystem,
        extensions=("parquet",),
        compact=compact,
        include_row_hash=True,
        **kwargs,
    )


# ---------------------------------------------------------------------- row-count changes


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


# ---------------------------------------------------------------------- writes


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

    @property
    def _column(self) -> str:
        c = self.source_column or self.id_column
        assert c is not None
        return c

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
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
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
                t = BlockAccessor.for_block(b).to_arrow()
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
    ds.write_datasink(sink, ray_remote_args=ray_remote_args, concurrency=concurrency)
    return _summarize(ckpt, plan, WriteSummary())


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


# ---------------------------------------------------------------------- row level


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


# ---------------------------------------------------------------------- native CheckpointConfig


class ResumelogCheckpointConfig(CheckpointConfig):  # type: ignore[misc]
    """``ray.data.checkpoint.CheckpointConfig`` backed by a resumelog checkpoint.

    Same arguments as ``CheckpointConfig`` plus ``storage_options`` (fsspec options
    for the resumelog checkpoint, e.g. an S3 endpoint; Ray's own files use
    ``override_filesystem``) and ``ingest``; the manager and filter classes default to
    :class:`ResumelogCheckpointManager` and :class:`ResumelogCheckpointFilter`.

    Ray still writes its per-block id files under ``checkpoint_path`` (two-phase
    commit, unchanged). At the next start the manager hands Ray the ids of the
    resumelog checkpoint at ``<checkpoint_path>/_resumelog`` plus those of Ray's id
    files, and folds the id files into resumelog (compacted, then deleted) — in a Ray
    task running beside the pipeline with ``ingest="background"`` (the default), or
    before the pipeline starts with ``"blocking"``. Later starts load one snapshot
    instead of listing and reading every id file.

    ``delete_checkpoint_on_success`` defaults to ``False`` here (Ray: ``True``): a
    rerun of a finished job then skips everything. With ``True``, Ray deletes the
    whole ``checkpoint_path`` (resumelog's part included) after a successful run.
    """

    def __init__(
        self,
        id_column: str | None = None,
        checkpoint_path: str | None = None,
        *,
        storage_options: Mapping[str, Any] | None = None,
        ingest: str = "background",
        delete_checkpoint_on_success: bool = False,
        **kwargs: Any,
    ) -> None:
        if ingest not in ("background", "blocking"):
            raise ValueError("ingest must be 'background' or 'blocking'")
        kwargs.setdefault("checkpoint_manager_cls", ResumelogCheckpointManager)
        kwargs.setdefault("checkpoint_filter_cls", ResumelogCheckpointFilter)
        super().__init__(
            id_column, checkpoint_path, delete_checkpoint_on_success=delete_checkpoint_on_success, **kwargs
        )
        self.storage_options: dict[str, Any] = dict(storage_options or {})
        self.ingest = ingest

    @property
    def resumelog_url(self) -> str:
        """Where the resumelog checkpoint lives: ``<checkpoint_path>/_resumelog``.

        Inside ``checkpoint_path`` on purpose: Ray calls the manager only when that
        path exists, and deletes it as a whole on success if asked to.
        """
        return _resumelog_url(self)


def _resumelog_url(config: Any) -> str:
    return str(config.checkpoint_path).rstrip("/") + "/_resumelog"


def _ingest(
    url: str,
    storage_options: Mapping[str, Any],
    ids: Any,
    files: Sequence[str],
    filesystem: pafs.FileSystem,
    delete: bool,
) -> int:
    """Fold ``ids`` (complete, from Ray's id ``files``) into resumelog; then delete the files.

    Idempotent: a crash anywhere leaves the files, and the next start folds again
    (ids already complete are skipped). Returns the number of ids folded.
    """
    ckpt = _open_checkpoint(url, storage_options=storage_options)
    done = completed_ids(ckpt)
    ids = pc.cast(ids, pa.large_string())
    if len(done) and len(ids):
        ids = pc.filter(ids, pc.invert(pc.is_in(ids, value_set=done)))
    new: list[str] = ids.to_pylist()
    if new:
        w = ckpt.handle(f"ray-native-{_paths.default_writer_id()}"[:128]).writer()
        w.complete_many(new)
        w.close()
        ckpt.compact(progress=False)
    if delete:
        for p in files:
            try:
                filesystem.delete_file(p)
            except FileNotFoundError:
                pass
    return len(new)


_ingest_task = ray.remote(num_cpus=0, max_retries=0)(_ingest)


class ResumelogCheckpointManager(CheckpointManager):  # type: ignore[misc]
    """Loads the checkpointed ids from resumelog for Ray's native checkpointing.

    ``load_checkpoint`` (on the driver, before the dataset runs):

    1. Ray's own cleanup of pending (uncommitted) id files and their data files;
    2. the completed ids of the resumelog checkpoint (zero-copy from its snapshot)
       plus the ids in Ray's committed id files (read with Arrow);
    3. folds the latter into resumelog and deletes their files: in a Ray task beside
       the pipeline (``ingest="background"``; :attr:`last_ingest` is its
       ``ObjectRef``) or right here (``"blocking"``);
    4. returns ``(ObjectRef of the id array, its bytes)`` — integers if Ray's files
       hold integer ids — or ``(None, 0)`` when nothing is checkpointed.

    Works with a plain ``CheckpointConfig`` too (then: ``<checkpoint_path>/_resumelog``,
    no storage options, background ingest).
    """

    delete_ingested: bool = True
    """Delete Ray's id files once they are durable (and compacted) in resumelog."""

    last_ingest: Any = None
    """The ``ObjectRef`` of the last background ingest started in this process."""

    def __init__(self, checkpoint_config: Any, data_context: Any) -> None:
        super().__init__(checkpoint_config=checkpoint_config, data_context=data_context)
        self.resumelog_url = _resumelog_url(checkpoint_config)
        self.storage_options: dict[str, Any] = dict(getattr(checkpoint_config, "storage_options", None) or {})
        self.ingest_mode: str = getattr(checkpoint_config, "ingest", "background")
        self.stats: dict[str, float] = {}

    def open(self) -> Checkpoint:
        """The resumelog checkpoint behind this config."""
        return _open_checkpoint(self.resumelog_url, storage_options=self.storage_options)

    def committed_files(self) -> list[str]:
        """Ray's committed id files under ``checkpoint_path`` (not the pending ones)."""
        infos = self.filesystem.get_file_info(pafs.FileSelector(self.checkpoint_path_unwrapped, allow_not_found=True))
        return [
            f.path
            for f in infos
            if f.type == pafs.FileType.File and f.path.endswith(".parquet") and not f.path.endswith(".pending.parquet")
        ]

    def read_ids(self, files: Sequence[str]) -> Any:
        """The distinct ids of Ray's id ``files`` (an Arrow array of their type)."""
        fs = self.filesystem

        def load(p: str) -> Any:
            return pq.read_table(p, columns=[self.id_column], filesystem=fs).column(self.id_column)

        with ThreadPoolExecutor(max(1, min(16, len(files)))) as pool:
            chunks = [c for col in pool.map(load, files) for c in col.chunks]
        if not chunks:
            return pa.array([], type=pa.large_string())
        return pc.unique(pa.chunked_array(chunks).combine_chunks().drop_null())

    def load_checkpoint(
        self,
        data_file_dir: str | None = None,
        data_file_filesystem: pafs.FileSystem | None = None,
    ) -> tuple[Any, int]:
        """Clean pending id files; return resumelog's ids plus Ray's; fold Ray's into resumelog."""
        t0 = time.perf_counter()
        if data_file_dir is not None:
            self._clean_pending_checkpoints(data_file_dir, data_file_filesystem)
        t1 = time.perf_counter()
        ckpt = self.open()
        done = completed_ids(ckpt)
        t2 = time.perf_counter()
        files = self.committed_files()
        native = self.read_ids(files) if files else pa.array([], type=pa.large_string())
        if len(native) and len(done):
            new = pc.filter(native, pc.invert(pc.is_in(pc.cast(native, pa.large_string()), value_set=done)))
        else:
            new = native
        if pa.types.is_integer(new.type) and not pa.types.is_uint64(new.type):
            ints = _IdMatcher(done)._int_ids() if len(done) else np.array([], dtype=np.int64)
            ids = pa.concat_arrays([pa.array(ints, pa.int64()), pc.cast(new, pa.int64())])
        else:
            ids = pa.concat_arrays([done, pc.cast(new, pa.large_string())])
        t3 = time.perf_counter()
        ingested = 0
        if files:
            args = (self.resumelog_url, self.storage_options, new, files, self.filesystem, self.delete_ingested)
            if self.ingest_mode == "blocking":
                ingested = _ingest(*args)
            else:
                type(self).last_ingest = _ingest_task.remote(*args)
        t4 = time.perf_counter()
        self.stats = {
            "clean_s": t1 - t0,
            "open_s": t2 - t1,
            "read_ray_files_s": t3 - t2,
            "ingest_s": t4 - t3,
            "ray_files": len(files),
            "ingested": ingested,
            "completed": len(ids),
        }
        logger.info(
            "resumelog: %d checkpointed ids (%d from Ray's %d id files, folded %s)",
            len(ids),
            len(new),
            len(files),
            self.ingest_mode,
        )
        if not len(ids):
            return None, 0
        return ray.put(ids), int(ids.nbytes)


class ResumelogCheckpointFilter(CheckpointFilter):  # type: ignore[misc]
    """Filters out checkpointed rows of a block (Ray's filter actor calls it).

    Takes the Arrow array of ids :class:`ResumelogCheckpointManager` put in the
    object store (a NumPy array from Ray's own manager works too) and matches each
    block's id column with :class:`vectorised lookups <_IdMatcher>`.
    """

    def __init__(self, config: Any, checkpoint_ref: Any = None) -> None:
        super().__init__(config, checkpoint_ref)
        ids = ray.get(checkpoint_ref) if checkpoint_ref is not None else pa.array([], type=pa.large_string())
        self._matcher = _IdMatcher(ids)

    def filter_rows_for_block(self, block: Any) -> Any:
        """``block`` without the rows whose id is checkpointed."""
        table = BlockAccessor.for_block(block).to_arrow()
        if self.id_column not in table.column_names:
            raise UnfilterableDataset(f"a block has no id column {self.id_column!r} (columns: {table.column_names})")
        return self._matcher.keep(table, str(self.id_column))
