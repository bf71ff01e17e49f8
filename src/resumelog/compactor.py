"""Load, compact and garbage-collect a checkpoint, through the :class:`Store` interface only.

Loading: the latest snapshot that decodes (falling back to older ones, each fallback an
anomaly), then every stream's segments after its high-water mark in ``seq`` order,
stopping at a gap. Compaction publishes that state as snapshot ``latest + 1`` with
put-if-absent; losing the race to another compactor means reloading and trying again.
"""

from __future__ import annotations

import gc as _pygc
import logging
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Any, NamedTuple, NoReturn, TypeVar

from msgspec.structs import replace as replace_struct

from resumelog import _fastfold, layers, paths, snapshot_cache
from resumelog._hashed_dicts import hashed_dict, source_map
from resumelog._progress import Progress
from resumelog._provisional import ProvisionalSet
from resumelog.algebra import FoldState
from resumelog.done_shapes import DoneShapeMap, ShapeTable
from resumelog.errors import (
    AlreadyExists,
    CheckpointReplaced,
    CorruptSegment,
    CorruptSnapshot,
    ObjectNotFound,
    ResumelogError,
)
from resumelog.format import (
    HEADER_PREFIX,
    KIND_LAYER,
    KIND_SEGMENT,
    KIND_SNAPSHOT,
    LayerHeader,
    LayerRef,
    SegmentHeader,
    SnapshotFrames,
    SnapshotHeader,
    StreamMark,
    TornSegment,
    decode_header,
    decode_meta,
    decode_segment,
    decode_snapshot_frames,
    encode_snapshot_frames,
)
from resumelog.layers import LayerSource, encode_new_layer
from resumelog.snapshot import EncodedSnapshot, encode_snapshot, load_layer, load_snapshot
from resumelog.storage import ObjectInfo, Store

__all__ = [
    "CompactResult",
    "GcResult",
    "Loaded",
    "compact",
    "gc",
    "list_snapshots",
    "load",
    "put_snapshot",
    "read_epoch",
]

logger = logging.getLogger("resumelog")

DEFAULT_RETAIN = 3
DEFAULT_GRACE = 3600.0


@dataclass
class Loaded:
    """A loaded view: the fold state and where it came from."""

    state: FoldState
    frames: SnapshotFrames | None
    snapshot: int
    """Number of the snapshot loaded (0: none)."""
    latest_listed: int
    """Highest snapshot number present (may be a corrupt one we fell back from)."""
    segments_folded: int = 0
    records_folded: int = 0
    journal: list[ObjectInfo] = field(default_factory=list)
    snapshots: list[ObjectInfo] = field(default_factory=list)
    streams_listed: set[tuple[str, str]] = field(default_factory=set)
    streams_relisted: set[tuple[str, str]] = field(default_factory=set)
    """Streams of the second journal listing (:func:`_fold_latecomers`)."""
    for_compaction: bool = True
    """The state will be encoded (a compaction): completions keep their open writers."""
    epoch: bytes | None = None
    """The nonce of ``meta.msgpack`` during the load (``None``: no meta)."""
    foreign: list[str] = field(default_factory=list)
    """Objects of another epoch met by the load (ignored): debris of a deleted checkpoint."""
    foreign_snapshots: set[int] = field(default_factory=set)
    corrupt: list[str] = field(default_factory=list)
    """Segments that do not decode, salvaged by quarantining their runs (``resumelog repair``)."""
    salvaged: bool = False
    """A corrupt segment quarantined a run the base snapshot did not know was damaged:
    a compaction publishes even if it folded nothing else."""
    spilled: list[str] = field(default_factory=list)
    """Names of the layers the fold's spills made (:data:`SPILL_COMPLETIONS`): in memory
    only, written by a compaction whose snapshot still names them (:func:`compact`)."""
    spills: int = 0
    """How many times the fold spilled its completions into layers."""
    spill_sizes: list[int] = field(default_factory=list)
    """The size (entries and tombstones) of the layer each spill added, in order."""


def list_snapshots(store: Store) -> list[tuple[int, ObjectInfo]]:
    """Snapshots present, oldest first."""
    out = []
    for o in store.list(paths.SNAPSHOT_PREFIX):
        n = paths.parse_snapshot(o.path)
        if n is not None:
            out.append((n, o))
    out.sort(key=lambda t: t[0])
    return out


def read_epoch(store: Store) -> bytes | None:
    """The checkpoint's epoch: the nonce of its ``meta.msgpack`` (``None`` if absent).

    Every object a writer or compactor of the checkpoint writes carries it (format
    version 4); objects carrying another epoch are debris of a deleted or cleared
    checkpoint and are ignored (:func:`is_foreign`).
    """
    try:
        return decode_meta(store.read(paths.META), paths.META).nonce
    except ObjectNotFound:
        return None


def is_foreign(epoch: bytes, live: bytes | None) -> bool:
    """Whether an object stamped ``epoch`` belongs to another checkpoint than the one
    whose epoch is ``live``. Objects of format versions 1-3 carry none: they belong."""
    return bool(epoch) and epoch != live


def read_header(store: Store, path: str, kind: int) -> SegmentHeader | SnapshotHeader | LayerHeader:
    """The header of object ``path`` with one ranged read (the whole object if its
    header is longer than :data:`~resumelog.format.HEADER_PREFIX`)."""
    prefix = store.read_prefix(path, HEADER_PREFIX)
    header = decode_header(prefix, kind, path)
    if header is None and len(prefix) == HEADER_PREFIX:  # more to read: a header this long is odd, not wrong
        header = decode_header(store.read(path), kind, path)
    if header is None:
        raise (CorruptSegment if kind == KIND_SEGMENT else CorruptSnapshot)("object ends inside its header", path)
    return header


_GC_LOCK = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = False


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC: folding allocates millions of acyclic tuples and dicts, and
    the collector's repeated full passes over them would double the fold time.

    The collector is process-wide and folds may overlap (a background compaction
    beside the main thread's open): the first pause disables it, the last one to end
    restores what it was before the first."""
    global _gc_pauses, _gc_was_enabled
    with _GC_LOCK:
        if _gc_pauses == 0:
            _gc_was_enabled = _pygc.isenabled()
            _pygc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _GC_LOCK:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                _pygc.enable()


@dataclass
class Listing:
    """Listings a caller already made, in the order a load makes them (snapshots, then
    the journal), so that :func:`load` does not list again."""

    snapshots: list[tuple[int, ObjectInfo]]
    """As :func:`list_snapshots` returns them."""
    journal: list[ObjectInfo] | None = None
    """``store.list(paths.JOURNAL_PREFIX)``, listed after ``snapshots`` (``None``: not listed)."""


def load(
    store: Store,
    *,
    progress: bool | None = None,
    warn: Callable[[str], None] = logger.warning,
    before_fold: Callable[[FoldState], None] | None = None,
    listing: Listing | None = None,
    verify: bool = False,
    skip: set[int] | None = None,
    damaged: dict[int, str] | None = None,
) -> Loaded:
    """Latest valid snapshot plus the journal tail after it, folded.

    ``listing``: the snapshot (and journal) listings when the caller just made them;
    used by the first attempt only (a retry lists again). ``verify``: the load is a
    compaction's, whose state will be encoded: check every frame of the snapshot
    chosen as base and the heads of the layers it names before folding (they will be
    carried), and keep the open writers of every completion (frame 8). Otherwise large
    frames are CRC-checked on first use (a failure then makes the load fall back to
    the previous snapshot all the same), and the last evaluation skips the writers.
    Either way a layer's blocks are checked when first read (a compaction carries the
    blocks it does not read by reference, unread). ``skip``: numbers of snapshots not
    to use (found corrupt after they were chosen); grown by the load itself, as is
    ``damaged`` (the layer of a snapshot that failed once: read again, then skipped).

    Raises :class:`~resumelog.errors.CorruptSnapshot` if snapshots exist but none
    decodes, :class:`~resumelog.errors.CorruptSegment` for a corrupt segment that is
    not a tolerated torn tail.
    """
    skip = set() if skip is None else skip
    damaged = {} if damaged is None else damaged
    attempt = 0
    while True:
        try:
            return _load_once(
                store,
                progress=progress,
                warn=warn,
                before_fold=before_fold,
                listing=listing if attempt == 0 else None,
                verify=verify,
                skip=skip,
            )
        except _BadBase as exc:
            _forget_bad_base(store, exc, skip, damaged)
        except _StaleSnapshot as exc:
            attempt += 1
            if attempt == _LOAD_ATTEMPTS:
                raise ResumelogError(
                    f"{store.url}: the journal keeps moving past the latest snapshot ({exc})"
                ) from None


_LOAD_ATTEMPTS = 5


def _load_once(
    store: Store,
    *,
    progress: bool | None,
    warn: Callable[[str], None],
    before_fold: Callable[[FoldState], None] | None,
    listing: Listing | None,
    verify: bool,
    skip: set[int],
) -> Loaded:
    epoch = read_epoch(store)
    snaps = listing.snapshots if listing is not None else list_snapshots(store)
    foreign: list[str] = []
    foreign_numbers: set[int] = set()
    frames: SnapshotFrames | None = None
    state: FoldState | None = None
    loaded_n = 0
    base_path = ""
    failures: list[ResumelogError] = []
    for n, info in reversed(snaps):
        if n in skip:
            failures.append(
                CorruptSnapshot("a frame or layer block failed its check after the snapshot was chosen", info.path)
            )
            continue
        try:
            # a compaction checks the snapshot's frames and its layers' heads now, and
            # the blocks it reads as it reads them (those it carries unread are not
            # read at all: a tick costs what is new, not the base's size)
            base = _load_base(store, info.path, defer_done_crc=not verify, epoch=epoch, compaction=verify)
            if base is None:
                foreign.append(info.path)
                foreign_numbers.add(n)
                continue
            frames, state = base
            loaded_n = n
            base_path = info.path
            break
        except CorruptSnapshot as exc:
            failures.append(exc)
        except ObjectNotFound:
            continue  # collected between list and read
    if state is None:
        if failures:
            raise failures[0]
        state = FoldState(number=1)
    state.warn = warn
    for failure in failures:
        warn(f"resumelog: skipping unreadable snapshot: {failure}")
        state.anomaly("snapshot_fallback", "", "", str(failure))
    latest = snaps[-1][0] if snaps else 0
    # the next number: above every snapshot of this epoch listed (a corrupt one too), not
    # above another epoch's (debris numbered in that epoch, which GC collects: had it
    # counted, a number between would stay free, and a compaction listing after that
    # collection could publish there from a newer base than this one's, so that a
    # higher number covered less: see compact)
    state.number = max((n for n, _ in snaps if n not in foreign_numbers), default=0) + 1
    loaded = Loaded(
        state,
        frames,
        loaded_n,
        latest,
        snapshots=[o for _, o in snaps],
        for_compaction=verify,
        epoch=epoch,
        foreign=foreign,
        foreign_snapshots=foreign_numbers,
    )
    with _bad_base_raises(loaded_n, base_path, state):
        if before_fold is not None:
            before_fold(state)
        with _gc_paused():
            fold_journal(store, loaded, progress=progress, journal=listing.journal if listing is not None else None)
    return loaded


def _load_base(
    store: Store,
    path: str,
    *,
    defer_done_crc: bool,
    epoch: bytes | None,
    compaction: bool = False,
) -> tuple[SnapshotFrames, FoldState] | None:
    """Decode snapshot ``path`` and the layers it names, through the local snapshot cache
    on object stores; a cached copy that fails its checks is dropped and read again.
    ``None`` if the snapshot is of another epoch than ``epoch`` (its layers are not read).
    Large layers not cached on an object store are read in parts (their heads now, blocks
    when lookups or merges need them, :mod:`resumelog.snapshot_cache`); every block is
    checked when first read. ``compaction``: a compaction's load (a layer collected
    before its blocks are read makes it load again or fall back, as at load time)."""
    data, cached = snapshot_cache.read_snapshot(store, path)
    if _foreign_snapshot(data, path, epoch):
        return None
    from_cache: set[str] = set()  # layers served by cached copies
    prefetched: dict[str, snapshot_cache.Prefetched] = {}

    def prefetch(refs: Sequence[LayerRef]) -> None:
        prefetched.update(snapshot_cache.prefetch_layers(store, refs))

    def read_layer(ref: LayerRef) -> bytes | memoryview | LayerSource:
        layer, hit = _read_layer(store, ref, path, compaction, prefetched.pop(ref.name, None))
        if hit:
            from_cache.add(ref.name)
        return layer

    for retry in (False, True):
        try:
            return load_snapshot(
                data, path, defer_done_crc=defer_done_crc, read_layer=read_layer, check_blocks=False, prefetch=prefetch
            )
        except CorruptSnapshot as exc:
            # a cached copy (of the snapshot or a layer) that fails its checks: drop it, read again
            if retry or not ((cached and exc.path == path) or exc.path in from_cache):
                raise
            if cached and exc.path == path:
                snapshot_cache.evict(store, path)
                data, cached = store.read(path), False
            for name in from_cache:
                snapshot_cache.evict(store, name)
            from_cache.clear()
    raise AssertionError("unreachable")


def _foreign_snapshot(data: bytes | memoryview, path: str, epoch: bytes | None) -> bool:
    """Whether snapshot ``path`` (its bytes ``data``) is of another epoch than ``epoch``."""
    header = decode_header(memoryview(data)[:HEADER_PREFIX], KIND_SNAPSHOT, path)
    return isinstance(header, SnapshotHeader) and is_foreign(header.epoch, epoch)


def _read_layer(
    store: Store,
    ref: LayerRef,
    snapshot: str,
    compaction: bool = False,
    prefetched: snapshot_cache.Prefetched | None = None,
) -> tuple[bytes | memoryview | LayerSource, bool]:
    """The bytes of a layer snapshot ``snapshot`` names (and whether they are a cached
    copy). A missing layer means the snapshot was superseded and collected during the
    load (load again) if the snapshot is gone too, else a lost object: the snapshot is
    unusable (fall back). ``compaction``: the same holds for the blocks of a layer read
    in parts, when the compaction reads them (a reader's ``Checkpoint`` handles a
    missing layer itself: it reads the current snapshot)."""
    try:
        data, hit = snapshot_cache.read_layer(store, ref, lazy=True, prefetched=prefetched)
    except ObjectNotFound:
        _layer_missing(store, ref, snapshot)
    if compaction and isinstance(data, LayerSource):  # blocks read later: the same answer then
        read = data.read

        def read_blocks(ranges: list[tuple[int, int]]) -> list[bytes | memoryview]:
            try:
                return read(ranges)
            except ObjectNotFound:
                _layer_missing(store, ref, snapshot)

        data = LayerSource(data.head, read_blocks)
    return data, hit


def _layer_missing(store: Store, ref: LayerRef, snapshot: str) -> NoReturn:
    if not store.exists(snapshot):
        raise _StaleSnapshot(f"{snapshot} was collected while it was read") from None
    raise CorruptSnapshot(f"layer {ref.name} it names is missing", snapshot) from None


class _BadBase(Exception):
    """The base snapshot, or the layer ``path`` it names, failed a check deferred past
    the choice of base: load again (:func:`_forget_bad_base`)."""

    def __init__(self, number: int, path: str) -> None:
        self.number = number
        self.path = path


def _forget_bad_base(store: Store, exc: _BadBase, skip: set[int], damaged: dict[int, str]) -> None:
    """Before loading again after ``exc``: drop the cached copy of what failed; skip the
    snapshot from now on if the snapshot itself failed, or if the same layer fails a
    second time (read again from the store: damaged there, not in a copy)."""
    snapshot_cache.evict(store, exc.path)
    if exc.path == paths.snapshot_name(exc.number) or damaged.get(exc.number) == exc.path:
        skip.add(exc.number)  # at most twice per snapshot: it is skipped from now on
    damaged[exc.number] = exc.path


@contextmanager
def _bad_base_raises(number: int, path: str, state: FoldState) -> Iterator[None]:
    """Turn a :class:`CorruptSnapshot` of the base snapshot ``path`` or of a layer it
    names (a deferred CRC, a malformed shape table) into :class:`_BadBase`, so the load
    falls back."""
    try:
        yield
    except CorruptSnapshot as exc:
        names = {path, *(layer.ref.name for layer in state.base.layers if layer.ref is not None)}
        if number and exc.path in names:
            raise _BadBase(number, exc.path) from exc
        raise


ROUND_RECORDS = 500_000
"""A long journal tail is evaluated every this many records while it is folded (the
round runs before the next segment that holds records, so never right before the final
evaluation), so drained sources collapse to their completion instead of holding their
fold state until the end: memory stays bounded by what is in flight, not by the tail's
length. The result is the same (a record folded after its source completed provisionally reopens
it exactly, quietly: ``FoldState.provisional``). A round's records wait in the fold's
columns until it is evaluated, some 350 bytes each: compacting 4M records peaks at
455 MB in rounds of 500,000 and at 981 MB in rounds of 2,000,000, at the same speed
(``benchmarks/bench_memory.py``)."""


SPILL_COMPLETIONS: int | None = 1_000_000
"""After an evaluation round (:data:`ROUND_RECORDS`), a fold holding at least this many
completions of its own (``FoldState.added``, ``removed`` and ``done_writers``: Python
dicts, some 200 bytes each) *spills* them: the state is encoded as a snapshot in memory
and its completed-id index loaded back from it, as compact immutable layers (about 60
bytes per 49-byte id), exactly as if a compaction had been published there and the
next one had gone on (the fold is order-independent, and a snapshot round trip
changes no answer). So the fold's memory is bounded by its base's layers, its pending
state, a round, the journal segments in flight and this many completions, not by the
records it folds; what still grows with them is the layer merges a spill (or the
publish) runs when :func:`~resumelog.layers.plan_merges` asks for one (``docs/scaling.md``,
*Memory*). The layers are written only if the published snapshot names them
(:func:`compact`). ``None``: never spill (every completion stays in Python objects
until the snapshot is encoded)."""


class _StaleSnapshot(Exception):
    """The journal moved past the loaded snapshot (collected by GC): load again."""


def fold_journal(
    store: Store, loaded: Loaded, *, progress: bool | None = None, journal: list[ObjectInfo] | None = None
) -> None:
    """Fold every stream's segments after its high-water mark into ``loaded.state``
    (``journal``: the journal's listing, if the caller just made it)."""
    state = loaded.state
    listing = journal if journal is not None else store.list(paths.JOURNAL_PREFIX)
    loaded.journal = listing
    _check_base_still_listed(store, loaded)
    streams: dict[tuple[str, str], list[tuple[int, ObjectInfo]]] = defaultdict(list)
    for o in listing:
        p = paths.parse_segment(o.path)
        if p is not None:
            streams[(p.writer_id, p.incarnation)].append((p.seq, o))
    loaded.streams_listed = set(streams)
    plan: list[tuple[str, bool]] = []  # (key, is last listed of its stream)
    for (w, inc), segs in streams.items():
        segs.sort(key=lambda t: t[0])
        expect = state.stream_mark(w, inc) + 1
        last = segs[-1][0]
        for seq, o in segs:
            if seq < expect:
                continue
            if seq != expect:
                header = _segment_header(store, o.path) if expect == 0 else None  # no mark: read it once
                if header is not None and is_foreign(header.epoch, loaded.epoch):
                    loaded.foreign.extend(x.path for _, x in segs)  # a stream lives in one epoch
                    break
                run = header.run_id if header is not None else None
                if run is not None and _adopt_retired_stream(state, w, inc, seq, run):
                    expect = seq  # its records are ignored; folding them advances its new mark
                else:
                    _journal_gap(store, loaded, w, inc, expect, o.path, run)
                    break
            plan.append((o.path, seq == last))
            expect += 1
    stopped: set[tuple[str, str]] = set()
    last_of = dict(plan)
    state.provisional = ProvisionalSet()  # (ids in completion order until a spill freezes them)
    since_round = 0
    round_due = False  # (evaluated before the next records: none after the last, the final evaluation does)
    with Progress("folding journal", len(plan), enabled=progress) as bar:
        for key, result in store.read_many([k for k, _ in plan]):
            bar.advance()
            p = paths.parse_segment(key)
            assert p is not None
            sid = (p.writer_id, p.incarnation)
            if sid in stopped:
                continue
            if isinstance(result, ObjectNotFound):
                stopped.add(sid)
                later = [k for k, _ in plan if k > key and k.startswith(key.rsplit("/", 1)[0] + "/")]
                _journal_gap(store, loaded, p.writer_id, p.incarnation, p.seq, later[0] if later else None)
                continue
            if isinstance(result, BaseException):
                raise result
            try:
                seg = decode_segment(result, key, columns=_fastfold.ENABLED)  # (columns: the fast path's)
                h = seg.header
                if (h.writer_id, h.incarnation, h.seq) != (p.writer_id, p.incarnation, p.seq):
                    raise CorruptSegment("segment header does not match its object name", key)
            except CorruptSegment as exc:
                if isinstance(exc, TornSegment) and store.torn_writes_possible and last_of[key]:
                    if state.anomaly_once("torn_tail", "", "", str(exc)):  # not at every fold
                        logger.warning("resumelog: ignoring torn last segment %s", key)
                else:
                    _salvage_corrupt_segment(store, loaded, key, exc, [o.path for _, o in streams[sid]])
                stopped.add(sid)
                continue
            if is_foreign(h.epoch, loaded.epoch):
                stopped.add(sid)  # a stream lives in one epoch: the rest of it is foreign too
                loaded.foreign.extend(o.path for _, o in streams[sid])
                continue
            if round_due and seg.footer.record_count:
                round_due = False
                state.finish(final=False)  # provisional: collapses drained states, bounds memory
                if SPILL_COMPLETIONS is not None and _held(state) >= max(1, SPILL_COMPLETIONS):
                    _spill(loaded)
            if state.apply_segment(h, seg.batches, seg.footer.closed):
                loaded.segments_folded += 1
                loaded.records_folded += seg.footer.record_count
                since_round += seg.footer.record_count
                if since_round >= ROUND_RECORDS:
                    since_round, round_due = 0, True
    loaded.streams_relisted = _fold_latecomers(store, loaded)
    state.finish(writers=loaded.for_compaction)
    if loaded.spill_sizes and loaded.for_compaction:
        # the layer the publish adds must be smaller than the last spilled one, or
        # plan_merges would merge the spilled layers back together (see _spill)
        while state.added and len(state.added) + len(state.removed) >= loaded.spill_sizes[-1] and _spill(loaded):
            pass
    state.provisional = None


def _held(state: FoldState) -> int:
    """Completions (and voided or re-attributed ones) the fold holds in Python objects."""
    return len(state.added) + len(state.removed) + len(state.done_writers)


def _spill(loaded: Loaded) -> bool:
    """Move completions ``loaded.state`` holds in Python objects into layers (``False``
    if there was nothing to move).

    Right after an evaluation (no state waits to be evaluated): the state is encoded as
    snapshot ``state.number`` of the load's epoch, in memory, and its index (the layers
    of the base and one new layer, merged as :func:`~resumelog.layers.plan_merges`
    decides) and done entries are taken back from it; everything else the snapshot
    would round off stays as it is (pending states and their flags, stream indexes,
    marks, runs, resets, anomalies, counters). The new layers' names are kept in
    ``loaded.spilled``; the provisional completions become a compact
    :class:`~resumelog._provisional.ProvisionalSet` (a quiet reopen, or a quarantine
    voiding them, still sees every one).

    The new layer is made smaller than the top one, the base's or the last spill's (it
    takes that many completions, the rest stay for the next spill), while the stack has
    room and that size is at least a quarter of :data:`SPILL_COMPLETIONS`, so that
    ``plan_merges`` (which merges the newest layer into the one below when that one is
    no larger) merges neither spilled layers back together nor a spill into the base: a
    merge holds every id of both layers as Python objects, and a binary counter of equal
    spills would merge half the fold at once. Otherwise the spill merges as compactions'
    layers do.
    """
    state = loaded.state
    assert not state._deferred and not state._touched, "spill right after an evaluation"
    added, removed = state.added, state.removed
    take = len(added)
    stack = state.base.layers
    if stack and len(stack) + 2 < layers.MAX_LAYERS:
        room = stack[-1].count + len(stack[-1].tombstones) - 1 - len(removed)  # the new layer stays smaller
        if room >= max(1, (SPILL_COMPLETIONS or 0) // 4):  # (else: spill all, merging)
            take = min(take, room)
    if not take and not removed:
        return False
    rest: MutableMapping[str, str] = {}
    if take < len(added):
        # (C loops: a spill at scale moves ~1M completions and keeps a few)
        rest = source_map(islice(added.items(), take, None))
        moved = _less(added, rest)
        shapes, writers = state.done_shapes, state.done_writers
        kept = _less(writers, rest)  # the moved completions' writers and the base's
        # (the layer reads the shapes of the ids it holds only: all of them can go)
        view = replace(state, added=moved, done_shapes=shapes, done_writers=kept)
        rest_shapes = shapes.subset(rest)  # (the lists not settled: the layer walks them)
        rest_writers = hashed_dict((s, writers[s]) for s in rest if s in writers)
    else:
        view = state
    encoded = encode_snapshot(view, created_ms=int(time.time() * 1000), epoch=loaded.epoch or b"")
    del view
    _, spilled = load_snapshot(encoded, defer_done_crc=True)
    state.base, state.base_done = spilled.base, spilled.base_done
    del spilled
    # (an id of ``rest`` that the old base held was in ``removed``: the new layer masks it)
    state.removed = set()
    if rest:
        state.added, state.done_shapes, state.done_writers = rest, rest_shapes, rest_writers
    else:
        state.added, state.done_shapes, state.done_writers = source_map(), DoneShapeMap(), hashed_dict()
        state.shapes = ShapeTable()
        state._writer_tuples = {}
    loaded.spilled.extend(name for name, _ in encoded.layers)
    loaded.spills += 1
    top = state.base.layers[-1]
    loaded.spill_sizes.append(top.count + len(top.tombstones))  # what plan_merges compares
    del encoded
    provisional = state.provisional
    assert isinstance(provisional, ProvisionalSet), "fold_journal folds with a ProvisionalSet"
    provisional.freeze()
    return True


_M = TypeVar("_M", bound=MutableMapping[str, Any])


def _less(d: _M, keys: Iterable[str]) -> _M:
    """A copy of ``d`` (a dict or a ``SourceMap``) without ``keys`` (their ``copy``
    copies the table: no insert per entry, for a spill that moves ~1M completions and
    keeps a few)."""
    out: _M = d.copy()  # type: ignore[attr-defined]
    for k in keys:
        out.pop(k, None)
    return out


def _check_base_still_listed(store: Store, loaded: Loaded) -> None:
    """Validate a journal listing against a snapshot listing taken after it.

    GC deletes the snapshots older than the oldest one it retains *before* it deletes
    the segments that one covers (:func:`gc`). So if the snapshot this load started
    from is still listed after the journal was listed, no GC had deleted a segment it
    does not cover when the journal listing was made: the listing holds every segment
    the fold needs. If it is gone (or a load that started from no snapshot now sees
    one), segments it does not cover may have been collected between the two
    listings (a closed stream vanishes whole, leaving no gap to notice): load again.
    """
    after = {n for n, _ in list_snapshots(store)} - loaded.foreign_snapshots
    if loaded.snapshot not in after if loaded.snapshot else bool(after):
        raise _StaleSnapshot(f"snapshot {loaded.snapshot} was superseded and collected while the journal was listed")
    # ``meta.msgpack`` unchanged since the load began: no clear (which deletes it
    # first) began before the listings ended, so they hold this epoch's objects whole
    if read_epoch(store) != loaded.epoch:
        raise _StaleSnapshot("the checkpoint was cleared or replaced while it was listed")


def _segment_header(store: Store, path: str) -> SegmentHeader | None:
    """The header of segment ``path`` (one ranged read), or ``None`` if it is gone or corrupt."""
    try:
        header = read_header(store, path, KIND_SEGMENT)
    except (ObjectNotFound, CorruptSegment):
        return None
    assert isinstance(header, SegmentHeader)
    return header


def _adopt_retired_stream(state: FoldState, writer_id: str, incarnation: str, first: int, run: str) -> bool:
    """A stream without a mark whose first listed segment is ``first > 0``, of run
    ``run``: if that run is retired, give it a mark just below ``first`` and say so.

    That is a writer still alive after its run was retired: its earlier segments were
    collected and its mark pruned (:func:`_prune_streams`). Its records are ignored
    whatever they hold, so nothing is lost by starting at ``first``; with a mark, GC
    collects what it writes next instead of every fold calling it a gap and reading
    it again.
    """
    info = state.runs.get(run)
    if info is None or not info.retired:
        return False
    state.streams[f"{writer_id}/{incarnation}"] = StreamMark(writer_id, incarnation, run, first - 1)
    return True


def _journal_gap(
    store: Store,
    loaded: Loaded,
    writer_id: str,
    incarnation: str,
    missing: int,
    later: str | None,
    later_run: str | None = None,
) -> None:
    """Segment ``missing`` of a stream is gone (later ones may exist).

    If a newer snapshot appeared since we listed, a GC collected segments it covers:
    load again (:class:`_StaleSnapshot`). Otherwise the records are lost from storage
    (deleted underneath, or a snapshot fallback past a GC): the stream's run is
    quarantined (:meth:`FoldState.damage_run`), which is safe whatever the lost
    segment held. With no later segment to tell the run, the loss is a deleted tail,
    indistinguishable from a flush that never happened. ``later_run``: the run of
    ``later`` when the caller already read it.
    """
    sid = f"{writer_id}/{incarnation}"
    if any(n > loaded.latest_listed for n, _ in list_snapshots(store)):
        raise _StaleSnapshot(f"{sid}: segment {missing} missing")
    state = loaded.state
    mark = state.streams.get(sid)
    run = mark.run_id if mark is not None else later_run
    if run is None and later is not None:
        header = _segment_header(store, later)
        if header is not None and not is_foreign(header.epoch, loaded.epoch):
            run = header.run_id
    if run is not None:
        state.damage_run(run, f"{sid}: segment {missing} missing")


def _salvage_corrupt_segment(store: Store, loaded: Loaded, key: str, exc: CorruptSegment, stream: list[str]) -> None:
    """Segment ``key`` does not decode (a flipped bit, a torn write that is not a
    tolerated tail): salvage the checkpoint instead of refusing to open it.

    Whatever the segment held is lost, so it is handled like a lost segment: its run
    is quarantined (:meth:`FoldState.damage_run`, anomaly ``corrupt_segment``), which
    is safe whatever it held, and its stream is not folded past it. The run is read
    from the segment's own header if that frame is intact, else from the stream's mark
    or another segment of the stream (``stream``: the keys of its listed segments; a
    stream belongs to one run). If no run can be told, the error is raised: skipping
    records of an unknown run could complete a source early. ``resumelog repair`` moves such objects
    aside once a snapshot has recorded the damage.
    """
    p = paths.parse_segment(key)
    assert p is not None
    mark = loaded.state.streams.get(f"{p.writer_id}/{p.incarnation}")
    run = mark.run_id if mark is not None else None
    if run is None:  # its own header first, then the stream's other segments
        for k in [key, *(k for k in stream if k != key)]:
            header = _segment_header(store, k)
            if header is None or (header.writer_id, header.incarnation) != (p.writer_id, p.incarnation):
                continue
            if is_foreign(header.epoch, loaded.epoch):
                loaded.foreign.extend(stream)
                return  # debris of a deleted checkpoint: ignored, corrupt or not
            run = header.run_id
            break
    if run is None:
        raise CorruptSegment(
            f"{exc}; the run it belongs to cannot be told (its header is unreadable and no other segment "
            "of its stream is), so it cannot be salvaged: restore the object from a backup, or clear the checkpoint",
            exc.path or key,
        ) from exc
    if key not in loaded.corrupt:
        loaded.corrupt.append(key)
    if loaded.state.damage_run(run, f"{key}: {exc}", kind="corrupt_segment"):
        loaded.salvaged = True


def _fold_latecomers(store: Store, loaded: Loaded) -> set[tuple[str, str]]:
    """List again and fold the positive records of segments the first listing missed.

    A listing is not a point-in-time snapshot: while it walks, a fan-out ``+k`` can be
    flushed in a stream it already passed and a sink's ``-1`` (which happened after
    it) in a stream it reaches later. Every segment completed before the first
    listing ended is visible to the second, so folding the second's new positive
    records keeps the folded set closed under "happened before" for everything that
    can lower a sum. Returns the streams the second listing holds.
    """
    state = loaded.state
    fresh: list[str] = []
    keys: dict[tuple[str, str], list[str]] = defaultdict(list)  # each stream's listed segments
    for o in store.list(paths.JOURNAL_PREFIX):
        p = paths.parse_segment(o.path)
        if p is not None:
            keys[p.writer_id, p.incarnation].append(o.path)
            if p.seq > state.stream_mark(p.writer_id, p.incarnation) and o.path not in loaded.corrupt:
                fresh.append(o.path)
    listed = set(keys)
    if not fresh:
        return listed
    for key, result in store.read_many(fresh):
        if isinstance(result, ObjectNotFound):
            continue
        if isinstance(result, BaseException):
            raise result
        try:
            seg = decode_segment(result, key)
        except TornSegment:
            continue  # a torn segment holds nothing that was acknowledged
        except CorruptSegment as exc:
            # its positive records cannot be read: quarantine its run, as the first pass
            # does, telling it from the stream's other segments if its header is damaged
            p = paths.parse_segment(key)
            assert p is not None
            _salvage_corrupt_segment(store, loaded, key, exc, keys[p.writer_id, p.incarnation])
            continue
        if not is_foreign(seg.header.epoch, loaded.epoch):
            state.apply_positive(seg.header, seg.batches)
    return listed


@dataclass
class CompactResult:
    """What a compaction did."""

    snapshot: int
    """Number of the snapshot now latest."""
    written: bool
    """Whether this call published it (``False``: nothing new to fold)."""
    segments_folded: int
    records_folded: int
    completed: int
    attempts: int
    retired_runs: list[str] = field(default_factory=list)
    spills: int = 0
    """How many times the fold moved its completions into layers (:data:`SPILL_COMPLETIONS`)."""


def compact(
    store: Store,
    *,
    keep_runs: int | None = None,
    protect_runs: frozenset[str] = frozenset(),
    max_attempts: int = 50,
    progress: bool | None = None,
    clock: Callable[[], float] = time.time,
    expect_epoch: bytes | None = None,
    merge: bool = False,
    defer_merges: bool = False,
) -> CompactResult:
    """Fold the latest snapshot and the journal tail into a new snapshot.

    ``keep_runs``: retire every run except ``protect_runs`` (a caller's own run, even
    before it has records) and the most recently active others, ``keep_runs`` in all
    (at least the protected ones). Safe against concurrent compactors.

    ``expect_epoch``: the epoch of the checkpoint the caller opened (its
    ``meta.msgpack`` nonce). Raises :class:`~resumelog.errors.CheckpointReplaced` if
    ``meta.msgpack`` is missing or (with ``expect_epoch``) of another epoch: a
    compaction never publishes into a checkpoint deleted or cleared under it. If
    the delete comes after the check, the snapshot carries the old epoch, which
    every reader ignores, and is deleted again when the compactor notices.

    ``merge``: also merge every layer of the completed-id index into one (the layers
    are otherwise merged as they grow, :func:`~resumelog.layers.plan_merges`): the
    smallest index at rest and one bisect per lookup, at the cost of rewriting it.
    ``defer_merges``: merge only small layers (a tick then costs what it folded, not
    the size of the index), leaving the merges that rewrite large layers to
    :func:`merge`, run by another process or at another time; with nobody merging,
    past :data:`~resumelog.layers.MAX_LAYERS` layers the tick merges as usual.

    Memory: the journal tail is read a window of segments at a time and evaluated every
    :data:`ROUND_RECORDS` records (drained sources collapse to their completion); once
    the fold holds :data:`SPILL_COMPLETIONS` completions, they are *spilled* into
    in-memory layers, as if a snapshot had been published there and the next
    compaction went on (the published snapshot is the same, but for where its index is
    cut into layers). So the fold's memory is bounded by the base's layers, the
    pending state, one round and the spill threshold, not by the records it folds;
    the layer merges a spill or the publish runs still grow with the ids merged
    (``docs/scaling.md``, *Memory*). The layers a spill made that the published
    snapshot names are written with it (``CompactResult.spills``: how many spills).
    """
    skip: set[int] = set()
    damaged: dict[int, str] = {}
    for attempt in range(1, max_attempts + 1):
        retired: list[str] = []

        def retire(state: FoldState, retired: list[str] = retired) -> None:
            if keep_runs is not None:
                live = [r for r, info in state.runs.items() if not info.retired]
                live.sort(key=lambda r: (state.runs[r].last_snapshot, state.runs[r].first_snapshot, r), reverse=True)
                keep = set(protect_runs)  # the caller's own run counts among the kept, seen yet or not
                for r in live:
                    if len(keep) >= keep_runs:
                        break
                    keep.add(r)
                retired.extend(state.retire_runs(keep))

        loaded = load(store, progress=progress, before_fold=retire, verify=True, skip=skip, damaged=damaged)
        epoch = _check_epoch(store, loaded.epoch, expect_epoch)
        state = loaded.state
        dropped = _prune_streams(loaded)
        merged = not merge or _merged(state)
        if (
            loaded.snapshot
            and loaded.segments_folded == 0
            and merged
            and not (retired or dropped or skip or loaded.salvaged)
        ):
            return CompactResult(loaded.snapshot, False, 0, 0, state.completed_count(), attempt)
        number = state.number
        base = paths.snapshot_name(loaded.snapshot) if loaded.snapshot else ""
        try:
            with _gc_paused(), _bad_base_raises(loaded.snapshot, base, state):
                encoded = encode_snapshot(
                    state,
                    loaded.frames,
                    created_ms=int(clock() * 1000),
                    epoch=epoch,
                    merge_all=merge,
                    defer_merges=defer_merges,
                )
        except _BadBase as exc:  # e.g. a malformed shape table behind a valid CRC
            _forget_bad_base(store, exc, skip, damaged)
            del loaded, state  # (its spilled layers' temporary files go now, not after the next load)
            continue
        except _StaleSnapshot:
            continue  # a layer a merge read in parts was collected: load again
        if loaded.spilled:  # the layers of the fold's spills that the snapshot still names
            encoded = encoded._replace(layers=[*_spilled_layers(encoded, loaded.spilled), *encoded.layers])
        new_layers = [name for name, _ in encoded.layers]
        data = encoded.data
        key = paths.snapshot_name(number)
        try:
            put_snapshot(store, number, encoded)
        except AlreadyExists:
            if _is_ours(store, key, data):
                pass
            else:
                store.delete(new_layers)  # no snapshot names them (gc would collect them too)
                if number in loaded.foreign_snapshots:
                    _collect_foreign_snapshot(store, key, epoch)
                del encoded, loaded, state  # the temporary files of spooled layers go now
                continue  # another compactor published `number` first: reload
        if read_epoch(store) != epoch:  # deleted under us after all: take it back
            store.delete([key, *new_layers])
            _check_epoch(store, read_epoch(store), epoch)
        return CompactResult(
            number,
            True,
            loaded.segments_folded,
            loaded.records_folded,
            state.completed_count(),
            attempt,
            retired,
            loaded.spills,
        )
    raise ResumelogError(f"compaction gave up after {max_attempts} lost races on {store.url}")


MERGE_HEADROOM = 100
"""A merge (:func:`merge`) names the layer it writes this many snapshot numbers above
the latest snapshot when it writes it, so that GC keeps it (``docs/format.md`` §7: a
layer numbered above the latest snapshot belongs to a compaction under way) while the
merge publishes over the ticks of concurrent compactors (the merging is done by then:
publishing takes a read and a write per attempt). If the snapshots pass that number,
or :data:`ORPHAN_AGE` / 2 seconds go by, first, the merge starts again."""

ORPHAN_AGE = 3600.0
"""GC deletes a layer numbered above the latest snapshot that no retained snapshot
names once it is this many seconds old (by the store's mtime), whatever its ``grace``:
a compaction writes its layers right before its snapshot (an hour covers uploading
gigabytes of them), and a merge gives up on publishing its layer after half this
time, so such a layer is one whose writer died or a merged layer that a later merge
superseded."""


@dataclass
class MergeResult:
    """What a merge did."""

    snapshot: int
    """Number of the snapshot now latest."""
    written: bool
    """Whether this call published it (``False``: nothing to merge)."""
    layers_before: int
    layers_after: int
    entries: int
    """Entries of the layer the merge wrote (``0`` if none)."""
    attempts: int


class _Built(NamedTuple):
    inputs: list[str]
    bottom: bool
    number: int
    name: str
    ref: LayerRef
    written: float
    """When the layer was written (``time.monotonic``)."""


def merge(
    store: Store,
    *,
    full: bool = False,
    max_attempts: int = 50,
    expect_epoch: bytes | None = None,
    clock: Callable[[], float] = time.time,
) -> MergeResult:
    """Merge layers of the completed-id index of the latest snapshot, as
    :func:`~resumelog.layers.plan_merges` asks (``full``: all of them into one), and
    publish a snapshot equal to the latest but for its list of layers.

    The background half of compaction: ticks (:func:`compact` with ``defer_merges``)
    only stack small layers, and this call, run by another process or at another time,
    does the merges that rewrite large ones. Safe beside any number of writers,
    compactors and merges: a tick that publishes first makes the merge *rebase* — the
    layers it merged are immutable and a tick only stacks layers above them, so the
    merged layer replaces them in the newest snapshot as well, without merging again.
    If another merge took them, the merged layer is deleted and the merge planned anew.
    A snapshot of format 1-5 is rewritten by a compaction (``compact(merge=True)``).
    Raises :class:`~resumelog.errors.CorruptSnapshot` if the latest snapshot does not
    decode (a compaction falls back; a merge never publishes over it).
    """
    built: _Built | None = None
    try:
        for attempt in range(1, max_attempts + 1):
            epoch = _check_epoch(store, read_epoch(store), expect_epoch)
            latest = _latest_frames(store, epoch)
            if latest is None:
                return MergeResult(0, False, 0, 0, 0, attempt)
            number, path, frames = latest
            refs = frames.layers
            if refs is None or any(not r.head for r in refs):
                r = compact(store, merge=True, expect_epoch=epoch, clock=clock)
                before = len(refs) if refs is not None else 1  # (a format 1-4 index: one)
                return MergeResult(r.snapshot, r.written, before, 1 if r.completed else 0, r.completed, attempt)
            at = -1
            if built is not None:
                at = _find_run([r.name for r in refs], built.inputs)
                late = number + 1 >= built.number or time.monotonic() - built.written > ORPHAN_AGE / 2
                if at < 0 or (at > 0 and built.bottom) or late:
                    store.delete([built.name])  # merged by another, or too late to publish
                    built = None
            if built is None:
                k = len(refs) if full else layers.plan_merges([r.count + r.tombstones for r in refs])
                if k <= 1:
                    return MergeResult(number, False, len(refs), len(refs), 0, attempt)
                try:
                    built = _build_merge(store, path, frames, len(refs) - k, number, epoch, clock)
                except _StaleSnapshot:
                    continue  # collected while read: a newer snapshot exists
                at = len(refs) - k
            new_refs = [*refs[:at], built.ref, *refs[at + len(built.inputs) :]]
            count = sum(r.count - r.tombstones for r in new_refs)
            if count != frames.header.completed_count:  # pragma: no cover - a merge that would lose or add ids
                raise ResumelogError(
                    f"merging {len(built.inputs)} layers of {path} would change its completed count "
                    f"({frames.header.completed_count} -> {count}): not published"
                )
            header = replace_struct(
                frames.header, number=number + 1, nonce=secrets.token_bytes(16), created_ms=int(clock() * 1000)
            )
            data = encode_snapshot_frames(replace_struct(frames, header=header, layers=new_refs))
            key = paths.snapshot_name(number + 1)
            try:
                store.put_if_absent(key, data)
            except AlreadyExists:
                if _is_ours(store, key, data):
                    pass
                else:
                    _collect_foreign_snapshot(store, key, epoch)  # (another epoch's debris held it)
                    continue  # a tick (or a merge) published that number first: rebase
            if read_epoch(store) != epoch:  # deleted under us: take it back
                store.delete([key, built.name])
                built = None
                _check_epoch(store, read_epoch(store), epoch)
            result = MergeResult(number + 1, True, len(refs), len(new_refs), built.ref.count if built else 0, attempt)
            built = None
            return result
        raise ResumelogError(f"merge gave up after {max_attempts} lost races on {store.url}")
    finally:
        if built is not None:  # not published: no snapshot names it
            store.delete([built.name])


def _latest_frames(store: Store, epoch: bytes) -> tuple[int, str, SnapshotFrames] | None:
    """The newest snapshot of ``epoch``, decoded and checked (``None``: none yet)."""
    for n, info in reversed(list_snapshots(store)):
        try:
            data, _ = snapshot_cache.read_snapshot(store, info.path)
        except ObjectNotFound:
            continue  # collected between list and read: an older one, a newer exists
        if _foreign_snapshot(data, info.path, epoch):
            continue
        return n, info.path, decode_snapshot_frames(data, info.path)
    return None


def _find_run(names: list[str], run: list[str]) -> int:
    """Where ``run`` appears in ``names`` as consecutive items, or ``-1``."""
    for i in range(len(names) - len(run) + 1):
        if names[i : i + len(run)] == run:
            return i
    return -1


def _build_merge(
    store: Store, path: str, frames: SnapshotFrames, at: int, number: int, epoch: bytes, clock: Callable[[], float]
) -> _Built:
    """Merge the layers ``frames.layers[at:]`` of snapshot ``path`` into one and write it."""
    refs = (frames.layers or [])[at:]
    runs = frames.body.runs
    run_order = [r.run_id for r in runs]
    retired = frozenset(r.run_id for r in runs if r.retired)
    stack = []
    for ref in refs:
        src, _ = _read_layer(store, ref, path, compaction=True)
        layer = load_layer(src, ref, epoch, False, False)
        layer.bind(run_order, ref.name)
        stack.append(layer)
    with _gc_paused():
        layers.merge_newest(stack, len(stack), retired=retired, lowest=at == 0)
        latest = max((n for n, _ in list_snapshots(store)), default=number)  # (ticks while merging)
        target = max(latest, number) + 1 + MERGE_HEADROOM
        name, data = encode_new_layer(stack[0], number=target, epoch=epoch, created_ms=int(clock() * 1000))
    merged = stack[0].ref
    assert merged is not None
    store.put_if_absent(name, data)
    return _Built([r.name for r in refs], at == 0, target, name, merged, time.monotonic())


def _spilled_layers(encoded: EncodedSnapshot, spilled: list[str]) -> list[tuple[str, bytes | memoryview]]:
    """The layers of a fold's spills that ``encoded`` still names (to write with it)."""
    out: list[tuple[str, bytes | memoryview]] = []
    for n in spilled:
        data = encoded.named.get(n)
        if data is not None:
            assert not isinstance(data, LayerSource), "a spilled layer is built, not read in parts"
            out.append((n, data))
    return out


def _merged(state: FoldState) -> bool:
    """Whether the index is one stored layer that a merge would not change (no
    tombstones, no shapes of retired runs)."""
    layers = state.base.layers
    if len(layers) != 1:
        return not layers
    layer = layers[0]
    retired = {r for r, info in state.runs.items() if info.retired}
    return (
        layer.ref is not None
        and layer.ref.head > 0  # a version-5 layer is rewritten as a version-6 one
        and not layer.tombstones
        and (not layer.has_shapes or not retired.intersection(layer.run_names))
    )


def put_snapshot(store: Store, number: int, encoded: EncodedSnapshot) -> None:
    """Write the new layers of ``encoded``, then snapshot ``number`` itself with
    put-if-absent (:class:`~resumelog.errors.AlreadyExists` if that number is taken;
    the layers are then left for the caller or :func:`gc` to delete)."""
    for name, layer in encoded.layers:  # before the snapshot that names them
        try:
            store.put_if_absent(name, layer)
        except AlreadyExists:
            pass  # a random name: our own write, retried after an ambiguous failure
    store.put_if_absent(paths.snapshot_name(number), encoded.data)


def _check_epoch(store: Store, epoch: bytes | None, expect: bytes | None) -> bytes:
    """``epoch`` (the checkpoint's now), if a compaction may publish into it."""
    if epoch is None:
        raise CheckpointReplaced(
            f"no checkpoint at {store.url}: its {paths.META} is gone (deleted or cleared); "
            "open it with resumelog.open() to create a new one"
        )
    if expect is not None and epoch != expect:
        raise CheckpointReplaced(
            f"the checkpoint at {store.url} was deleted or cleared and created anew since it was opened; reopen it"
        )
    return epoch


def _prune_streams(loaded: Loaded) -> int:
    """Drop marks of finished streams whose segments were all collected.

    A stream is finished when it is closed, or when its run is retired (its records are
    ignored from then on: a writer killed without closing, such as a Ray worker at
    ``ray.shutdown()``, would otherwise keep its mark forever). Its segments count as
    collected only when neither journal listing of the load holds any: a mark dropped
    while a segment of its stream remains would make every later fold see a gap and
    quarantine the stream's run."""
    runs = loaded.state.runs
    listed = loaded.streams_listed | loaded.streams_relisted
    gone = [
        sid
        for sid, st in loaded.state.streams.items()
        if (st.closed or (st.run_id in runs and runs[st.run_id].retired))
        and (st.writer_id, st.incarnation) not in listed
    ]
    for sid in gone:
        del loaded.state.streams[sid]
    return len(gone)


def _collect_foreign_snapshot(store: Store, key: str, epoch: bytes) -> None:
    """Delete snapshot ``key`` if it is still another epoch's (debris of a deleted
    checkpoint that holds the number this checkpoint publishes next; GC would delete it
    too). Checked again right before the delete: a GC may have collected it and a
    compaction published this epoch's snapshot under the name since the load."""
    try:
        header = read_header(store, key, KIND_SNAPSHOT)
    except (CorruptSnapshot, ObjectNotFound):
        return
    if is_foreign(header.epoch, epoch):
        store.delete([key])


def _is_ours(store: Store, key: str, data: bytes) -> bool:
    """After ``AlreadyExists``: was the object there our own (ambiguous retried) write?"""
    try:
        existing = store.read(key)
    except ObjectNotFound:
        return False
    return existing == data


@dataclass
class GcResult:
    """What a garbage collection deleted (or would delete with ``dry_run``)."""

    dry_run: bool
    segments: int = 0
    segment_bytes: int = 0
    snapshots: int = 0
    snapshot_bytes: int = 0
    layers: int = 0
    """Layers (format version 5 on) no retained snapshot names any more."""
    layer_bytes: int = 0
    keys: list[str] = field(default_factory=list)
    outputs: list[Any] = field(default_factory=list)
    """One :class:`resumelog.outputs.OutputGcResult` per outputs root given to
    :meth:`Checkpoint.gc <resumelog.Checkpoint.gc>`."""


def _live_snapshots(store: Store, epoch: bytes) -> tuple[list[tuple[int, ObjectInfo]], list[ObjectInfo]]:
    """The snapshots of epoch ``epoch`` (oldest first) and those of another (foreign),
    from their headers (a ranged read each). One that cannot be read counts as live
    (it is judged as today: a corrupt one is never used, and GC keeps its segments)."""
    live: list[tuple[int, ObjectInfo]] = []
    foreign: list[ObjectInfo] = []
    for n, o in list_snapshots(store):
        try:
            header = read_header(store, o.path, KIND_SNAPSHOT)
        except (CorruptSnapshot, ObjectNotFound):
            live.append((n, o))
            continue
        (foreign.append(o) if is_foreign(header.epoch, epoch) else live.append((n, o)))
    return live, foreign


def gc(
    store: Store,
    *,
    retain: int = DEFAULT_RETAIN,
    grace: float = DEFAULT_GRACE,
    dry_run: bool = False,
    now: float | None = None,
    progress: bool | None = None,
) -> GcResult:
    """Delete what the retained snapshots make redundant.

    Keeps the ``retain`` newest snapshots of the checkpoint's epoch and deletes every
    object of another epoch (debris of a deleted checkpoint, never read); deletes the
    older snapshots first, then every segment covered by the oldest retained
    snapshot and by every newer retained one that decodes, written more than ``grace``
    seconds ago, except the last segment of a stream that is not finished (closed, or
    of a retired run). If the oldest retained snapshot does not decode, no segment is
    deleted (newer ones are never used alone: see :func:`_check_base_still_listed`).
    Deletes nothing if the checkpoint was cleared while it was listed
    (:func:`_still_as_listed`).
    """
    if retain < 1:
        raise ValueError("retain must be >= 1")
    now = time.time() if now is None else now
    result = GcResult(dry_run)
    epoch = read_epoch(store)
    if epoch is None:
        # every object with an epoch is foreign now, but a missing meta may be a
        # clear under way or an operator's mistake: collect nothing
        if not dry_run:
            logger.warning("resumelog: gc: no %s at %s; nothing collected", paths.META, store.url)
        return result
    snaps, foreign = _live_snapshots(store, epoch)
    doomed: list[ObjectInfo] = list(foreign)
    retained = _read_retained(store, snaps[-retain:])  # once: for the layers and the marks
    doomed_layers = _doomed_layers(store, retained, snaps[-1][0] if snaps else 0, epoch, now, grace)
    if snaps:
        # Segments are judged by the oldest retained snapshot (never by a newer one
        # alone when it does not decode): a reader that loaded snapshot L and still
        # lists L after its journal listing relies on every segment deletion so far
        # being covered by a snapshot no newer than L (:func:`_check_base_still_listed`).
        # And by every newer retained one that decodes: a higher number covers at least
        # what a lower one does only while snapshot numbers are never freed above the
        # latest (a compaction publishing from an older base over a gap would cover
        # less), so a segment goes only once every snapshot a reader may load covers it.
        marks: dict[tuple[str, str], tuple[int, bool]] | None = None
        if retained[0] is not None:  # else delete no segment until that snapshot ages out
            marks = _covered(retained[0])
            for frames in retained[1:]:
                if frames is not None:  # (one that does not decode is never loaded)
                    also = _covered(frames)
                    marks = {
                        sid: (min(seq, also[sid][0]), closed and also[sid][1])
                        for sid, (seq, closed) in marks.items()
                        if sid in also
                    }
        # Snapshots older than the retained ones go first, segments after them (see above).
        doomed.extend(o for _, o in snaps[:-retain])
    else:
        marks = {}  # no snapshot of this epoch: only foreign segments go
    result.snapshots = len(doomed)
    result.snapshot_bytes = sum(o.size for o in doomed)
    streams: dict[tuple[str, str], list[tuple[int, ObjectInfo]]] = defaultdict(list)
    if marks is not None:
        for o in store.list(paths.JOURNAL_PREFIX):
            p = paths.parse_segment(o.path)
            if p is not None:
                streams[(p.writer_id, p.incarnation)].append((p.seq, o))
    for sid, segs in streams.items():
        mark = marks.get(sid) if marks is not None else None
        if mark is None:
            # a stream no retained snapshot knows: new, or debris of another epoch
            # (a stream lives in one epoch: its first segment's header tells)
            first = min(segs, key=lambda t: t[0])[1]
            header = _segment_header(store, first.path)
            if header is not None and is_foreign(header.epoch, epoch):
                for _, o in segs:
                    doomed.append(o)
                    result.segments += 1
                    result.segment_bytes += o.size
            continue
        hwm, closed = mark
        last = max(s for s, _ in segs)
        for seq, o in segs:
            if seq > hwm or (seq == last and not closed):
                continue
            if o.mtime is not None and now - o.mtime < grace:
                continue
            doomed.append(o)
            result.segments += 1
            result.segment_bytes += o.size
    if not dry_run and not _still_as_listed(store, epoch, doomed, result):
        return GcResult(dry_run)
    result.layers = len(doomed_layers)
    result.layer_bytes = sum(o.size for o in doomed_layers)
    doomed[result.snapshots : result.snapshots] = doomed_layers
    result.keys = [o.path for o in doomed]
    if not dry_run and doomed:
        with Progress("gc", len(doomed), enabled=progress) as bar:
            # the old snapshots in calls of their own, then the layers only they named,
            # then the segments (a batch delete need not delete in order)
            cut = result.snapshots + result.layers
            for group in (doomed[: result.snapshots], doomed[result.snapshots : cut], doomed[cut:]):
                for i in range(0, len(group), 1000):
                    chunk = group[i : i + 1000]
                    store.delete(o.path for o in chunk)
                    bar.advance(len(chunk))
    return result


def _still_as_listed(store: Store, epoch: bytes, doomed: list[ObjectInfo], result: GcResult) -> bool:
    """Right before a GC deletes: whether the checkpoint is still the one it listed
    (``False``: cleared, maybe created anew, since GC read its epoch; delete nothing, or
    the new checkpoint's objects would go as another epoch's). Drops from ``doomed`` the
    snapshots (the first ``result.snapshots`` objects) that are no longer the objects
    listed: a new epoch numbers its snapshots from 1 again, so a name is not an object.
    Segment and layer names are never reused (a random part in each)."""
    snapshots = {o.path: (o.size, o.mtime) for o in store.list(paths.SNAPSHOT_PREFIX)}
    if read_epoch(store) != epoch:  # (a clear deletes meta.msgpack first)
        logger.warning(
            "resumelog: gc: the checkpoint at %s was cleared while it was listed; nothing collected", store.url
        )
        return False
    old, rest = doomed[: result.snapshots], doomed[result.snapshots :]
    same = [o for o in old if snapshots.get(o.path) == (o.size, o.mtime)]
    doomed[:] = [*same, *rest]
    result.snapshots = len(same)
    result.snapshot_bytes = sum(o.size for o in same)
    return True


def _covered(frames: SnapshotFrames) -> dict[tuple[str, str], tuple[int, bool]]:
    """What a snapshot covers of each stream: its mark and whether the stream is finished
    (closed, or of a retired run)."""
    body = frames.body
    retired = {r.run_id for r in body.runs if r.retired}
    return {(m.writer_id, m.incarnation): (m.seq, m.closed or m.run_id in retired) for m in body.streams}


def _read_retained(store: Store, retained: list[tuple[int, ObjectInfo]]) -> list[SnapshotFrames | None]:
    """The retained snapshots decoded, oldest first (``None``: one that does not decode or
    vanished); their done-entry frames are not checked (only marks and layers are used)."""
    out: list[SnapshotFrames | None] = []
    for _, o in retained:
        try:
            out.append(decode_snapshot_frames(store.read(o.path), o.path, defer_done_crc=True))
        except (CorruptSnapshot, ObjectNotFound):
            out.append(None)
    return out


def _doomed_layers(
    store: Store, retained: list[SnapshotFrames | None], latest: int, epoch: bytes, now: float, grace: float
) -> list[ObjectInfo]:
    """Layers that no retained snapshot names: written for a snapshot number already
    taken (so no compaction can still publish a snapshot naming them) more than
    ``grace`` seconds ago, or of another epoch. Listed after the snapshots, so a layer
    of a compaction or merge under way has a number above ``latest`` and is kept, unless
    it is :data:`ORPHAN_AGE` old (its writer died, or a merged layer was superseded). None
    if a retained snapshot cannot be read (its layers are unknown)."""
    named: set[str] = set()
    for frames in retained:
        if frames is None:
            return []
        named.update(r.name for r in frames.layers or ())
    doomed: list[ObjectInfo] = []
    for o in store.list(paths.LAYER_PREFIX):
        n = paths.parse_layer(o.path)
        if n is None or o.path in named:
            continue
        if n > latest:
            if o.mtime is not None and now - o.mtime >= ORPHAN_AGE:
                doomed.append(o)  # a compaction or merge publishes within seconds of writing it
                continue
            try:
                header = read_header(store, o.path, KIND_LAYER)
            except (CorruptSnapshot, ObjectNotFound):
                continue
            if is_foreign(header.epoch, epoch):
                doomed.append(o)
            continue
        if o.mtime is not None and now - o.mtime < grace:
            continue
        doomed.append(o)
    return doomed
