"""Snapshots: a :class:`~resumelog.algebra.FoldState` to bytes and back (no I/O here)."""

from __future__ import annotations

import secrets
from array import array
from collections import Counter

from resumelog.algebra import FoldState, SourceRunState, Writers
from resumelog.done_shapes import BaseDone, ShapeTable
from resumelog.errors import CorruptSnapshot
from resumelog.format import (
    EMPTY_SHAPE_TABLE,
    FORMAT_VERSION,
    DoneWriters,
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
from resumelog.idset import CompletedIndex, build_index, counted_uints, pack_uints

__all__ = ["encode_snapshot", "load_snapshot"]


def load_snapshot(
    data: bytes | memoryview, path: str = "", *, defer_done_crc: bool = False
) -> tuple[SnapshotFrames, FoldState]:
    """Decode a snapshot into a fold state ready to fold the tail after it.

    Raises :class:`~resumelog.errors.CorruptSnapshot` or
    :class:`~resumelog.errors.UnsupportedFormat`.
    """
    frames = decode_snapshot_frames(data, path, defer_done_crc=defer_done_crc)
    h, body = frames.header, frames.body
    try:
        base = CompletedIndex(frames.hashes, frames.offsets, frames.runs, frames.blob, h.ascii_ids)
    except ValueError as exc:
        raise CorruptSnapshot(str(exc), path) from None
    nruns = len(body.runs)
    state = FoldState(number=h.number + 1, base=base)
    for info in body.runs:
        state.runs[info.run_id] = RunInfo(
            info.run_id, info.first_snapshot, info.last_snapshot, info.retired, info.damaged
        )
        state.run_order.append(info.run_id)
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
    legacy = frames.legacy_done

    def load_legacy() -> dict[str, dict[str, int]]:
        merged: dict[str, dict[str, int]] = {}
        for c in legacy or ():  # oldest first, so newer chunks win
            merged.update(decode_done_entries(c.data, path))
        return merged

    state.base_done = BaseDone(
        base,
        frames.shape_ids,
        frames.shapes,
        lambda: verify_done(frames, path),
        path,
        load_legacy if legacy is not None else None,
        frames.writers,
    )
    return frames, state


def encode_snapshot(
    state: FoldState, previous: SnapshotFrames | None, *, created_ms: int = 0, epoch: bytes = b""
) -> bytes:
    """Encode ``state`` as snapshot number ``state.number`` of the checkpoint whose
    ``meta.msgpack`` nonce is ``epoch``.

    ``previous`` is the snapshot the state was loaded from: its frames are reused
    verbatim when nothing in them changed. The completed ids keep their shapes (the
    table grows by this fold's new shapes); completions of runs retired since
    ``previous`` lose theirs, and the table drops shapes no id uses any more.
    """
    run_index = {r: i for i, r in enumerate(state.run_order)}
    retired_idx = {run_index[r] for r, info in state.runs.items() if info.retired}
    newly_retired = retired_idx
    if previous is not None:
        newly_retired = retired_idx - {i for i, info in enumerate(previous.body.runs) if info.retired}
    base_done = state.base_done
    table: ShapeTable | None = None  # decoded only when something must change in it
    shape_ids: bytes | memoryview
    shapes: bytes | memoryview
    hashes: bytes | memoryview
    offsets: bytes | memoryview
    runs: bytes | memoryview
    blob: bytes | memoryview
    if state.shapes or base_done is None or base_done.legacy or newly_retired:
        table = base_done.table() if base_done is not None else ShapeTable()
    if previous is not None and not state.added and not state.removed and table is None:
        # nothing changed: every frame as it was (CRC-checked before it is carried)
        hashes, offsets, runs, blob = previous.hashes, previous.offsets, previous.runs, previous.blob
        count, ascii_ids = previous.header.completed_count, previous.header.ascii_ids
        shape_ids, shapes = base_done.raw() if base_done is not None else (b"", EMPTY_SHAPE_TABLE)
    else:
        base_ids = base_done.shape_ids(table) if base_done is not None else None
        if table is None:
            assert base_done is not None
            shapes = base_done.raw()[1]  # the table is unchanged: carried as stored
        remap = [0] * (len(state.shapes) + 1)
        if table is not None:  # this fold's shapes that some completion still uses
            for sid in sorted(set(state.done_shapes.values())):
                remap[sid] = table.add(state.shapes.shapes[sid - 1])
        add = {s: run_index[r] for s, r in state.added.items()}
        add_ids = {s: remap[sid] for s, sid in state.done_shapes.items()} if state.done_shapes else None
        built = build_index(state.base, state.removed, add, base_ids, add_ids, disjoint=True)
        hashes, offsets, runs, blob, count, ascii_ids = built[:6]
        tags = built.tags
        if newly_retired:
            # a retired run's records are ignored: its completions need no entries
            run_of = counted_uints(runs, count)
            tags = array("I", [0 if r in retired_idx else t for r, t in zip(run_of, tags)])
            assert table is not None  # decoded above, since runs retired
            tags, table = _compact_table(tags, table)
        if table is not None:
            shapes = table.encode() if len(table) else EMPTY_SHAPE_TABLE
        shape_ids = pack_uints(tags) if any(tags) else b""
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
        for k, si, o, d in s.items():
            keys.append(k)
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
    live = {r for r, info in state.runs.items() if not info.retired}
    retired = set(state.runs) - live
    body = SnapshotBody(
        streams=state.stream_marks(),
        stream_ids=stream_ids,
        runs=[state.runs[r] for r in state.run_order],
        pending=pending,
        resets=[Reset(src, sorted(runs - retired)) for src, runs in sorted(state.resets.items()) if runs - retired],
        anomalies=list(state.anomalies),
        anomaly_counts=dict(state.anomaly_counts),
        records_folded=state.records_folded,
    )
    return encode_snapshot_frames(
        SnapshotFrames(
            header,
            body,
            memoryview(hashes),
            memoryview(offsets),
            memoryview(runs),
            memoryview(blob),
            memoryview(shape_ids),
            memoryview(shapes),
            memoryview(_writers_frame(state)),
        )
    )


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
    candidates: dict[str, Writers] = {}
    if base is not None and base.has_writers():
        for src in base.all_writers()[1]:
            if src not in state.done_writers and src not in state.added and state.is_completed(src):
                w = state.done_writers_of(src)
                if w is not None:
                    candidates[src] = w
    for src, w in state.done_writers.items():
        if state.is_completed(src):
            candidates[src] = w
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
        run = state.completed_run(src)
        if run is None or run in retired:
            continue
        ws = candidates[src]
        if ws not in pruned:
            pruned[ws] = prune(ws)
        elems = pruned[ws]
        if elems is not None:
            sources.append(src)
            writers.append(elems)
    return encode_done_writers(DoneWriters(streams, sources, writers))


def _compact_table(tags: array[int], table: ShapeTable) -> tuple[array[int], ShapeTable]:
    """Drop the shapes no id refers to any more (renumbering the ids)."""
    used = sorted(set(tags) - {0})
    if used and used[-1] > len(table):
        raise CorruptSnapshot(f"a completed id names shape {used[-1]}, outside the shape table ({len(table)} shapes)")
    if len(used) == len(table):
        return tags, table
    kept = ShapeTable()
    remap = [0] * (len(table) + 1)
    for sid in used:
        remap[sid] = kept.add(table.shapes[sid - 1])
    return array("I", [remap[t] for t in tags]), kept
