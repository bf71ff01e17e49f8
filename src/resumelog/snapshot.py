"""Snapshots: a :class:`~resumelog.algebra.FoldState` to bytes and back (no I/O here; the
layers a snapshot names are read by a callback)."""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

from resumelog.algebra import FoldState, SourceRunState, Writers
from resumelog.done_shapes import BaseDone, ShapeTable
from resumelog.errors import CorruptSnapshot
from resumelog.format import (
    EMPTY_SHAPE_TABLE,
    FORMAT_VERSION,
    DoneWriters,
    LayerRef,
    PendingEntry,
    Reset,
    RunInfo,
    SnapshotBody,
    SnapshotFrames,
    SnapshotHeader,
    decode_done_entries,
    decode_snapshot_frames,
    encode_done_writers,
    encode_snapshot_frames,
    verify_done,
)
from resumelog.idset import CompletedIndex
from resumelog.layers import (
    Layer,
    LayeredDone,
    LayeredIndex,
    LayerIndex,
    LayerSource,
    build_layer,
    encode_new_layer,
    make_layer,
    merge_newest,
    open_layer,
    plan_merges,
)

__all__ = ["EncodedSnapshot", "encode_snapshot", "load_layer", "load_snapshot"]


LayerReader = Callable[[LayerRef], "bytes | memoryview | LayerSource"]
"""Reads a referenced layer object (:func:`load_snapshot`): its bytes, or (version 6)
its head and a reader of its blocks."""


class EncodedSnapshot(NamedTuple):
    """A snapshot to publish: the layers it names that are not stored yet (write them
    first, under their names), then the snapshot object itself. :func:`load_snapshot`
    also takes one whole (every layer it names is at hand: an in-memory round trip)."""

    data: bytes
    layers: list[tuple[str, bytes | memoryview]]
    """``(name, bytes)`` of each new layer: a large one's bytes are a read-only view of a
    memory-mapped temporary file (:data:`~resumelog.layers.SPOOL_BYTES`), which lasts as
    long as some view of it does."""
    named: dict[str, bytes | memoryview | LayerSource]
    """Every layer the snapshot names, by name (new or carried; one read in parts as
    its head and block reader)."""

    @property
    def size(self) -> int:
        """Bytes to write: the snapshot and its new layers."""
        return len(self.data) + sum(len(b) for _, b in self.layers)


def load_snapshot(
    data: bytes | memoryview | EncodedSnapshot,
    path: str = "",
    *,
    defer_done_crc: bool = False,
    read_layer: LayerReader | None = None,
    check_blocks: bool | None = None,
    prefetch: Callable[[Sequence[LayerRef]], None] | None = None,
) -> tuple[SnapshotFrames, FoldState]:
    """Decode a snapshot into a fold state ready to fold the tail after it.

    ``read_layer`` reads the layers a format-5 snapshot names (required for those);
    ``prefetch``, if given, is told all of them first (to read them at once).
    ``defer_done_crc``: frames and shape tables too large to check at once are checked
    when first used. ``check_blocks`` (default: ``not defer_done_crc``): read and check
    every block of every version-6 layer now, rather than when a lookup or a merge
    first reads it (:func:`~resumelog.layers.open_layer`).
    Raises :class:`~resumelog.errors.CorruptSnapshot` or
    :class:`~resumelog.errors.UnsupportedFormat`.
    """
    if isinstance(data, EncodedSnapshot):
        named = data.named
        read_layer = read_layer or (lambda ref: named[ref.name])
        data = data.data
    frames = decode_snapshot_frames(data, path, defer_done_crc=defer_done_crc)
    h, body = frames.header, frames.body
    state = FoldState(number=h.number + 1)
    for info in body.runs:
        state.runs[info.run_id] = RunInfo(
            info.run_id, info.first_snapshot, info.last_snapshot, info.retired, info.damaged
        )
        state.run_order.append(info.run_id)
    nruns = len(body.runs)
    if frames.layers is not None:
        if read_layer is None:
            raise ValueError("a format-5 snapshot needs read_layer to load its layers")
        blocks = not defer_done_crc if check_blocks is None else check_blocks
        if prefetch is not None:
            prefetch(frames.layers)
        layers = [load_layer(read_layer(ref), ref, h.epoch, defer_done_crc, blocks) for ref in frames.layers]
    else:
        layers = [_legacy_layer(frames, path, state.run_order)] if h.completed_count or frames.legacy_done else []
    for layer in layers:
        layer.bind(state.run_order, layer.ref.name if layer.ref is not None else path)
    base = state.base = LayeredIndex(layers)
    if base.count != h.completed_count:
        raise CorruptSnapshot("the layers do not hold the declared completed count", path)
    for sid in body.stream_ids:
        state._stream(sid)
    for m in body.streams:
        state.streams[f"{m.writer_id}/{m.incarnation}"] = m
    nstreams = len(body.stream_ids)
    for p in body.pending:
        if not 0 <= p.run < nruns or not (len(p.keys) == len(p.streams) == len(p.ordinals) == len(p.deltas)):
            raise CorruptSnapshot("malformed pending entry", path)
        s = SourceRunState()
        for k, si, o, d in zip(p.keys, p.streams, p.ordinals, p.deltas):
            if not 0 <= si < nstreams:
                raise CorruptSnapshot("pending entry refers to an unknown stream", path)
            s.apply(k, si, o, d)
        s.emitted, s.tainted = p.emitted, p.tainted
        total, conflicts = s.sums()
        s.reported = conflicts > 0
        s.overdrawn = p.over_drained or total < 0  # reported when it happened (once)
        state.pending[(state.run_order[p.run], p.source)] = s
    for r in body.resets:
        state.resets.setdefault(r.source, set()).update(r.runs)
    state.anomalies = list(body.anomalies)
    state.anomaly_counts = Counter(body.anomaly_counts)
    state.records_folded = body.records_folded
    writers = BaseDone(
        CompletedIndex.empty(),
        memoryview(b""),
        memoryview(EMPTY_SHAPE_TABLE),
        lambda: verify_done(frames, path),
        path,
        None,
        frames.writers,
    )
    retired = [i for i, info in enumerate(body.runs) if info.retired]
    state.base_done = LayeredDone(base, writers, retired)
    return frames, state


def _legacy_layer(frames: SnapshotFrames, path: str, run_order: list[str]) -> Layer:
    """The index of a format 1-4 snapshot as one (not yet stored) layer."""
    h = frames.header
    try:
        index = CompletedIndex(frames.hashes, frames.offsets, frames.runs, frames.blob, h.ascii_ids)
    except ValueError as exc:
        raise CorruptSnapshot(str(exc), path) from None
    legacy = frames.legacy_done

    def load_legacy() -> dict[str, dict[str, int]]:
        merged: dict[str, dict[str, int]] = {}
        for c in legacy or ():  # oldest first, so newer chunks win
            merged.update(decode_done_entries(c.data, path))
        return merged

    done = BaseDone(
        index,
        frames.shape_ids,
        frames.shapes,
        lambda: verify_done(frames, path),
        path,
        load_legacy if legacy is not None else None,
    )
    return Layer(LayerIndex.single(index), list(run_order), legacy=done)


def load_layer(
    src: bytes | memoryview | LayerSource, ref: LayerRef, epoch: bytes, defer_done_crc: bool, check_blocks: bool
) -> Layer:
    """The layer ``ref`` names, from its bytes or its head and block reader, checked
    against ``ref`` and the snapshot's ``epoch`` (:class:`~resumelog.errors.CorruptSnapshot`
    if it is not that layer); not yet bound to a run table."""
    if isinstance(src, LayerSource):
        if not ref.head:
            raise CorruptSnapshot("a version-5 layer cannot be read in parts", ref.name)
        layer = open_layer(
            None,
            ref.name,
            head=src.head,
            read=src.read,
            size=ref.size,
            defer=defer_done_crc,
            check_blocks=check_blocks,
        )
    else:
        layer = open_layer(src, ref.name, defer=defer_done_crc, check_blocks=check_blocks)
    h = layer.header
    assert h is not None
    if h.nonce != ref.nonce or h.count != ref.count or h.tombstones != ref.tombstones:
        raise CorruptSnapshot("the layer is not the one its snapshot names (nonce or counts differ)", ref.name)
    if h.epoch != epoch:
        raise CorruptSnapshot("the layer belongs to another epoch than its snapshot", ref.name)
    if ref.head and h.format_version < 6:
        raise CorruptSnapshot("the snapshot names a version-5 layer as a version-6 one", ref.name)
    layer.ref = ref
    return layer


def encode_snapshot(
    state: FoldState,
    previous: SnapshotFrames | None = None,
    *,
    created_ms: int = 0,
    epoch: bytes = b"",
    merge_all: bool = False,
    defer_merges: bool = False,
) -> EncodedSnapshot:
    """Encode ``state`` as snapshot number ``state.number`` of the checkpoint whose
    ``meta.msgpack`` nonce is ``epoch``, with the layers to write before it.

    The layers of the loaded snapshot are kept as they are; what the fold changed
    (``state.added``, ``state.removed``) becomes one new layer on top, merged with the
    layers under it as :func:`~resumelog.layers.plan_merges` decides (``merge_all``:
    every layer into one; ``defer_merges``: only small layers, large merges being left
    to :func:`resumelog.compactor.merge`). ``previous`` is unused (kept for callers of format 4).
    """
    del previous
    run_index = {r: i for i, r in enumerate(state.run_order)}
    retired_names = frozenset(r for r, info in state.runs.items() if info.retired)
    stack = list(state.base.layers)
    if state.added or state.removed:
        stack.append(build_layer(state.added, state.removed, state.done_shapes, state.shapes))
    if stack:
        k = plan_merges([layer.count + len(layer.tombstones) for layer in stack], deferred=defer_merges)
        if merge_all or any(layer.ref is None or not layer.ref.head for layer in state.base.layers):
            # the index of a format 1-4 snapshot, or version-5 layers (one hash-ordered
            # block: read whole): the first version-6 compaction rewrites them as one
            # version-6 layer, with everything above merged into it
            if len(stack) == 1:
                stack.append(make_layer([], [], [], ShapeTable(), [], frozenset()))
            k = len(stack)
        merge_newest(stack, k, retired=retired_names)
    new_layers = [
        encode_new_layer(layer, number=state.number, epoch=epoch, created_ms=created_ms)
        for layer in stack
        if layer.ref is None
    ]
    refs = [layer.ref for layer in stack if layer.ref is not None]
    assert len(refs) == len(stack)
    count = sum(r.count - r.tombstones for r in refs)
    ascii_ids = all(layer.index.ascii_ids for layer in stack)
    header = SnapshotHeader(FORMAT_VERSION, state.number, secrets.token_bytes(16), created_ms, count, ascii_ids, epoch)
    pending = []
    # Only the streams some pending entry names are stored, renumbered: the table is
    # bounded by the pending state, not by every writer that ever wrote (invariant 5).
    stream_ids: list[str] = []
    renumber: dict[int, int] = {}
    for (run, src), s in state.pending.items():
        keys: list[str] = []
        streams: list[int] = []
        ords: list[int] = []
        deltas: list[int] = []
        for k_, si, o, d in s.items():
            keys.append(k_)
            sj = renumber.get(si)
            if sj is None:
                sj = renumber[si] = len(stream_ids)
                stream_ids.append(state.stream_ids[si])
            streams.append(sj)
            ords.append(o)
            deltas.append(d)
        pending.append(
            PendingEntry(run_index[run], src, s.emitted, s.tainted, keys, streams, ords, deltas, s.overdrawn)
        )
    body = SnapshotBody(
        streams=state.stream_marks(),
        stream_ids=stream_ids,
        runs=[state.runs[r] for r in state.run_order],
        pending=pending,
        resets=[
            Reset(src, sorted(runs - retired_names))
            for src, runs in sorted(state.resets.items())
            if runs - retired_names
        ],
        anomalies=list(state.anomalies),
        anomaly_counts=dict(state.anomaly_counts),
        records_folded=state.records_folded,
    )
    empty = memoryview(b"")
    data = encode_snapshot_frames(
        SnapshotFrames(
            header, body, empty, empty, empty, empty, empty, empty, memoryview(_writers_frame(state)), layers=refs
        )
    )
    named: dict[str, bytes | memoryview | LayerSource] = {}
    for layer in stack:
        stored = layer.data if layer.data is not None else layer.source
        if layer.ref is not None and stored is not None:
            named[layer.ref.name] = stored
    return EncodedSnapshot(data, new_layers, named)


def _streams_in(ws: Sequence[int | Sequence[int]]) -> Iterator[int]:
    """Every stream index a completion's writers name (an entry is one index or several)."""
    for e in ws:
        if isinstance(e, int):
            yield e
        else:
            yield from e


def _writers_frame(state: FoldState) -> bytes:
    """Frame 8: the writers of every completion that a still-open stream wrote.

    A stream that closed (or whose run retired) never writes again, so it becomes the
    pseudo-writer ``-1`` (its values are final); a completion whose writers are all
    closed is left out, so the frame is bounded by what open streams completed.
    """
    base = state.base_done
    if not state.done_writers and (base is None or not base.has_writers()):
        return b""
    retired = {r for r, info in state.runs.items() if info.retired}
    open_sids = state.open_stream_ids()
    if not open_sids:
        return b""  # every writer closed: no completion needs names (the end of a job)
    # Only writers naming an open stream are written (``prune`` below): the others, most
    # of them once their streams closed, are left out before any lookup or the sort.
    stream_ids = state.stream_ids
    live = {  # per distinct (interned) writers: a few
        ws: any(stream_ids[x] in open_sids for x in _streams_in(ws)) for ws in set(state.done_writers.values())
    }
    candidates: dict[str, tuple[str, Writers]] = {}  # completed source -> (its run, its writers)
    completed_run, added, done_writers = state.completed_run, state.added, state.done_writers
    if base is not None and base.has_writers():
        table, stored = base.all_writers()
        open_at = {i for i, sid in enumerate(table) if sid in open_sids}  # (-1: closed, never open)
        for src, es in stored.items() if open_at else ():
            if any(x in open_at for x in _streams_in(es)):
                if src not in done_writers and src not in added:
                    run = completed_run(src)
                    if run is not None:
                        w = state.done_writers_of(src)
                        if w is not None:
                            candidates[src] = (run, w)
    for src, w in done_writers.items():
        if live[w]:
            run = added.get(src) or completed_run(src)
            if run is not None:
                candidates[src] = (run, w)
    streams: list[str] = []
    index: dict[int, int] = {}

    def local(x: int) -> int:
        if state.stream_ids[x] not in open_sids:
            return -1
        j = index.get(x)
        if j is None:
            j = index[x] = len(streams)
            streams.append(state.stream_ids[x])
        return j

    pruned: dict[Writers, list[int | list[int]] | None] = {}  # per distinct (interned) writers

    def prune(ws: Writers) -> list[int | list[int]] | None:
        elems: list[int | list[int]] = []
        live = False
        for e in ws:
            xs = sorted({local(x) for x in ((e,) if isinstance(e, int) else e)})
            live = live or xs[-1] >= 0
            elems.append(xs[0] if len(xs) == 1 else xs)
        return elems if live else None

    sources: list[str] = []
    writers: list[list[int | list[int]]] = []
    for src in sorted(candidates):
        run, ws = candidates[src]
        if run in retired:
            continue
        if ws not in pruned:
            pruned[ws] = prune(ws)
        elems = pruned[ws]
        if elems is not None:
            sources.append(src)
            writers.append(elems)
    # The table in stream-id order, not in that of first use, which follows the fold's
    # own stream numbering (the order it met the streams: a spill or a snapshot before
    # changes it): the same writers give the same bytes. Renumbered once per distinct
    # writers (``writers`` shares their lists).
    rank = {j: i for i, j in enumerate(sorted(range(len(streams)), key=streams.__getitem__))}
    if any(j != i for j, i in rank.items()):
        rank[-1] = -1
        for elems in pruned.values():
            if elems is not None:
                elems[:] = [rank[e] if isinstance(e, int) else sorted(map(rank.__getitem__, e)) for e in elems]
        streams.sort()
    return encode_done_writers(DoneWriters(streams, sources, writers))
