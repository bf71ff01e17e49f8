"""resumelog: crash-safe resume for long data pipelines, on any storage.

Each writer appends delta records to its own journal of immutable segments; a
compactor folds them into snapshots of completed sources. See the documentation in
``docs/``: ``concepts.md`` (the model), ``guarantees.md`` and ``format.md`` (the bytes).
"""

from __future__ import annotations

from resumelog.background import BackgroundCompaction
from resumelog.checkpoint import Checkpoint, CompletedView, Status, WriterHandle, open
from resumelog.errors import (
    AlreadyExists,
    CorruptObject,
    CorruptSegment,
    CorruptSnapshot,
    FingerprintMismatch,
    FlushError,
    InvalidId,
    NothingToDo,
    ObjectNotFound,
    ResumelogError,
    StorageError,
    UnsupportedBackend,
    UnsupportedFormat,
)
from resumelog.journal import FlushPolicy, Writer

__version__ = "0.1.0"  # the only place the version is written (pyproject.toml reads it)

# In reading order, not sorted: the API reference (docs/api/resumelog.md) follows it.
__all__ = [  # noqa: RUF022
    "open",
    "Checkpoint",
    "WriterHandle",
    "Writer",
    "FlushPolicy",
    "CompletedView",
    "Status",
    "BackgroundCompaction",
    "ResumelogError",
    "InvalidId",
    "FingerprintMismatch",
    "NothingToDo",
    "FlushError",
    "StorageError",
    "AlreadyExists",
    "ObjectNotFound",
    "UnsupportedBackend",
    "CorruptObject",
    "CorruptSegment",
    "CorruptSnapshot",
    "UnsupportedFormat",
    "__version__",
]


def __dir__() -> list[str]:
    return __all__
