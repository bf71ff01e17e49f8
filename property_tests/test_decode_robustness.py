"""Decoders only ever raise the library's typed errors, whatever bytes they are given.

Arbitrary bytes, every truncation and bit flip of valid objects, and crafted objects
with valid CRCs but hostile contents go into every decoder; the only exceptions
allowed are :class:`~resumelog.errors.ResumelogError` subclasses. A segment that is a
proper prefix of a valid one is a :class:`~resumelog.format.TornSegment`; any single
bit flip is detected.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pt_settings import budget
from test_algebra_laws import build_segments, fold

from resumelog._columns import ColumnBatch
from resumelog.done_shapes import ShapeTable
from resumelog.errors import CorruptObject, ObjectNotFound, ResumelogError
from resumelog.format import (
    KIND_LAYER,
    KIND_META,
    KIND_SEGMENT,
    KIND_SNAPSHOT,
    Batch,
    LayerRef,
    Meta,
    SegmentFooter,
    SnapshotBody,
    SnapshotFrames,
    SnapshotHeader,
    TornSegment,
    crc32c,
    decode_done_entries,
    decode_layer,
    decode_meta,
    decode_segment,
    decode_snapshot_frames,
    encode_meta,
    encode_object,
    encode_segment,
    encode_snapshot_frames,
    object_parts,
)
from resumelog.snapshot import encode_snapshot, load_snapshot
from resumelog.testing import strategies as rst


def use_snapshot(data: bytes, layers: dict[str, bytes] | None = None) -> None:
    """Load a snapshot (with ``layers``, by name) and ask it everything a reader asks."""

    def read_layer(ref: LayerRef) -> bytes:
        if layers is None or ref.name not in layers:
            raise ObjectNotFound(f"no layer {ref.name}")
        return layers[ref.name]

    _, state = load_snapshot(data, read_layer=read_layer)
    ids = list(state.iter_completed())
    for s in ids:
        state.is_completed(s)
        state.completed_run(s)
        state.done_entries_of(s)
        state.completed_leaves(s)
    state.completed_count()
    state.completed_by_run()
    state.is_completed("not-there")
    frames, state = load_snapshot(data, read_layer=read_layer)
    encode_snapshot(state, frames)  # a compaction carrying it forward
    state.retire_runs([])
    encode_snapshot(state, None)  # ... and one retiring every run


DECODERS = {
    "segment": decode_segment,
    "segment (columns)": lambda data: decode_segment(data, columns=True),
    "snapshot": decode_snapshot_frames,
    "snapshot+queries": use_snapshot,
    "meta": decode_meta,
    "done entries": decode_done_entries,
    "layer": decode_layer,
}


def only_typed_errors(decode, data) -> None:
    try:
        decode(data)
    except ResumelogError:
        pass


@pytest.mark.parametrize("name", sorted(DECODERS))
@given(data=st.binary(max_size=200))
@budget(0.5)
def test_arbitrary_bytes(name, data):
    only_typed_errors(DECODERS[name], data)


@st.composite
def valid_objects(draw) -> tuple[str, bytes, Callable[[bytes], object]]:
    """``(kind, bytes, decode)``: a valid object and what reads it (a snapshot with its
    intact layers; a layer as the snapshot naming it)."""
    kind = draw(st.sampled_from(["segment", "snapshot", "layer", "meta"]))
    if kind == "segment":
        batches = draw(st.lists(rst.batches(max_records=4), max_size=2))
        return kind, encode_segment(draw(rst.segment_headers()), batches, closed=draw(st.booleans())), decode_segment
    if kind == "meta":
        blob = encode_meta(Meta(1, {"n": draw(st.integers(-(2**63), 2**63 - 1))}, b"\0" * 16))
        return kind, blob, decode_meta
    specs = draw(rst.segment_specs(max_segments=4))
    enc = encode_snapshot(fold(build_segments(specs)), None)
    layers = dict(enc.layers)
    if kind == "layer" and layers:
        name = next(iter(layers))
        return kind, layers[name], lambda b: use_snapshot(enc.data, {**layers, name: b})
    return "snapshot", enc.data, lambda b: use_snapshot(b, layers)


@given(obj=valid_objects(), data=st.data())
@budget(1)
def test_truncations_are_errors_and_torn_segments_are_torn(obj, data):
    kind, blob, decode = obj
    cut = data.draw(st.integers(0, len(blob) - 1), label="cut")
    with pytest.raises(TornSegment if kind == "segment" else CorruptObject):
        decode(blob[:cut])


@given(obj=valid_objects(), data=st.data())
@budget(1)
def test_bit_flips_are_detected(obj, data):
    _kind, blob, decode = obj
    bit = data.draw(st.integers(0, len(blob) * 8 - 1), label="bit")
    flipped = bytearray(blob)
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(ResumelogError):
        decode(bytes(flipped))


@given(
    kind=st.sampled_from([KIND_SEGMENT, KIND_SNAPSHOT, KIND_LAYER, KIND_META]),
    payloads=st.lists(st.binary(max_size=40), max_size=8),
)
@budget(1)
def test_valid_frames_with_garbage_payloads(kind, payloads):
    blob = encode_object(kind, payloads)
    for decode in DECODERS.values():
        only_typed_errors(decode, blob)


_enc = msgspec.msgpack.Encoder()


def msgpack_values():
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.text(max_size=5), st.binary(max_size=5)
    )
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=12)


@given(
    frames=st.lists(st.one_of(msgpack_values().map(_enc.encode), st.binary(max_size=24)), min_size=7, max_size=7),
)
@budget(1)
def test_snapshot_with_valid_crcs_and_hostile_frames(frames):
    only_typed_errors(use_snapshot, encode_object(KIND_SNAPSHOT, frames))


@st.composite
def hostile_snapshots(draw) -> bytes:
    """Well-typed snapshot structs whose indexes and arrays do not fit together."""
    n = draw(st.integers(0, 3))
    small = st.integers(-2, 5)
    header = SnapshotHeader(1, draw(st.integers(0, 5)), b"\0" * 16, 0, n, draw(st.booleans()))
    from resumelog.format import Anomaly, PendingEntry, Reset, RunInfo, StreamMark

    body = SnapshotBody(
        streams=draw(st.lists(st.builds(StreamMark, st.just("w"), st.just("I" * 26), st.just("r"), small), max_size=2)),
        stream_ids=draw(st.lists(st.sampled_from(["w/" + "I" * 26, "x"]), max_size=2)),
        runs=draw(st.lists(st.builds(RunInfo, st.sampled_from(["r", "q"]), small, small, st.booleans()), max_size=2)),
        pending=draw(
            st.lists(
                st.builds(
                    PendingEntry,
                    small,
                    st.sampled_from(["s", "t"]),
                    st.booleans(),
                    st.booleans(),
                    st.lists(st.sampled_from(["k", "j"]), max_size=2),
                    st.lists(small, max_size=2),
                    st.lists(small, max_size=2),
                    st.lists(small, max_size=2),
                ),
                max_size=2,
            )
        ),
        resets=draw(st.lists(st.builds(Reset, st.just("s"), st.lists(st.just("r"), max_size=1)), max_size=1)),
        anomalies=draw(st.lists(st.builds(Anomaly, st.just("x"), st.just("s"), st.just("r")), max_size=1)),
        anomaly_counts={},
    )
    u32 = st.integers(0, 2**32 - 1)
    hashes = b"".join(i.to_bytes(4, "little") for i in draw(st.lists(u32, min_size=n, max_size=n)))
    blob = draw(st.binary(max_size=12))
    offs = draw(st.lists(st.integers(0, len(blob) + 2), min_size=n + 1, max_size=n + 1))
    offsets = b"".join(i.to_bytes(8, "little") for i in offs)
    runs = b"".join(i.to_bytes(4, "little") for i in draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)))
    shape_ids = draw(st.binary(max_size=2 * n + 1))
    table = ShapeTable([[(["0_", ""], 1), (["0_", "_0"], -1)]]).encode()
    shapes = draw(st.one_of(st.just(table), st.binary(max_size=8)))
    frames = SnapshotFrames(
        header,
        body,
        memoryview(hashes),
        memoryview(offsets),
        memoryview(runs),
        memoryview(blob),
        memoryview(shape_ids),
        memoryview(shapes),
    )
    return encode_snapshot_frames(frames)


@given(blob=hostile_snapshots())
@budget(2)
def test_snapshot_structs_that_do_not_fit_together(blob):
    """A snapshot that loads must answer every query; otherwise a typed error (was: a
    completing-run index past the run table loaded, then ``completed_run`` raised
    ``IndexError``; test_regressions.py has the minimal case)."""
    only_typed_errors(use_snapshot, blob)


@st.composite
def plain_batches(draw: st.DrawFn) -> bytes:
    """A batch as writers make them (ASCII keys, 64-bit deltas, no resets: the C decoder
    reads it), encoded, sometimes with a byte changed (its CRC recomputed around it)."""
    sources = draw(st.lists(st.text("ab0", min_size=1, max_size=3), min_size=1, max_size=3))
    n = draw(st.integers(0, 6))
    index = [draw(st.integers(0, len(sources) - 1)) for _ in range(n)]
    keys = [draw(st.text("ab_0", max_size=5)) for _ in range(n)]
    deltas = [draw(st.integers(-(2**63), 2**63 - 1)) for _ in range(n)]
    data = bytearray(_enc.encode(Batch(sources, index, keys, deltas, bytes(n))))
    if draw(st.booleans()):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


def _outcome(data: bytes, columns: bool) -> object:
    """What ``decode_segment`` makes of ``data``: its batches as msgspec's ``Batch``
    (a ``ColumnBatch`` converted), or the typed error's class and message."""
    try:
        seg = decode_segment(data, "s", columns=columns)
    except ResumelogError as exc:
        return type(exc), str(exc)
    return seg.header, [b.batch() if isinstance(b, ColumnBatch) else b for b in seg.batches], seg.footer


@given(
    header=rst.segment_headers(),
    batches=st.lists(
        st.one_of(
            plain_batches(),
            rst.batches(max_records=6).map(_enc.encode),
            msgpack_values().map(_enc.encode),
            rst.batches(max_records=6).map(lambda b: _enc.encode(b)[:-1] + b"\x91\xa0"),  # hostile resets
        ),
        max_size=3,
    ),
    records=st.integers(0, 12),
)
@budget(1)
def test_segments_decoded_into_columns_are_those_msgspec_decodes(header, batches, records):
    """Valid CRCs around any batch payloads: decoded into columns (where the C decoder
    reads them) or by msgspec, a segment gives the same batches or the same typed error."""
    parts = [_enc.encode(header), *batches, _enc.encode(SegmentFooter(records, len(batches)))]
    data = b"".join(object_parts(KIND_SEGMENT, [(p, crc32c(p)) for p in parts]))
    assert _outcome(data, True) == _outcome(data, False)
