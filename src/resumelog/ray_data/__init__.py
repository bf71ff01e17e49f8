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
    rows = rd.read_committed(ckpt, "s3://bucket/out/")  # every row of each completed file, once

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
  the reader cannot provide it, and then a ``map_batches`` step that adds rows to a
  source is refused: two batches of equal rows would share one key).
* Output files are exactly-once outputs (``docs/exactly-once.md``), one per source per
  write task, published with put-if-absent as
  ``<root>/<run>/<source>/ray_data%3Asink%3A<rows digest>/part.parquet``: a retried task
  keeps its first attempt's file, a rerun publishes under its own run, and nothing is
  ever deleted by a write. :func:`read_committed` reads the files of the run that
  completed each source; ``ckpt.gc(outputs=[root])`` deletes those of voided attempts.
  An arbitrary ``Datasink`` (:func:`write_datasink`) cannot be routed this way: it is
  at-least-once.
* Write tasks record their ``-k`` after their files are published and return; a thread of the
  worker flushes right after (non-positive records may be buffered: losing one only
  reruns a source). The driver's :func:`write_parquet` waits until the records are
  visible before it returns its :class:`WriteSummary`. Positive deltas (a fan-out in
  :func:`map_batches`) are flushed before the batch moves on.
"""

# The package is split by concern; every name of the former single module stays
# importable from here (the private ones for tests and benchmarks). Code inside the
# package looks names up in the submodule that defines them, so patch them there.
#
#   _common      constants, errors, digests, grouping by source, schema check
#   _worker      the per-process journal writer with its background flusher
#   _planning    expand_paths, pending_paths, parquet_row_count, read, read_parquet
#   _accounting  map_batches: out - in per source around a batch function
#   _sinks       WriteSummary, ParquetSink, CheckpointingDatasink, write_parquet, write_datasink,
#                read_committed
#   _filter      completed_ids, _IdMatcher, filter_completed
#   _native      ResumelogCheckpointConfig, ResumelogCheckpointManager, ResumelogCheckpointFilter
#
# The public imports below are deliberately in reading order, not sorted: the API page
# (mkdocstrings, members_order "source") lists re-exported names in import order.
# ruff: noqa: I001

from __future__ import annotations

import logging

from resumelog.ray_data._common import ROW_HASH_COLUMN, UnfilterableDataset, UnsafeWriteMode
from resumelog.ray_data._planning import expand_paths, pending_paths, parquet_row_count, read, read_parquet
from resumelog.ray_data._accounting import map_batches
from resumelog.ray_data._sinks import (
    PART_NAME,
    WriteSummary,
    ParquetSink,
    CheckpointingDatasink,
    write_parquet,
    write_datasink,
    read_committed,
)
from resumelog.ray_data._filter import completed_ids, filter_completed
from resumelog.ray_data._native import (
    ResumelogCheckpointConfig,
    ResumelogCheckpointManager,
    ResumelogCheckpointFilter,
)

# private names of the former module (tests, benchmarks)
from resumelog.ray_data._common import _MAP_KEY as _MAP_KEY
from resumelog.ray_data._common import _ROWS_KEY as _ROWS_KEY
from resumelog.ray_data._common import _SINK_KEY as _SINK_KEY
from resumelog.ray_data._common import _check_schema as _check_schema
from resumelog.ray_data._common import _digest as _digest
from resumelog.ray_data._common import _filesystem as _filesystem
from resumelog.ray_data._common import _groups as _groups
from resumelog.ray_data._common import _hash16 as _hash16
from resumelog.ray_data._common import _ray_path as _ray_path
from resumelog.ray_data._worker import _WRITERS as _WRITERS
from resumelog.ray_data._worker import _WRITERS_LOCK as _WRITERS_LOCK
from resumelog.ray_data._worker import _worker_writer as _worker_writer
from resumelog.ray_data._worker import _WriterEntry as _WriterEntry
from resumelog.ray_data._planning import _PLANS as _PLANS
from resumelog.ray_data._planning import _Plan as _Plan
from resumelog.ray_data._planning import _read_tasks as _read_tasks
from resumelog.ray_data._accounting import _AccountedFn as _AccountedFn
from resumelog.ray_data._accounting import _accounted_class as _accounted_class
from resumelog.ray_data._accounting import _Accounting as _Accounting
from resumelog.ray_data._accounting import _restamp as _restamp
from resumelog.ray_data._accounting import _set_column as _set_column
from resumelog.ray_data._accounting import _to_arrow as _to_arrow
from resumelog.ray_data._sinks import _await_drain as _await_drain
from resumelog.ray_data._sinks import _check_mode as _check_mode
from resumelog.ray_data._sinks import _resolve as _resolve
from resumelog.ray_data._sinks import _SinkBase as _SinkBase
from resumelog.ray_data._sinks import _summarize as _summarize
from resumelog.ray_data._filter import _LARGE_SET as _LARGE_SET
from resumelog.ray_data._filter import _MATCHERS as _MATCHERS
from resumelog.ray_data._filter import _MATCHERS_LOCK as _MATCHERS_LOCK
from resumelog.ray_data._filter import _completed_ids_fast as _completed_ids_fast
from resumelog.ray_data._filter import _IdMatcher as _IdMatcher
from resumelog.ray_data._filter import _matcher as _matcher
from resumelog.ray_data._filter import _RowFilter as _RowFilter
from resumelog.ray_data._native import _ingest as _ingest
from resumelog.ray_data._native import _ingest_task as _ingest_task
from resumelog.ray_data._native import _resumelog_url as _resumelog_url

logger = logging.getLogger("resumelog")

__all__ = [
    "PART_NAME",
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
    "read_committed",
    "read_parquet",
    "write_datasink",
    "write_parquet",
]


def __dir__() -> list[str]:
    return __all__
