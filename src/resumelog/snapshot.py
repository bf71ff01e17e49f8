"""Snapshots: a :class:`~resumelog.algebra.FoldState` to bytes and back (no I/O here)."""

from __future__ import annotations

import secrets
from collections import Counter

from resumelog.algebra import FoldState, SourceRunState
from resumelog.format import (
    FORMAT_VERSION,
    DoneChunk,
    PendingEntry,
    Reset,
    RunInfo,
    SnapshotBody,
    SnapshotFrames,
    SnapshotHeader,
    decode_done_entries,
    decode_snapshot_frames,
    encode_done_entries,
    encode_snapshot_frames,
    verify_done,
)
from resumelog.idset import CompletedIndex, build_index

__all__ = ["encode_snapshot", "load_snapshot"]

MAX_DONE_CHUNKS = 16


def load_snapshot(
    data: bytes | memoryview, path: str = "", *, defer_done_crc: bool = False
) -> tuple[SnapshotFrames, FoldState]:
    """Decode a snapshot into a fold state ready to fold the tail after it.

    Raises :class:`~resumelog.errors.CorruptSnapshot` or
    :class:`~resumelog.errors.UnsupportedFormat`.
    """
    from resumelog.errors import CorruptSnapshot

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
        s.reported = s.conflicts > 0
        state.pending[(state.run_order[p.run], p.source)] = s
    for r in body.resets:
        state.resets.setdefault(r.source, set()).update(r.runs)
    state.anomalies = list(body.anomalies)
    state.anomaly_counts = Counter(body.anomaly_counts)
    state.records_folded = body.records_folded
    chunks = frames.done

    def load_done() -> dict[str, dict[str, int]]:
        verify_done(frames, path)
        merged: dict[str, dict[str, int]] = {}
        for c in chunks:  # oldest first, so newer chunks win
            merged.update(decode_done_entries(c.data, path))
        return merged

    state.done_loader = load_done
    return frames, state


def encode_snapshot(state: FoldState, previous: SnapshotFrames | None, *, created_ms: int = 0) -> bytes:
    """Encode ``state`` as snapshot number ``state.number``.

    ``previous`` is the snapshot the state was loaded from (its arrays are reused
    verbatim when no completion changed, and its done-entry chunks are carried over).
    """
    run_index = {r: i for i, r in enumerate(state.run_order)}
    hashes: bytes | memoryview
    offsets: bytes | memoryview
    runs: bytes | memoryview
    blob: bytes | memoryview
    if previous is not None and not state.added and not state.removed:
        hashes, offsets, runs, blob = previous.hashes, previous.offsets, previous.runs, previous.blob
        count, ascii_ids = previous.header.completed_count, previous.header.ascii_ids
    else:
        add = {s: run_index[r] for s, r in state.added.items()}
        hashes, offsets, runs, blob, count, ascii_ids = build_index(state.base, state.removed, add)
    header = SnapshotHeader(FORMAT_VERSION, state.number, secrets.token_bytes(16), created_ms, count, ascii_ids)
    pending = []
    for (run, src), s in state.pending.items():
        keys: list[str] = []
        streams: list[int] = []
        ords: list[int] = []
        deltas: list[int] = []
        for k, si, o, d in s.items():
            keys.append(k)
            streams.append(si)
            ords.append(o)
            deltas.append(d)
        pending.append(PendingEntry(run_index[run], src, s.emitted, s.tainted, keys, streams, ords, deltas))
    live = {r for r, info in state.runs.items() if not info.retired}
    retired = set(state.runs) - live
    body = SnapshotBody(
        streams=state.stream_marks(),
        stream_ids=list(state.stream_ids),
        runs=[state.runs[r] for r in state.run_order],
        pending=pending,
        resets=[Reset(src, sorted(runs - retired)) for src, runs in sorted(state.resets.items()) if runs - retired],
        anomalies=list(state.anomalies),
        anomaly_counts=dict(state.anomaly_counts),
        records_folded=state.records_folded,
    )
    if previous is not None:
        verify_done(previous)  # never carry unchecked bytes into a new snapshot
        chunks = [c for c in previous.done if set(c.runs) & live]
    else:
        chunks = _base_done_chunk(state, live)
    fresh = {s: d for s, d in state.done_entries.items() if state.added.get(s) in live}
    if fresh:
        chunks.append(DoneChunk(sorted({state.added[s] for s in fresh}), memoryview(encode_done_entries(fresh))))
    if len(chunks) > MAX_DONE_CHUNKS:
        merged: dict[str, dict[str, int]] = {}
        runs_in: set[str] = set()
        for c in chunks:
            merged.update(decode_done_entries(c.data))
            runs_in.update(c.runs)
        keep = {s: d for s, d in merged.items() if state.completed_run(s) in live}
        chunks = [DoneChunk(sorted(runs_in & live), memoryview(encode_done_entries(keep)))]
    return encode_snapshot_frames(
        SnapshotFrames(
            header, body, memoryview(hashes), memoryview(offsets), memoryview(runs), memoryview(blob), chunks
        )
    )


def _base_done_chunk(state: FoldState, live: set[str]) -> list[DoneChunk]:
    """The done entries of ``state``'s base as one chunk (no previous snapshot to carry
    its chunks from: the state was loaded by the caller)."""
    if not state.base.count or state.done_loader is None:
        return []
    keep: dict[str, dict[str, int]] = {}
    runs: set[str] = set()
    for src, entries in state.done_loader().items():
        if src in state.added:
            continue
        run = state.completed_run(src)
        if run in live:
            keep[src] = dict(entries)
            runs.add(run)  # type: ignore[arg-type]
    return [DoneChunk(sorted(runs), memoryview(encode_done_entries(keep)))] if keep else []
