"""The facade behind :func:`resumelog.open`: a :class:`Checkpoint` and its writer handles."""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import msgspec

from resumelog import compactor, paths, snapshot_cache
from resumelog.algebra import FoldState
from resumelog.background import BackgroundCompaction
from resumelog.errors import (
    AlreadyExists,
    CheckpointReplaced,
    CorruptSnapshot,
    FingerprintMismatch,
    InvalidId,
    ObjectNotFound,
)
from resumelog.format import FORMAT_VERSION, Meta, decode_meta, encode_meta
from resumelog.journal import FlushPolicy, Writer
from resumelog.storage import ObjectInfo, Store, open_store

if TYPE_CHECKING:
    from resumelog.outputs import Output
    from resumelog.repair import RepairResult

__all__ = ["Checkpoint", "CompletedView", "OutputsStatus", "Status", "WriterHandle", "open"]

T = TypeVar("T")

logger = logging.getLogger("resumelog")

Scalar = str | int | float | bool | None


class RunStatus(msgspec.Struct):
    """One run as seen by :meth:`Checkpoint.status`."""

    run_id: str
    pending_sources: int
    completed_sources: int
    retired: bool
    first_snapshot: int
    last_snapshot: int
    damaged: bool = False
    """Records of the run were lost from storage: it completes nothing more (its sources rerun)."""


class WriterStatus(msgspec.Struct):
    """One journal stream (writer incarnation)."""

    writer_id: str
    incarnation: str
    run_id: str
    last_seq: int
    records: int
    last_flush_ms: int
    closed: bool


class OutputsStatus(msgspec.Struct):
    """One outputs root (written with :meth:`Writer.output`) as seen by
    :meth:`Checkpoint.status` with ``outputs=[root]``: the objects of each kind
    (:func:`resumelog.outputs.scan`) with their bytes, and what
    :meth:`Checkpoint.gc` with ``outputs=[root]`` would delete now."""

    root: str
    committed: int = 0
    """Outputs readers see: the source completed in the output's run."""
    committed_bytes: int = 0
    in_flight: int = 0
    """Outputs of sources not (yet) complete in their run, which may still complete them."""
    in_flight_bytes: int = 0
    orphaned: int = 0
    """Outputs of voided attempts (another run completed the source, or the output's run
    never can): invisible, deleted by ``gc`` once older than the grace."""
    orphaned_bytes: int = 0
    staging: int = 0
    """Spool files killed writers left under ``~staging/``."""
    staging_bytes: int = 0
    foreign: int = 0
    """Objects whose names are not outputs (never touched)."""
    gc_objects: int = 0
    """Orphans and spool files older than the grace: what ``gc`` would delete now."""
    gc_bytes: int = 0


class Status(msgspec.Struct):
    """A summary of a checkpoint (``resumelog status --json`` prints this)."""

    url: str
    format_version: int
    fingerprint: dict[str, Scalar]
    snapshot: int
    completed: int
    pending: int
    anomalies: int
    anomaly_counts: dict[str, int]
    recent_anomalies: list[dict[str, str]]
    runs: list[RunStatus]
    writers: list[WriterStatus]
    journal_objects: int
    journal_bytes: int
    snapshot_objects: int
    snapshot_bytes: int
    unfolded_segments: int
    records_folded: int
    gc_reclaimable_objects: int = 0
    gc_reclaimable_bytes: int = 0
    foreign_objects: int = 0
    """Objects of a deleted or cleared checkpoint (another epoch) left behind: ignored;
    ``gc`` deletes them."""
    resets: int = 0
    """Completions voided by an operator's ``reset`` (not counted among ``anomalies``)."""
    outputs: list[OutputsStatus] = msgspec.field(default_factory=list)
    """One entry per outputs root passed to :meth:`Checkpoint.status` (``outputs=``)."""
    layers: int = 0
    """Layers of the completed-id index the loaded snapshot names (format version 5 on)."""
    layer_bytes: int = 0


class RunReset(msgspec.Struct):
    """What :meth:`Checkpoint.reset_run` voided."""

    run_id: str
    completed: list[str]
    """Sources the run had completed: they rerun."""
    pending: list[str]
    """Sources the run had started but not completed: it cannot complete them any more."""


@dataclass(frozen=True)
class WriterHandle:
    """Everything a process needs to open its own writer; plain data, picklable.

    ``storage_options`` may hold credentials: they travel with the handle (the
    receiving process needs them) but are never shown by ``repr``.
    """

    url: str
    run_id: str
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    writer_id: str | None = None
    max_bytes: int = 1 << 20
    max_records: int = 200_000
    max_seconds: float = 10.0
    single_writer: bool = False
    epoch: bytes = field(default=b"", repr=False)
    """The epoch of the checkpoint the handle was made from (its ``meta.msgpack``
    nonce): a writer opened from it writes into that checkpoint only, so if it was
    deleted in the meantime, what the writer writes is ignored by every reader. Empty
    (a handle made by hand): the epoch of the checkpoint at ``url`` when the writer
    opens (created if there is none, as :func:`open` does)."""

    def writer(self, writer_id: str | None = None) -> Writer:
        """Open a new writer in this process (new incarnation, own buffer)."""
        store = open_store(self.url, self.storage_options, single_writer=self.single_writer)
        # a handle made by hand, not by Checkpoint.handle(): the checkpoint's epoch now
        epoch = self.epoch or _current_meta(store).nonce
        return Writer(
            store,
            writer_id if writer_id is not None else self.writer_id,
            self.run_id,
            policy=FlushPolicy(self.max_bytes, self.max_records, self.max_seconds),
            handle=self,
            epoch=epoch,
        )


class CompletedView(Set[str]):
    """Read-only, set-like view of the completed source ids."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self._ckpt = ckpt

    def __contains__(self, source: object) -> bool:
        return isinstance(source, str) and self._ckpt._ask(lambda st: st.is_completed(source))

    def __len__(self) -> int:
        return self._ckpt._state.completed_count()

    def __iter__(self) -> Iterator[str]:
        return iter(self._ckpt._ask(lambda st: list(st.iter_completed())))

    def __repr__(self) -> str:
        return f"<completed: {len(self)} sources>"


def default_run_id() -> str:
    """``RESUMELOG_RUN_ID``, else ``SLURM_ARRAY_JOB_ID``, else a new ULID."""
    for var in ("RESUMELOG_RUN_ID", "SLURM_ARRAY_JOB_ID"):
        v = os.environ.get(var)
        if v:
            return paths.validate_id(v, f"run id from ${var}")
    return paths.new_ulid()


def _same_objects(now: Iterable[ObjectInfo], then: Iterable[ObjectInfo]) -> bool:
    """Whether two listings hold the same objects (names, sizes and modification times)."""

    def key(objs: Iterable[ObjectInfo]) -> list[tuple[str, int, float | None]]:
        return sorted((o.path, o.size, o.mtime) for o in objs)

    return key(now) == key(then)


def open(  # noqa: A001 - the public name is part of the contract
    url: str | os.PathLike[str] | Store,
    *,
    storage_options: Mapping[str, Any] | None = None,
    run_id: str | None = None,
    fingerprint: Mapping[str, Scalar] | None = None,
    on_mismatch: Literal["raise", "reset"] = "raise",
    create: bool = True,
    single_writer: bool = False,
    flush_policy: FlushPolicy | None = None,
) -> Checkpoint:
    """Open (or create) the checkpoint at ``url`` (any fsspec URL or local path).

    Parameters
    ----------
    url
        Local path, ``file://``, ``memory://name``, ``s3://bucket/prefix``, ``gs://...``,
        or an already opened :class:`~resumelog.storage.Store`.
    storage_options
        Passed to fsspec (credentials, endpoint...).
    run_id
        Shared by every writer of one pipeline execution. Default:
        ``$RESUMELOG_RUN_ID``, ``$SLURM_ARRAY_JOB_ID`` or a new id per open.
    fingerprint
        Flat dict of JSON scalars describing the job; stored on creation and compared
        on every later open (:class:`~resumelog.errors.FingerprintMismatch`).
    on_mismatch
        ``"reset"``: delete the checkpoint and start over on a fingerprint mismatch.
    create
        Create ``meta.msgpack`` if missing. With ``False`` a missing checkpoint raises
        :class:`~resumelog.errors.ObjectNotFound` and nothing is ever written by open.
    single_writer
        Allow a backend without atomic create-only writes (one writer process only).
    """
    if on_mismatch not in ("raise", "reset"):
        raise ValueError("on_mismatch must be 'raise' or 'reset'")
    rid = paths.validate_id(run_id, "run id") if run_id is not None else default_run_id()
    fp = _check_fingerprint(fingerprint)
    if isinstance(url, Store):
        store = url
        url = store.url
        storage_options = {**getattr(store, "storage_options", {}), **(storage_options or {})}
    else:
        url = os.fspath(url)
        store = open_store(url, storage_options, single_writer=single_writer)
    meta = _ensure_meta(store, fp, on_mismatch, create)
    return Checkpoint(store, url, dict(storage_options or {}), rid, meta, single_writer, flush_policy)


def _check_fingerprint(fp: Mapping[str, Scalar] | None) -> dict[str, Scalar] | None:
    if fp is None:
        return None
    out: dict[str, Scalar] = {}
    for k, v in fp.items():
        if not isinstance(k, str):
            raise InvalidId(f"fingerprint keys must be str, got {k!r}")
        if v is not None and not isinstance(v, (str, int, float, bool)):
            raise InvalidId(f"fingerprint value for {k!r} must be a JSON scalar, got {type(v).__name__}")
        out[k] = v
    return out


def _ensure_meta(store: Store, fp: dict[str, Scalar] | None, on_mismatch: str, create: bool) -> Meta | None:
    for _ in range(3):
        try:
            meta = decode_meta(store.read(paths.META), paths.META)
        except ObjectNotFound:
            if not create:
                if store.list(""):
                    return None  # objects but no meta: an older layout or a partial clear
                raise ObjectNotFound(f"no checkpoint at {store.url}") from None
            held = len(store.list(paths.JOURNAL_PREFIX)) + len(store.list(paths.SNAPSHOT_PREFIX))
            if held:
                # meta.msgpack was deleted under a checkpoint that holds records: its
                # fingerprint is gone, so a given one cannot be checked
                if fp and on_mismatch != "reset":
                    raise FingerprintMismatch(
                        {k: (None, v) for k, v in fp.items()},
                        f"{paths.META} (which holds the stored fingerprint) is missing at {store.url}, "
                        f"which holds {held} journal and snapshot objects: the fingerprint cannot be checked",
                    ) from None
                if fp:
                    logger.warning(
                        "resumelog: %s is missing at %s (%d objects); on_mismatch='reset': clearing it",
                        paths.META,
                        store.url,
                        held,
                    )
                    _clear_layout(store)
                else:
                    logger.warning(
                        "resumelog: %s was missing at %s (%d journal and snapshot objects): a new checkpoint "
                        "is created; the objects of the deleted one are ignored (gc deletes them), except "
                        "those of format versions 1-3, which carry no epoch",
                        paths.META,
                        store.url,
                        held,
                    )
            new = Meta(FORMAT_VERSION, dict(fp or {}), secrets.token_bytes(16), int(time.time() * 1000))
            try:
                store.put_if_absent(paths.META, encode_meta(new))
                return new
            except AlreadyExists:
                continue  # created concurrently: compare with theirs
        if fp is not None:
            diff = {
                k: (meta.fingerprint.get(k), fp.get(k))
                for k in set(meta.fingerprint) | set(fp)
                if meta.fingerprint.get(k) != fp.get(k) or (k in meta.fingerprint) != (k in fp)
            }
            if diff:
                if on_mismatch == "reset":
                    logger.warning("resumelog: fingerprint changed (%s); clearing %s", sorted(diff), store.url)
                    _clear_layout(store)
                    continue
                raise FingerprintMismatch(diff)
        return meta
    raise AlreadyExists(f"could not settle meta.msgpack at {store.url}")


def _current_meta(store: Store) -> Meta:
    """The checkpoint's ``meta.msgpack`` at ``store``, created (no fingerprint) if missing."""
    meta = _ensure_meta(store, None, "raise", True)
    assert meta is not None  # create=True
    return meta


def _clear_layout(store: Store) -> None:
    """Delete resumelog's objects only (meta, then snapshots and journals), nothing else.

    ``meta.msgpack`` goes first: from then on every object of the checkpoint's epoch is
    foreign, so a reader racing the clear sees all of the checkpoint or none of it.
    """
    store.delete([paths.META])
    for prefix in (paths.SNAPSHOT_PREFIX, paths.LAYER_PREFIX, paths.JOURNAL_PREFIX, paths.QUARANTINE_PREFIX):
        store.delete(o.path for o in store.list(prefix))


class Checkpoint:
    """An open checkpoint: completed-set queries, writers, compaction, GC, reset.

    The view is loaded at open (latest snapshot + journal tail) and reloaded at the
    first read after one of this checkpoint's writers closed; call :meth:`refresh` to
    see other processes' progress since.
    """

    load_progress: bool | None = False
    """Progress bar of a load that folds a journal tail: ``False`` (the default) never
    draws one, ``None`` draws one on stderr when it is a terminal (the CLI sets this)."""

    def __init__(
        self,
        store: Store,
        url: str,
        storage_options: dict[str, Any],
        run_id: str,
        meta: Meta | None,
        single_writer: bool = False,
        flush_policy: FlushPolicy | None = None,
    ) -> None:
        self.store = store
        self.url = url
        self._storage_options = storage_options
        self.run_id = run_id
        self.meta = meta
        self._single_writer = single_writer
        self._policy = flush_policy or FlushPolicy()
        self._lock = threading.RLock()
        self._writers: list[Writer] = []
        self._background: list[BackgroundCompaction] = []
        self._view: FoldState
        self._loaded: compactor.Loaded
        self._stale = False
        self._skip: set[int] = set()
        """Snapshots whose stored layers were found damaged after a load (:meth:`_ask`)."""
        self._damaged: dict[int, str] = {}
        self.refresh()

    # ------------------------------------------------------------------ reading

    def refresh(self, *, force: bool = False) -> None:
        """Reload the view from storage (latest snapshot + journal tail).

        When nothing was added, removed or rewritten since the last load (the snapshot
        and journal listings are the same, names, sizes and times), the view is kept:
        objects are immutable, so the fold would give the same state. That costs the two
        listings a load starts with (a load reuses them) instead of reading and folding
        the tail (``watch`` on an idle job).
        """
        prev: compactor.Loaded | None = None if force else getattr(self, "_loaded", None)
        listing = compactor.Listing(compactor.list_snapshots(self.store))
        if prev is not None and _same_objects((o for _, o in listing.snapshots), prev.snapshots):
            listing.journal = self.store.list(paths.JOURNAL_PREFIX)
            if _same_objects(listing.journal, prev.journal):
                with self._lock:
                    self._stale = False
                return
        loaded = compactor.load(
            self.store, progress=self.load_progress, listing=listing, skip=set(self._skip)
        )  # listed once, not again
        if self.meta is not None and loaded.epoch != self.meta.nonce:
            raise CheckpointReplaced(
                f"the checkpoint at {self.store.url} was deleted or cleared since it was opened "
                "(what this process writes into it is ignored); reopen it"
            )
        with self._lock:
            self._loaded = loaded
            self._view = loaded.state
            self._stale = False

    @property
    def _state(self) -> FoldState:
        """The view, reloaded first if a writer of this checkpoint closed since."""
        if self._stale:
            self.refresh()
        return self._view

    def _writer_closed(self) -> None:
        # a close only marks the view stale: reloading is O(journal tail), and the next
        # step is often compact() (which folds anyway) or the end of the program
        self._stale = True

    def _ask(self, question: Callable[[FoldState], T]) -> T:
        """``question(view)``; if it meets a damaged block of the view's completed-id
        index (blocks are checked when first read, format 6), the view is reloaded:
        first reading the layer again (a damaged cached copy is dropped), then, if the
        stored layer itself is damaged, from the snapshot before (``snapshot_fallback``,
        as a load that finds the damage does), and the question asked again. A layer
        read in parts that a GC collected meanwhile (the view outlived gc's grace) makes
        it read the current snapshot."""
        for _ in range(3):
            state = self._state
            try:
                return question(state)
            except ObjectNotFound:
                # a layer read in parts was collected: a newer snapshot superseded the
                # view longer ago than gc's grace; read the current one
                self.refresh(force=True)
                continue
            except CorruptSnapshot as exc:
                loaded = self._loaded
                layers = {ref.name for ref in (loaded.frames.layers or ())} if loaded.frames is not None else set()
                if exc.path not in layers:
                    raise
                snapshot_cache.evict(self.store, exc.path)
                if self._damaged.get(loaded.snapshot) == exc.path:
                    self._skip.add(loaded.snapshot)  # damaged in the store, not a copy
                self._damaged[loaded.snapshot] = exc.path
                self.refresh(force=True)
        return question(self._state)

    def is_completed(self, source: str) -> bool:
        """Whether ``source`` completed (in any run, not reset)."""
        return self._ask(lambda st: st.is_completed(source))

    @property
    def completed(self) -> CompletedView:
        """Read-only set-like view of completed source ids."""
        return CompletedView(self)

    def pending(self, sources: Iterable[str]) -> list[str]:
        """The given sources that are not completed, in the given order.

        On an object store the parts of the completed-id index these ids fall in are
        read in one batch of ranged requests (a shard of neighbouring ids: a few)."""
        todo = list(sources)

        def ask(state: FoldState) -> list[str]:
            state.base.prefetch(todo)
            is_done = state.is_completed
            return [s for s in todo if not is_done(s)]

        return self._ask(ask)

    def completed_leaves(self, source: str, *, prefix: str | None = None) -> set[str]:
        """Lineage keys (``<source>::<i>::<j>``) of leaves of ``source`` already written
        (their sink ``-1`` recorded) by any live run: a rerun may skip them.

        ``prefix`` (default ``f"{source}::"``) filters the keys; ``""`` returns every
        key of ``source`` whose final delta in a live run is ``-1`` (the NeMo Curator
        backend, whose keys are Curator's task ids, uses it)."""
        return self._ask(lambda st: st.completed_leaves(source, prefix))

    def completed_run(self, source: str) -> str | None:
        """The run that completed ``source`` (``None`` if not completed)."""
        return self._ask(lambda st: st.completed_run(source))

    def outputs(
        self, root: str | Store, *, run: str | None = None, storage_options: Mapping[str, Any] | None = None
    ) -> list[Output]:
        """The committed outputs under ``root`` (written with :meth:`Writer.output`):
        those of completed sources, from the run that completed each
        (:func:`resumelog.outputs.committed`; reloads this view first)."""
        from resumelog.outputs import committed

        return committed(self, root, storage_options, run=run)

    @property
    def fingerprint(self) -> dict[str, Scalar]:
        """The fingerprint stored in ``meta.msgpack``."""
        return dict(self.meta.fingerprint) if self.meta else {}

    def status(
        self,
        *,
        gc_grace: float = compactor.DEFAULT_GRACE,
        outputs: Sequence[str | Store] = (),
        outputs_storage_options: Mapping[str, Any] | None = None,
    ) -> Status:
        """Counts, runs, writers, bytes and anomalies (re-lists storage).

        With ``outputs`` (roots written with :meth:`Writer.output`), also each root's
        committed, in-flight and orphaned outputs and staging debris, with their bytes
        and what ``gc`` would delete (``Status.outputs``; one listing per root, after
        the checkpoint is read, as :func:`resumelog.outputs.committed` does).
        ``outputs_storage_options``: for the roots (default: the checkpoint's for a root
        on its protocol).
        """
        self.refresh()
        completed_by_run = self._ask(lambda st: st.completed_by_run())  # reads (and checks) every block
        st = self._state
        loaded = self._loaded
        pending_by_run: dict[str, set[str]] = {}
        for run, src in st.pending:
            if not st.is_completed(src):  # a drained state shadowed by another run's completion is not pending
                pending_by_run.setdefault(run, set()).add(src)
        pending_sources: set[str] = set().union(*pending_by_run.values())
        runs = [
            RunStatus(
                r,
                len(pending_by_run.get(r, ())),
                completed_by_run.get(r, 0),
                info.retired,
                info.first_snapshot,
                info.last_snapshot,
                info.damaged,
            )
            for r, info in st.runs.items()
        ]
        writers = [
            WriterStatus(s.writer_id, s.incarnation, s.run_id, s.seq, s.records, s.last_ms, s.closed)
            for s in st.streams.values()
        ]
        journal = [o for o in loaded.journal if paths.parse_segment(o.path)]
        reclaim = compactor.gc(self.store, grace=gc_grace, dry_run=True)
        refs = loaded.frames.layers or [] if loaded.frames is not None else []
        counts = dict(st.anomaly_counts)
        resets = counts.pop("reset", 0)  # an operator's action, not something that went wrong
        outs: list[OutputsStatus] = []
        if outputs:
            from resumelog.outputs import summarize

            outs = [summarize(self, root, outputs_storage_options, grace=gc_grace, refresh=False) for root in outputs]
        return Status(
            url=self.store.url,
            format_version=FORMAT_VERSION,
            fingerprint=self.fingerprint,
            snapshot=loaded.snapshot,
            completed=st.completed_count(),
            pending=len(pending_sources),
            anomalies=sum(counts.values()),
            anomaly_counts=counts,
            recent_anomalies=[
                {"kind": a.kind, "source": a.source, "run_id": a.run_id, "detail": a.detail}
                for a in st.anomalies[-40:]
                if a.kind != "reset"
            ][-20:],
            runs=runs,
            writers=writers,
            journal_objects=len(journal),
            journal_bytes=sum(o.size for o in journal),
            snapshot_objects=len(loaded.snapshots),
            snapshot_bytes=sum(o.size for o in loaded.snapshots),
            unfolded_segments=loaded.segments_folded,
            records_folded=st.records_folded,
            gc_reclaimable_objects=reclaim.segments + reclaim.snapshots + reclaim.layers,
            gc_reclaimable_bytes=reclaim.segment_bytes + reclaim.snapshot_bytes + reclaim.layer_bytes,
            foreign_objects=len(loaded.foreign),
            resets=resets,
            outputs=outs,
            layers=len(refs),
            layer_bytes=sum(r.size for r in refs),
        )

    # ------------------------------------------------------------------ writing

    def handle(self, writer_id: str | None = None) -> WriterHandle:
        """A picklable handle other processes use to open their own writers."""
        if writer_id is not None:
            paths.validate_id(writer_id)
        p = self._policy
        return WriterHandle(
            self.url,
            self.run_id,
            dict(self._storage_options),
            writer_id,
            p.max_bytes,
            p.max_records,
            p.max_seconds,
            self._single_writer,
            self._epoch(),
        )

    def _epoch(self) -> bytes:
        """This checkpoint's epoch, for what it writes; creates ``meta.msgpack`` if this
        view has none (opened with ``create=False`` over a checkpoint without one, or
        cleared)."""
        if self.meta is None:
            self.meta = _current_meta(self.store)
        return self.meta.nonce

    def writer(self, writer_id: str | None = None, *, flush_policy: FlushPolicy | None = None) -> Writer:
        """Open this process's writer (``writer_id`` default: ``<host>-<pid>``).

        Closing it makes this checkpoint's view reload at its next read (flushes alone
        do not: records of other processes that a completion depends on may not be
        visible here yet).
        """
        w = Writer(
            self.store,
            writer_id,
            self.run_id,
            policy=flush_policy or self._policy,
            handle=self.handle(writer_id),
            on_close=self._writer_closed,
            epoch=self._epoch(),
        )
        self._writers.append(w)
        return w

    def reset(self, sources: Iterable[str]) -> list[str]:
        """Forget the completion of ``sources`` (operator override); returns those reset.

        Writes one tombstone per completed source naming the run that completed it and
        every run holding partial state for it (so their leaf completions are forgotten
        too). A completion by a run this view has not seen survives.
        """
        self.refresh()
        st = self._state
        todo = []
        for s in dict.fromkeys(sources):
            r = st.completed_run(s)
            if r is not None:
                todo.append((s, sorted({r} | {run for run in st.runs if (run, s) in st.pending})))
        if not todo:
            return []
        self._write_resets(todo)
        return [s for s, _ in todo]

    def _write_resets(self, todo: list[tuple[str, list[str]]]) -> None:
        """Write the tombstones ``(source, runs voided)`` in one segment of a writer of
        their own; then reload the view."""
        with Writer(
            self.store, f"reset-{paths.default_writer_id()}"[:128], self.run_id, handle=None, epoch=self._epoch()
        ) as w:
            for s, voided in todo:
                w.reset(s, voided)
        self.refresh()

    def reset_run(self, run_id: str) -> RunReset:
        """Void run ``run_id`` (operator override): every source it completed reruns, and
        it completes nothing more of the sources it had started.

        Writes the same tombstones as :meth:`reset`, one per source, each naming
        ``run_id`` (plus, for a completed source, every run holding partial state for
        it), so no format change: sources the run had not started when this view was
        loaded may still complete in it (stop a job before voiding its run).
        """
        self.refresh()
        st = self._state
        completed = [s for s in st.iter_completed() if st.completed_run(s) == run_id]
        done = set(completed)
        pending = sorted({src for run, src in st.pending if run == run_id and src not in done})
        todo = [(s, sorted({run_id} | {run for run in st.runs if (run, s) in st.pending})) for s in completed]
        todo += [(s, [run_id]) for s in pending]
        if todo:
            self._write_resets(todo)
        return RunReset(run_id, completed, pending)

    def compact(
        self,
        *,
        keep_runs: int | None = None,
        progress: bool | None = None,
        merge: bool = False,
        defer_merges: bool = False,
    ) -> compactor.CompactResult:
        """Fold all journals into a new snapshot (no-op if nothing is new).

        ``merge``: also merge the layers of the completed-id index into one (they are
        otherwise merged as they grow; see ``docs/scaling.md``). ``defer_merges``: merge
        only small layers, leaving the merges that rewrite large ones to :meth:`merge`
        (run elsewhere, e.g. ``resumelog merge --every 5m``): a tick then costs what it
        folds, not the size of the index."""
        for w in self._writers:
            if not w.closed and w.buffered:
                w.flush()
        result = compactor.compact(
            self.store,
            keep_runs=keep_runs,
            protect_runs=frozenset({self.run_id}),
            progress=progress,
            expect_epoch=self._epoch(),
            merge=merge,
            defer_merges=defer_merges,
        )
        self.refresh()
        return result

    def merge(self, *, full: bool = False) -> compactor.MergeResult:
        """Merge layers of the completed-id index as their sizes ask (``full``: all into
        one) and publish the result as a new snapshot; the background half of
        ``compact(defer_merges=True)`` (:func:`resumelog.compactor.merge`). Safe beside
        writers, compactors and other merges."""
        result = compactor.merge(self.store, full=full, expect_epoch=self._epoch())
        self.refresh()
        return result

    def compact_in_background(self, every: float = 300.0, *, keep_runs: int | None = None) -> BackgroundCompaction:
        """Compact every ``every`` seconds in a daemon thread, until the returned handle
        is stopped or this checkpoint is closed.

        A long job that compacts as it goes restarts from a snapshot (milliseconds)
        plus the records of the last ``every`` seconds, instead of folding everything it
        ever wrote. Safe beside any number of writers and other compactors. Failures are
        logged and retried at the next tick (:class:`~resumelog.BackgroundCompaction`
        counts them). The thread shares the interpreter: a compaction costs about what
        folding its records at the next start would, once; on a pipeline whose driver
        is busy, run ``resumelog compact --every`` as a separate process instead.

        Parameters
        ----------
        every : float, default 300.0
            Seconds between compactions (the first one after ``every`` seconds).
        keep_runs : int, optional
            As for :meth:`compact`; this checkpoint's run is never retired.
        """
        bg = BackgroundCompaction(
            self.store,
            every,
            keep_runs=keep_runs,
            protect_runs=frozenset({self.run_id}),
            expect_epoch=self._epoch(),
        )
        self._background.append(bg)
        return bg

    def gc(
        self,
        *,
        retain: int = compactor.DEFAULT_RETAIN,
        grace: float = compactor.DEFAULT_GRACE,
        dry_run: bool = False,
        keep_runs: int | None = None,
        progress: bool | None = None,
        outputs: Sequence[str | Store] = (),
        outputs_storage_options: Mapping[str, Any] | None = None,
    ) -> compactor.GcResult:
        """Delete snapshots beyond ``retain`` and segments they cover (older than ``grace`` s).

        With ``keep_runs``, first compact retiring all but that many recent runs. With
        ``outputs`` (roots written with :meth:`Writer.output`), also delete their
        orphaned outputs (voided attempts) and staging debris older than ``grace``
        (:func:`resumelog.outputs.gc`; listed in ``result.outputs``).
        """
        if keep_runs is not None:
            self.compact(keep_runs=keep_runs, progress=progress)
        result = compactor.gc(self.store, retain=retain, grace=grace, dry_run=dry_run, progress=progress)
        if outputs:
            from resumelog.outputs import gc_many

            result.outputs = list(gc_many(self, outputs, outputs_storage_options, grace=grace, dry_run=dry_run))
        return result

    def repair(self, *, dry_run: bool = False, progress: bool | None = None) -> RepairResult:
        """Publish the damage of corrupt segments (their runs complete nothing more),
        then move corrupt segments and snapshots aside to ``quarantine/``
        (:func:`resumelog.repair.repair`; ``resumelog repair`` on the command line)."""
        from resumelog.repair import repair

        return repair(self, dry_run=dry_run, progress=progress)

    def clear(self) -> None:
        """Delete the whole checkpoint (every object under the root)."""
        for w in self._writers:
            w.closed = True
        _clear_layout(self.store)
        self.meta = None
        self.refresh()

    def close(self) -> None:
        """Flush and close this checkpoint's writers; stop its background compactions
        (one under way is finished first)."""
        for w in self._writers:
            w.close()
        self._writers.clear()
        for bg in self._background:
            bg.stop()
        self._background.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpoint({self.store.url!r}, run_id={self.run_id!r})"
