"""Salvage a checkpoint holding corrupt objects (``resumelog repair``).

Loading already salvages a corrupt segment by quarantining its run (docs/format.md
§8). :func:`repair` makes that durable and clean: it publishes a snapshot recording
the damage (the runs that complete nothing more), then moves every corrupt segment
and snapshot aside to ``quarantine/<key>``, where no reader looks, so later loads
neither read them again nor warn. Nothing is deleted: an operator can inspect the
quarantined bytes or put them back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from resumelog import compactor, paths
from resumelog.errors import AlreadyExists, CorruptSnapshot, ObjectNotFound
from resumelog.format import decode_snapshot_frames

if TYPE_CHECKING:
    from resumelog.checkpoint import Checkpoint

__all__ = ["QUARANTINE_PREFIX", "RepairResult", "repair"]

QUARANTINE_PREFIX = paths.QUARANTINE_PREFIX
"""Where :func:`repair` moves corrupt objects (their key under it is unchanged)."""


@dataclass
class RepairResult:
    """What :func:`repair` found and did (or would do, with ``dry_run``)."""

    dry_run: bool
    corrupt_segments: list[str] = field(default_factory=list)
    """Segments not yet covered by a snapshot that do not decode."""
    corrupt_snapshots: list[str] = field(default_factory=list)
    damaged_runs: list[str] = field(default_factory=list)
    """Runs that complete nothing more (their sources rerun in a new run)."""
    snapshot: int = 0
    """The snapshot that records the damage (0: none was needed or written)."""
    moved: list[str] = field(default_factory=list)
    """Keys moved to ``quarantine/``."""

    @property
    def clean(self) -> bool:
        """Whether there was nothing to repair."""
        return not (self.corrupt_segments or self.corrupt_snapshots)


def repair(ckpt: Checkpoint, *, dry_run: bool = False, progress: bool | None = None) -> RepairResult:
    """Publish the damage of ``ckpt``'s corrupt objects, then move them aside.

    Order matters: the corrupt segments are moved only once a snapshot records their
    runs as damaged; a segment simply gone, with no later one in its stream, would
    otherwise look like a flush that never happened.
    """
    store = ckpt.store
    result = RepairResult(dry_run)
    for _, o in compactor.list_snapshots(store):
        try:
            decode_snapshot_frames(store.read(o.path), o.path)
        except CorruptSnapshot:
            result.corrupt_snapshots.append(o.path)
        except ObjectNotFound:
            continue
    loaded = compactor.load(store, progress=progress, verify=True)
    result.corrupt_segments = list(loaded.corrupt)
    result.damaged_runs = sorted(r for r, info in loaded.state.runs.items() if info.damaged)
    if dry_run or result.clean:
        return result
    if result.corrupt_segments:
        result.snapshot = ckpt.compact(progress=progress).snapshot
    for key in result.corrupt_segments + result.corrupt_snapshots:
        try:
            data = store.read(key)
        except ObjectNotFound:
            continue
        try:
            store.put_if_absent(QUARANTINE_PREFIX + key, data)
        except AlreadyExists:
            pass  # an earlier repair got this far
        store.delete([key])
        result.moved.append(QUARANTINE_PREFIX + key)
    ckpt.refresh()
    return result
