"""The error types of resumelog.

Few and coarse on purpose: each one tells the caller what to do (retry, fix the
input, or treat as fatal). Message texts are for humans and are not part of the API.
Every error subclasses :class:`ResumelogError`, and where a builtin fits it subclasses
that too, so ``except FileExistsError`` or ``except ValueError`` keep working.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "AlreadyExists",
    "CheckpointReplaced",
    "CorruptObject",
    "CorruptSegment",
    "CorruptSnapshot",
    "FingerprintMismatch",
    "FlushError",
    "InvalidId",
    "NothingToDo",
    "ObjectNotFound",
    "ResumelogError",
    "StorageError",
    "UnsupportedBackend",
    "UnsupportedFormat",
]


def __dir__() -> list[str]:
    return __all__


class ResumelogError(Exception):
    """Base class of every error raised by resumelog."""


class InvalidId(ResumelogError, ValueError):
    """A writer id, run id or source id is not acceptable. Fix the input."""


class AlreadyExists(ResumelogError, FileExistsError):
    """A create-only write found the object already there.

    Raised by :meth:`resumelog.storage.Store.put_if_absent`. For segments and snapshots
    it means another writer or compactor won the race: reload, do not overwrite.
    """


class ObjectNotFound(ResumelogError, FileNotFoundError):
    """The object does not exist. For a whole checkpoint: nothing was written yet."""


class StorageError(ResumelogError, OSError):
    """The storage failed or is unreachable. Usually transient: retry later.

    A failed :meth:`Writer.flush` keeps its buffer, so a retry loses nothing.
    """


class FlushError(StorageError):
    """A journal flush could not be made durable. The buffer is kept: retry ``flush()``."""


class UnsupportedBackend(ResumelogError, ValueError):
    """The storage cannot do an atomic create-only write. Fatal for multi-writer use.

    Pass ``single_writer=True`` to :func:`resumelog.open` only if exactly one process
    ever writes to the checkpoint.
    """


class CorruptObject(ResumelogError, ValueError):
    """An object on storage failed its CRC or structure checks. Fatal for that object.

    The message and :attr:`path` name the object; nothing is silently skipped.
    """

    def __init__(self, message: str, path: str = "") -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class CorruptSegment(CorruptObject):
    """A journal segment is corrupt (and is not a tolerated torn tail)."""


class CorruptSnapshot(CorruptObject):
    """A snapshot is corrupt. Loading falls back to the previous snapshot."""


class UnsupportedFormat(ResumelogError, ValueError):
    """An object was written by a newer format version. Upgrade resumelog; fatal here."""

    def __init__(self, message: str, path: str = "") -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class FingerprintMismatch(ResumelogError, ValueError):
    """The checkpoint was created with a different fingerprint. Fix the input.

    :attr:`differences` maps each differing field to ``(stored, given)``. Reopen with
    ``on_mismatch="reset"`` to start over deliberately.
    """

    def __init__(self, differences: Mapping[str, tuple[object, object]], reason: str | None = None) -> None:
        self.differences = dict(differences)
        if reason is None:
            parts = ", ".join(f"{k}: stored {a!r} != given {b!r}" for k, (a, b) in sorted(differences.items()))
            reason = f"fingerprint mismatch ({parts})"
        super().__init__(f"{reason}; pass on_mismatch='reset' to start over")


class CheckpointReplaced(ResumelogError):
    """The checkpoint this process opened was deleted or cleared (and perhaps created
    anew) since: what it writes now belongs to the old checkpoint and is ignored by
    every reader. Fatal for this process's writes; reopen to start over.
    """


class NothingToDo(ResumelogError, ValueError):
    """Every requested source is already complete. Not a failure: nothing to rerun.

    Also a ``ValueError``: the type NeMo Curator raises when a pipeline has no tasks
    to process, so code written for Curator's checkpointing catches it.
    """
