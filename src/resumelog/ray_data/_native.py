"""Ray's native ``CheckpointConfig`` backed by resumelog.

:class:`ResumelogCheckpointConfig` plugs :class:`ResumelogCheckpointManager` (loads
the checkpointed ids, folds Ray's per-block id files into resumelog with
:func:`_ingest`) and :class:`ResumelogCheckpointFilter` into Ray's row-level
checkpointing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from ray.data.block import BlockAccessor
from ray.data.checkpoint import CheckpointConfig
from ray.data.checkpoint.checkpoint_filter import CheckpointFilter, CheckpointManager

from resumelog import compactor
from resumelog import paths as _paths
from resumelog.checkpoint import Checkpoint, WriterHandle
from resumelog.checkpoint import open as _open_checkpoint
from resumelog.errors import CheckpointReplaced, ObjectNotFound, StorageError
from resumelog.ray_data._checkpoint_fs import fence_ray_delete
from resumelog.ray_data._common import UnfilterableDataset
from resumelog.ray_data._filter import _IdMatcher, completed_ids

logger = logging.getLogger("resumelog")


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
    whole ``checkpoint_path`` (resumelog's part included) after a successful run, and
    it stays deleted: a background ingest still running then writes into the deleted
    checkpoint's epoch, which no reader counts (RFC 0004), so the next job processes
    every row. For that, the config's ``filesystem`` is wrapped
    (:mod:`~resumelog.ray_data._checkpoint_fs`): the delete removes resumelog's
    ``meta.msgpack`` first, and a still-writing ingest cannot make it stop part-way.
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
        fence_ray_delete(self)

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
    handle: WriterHandle,
    ids: Any,
    files: Sequence[str],
    filesystem: pafs.FileSystem,
    delete: bool,
) -> int:
    """Fold ``ids`` (complete, from Ray's id ``files``, not yet complete in resumelog)
    into the checkpoint ``handle`` was made from; then delete the files.

    Fenced by the handle's epoch: if the checkpoint was deleted since the handle was
    made (Ray's ``delete_checkpoint_on_success`` while this ran beside the pipeline,
    however late this task starts), what it writes carries the old epoch and is
    ignored by every reader, and the compaction refuses to publish (RFC 0004): returns
    0 then. Idempotent: a crash anywhere leaves the files, and the next start folds
    again. Returns the number of ids folded.
    """
    new: list[str] = pc.cast(ids, pa.large_string()).to_pylist()
    if new:
        w = handle.writer()
        try:
            w.complete_many(new)
            w.close()
            compactor.compact(w.store, progress=False, expect_epoch=handle.epoch)
        except (CheckpointReplaced, StorageError) as exc:
            # a write failing because Ray's delete removed its directory is the same
            # news as the compaction's refusal: this epoch is gone
            if not isinstance(exc, CheckpointReplaced) and compactor.read_epoch(w.store) == handle.epoch:
                raise
            logger.info("resumelog: the checkpoint was deleted while Ray's id files were folded: %s", exc)
            return 0
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
    4. returns ``(ObjectRef of the id array, bytes)`` — integers if Ray's files
       hold integer ids — or ``(None, 0)`` when nothing is checkpointed. The bytes
       are what each filter actor will hold, the array plus the index over it
       (:meth:`_IdMatcher.footprint <resumelog.ray_data._filter._IdMatcher.footprint>`:
       20 bytes per string id while the index is built, 12 after; 8 per integer id),
       which Ray reserves 1.5 times per filter actor.

    Works with a plain ``CheckpointConfig`` too (then: ``<checkpoint_path>/_resumelog``,
    no storage options, background ingest).
    """

    delete_ingested: bool = True
    """Delete Ray's id files once they are durable (and compacted) in resumelog."""

    last_ingest: Any = None
    """The ``ObjectRef`` of the last background ingest started in this process."""

    def __init__(self, checkpoint_config: Any, data_context: Any) -> None:
        fence_ray_delete(checkpoint_config)  # a plain CheckpointConfig naming this class too
        super().__init__(checkpoint_config=checkpoint_config, data_context=data_context)
        self.resumelog_url = _resumelog_url(checkpoint_config)
        self.storage_options: dict[str, Any] = dict(getattr(checkpoint_config, "storage_options", None) or {})
        self.ingest_mode: str = getattr(checkpoint_config, "ingest", "background")
        self.stats: dict[str, float] = {}

    def open(self, *, create: bool = True) -> Checkpoint:
        """The resumelog checkpoint behind this config (``create=False``: raise
        :class:`~resumelog.errors.ObjectNotFound` if there is none, writing nothing)."""
        return _open_checkpoint(self.resumelog_url, storage_options=self.storage_options, create=create)

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
        try:
            ckpt: Checkpoint | None = self.open(create=False)  # planning alone writes nothing
        except ObjectNotFound:
            ckpt = None
        done = completed_ids(ckpt) if ckpt is not None else pa.array([], type=pa.large_string())
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
            if ckpt is None:
                ckpt = self.open()
            # the handle carries the checkpoint's epoch: if Ray deletes checkpoint_path
            # before the fold ends, the fold's objects are foreign and ignored (RFC 0004)
            handle = ckpt.handle(f"ray-native-{_paths.default_writer_id()}"[:128])
            args = (handle, new, files, self.filesystem, self.delete_ingested)
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
        # what a filter actor holds (the ids and the index over them), not the array's
        # nbytes alone: Ray reserves 1.5x this much memory per filter actor
        return ray.put(ids), _IdMatcher.footprint(ids)


class ResumelogCheckpointFilter(CheckpointFilter):  # type: ignore[misc]
    """Filters out checkpointed rows of a block (Ray's filter actor calls it).

    Takes the Arrow array of ids :class:`ResumelogCheckpointManager` put in the
    object store (a NumPy array from Ray's own manager works too) and matches each
    block's id column with :class:`vectorised lookups <_IdMatcher>`: string ids
    through a hash index over the Arrow buffers (12 bytes per id beside the array,
    no Python object per id).
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
