"""File-level planning: list the inputs, skip the complete ones, emit row counts, read.

:func:`read` / :func:`read_parquet` record each pending file's ``+<row count>``
before any row is read and remember the run's plan (:class:`_Plan`, the sources it
expects to drain) per checkpoint for :func:`~resumelog.ray_data.map_batches` and the
writes.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
import ray.data

from resumelog.checkpoint import Checkpoint
from resumelog.errors import NothingToDo
from resumelog.ray_data._common import _ROWS_KEY, _filesystem, _ray_path, _signed_row_hash

logger = logging.getLogger("resumelog")


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
    row_hash: bool = False  # every read of the run added ROW_HASH_COLUMN: the writes require it


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
        With ``include_row_hash=True`` in ``reader_kwargs``, Ray's ``row_hash`` is
        carried as ``int64`` (a batch step fused into the read) and the writes require it.

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
    row_hash = bool(reader_kwargs.get("include_row_hash"))
    prev = _PLANS.get(ckpt)
    if prev is not None and prev.run_id == ckpt.run_id and prev.source_id is source_id:
        sources = [*prev.sources, *sources]  # several reads of one run (e.g. a union)
        row_hash = row_hash and prev.row_hash
    _PLANS[ckpt] = _Plan(tuple(dict.fromkeys(sources)), "path", source_id, ckpt.run_id, row_hash)
    if filesystem is not None:
        reader_kwargs["filesystem"] = filesystem
    if "override_num_blocks" not in reader_kwargs:
        blocks = _read_tasks(len(to_read), len(files))
        if blocks is not None:
            reader_kwargs["override_num_blocks"] = blocks
    ds: ray.data.Dataset = reader(to_read, include_paths=True, **reader_kwargs)
    if reader_kwargs.get("include_row_hash"):
        # int64, not Ray's uint64: row-based steps (map, flat_map) rebuild the column from
        # Python ints, and those of 2**63 and more would turn it into pickled objects
        ds = ds.map_batches(_signed_row_hash, batch_format="pyarrow", batch_size=None, zero_copy_batch=True)
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
        The pending files' rows with ``path`` and ``row_hash`` (``int64``, see
        :data:`~resumelog.ray_data.ROW_HASH_COLUMN`) columns. Keep ``row_hash`` until
        the write: a write refuses a dataset that lost it
        (:class:`~resumelog.ray_data.UnfilterableDataset`).

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
