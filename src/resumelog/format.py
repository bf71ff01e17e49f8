"""The bytes on storage: records, segments, snapshots and meta (spec: ``docs/format.md``).

Every object starts with a 24-byte *preamble*, followed by *frames*::

    preamble = magic "RSLG" | kind u8 | flags u8 | version u16 | total_len u64
               | reserved u32 | crc32c u32      (big-endian; CRC over the first 20 bytes)
    frame    = length u32 | crc32c u32 | payload[length]     (CRC over the payload)

``total_len`` is the byte length of the whole object, so a truncated object (a torn
write) is told apart from a corrupted one. Payloads are msgpack, decoded by typed
``msgspec`` decoders created once; structs are ``array_like`` and may only gain
trailing fields with defaults (older readers ignore them). An incompatible change bumps
:data:`FORMAT_VERSION`; a reader meeting a newer version raises
:class:`~resumelog.errors.UnsupportedFormat`. Nothing is ever pickled.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any, Final

import msgspec

from resumelog._columns import decode_batch
from resumelog._compiled import native
from resumelog._crc import crc32c
from resumelog.errors import CorruptObject, CorruptSegment, CorruptSnapshot, UnsupportedFormat
from resumelog.idset import counted_uints, index_views

__all__ = [
    "EMPTY_SHAPE_TABLE",
    "FORMAT_VERSION",
    "KIND_LAYER",
    "KIND_META",
    "KIND_SEGMENT",
    "KIND_SNAPSHOT",
    "LAYER_FRAMES",
    "LAYER_HEAD_FRAMES",
    "SNAPSHOT_FRAMES",
    "SNAPSHOT_FRAMES_V1",
    "SNAPSHOT_FRAMES_V2",
    "SNAPSHOT_FRAMES_V3",
    "Anomaly",
    "Batch",
    "BlockIndex",
    "DoneChunk",
    "DoneWriters",
    "LayerFrames",
    "LayerHead",
    "LayerHeader",
    "LayerRef",
    "Meta",
    "PendingEntry",
    "Reset",
    "RunInfo",
    "Segment",
    "SegmentFooter",
    "SegmentHeader",
    "SnapshotBody",
    "SnapshotFrames",
    "SnapshotHeader",
    "StreamMark",
    "TornSegment",
    "crc32c",
    "decode_done_entries",
    "decode_done_writers",
    "decode_header",
    "decode_layer",
    "decode_layer_block",
    "decode_layer_head",
    "decode_meta",
    "decode_segment",
    "decode_snapshot_frames",
    "encode_done_writers",
    "encode_layer",
    "encode_layer_block",
    "encode_layer_v6",
    "encode_meta",
    "encode_object",
    "encode_segment",
    "encode_snapshot_frames",
    "frame_header",
    "frames_of",
    "layer_version",
    "object_parts",
    "read_preamble",
    "segment_parts",
    "split_frames",
    "verify_done",
    "verify_layer_head_shapes",
    "verify_layer_shapes",
]

FORMAT_VERSION: Final = 6
MAGIC: Final = b"RSLG"
KIND_SEGMENT: Final = ord("S")
KIND_SNAPSHOT: Final = ord("N")
KIND_META: Final = ord("M")
KIND_LAYER: Final = ord("L")
_KIND_NAMES = {KIND_SEGMENT: "segment", KIND_SNAPSHOT: "snapshot", KIND_META: "meta", KIND_LAYER: "layer"}

_PRE = struct.Struct(">4sBBHQI")  # magic, kind, flags, version, total_len, reserved
PREAMBLE_SIZE: Final = _PRE.size + 4  # + crc32c
_FRAME = struct.Struct(">II")
FRAME_HEADER_SIZE: Final = _FRAME.size
MAX_OBJECT_SIZE: Final = 1 << 40

EMISSION: Final = 1
"""Bit 0 of a record's flag byte: the record is an emission (the source entered the run)."""


# --------------------------------------------------------------------------- structs


class Reset(msgspec.Struct, array_like=True, frozen=True):
    """Operator tombstone: completions of ``source`` by any run in ``runs`` are void."""

    source: str
    runs: list[str]


class Batch(msgspec.Struct, array_like=True):
    """A columnar batch of records ``(key, source, delta, flags)``.

    ``sources`` holds each distinct source id once; ``source_index[i]`` points into it.
    All per-record columns have the same length. ``flags`` has one byte per record
    (bit 0: emission).
    """

    sources: list[str]
    source_index: list[int]
    keys: list[str]
    deltas: list[int]
    flags: bytes
    resets: list[Reset] = []

    def __len__(self) -> int:
        return len(self.keys)


class SegmentHeader(msgspec.Struct, array_like=True, frozen=True):
    """First frame of a segment: which stream, which position, which run."""

    writer_id: str
    incarnation: str
    seq: int
    run_id: str
    nonce: bytes
    created_ms: int = 0
    epoch: bytes = b""
    """The ``nonce`` of the ``meta.msgpack`` the writer's checkpoint had (version 4;
    empty in older versions): a reader ignores a segment of another epoch."""


class SegmentFooter(msgspec.Struct, array_like=True, frozen=True):
    """Last frame of a segment: counts for validation and the stream's ``closed`` flag."""

    record_count: int
    batch_count: int
    closed: bool = False


class Segment(msgspec.Struct, frozen=True):
    """A decoded segment (in memory only)."""

    header: SegmentHeader
    batches: list[Batch]
    """The record batches (a :class:`~resumelog._columns.ColumnBatch` for each batch
    the compiled decoder read, if decoded with ``columns``)."""
    footer: SegmentFooter

    @property
    def record_count(self) -> int:
        return self.footer.record_count


class Meta(msgspec.Struct, array_like=True, frozen=True):
    """``meta.msgpack``: created once per checkpoint, never rewritten."""

    format_version: int
    fingerprint: dict[str, str | int | float | bool | None]
    nonce: bytes
    created_ms: int = 0


class StreamMark(msgspec.Struct, array_like=True):
    """Per-stream high-water mark kept in a snapshot."""

    writer_id: str
    incarnation: str
    run_id: str
    seq: int
    """Last folded sequence number."""
    closed: bool = False
    records: int = 0
    last_ms: int = 0


class RunInfo(msgspec.Struct, array_like=True):
    """A run known to the snapshot."""

    run_id: str
    first_snapshot: int
    last_snapshot: int
    retired: bool = False
    damaged: bool = False
    """Records of this run were lost from storage (a journal gap): it completes nothing more."""


class PendingEntry(msgspec.Struct, array_like=True):
    """The fold state of one ``(run, source)`` that has not completed.

    Parallel columns, one element per (key, stream) pair: a key written by several
    streams appears once per stream.
    """

    run: int
    source: str
    emitted: bool
    tainted: bool
    keys: list[str]
    streams: list[int]
    ordinals: list[int]
    deltas: list[int]
    over_drained: bool = False
    """Reported as ``over_drained`` already (its sum went below zero); version 3."""


class Anomaly(msgspec.Struct, array_like=True, frozen=True):
    """Something a user should look at: a conflict, a late record, a torn tail..."""

    kind: str
    source: str
    run_id: str
    detail: str = ""


class SnapshotHeader(msgspec.Struct, array_like=True, frozen=True):
    """First frame of a snapshot."""

    format_version: int
    number: int
    nonce: bytes
    created_ms: int = 0
    completed_count: int = 0
    ascii_ids: bool = True
    epoch: bytes = b""
    """As :attr:`SegmentHeader.epoch`: the checkpoint the snapshot belongs to (version 4)."""


class SnapshotBody(msgspec.Struct, array_like=True):
    """Second frame of a snapshot: everything but the completed-id arrays and done entries."""

    streams: list[StreamMark]
    stream_ids: list[str]
    runs: list[RunInfo]
    pending: list[PendingEntry]
    resets: list[Reset]
    anomalies: list[Anomaly]
    anomaly_counts: dict[str, int]
    records_folded: int = 0


class LayerRef(msgspec.Struct, array_like=True, frozen=True):
    """A snapshot's reference to one layer of its completed-id index (version 5 on)."""

    name: str
    """Object key of the layer, ``layers/<number>-<token>.layer``."""
    nonce: bytes
    """The layer header's nonce: a reader checks that the object it read is this one."""
    count: int
    """Entries (completed ids) in the layer."""
    tombstones: int
    """Ids of the layers below that this layer masks."""
    size: int
    """Byte length of the layer object."""
    head: int = 0
    """Version 6: bytes from the start of the layer object to its first block frame (the
    preamble and frames 0-3): one ranged read gives a reader all but the blocks. ``0``
    names a version-5 layer (no blocks: read whole)."""


class LayerHeader(msgspec.Struct, array_like=True, frozen=True):
    """First frame of a layer object (versions 5 and 6)."""

    format_version: int
    nonce: bytes
    epoch: bytes
    created_ms: int
    count: int
    ascii_ids: bool
    runs: list[str]
    """The layer's run table: entry ``i`` was completed by run ``runs[run_index[i]]``."""
    tombstones: int


class BlockIndex(msgspec.Struct, array_like=True, frozen=True):
    """Frame 1 of a version-6 layer: its blocks, in key order (``docs/format.md`` §5a)."""

    counts: list[int]
    """Entries of each block (each at least 1)."""
    sizes: list[int]
    """Byte length of each block's frame, its 8-byte frame header included."""
    firsts: list[bytes]
    """The smallest id (UTF-8 bytes) of each block, strictly ascending."""


_enc = msgspec.msgpack.Encoder()
_dec_header = msgspec.msgpack.Decoder(SegmentHeader)
_dec_batch = msgspec.msgpack.Decoder(Batch)
_dec_footer = msgspec.msgpack.Decoder(SegmentFooter)
_dec_meta = msgspec.msgpack.Decoder(Meta)
_dec_snap_header = msgspec.msgpack.Decoder(SnapshotHeader)
_dec_snap_body = msgspec.msgpack.Decoder(SnapshotBody)
_dec_layer_refs = msgspec.msgpack.Decoder(list[LayerRef])
_dec_layer_header = msgspec.msgpack.Decoder(LayerHeader)
_dec_tombstones = msgspec.msgpack.Decoder(list[str])
_dec_block_index = msgspec.msgpack.Decoder(BlockIndex)
_dec_done = msgspec.msgpack.Decoder(dict[str, dict[str, int]])


def _in_range_py(values: list[int], n: int) -> bool:
    return min(values) >= 0 and max(values) < n


_in_range: Any = native.in_range if native is not None else _in_range_py
"""``all(0 <= v < n for v in values)`` of a non-empty list (one C pass if built)."""


def encode(obj: object) -> bytes:
    """msgpack-encode a struct with the shared encoder."""
    return _enc.encode(obj)


# --------------------------------------------------------------------------- framing


class TornSegment(CorruptSegment):
    """A segment that ends early: a prefix of a valid object (a torn write).

    Tolerated only for the last segment of a stream on local storage.
    """


def encode_object(kind: int, payloads: Sequence[bytes | memoryview]) -> bytes:
    """Frame ``payloads`` behind a preamble of ``kind``."""
    return b"".join(object_parts(kind, [(p, crc32c(p)) for p in payloads]))


def object_parts(
    kind: int, frames: Sequence[tuple[bytes | memoryview, int]], tail: int = 0
) -> list[bytes | memoryview]:
    """The bytes of an object of ``kind`` as a list of parts to concatenate (or hand to
    ``Store.put_if_absent_parts``), from ``(payload, CRC-32C of payload)`` pairs: a
    writer computes each CRC while the payload is hot and never copies the payloads.

    ``tail``: the object goes on with that many bytes of frames framed elsewhere
    (:func:`frame_header`; a layer's blocks spooled to a file): the preamble counts them."""
    total = PREAMBLE_SIZE + sum(FRAME_HEADER_SIZE + len(p) for p, _ in frames) + tail
    pre = _PRE.pack(MAGIC, kind, 0, FORMAT_VERSION, total, 0)
    parts: list[bytes | memoryview] = [pre + crc32c(pre).to_bytes(4, "big")]
    for p, crc in frames:
        parts.append(_FRAME.pack(len(p), crc))
        parts.append(p)
    return parts


def read_preamble(data: bytes | memoryview, kind: int, path: str = "") -> int:
    """Validate the preamble; return ``total_len``.

    Raises :class:`TornSegment` (segments) or the kind's corruption error if the data
    is too short, :class:`UnsupportedFormat` for a newer version.
    """
    err = _error_for(kind)
    n = len(data)
    if n < PREAMBLE_SIZE:
        if bytes(data[:4]) == MAGIC[: min(4, n)]:
            raise _torn(kind, f"object is {n} bytes, shorter than its preamble", path)
        raise err("not a resumelog object (bad magic)", path)
    magic, k, _flags, version, total, _res = _PRE.unpack_from(data, 0)
    if magic != MAGIC:
        raise err("not a resumelog object (bad magic)", path)
    if crc32c(data[: _PRE.size]) != int.from_bytes(data[_PRE.size : PREAMBLE_SIZE], "big"):
        raise err("preamble CRC mismatch", path)
    if version > FORMAT_VERSION or version < 1:
        raise UnsupportedFormat(
            f"format version {version} is not supported by this resumelog (reads <= {FORMAT_VERSION}); upgrade",
            path,
        )
    if k != kind:
        raise err(f"expected a {_KIND_NAMES.get(kind)} object, found kind {k!r}", path)
    if total > n:
        raise _torn(kind, f"object is {n} bytes but declares {total} (truncated)", path)
    if total < n or total > MAX_OBJECT_SIZE:
        raise err(f"object is {n} bytes but declares {total}", path)
    return int(total)


def frame_header(payload: bytes | memoryview, crc: int) -> bytes:
    """The 8-byte header of a frame holding ``payload`` (whose CRC-32C is ``crc``)."""
    return _FRAME.pack(len(payload), crc)


def frames_of(data: bytes | memoryview) -> list[tuple[memoryview, int]]:
    """``(payload, stored CRC)`` of every frame of an object this process just encoded
    (nothing is checked: for re-framing without computing CRCs again)."""
    view = memoryview(data)
    total = int(_PRE.unpack_from(view, 0)[4])
    out = []
    pos = PREAMBLE_SIZE
    while pos < total:
        length, crc = _FRAME.unpack_from(view, pos)
        start = pos + FRAME_HEADER_SIZE
        out.append((view[start : start + length], crc))
        pos = start + length
    return out


def split_frames(data: bytes | memoryview, kind: int, path: str = "") -> list[memoryview]:
    """Check preamble and every frame CRC; return the payloads as zero-copy views."""
    return _split_frames(data, kind, path, None)[0]


def _split_frames(
    data: bytes | memoryview, kind: int, path: str, defer: int | None
) -> tuple[list[memoryview], dict[int, int]]:
    """:func:`split_frames`; frames from index ``defer`` on that are at least
    :data:`DEFER_CRC_MIN` bytes are not checked: their CRCs are returned, by index."""
    deferred: dict[int, int] = {}
    total = read_preamble(data, kind, path)
    err = _error_for(kind)
    view = memoryview(data)
    frames: list[memoryview] = []
    pos = PREAMBLE_SIZE
    while pos < total:
        if pos + FRAME_HEADER_SIZE > total:
            raise err(f"frame header at byte {pos} runs past the end", path)
        length, crc = _FRAME.unpack_from(view, pos)
        start = pos + FRAME_HEADER_SIZE
        end = start + length
        if end > total:  # never allocate what a crafted length claims
            raise err(f"frame at byte {pos} claims {length} bytes, past the end", path)
        payload = view[start:end]
        if defer is not None and len(frames) >= defer and length >= DEFER_CRC_MIN:
            deferred[len(frames)] = crc
        elif crc32c(payload) != crc:
            raise err(f"CRC mismatch in frame at byte {pos}", path)
        frames.append(payload)
        pos = end
    return frames, deferred


def _error_for(kind: int) -> type[CorruptObject]:
    if kind == KIND_SEGMENT:
        return CorruptSegment
    if kind in (KIND_SNAPSHOT, KIND_LAYER):
        return CorruptSnapshot
    return CorruptObject


def _torn(kind: int, message: str, path: str) -> CorruptObject:
    return TornSegment(message, path) if kind == KIND_SEGMENT else _error_for(kind)(message, path)


def _decode(
    decoder: msgspec.msgpack.Decoder[Any], payload: memoryview, what: str, err: type[CorruptObject], path: str
) -> Any:
    try:
        return decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise err(f"malformed {what}: {exc}", path) from None


# --------------------------------------------------------------------------- segments


def encode_segment(header: SegmentHeader, batches: Iterable[Batch], closed: bool = False) -> bytes:
    """Encode one segment object (header frame, batch frames, footer frame)."""
    batches = list(batches)
    encoded = [(e, crc32c(e)) for e in map(_enc.encode, batches)]
    return b"".join(segment_parts(header, encoded, sum(len(b.keys) for b in batches), closed))


def segment_parts(
    header: SegmentHeader, batches: Sequence[tuple[bytes, int]], records: int, closed: bool = False
) -> list[bytes | memoryview]:
    """:func:`encode_segment` as :func:`object_parts`, from batches already encoded
    (``(encode(batch), crc32c of it)`` each), holding ``records`` records in all."""
    head = _enc.encode(header)
    footer = _enc.encode(SegmentFooter(records, len(batches), closed))
    return object_parts(KIND_SEGMENT, [(head, crc32c(head)), *batches, (footer, crc32c(footer))])


def decode_segment(data: bytes | memoryview, path: str = "", *, columns: bool = False) -> Segment:
    """Decode and fully validate a segment.

    Raises :class:`TornSegment` if the object is a truncated prefix,
    :class:`~resumelog.errors.CorruptSegment` for any CRC or structure failure and
    :class:`~resumelog.errors.UnsupportedFormat` for a newer format version.

    ``columns``: decode each batch the compiled decoder can read as a
    :class:`~resumelog._columns.ColumnBatch` (validated there; the fold's fast path
    reads its columns as they are), the others as :class:`Batch`.
    """
    frames = split_frames(data, KIND_SEGMENT, path)
    if len(frames) < 2:
        raise CorruptSegment("segment has no header or footer frame", path)
    header: SegmentHeader = _decode(_dec_header, frames[0], "segment header", CorruptSegment, path)
    footer: SegmentFooter = _decode(_dec_footer, frames[-1], "segment footer", CorruptSegment, path)
    batches: list[Any] = []
    count = 0
    for f in frames[1:-1]:
        cb = decode_batch(f) if columns else None
        if cb is not None:  # (its columns checked by the decoder)
            batches.append(cb)
            count += len(cb)
            continue
        b: Batch = _decode(_dec_batch, f, "record batch", CorruptSegment, path)
        batches.append(b)
        n = len(b.keys)
        ns = len(b.sources)
        if len(b.source_index) != n or len(b.deltas) != n or len(b.flags) != n:
            raise CorruptSegment("record batch columns have different lengths", path)
        if n and not _in_range(b.source_index, ns):
            raise CorruptSegment("record batch source index out of range", path)
        count += n
    if footer.record_count != count or footer.batch_count != len(batches):
        raise CorruptSegment(
            f"footer says {footer.record_count} records in {footer.batch_count} batches, found {count} in {len(batches)}",
            path,
        )
    if header.seq < 0:
        raise CorruptSegment("negative sequence number", path)
    return Segment(header, batches, footer)


# --------------------------------------------------------------------------- meta


def encode_meta(meta: Meta) -> bytes:
    """Encode ``meta.msgpack``."""
    return encode_object(KIND_META, [_enc.encode(meta)])


def decode_meta(data: bytes | memoryview, path: str = "") -> Meta:
    """Decode ``meta.msgpack``; typed errors as for segments."""
    frames = split_frames(data, KIND_META, path)
    if len(frames) != 1:
        raise CorruptObject("meta object must have exactly one frame", path)
    meta: Meta = _decode(_dec_meta, frames[0], "meta", CorruptObject, path)
    if meta.format_version > FORMAT_VERSION:
        raise UnsupportedFormat(f"checkpoint format version {meta.format_version} is newer than this resumelog", path)
    return meta


# --------------------------------------------------------------------------- snapshots

SNAPSHOT_FRAMES: Final = 4
"""header, body, layer references, done writers (format versions 5-6: the completed ids
live in layer objects, see :class:`LayerRef`)."""
SNAPSHOT_FRAMES_V3: Final = 9
"""header, body, u32 hashes, u32|u64 offsets, completing-run indexes, id blob, shape ids,
shape table, done writers (format versions 3 and 4; version 2 has 8 frames, no done
writers; version 1 has 7, see :class:`DoneChunk`)."""
LAYER_FRAMES: Final = 8
"""header, u32 hashes, u32|u64 offsets, run indexes, id blob, shape ids, shape table,
tombstones (a version-5 layer; version 6: :data:`LAYER_HEAD_FRAMES` + blocks)."""
SNAPSHOT_FRAMES_V2: Final = 8
SNAPSHOT_FRAMES_V1: Final = 7
EMPTY_SHAPE_TABLE: Final = b"\x90"
"""Frame 7 with no shapes (a msgpack empty array)."""


class DoneWriters(msgspec.Struct, array_like=True):
    """Frame 8 (format version 3): which *open* streams wrote each key of a completion.

    ``sources[i]`` is a completed id whose entries some still-open stream wrote;
    ``writers[i]`` has one element per element of its shape (shape order): ``-1`` (only
    closed streams wrote the key), ``j >= 0`` (open stream ``streams[j]`` alone), or an
    array of such values (several streams, ``-1`` among them if closed ones too).
    Completions absent here were written by closed streams only (or are
    ``complete()`` completions, whose reserved keys never change value).
    """

    streams: list[str]
    sources: list[str]
    writers: list[list[int | list[int]]]


class DoneChunk(msgspec.Struct, array_like=True, frozen=True):
    """Format version 1 only (frame 6, read but never written): final deltas of
    sources completed by ``runs``; ``data`` is a msgpack map ``source -> {key: delta}``."""

    runs: list[str]
    data: memoryview  # zero-copy view into the snapshot bytes when decoded


class SnapshotFrames(msgspec.Struct, frozen=True):
    """A decoded snapshot (in memory only); arrays and blob are zero-copy views."""

    header: SnapshotHeader
    body: SnapshotBody
    hashes: memoryview
    offsets: memoryview
    runs: memoryview
    blob: memoryview
    shape_ids: memoryview = memoryview(b"")
    """Frame 6: the shape id of every completed id (empty: all ``0``)."""
    shapes: memoryview = memoryview(EMPTY_SHAPE_TABLE)
    """Frame 7: the shape table, msgpack (``done_shapes.ShapeTable.encode``)."""
    writers: memoryview = memoryview(b"")
    """Frame 8: :class:`DoneWriters`, msgpack, or empty (none); version 3."""
    deferred: tuple[tuple[memoryview, int], ...] = ()
    """Frames whose CRC is checked on first use, with their CRCs (:func:`verify_done`)."""
    legacy_done: list[DoneChunk] | None = None
    """Format version 1: the done-entry chunks (``shape_ids`` and ``shapes`` are empty)."""
    layers: list[LayerRef] | None = None
    """Format version 5 on: the layers of the completed-id index, oldest first (the index
    frames above are then empty); ``None`` for versions 1-4."""


def verify_done(frames: SnapshotFrames, path: str = "") -> None:
    """Check the deferred CRCs of a snapshot's done-entry frames (see
    :func:`decode_snapshot_frames`); :class:`~resumelog.errors.CorruptSnapshot` if
    one does not match."""
    for frame, crc in frames.deferred:
        if crc32c(frame) != crc:
            raise CorruptSnapshot("CRC mismatch in a done-entry frame", path)


DEFER_CRC_MIN: Final = 1 << 20
"""A snapshot's done-entry frame at least this large is CRC-checked on first use, not
at load: opening a checkpoint never touches those bytes (with a memory-mapped read)."""


_dec_chunks = msgspec.msgpack.Decoder(list[DoneChunk])


def encode_snapshot_frames(frames: SnapshotFrames) -> bytes:
    """Encode a snapshot object (always the current format version: its index lives in
    the layers ``frames.layers`` names; the index frames of ``frames`` are ignored)."""
    return encode_object(
        KIND_SNAPSHOT,
        [_enc.encode(frames.header), _enc.encode(frames.body), _enc.encode(frames.layers or []), frames.writers],
    )


def decode_snapshot_frames(data: bytes | memoryview, path: str = "", *, defer_done_crc: bool = False) -> SnapshotFrames:
    """Split, check and decode a snapshot; the id arrays and blob stay zero-copy views.

    ``defer_done_crc``: large done-entry frames are CRC-checked by :func:`verify_done`,
    which everything reading the done entries calls first, instead of here.
    """
    frames, deferred = _split_frames(data, KIND_SNAPSHOT, path, SNAPSHOT_FRAMES_V1 - 1 if defer_done_crc else None)
    if not frames:
        raise CorruptSnapshot("snapshot has no frames", path)
    header: SnapshotHeader = _decode(_dec_snap_header, frames[0], "snapshot header", CorruptSnapshot, path)
    version = header.format_version
    if version > FORMAT_VERSION:
        raise UnsupportedFormat(f"snapshot format version {version} is newer", path)
    expected = {1: SNAPSHOT_FRAMES_V1, 2: SNAPSHOT_FRAMES_V2, 3: SNAPSHOT_FRAMES_V3, 4: SNAPSHOT_FRAMES_V3}.get(
        version, SNAPSHOT_FRAMES
    )
    if len(frames) != expected:
        raise CorruptSnapshot(f"snapshot has {len(frames)} frames, expected {expected}", path)
    body: SnapshotBody = _decode(_dec_snap_body, frames[1], "snapshot body", CorruptSnapshot, path)
    if version >= 5:
        refs: list[LayerRef] = _decode(_dec_layer_refs, frames[2], "layer references", CorruptSnapshot, path)
        visible = sum(r.count - r.tombstones for r in refs)
        if visible != header.completed_count or any(min(r.count, r.tombstones) < 0 for r in refs):
            raise CorruptSnapshot("the layers do not add up to the declared completed count", path)
        empty = memoryview(b"")
        return SnapshotFrames(header, body, empty, empty, empty, empty, empty, empty, frames[3], layers=refs)
    hashes, offsets, runs, blob = frames[2], frames[3], frames[4], frames[5]
    n = header.completed_count
    if version >= 2:
        try:
            index_views(hashes, offsets, runs)
            if frames[6]:
                counted_uints(frames[6], n)
            ok = len(hashes) == 4 * n
        except ValueError:
            ok = False
    else:
        ok = len(hashes) == 4 * n and len(offsets) == 8 * (n + 1) and len(runs) == 4 * n
    if not ok:
        raise CorruptSnapshot("completed-id arrays do not match the declared count", path)
    late = tuple((frames[i], crc) for i, crc in sorted(deferred.items()))
    if version >= 3:
        return SnapshotFrames(header, body, hashes, offsets, runs, blob, frames[6], frames[7], frames[8], late)
    if version == 2:
        return SnapshotFrames(header, body, hashes, offsets, runs, blob, frames[6], frames[7], deferred=late)
    try:
        chunks: list[DoneChunk] = _decode(_dec_chunks, frames[6], "done-entry chunks", CorruptSnapshot, path)
    except CorruptSnapshot:
        if late and crc32c(frames[6]) != late[0][1]:
            raise CorruptSnapshot("CRC mismatch in the done-entry frame", path) from None
        raise
    return SnapshotFrames(header, body, hashes, offsets, runs, blob, deferred=late, legacy_done=chunks)


class LayerFrames(msgspec.Struct, frozen=True):
    """A decoded layer object (in memory only); arrays and blob are zero-copy views."""

    header: LayerHeader
    hashes: memoryview
    offsets: memoryview
    runs: memoryview
    blob: memoryview
    shape_ids: memoryview
    shapes: memoryview
    tombstones: list[str]
    deferred: tuple[tuple[memoryview, int], ...] = ()
    """Shape frames whose CRC is checked on first use (:func:`verify_layer_shapes`)."""


def verify_layer_shapes(frames: LayerFrames, path: str = "") -> None:
    """Check the deferred CRCs of a layer's shape frames (:func:`decode_layer` with
    ``defer_done_crc``); :class:`~resumelog.errors.CorruptSnapshot` if one does not match."""
    for frame, crc in frames.deferred:
        if crc32c(frame) != crc:
            raise CorruptSnapshot("CRC mismatch in a layer's shape frame", path)


def encode_layer(frames: LayerFrames) -> bytes:
    """Encode a version-5 layer object (``docs/format.md`` §9; writers write version 6)."""
    return encode_object(
        KIND_LAYER,
        [
            _enc.encode(frames.header),
            frames.hashes,
            frames.offsets,
            frames.runs,
            frames.blob,
            frames.shape_ids,
            frames.shapes,
            _enc.encode(frames.tombstones),
        ],
    )


def decode_layer(data: bytes | memoryview, path: str = "", *, defer_done_crc: bool = False) -> LayerFrames:
    """Split, check and decode a layer object; arrays stay zero-copy views.
    :class:`~resumelog.errors.CorruptSnapshot` if it fails a check.

    ``defer_done_crc``: the shape frames (5 and 6), when large, are CRC-checked by
    :func:`verify_layer_shapes`, which everything reading the shapes calls first (as a
    snapshot's done-entry frames, ``docs/format.md`` §8)."""
    frames, deferred = _split_frames(data, KIND_LAYER, path, 5 if defer_done_crc else None)
    if len(frames) != LAYER_FRAMES:
        raise CorruptSnapshot(f"layer has {len(frames)} frames, expected {LAYER_FRAMES}", path)
    for i in [i for i in deferred if i >= 7]:  # the tombstones are decoded now: checked now
        if crc32c(frames[i]) != deferred.pop(i):
            raise CorruptSnapshot(f"CRC mismatch in frame {i}", path)
    header: LayerHeader = _decode(_dec_layer_header, frames[0], "layer header", CorruptSnapshot, path)
    tombstones: list[str] = _decode(_dec_tombstones, frames[7], "layer tombstones", CorruptSnapshot, path)
    n = header.count
    try:
        index_views(frames[1], frames[2], frames[3])  # run indexes are checked when mapped
        if frames[5]:
            counted_uints(frames[5], n)
        ok = len(frames[1]) == 4 * n and len(tombstones) == header.tombstones
    except ValueError:
        ok = False
    if not ok:
        raise CorruptSnapshot("layer arrays do not match the declared counts", path)
    late = tuple((frames[i], crc) for i, crc in sorted(deferred.items()))
    return LayerFrames(header, frames[1], frames[2], frames[3], frames[4], frames[5], frames[6], tombstones, late)


LAYER_HEAD_FRAMES: Final = 4
"""Frames of a version-6 layer before its blocks: header, block index, shape table,
tombstones."""

_BLOCK_HEAD = struct.Struct("<BBBB")  # offset width, run width, shape-id width (0: none), 0


class LayerHead(msgspec.Struct, frozen=True):
    """The decoded head of a version-6 layer (frames 0-3; in memory only)."""

    header: LayerHeader
    blocks: BlockIndex
    shapes: memoryview
    tombstones: list[str]
    head: int
    """Offset of the first block frame."""
    total: int
    """``total_len`` of the object."""
    shapes_crc: int | None = None
    """The shape table's CRC when its check is deferred (:func:`verify_layer_head_shapes`)."""


def _checked_preamble(view: memoryview, kind: int, path: str) -> int:
    """The version of the object whose first bytes are ``view`` (at least a preamble):
    magic, CRC, version and kind checked (not the length)."""
    err = _error_for(kind)
    magic, k, _flags, version, _total, _res = _PRE.unpack_from(view, 0)
    if magic != MAGIC or crc32c(view[: _PRE.size]) != int.from_bytes(view[_PRE.size : PREAMBLE_SIZE], "big"):
        raise err("bad preamble", path)
    if version > FORMAT_VERSION or version < 1:
        raise UnsupportedFormat(f"format version {version} is not supported by this resumelog; upgrade", path)
    if k != kind:
        raise err(f"expected a {_KIND_NAMES.get(kind)} object, found kind {k!r}", path)
    return int(version)


def layer_version(prefix: bytes | memoryview, path: str = "") -> int:
    """The format version of a layer object from its first bytes (preamble checked)."""
    view = memoryview(prefix)
    if len(view) < PREAMBLE_SIZE:
        raise CorruptSnapshot("layer object shorter than its preamble", path)
    return _checked_preamble(view, KIND_LAYER, path)


def encode_layer_block(hashes: bytes, offsets: bytes, runs: bytes, shape_ids: bytes, blob: bytes, count: int) -> bytes:
    """The payload of one block of a version-6 layer (``docs/format.md`` §5a): a 4-byte
    head of element widths, then the hash, offset, run and shape-id arrays and the blob."""
    ow = len(offsets) // (count + 1)
    rw = len(runs) // count
    sw = len(shape_ids) // count
    return b"".join((_BLOCK_HEAD.pack(ow, rw, sw, 0), hashes, offsets, runs, shape_ids, blob))


def decode_layer_block(
    frame: memoryview, count: int, path: str = ""
) -> tuple[memoryview, memoryview, memoryview, memoryview, memoryview]:
    """Check one block frame (its 8-byte header, CRC and widths) of ``count`` entries and
    split it into zero-copy ``(hashes, offsets, runs, shape_ids, blob)`` views."""
    view = memoryview(frame)
    if len(view) < FRAME_HEADER_SIZE + _BLOCK_HEAD.size:
        raise CorruptSnapshot("layer block shorter than its header", path)
    length, crc = _FRAME.unpack_from(view, 0)
    payload = view[FRAME_HEADER_SIZE:]
    if length != len(payload):
        raise CorruptSnapshot("layer block length differs from the block index", path)
    if crc32c(payload) != crc:
        raise CorruptSnapshot("CRC mismatch in a layer block", path)
    ow, rw, sw, _ = _BLOCK_HEAD.unpack_from(payload, 0)
    if ow not in (4, 8) or rw not in (1, 2, 4) or sw not in (0, 1, 2, 4) or count < 1:
        raise CorruptSnapshot("layer block has invalid element widths", path)
    pos = _BLOCK_HEAD.size
    cuts = []
    for size in (4 * count, ow * (count + 1), rw * count, sw * count):
        cuts.append(payload[pos : pos + size])
        pos += size
    if pos > len(payload):
        raise CorruptSnapshot("layer block arrays run past its end", path)
    hashes, offsets, runs, shape_ids = cuts
    return hashes, offsets, runs, shape_ids, payload[pos:]


def encode_layer_v6(
    header: LayerHeader, blocks: BlockIndex, shapes: bytes | memoryview, tombstones: list[str], payloads: list[bytes]
) -> tuple[bytes, int]:
    """Encode a version-6 layer object; returns its bytes and ``head`` (the offset of its
    first block frame, for :class:`LayerRef`)."""
    head_frames = [_enc.encode(header), _enc.encode(blocks), shapes, _enc.encode(tombstones)]
    data = encode_object(KIND_LAYER, [*head_frames, *payloads])
    head = PREAMBLE_SIZE + sum(FRAME_HEADER_SIZE + len(p) for p in head_frames)
    return data, head


def decode_layer_head(
    data: bytes | memoryview, path: str = "", *, size: int | None = None, defer_shapes_crc: bool = False
) -> LayerHead:
    """Decode the head of a version-6 layer from ``data``: the object's first bytes, at
    least up to its first block (or the whole object). ``size``: the object's byte length
    when ``data`` holds only a prefix (from its :class:`LayerRef`). Checks the preamble,
    the CRCs of frames 0-3 (the shape table's is deferred with ``defer_shapes_crc``) and
    that the block index is consistent with the header and the object's length."""
    view = memoryview(data)
    version = layer_version(view, path)
    if version < 6:
        raise CorruptSnapshot(f"expected a version-6 layer, found version {version}", path)
    total = int(_PRE.unpack_from(view, 0)[4])
    if size is None:
        size = len(view)
        if total != size:
            raise CorruptSnapshot(f"layer is {size} bytes but declares {total}", path)
    elif total != size:
        raise CorruptSnapshot(f"layer declares {total} bytes, its snapshot {size}", path)
    frames: list[memoryview] = []
    shapes_crc: int | None = None
    pos = PREAMBLE_SIZE
    for i in range(LAYER_HEAD_FRAMES):
        if pos + FRAME_HEADER_SIZE > min(len(view), total):
            raise CorruptSnapshot(f"layer frame {i} runs past the bytes read", path)
        length, crc = _FRAME.unpack_from(view, pos)
        start = pos + FRAME_HEADER_SIZE
        end = start + length
        if end > min(len(view), total):
            raise CorruptSnapshot(f"layer frame {i} runs past the bytes read", path)
        payload = view[start:end]
        if i == 2 and defer_shapes_crc and length >= DEFER_CRC_MIN:
            shapes_crc = crc
        elif crc32c(payload) != crc:
            raise CorruptSnapshot(f"CRC mismatch in layer frame {i}", path)
        frames.append(payload)
        pos = end
    header: LayerHeader = _decode(_dec_layer_header, frames[0], "layer header", CorruptSnapshot, path)
    blocks: BlockIndex = _decode(_dec_block_index, frames[1], "layer block index", CorruptSnapshot, path)
    tombstones: list[str] = _decode(_dec_tombstones, frames[3], "layer tombstones", CorruptSnapshot, path)
    nb = len(blocks.counts)
    if (
        header.format_version != version
        or len(blocks.sizes) != nb
        or len(blocks.firsts) != nb
        or sum(blocks.counts) != header.count
        or any(c < 1 for c in blocks.counts)
        or any(s < FRAME_HEADER_SIZE + _BLOCK_HEAD.size for s in blocks.sizes)
        or pos + sum(blocks.sizes) != total
        or any(a >= b for a, b in zip(blocks.firsts, blocks.firsts[1:]))
        or len(tombstones) != header.tombstones
    ):
        raise CorruptSnapshot("layer block index does not match its header and length", path)
    return LayerHead(header, blocks, frames[2], tombstones, pos, total, shapes_crc)


def verify_layer_head_shapes(head: LayerHead, path: str = "") -> None:
    """Check the deferred CRC of a version-6 layer's shape table."""
    if head.shapes_crc is not None and crc32c(head.shapes) != head.shapes_crc:
        raise CorruptSnapshot("CRC mismatch in a layer's shape frame", path)


HEADER_PREFIX: Final = 4096
"""Bytes of an object's start that hold its header frame in practice (segment and
snapshot headers are well under 200 bytes): what :func:`decode_header` is given."""


def decode_header(
    prefix: bytes | memoryview, kind: int, path: str = ""
) -> SegmentHeader | SnapshotHeader | LayerHeader | None:
    """The header (frame 0) of a segment or snapshot (``kind``) from the first bytes of
    its object, or ``None`` if ``prefix`` is too short to hold it (read it whole).
    Checks the preamble and the header frame's CRC, not the rest of the object."""
    err = _error_for(kind)
    view = memoryview(prefix)
    if len(view) < PREAMBLE_SIZE + FRAME_HEADER_SIZE:
        return None
    _checked_preamble(view, kind, path)
    length, crc = _FRAME.unpack_from(view, PREAMBLE_SIZE)
    start = PREAMBLE_SIZE + FRAME_HEADER_SIZE
    if len(view) < start + length:
        return None
    payload = view[start : start + length]
    if crc32c(payload) != crc:
        raise err("CRC mismatch in the header frame", path)
    decoders: dict[int, msgspec.msgpack.Decoder[Any]] = {KIND_SNAPSHOT: _dec_snap_header, KIND_LAYER: _dec_layer_header}
    dec = decoders.get(kind, _dec_header)
    header: SegmentHeader | SnapshotHeader | LayerHeader = _decode(
        dec, payload, f"{_KIND_NAMES.get(kind)} header", err, path
    )
    return header


_dec_writers = msgspec.msgpack.Decoder(DoneWriters)


def decode_done_writers(payload: memoryview | bytes, path: str = "") -> DoneWriters:
    """Decode frame 8 (empty: no writers) and check its structure."""
    if not payload:
        return DoneWriters([], [], [])
    dw: DoneWriters = _decode(_dec_writers, memoryview(payload), "done writers", CorruptSnapshot, path)
    n = len(dw.streams)
    if len(dw.sources) != len(dw.writers):
        raise CorruptSnapshot("done writers: sources and writers differ in length", path)
    for elems in dw.writers:
        for e in elems:
            for x in e if isinstance(e, list) else (e,):
                if not -1 <= x < n:
                    raise CorruptSnapshot("done writers: a stream index out of range", path)
    return dw


def encode_done_writers(dw: DoneWriters) -> bytes:
    """Frame 8 (empty bytes when no completion has an open writer)."""
    return _enc.encode(dw) if dw.sources else b""


def decode_done_entries(payload: memoryview | bytes, path: str = "") -> dict[str, dict[str, int]]:
    """Decode the ``data`` of a :class:`DoneChunk`."""
    result: dict[str, dict[str, int]] = _decode(_dec_done, memoryview(payload), "done entries", CorruptSnapshot, path)
    return result
