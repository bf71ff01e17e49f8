"""Local disk faults and hostile bytes: every truncation and every bit flip is caught."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import resumelog
from resumelog import format as fmt
from resumelog import paths
from resumelog.errors import CorruptSegment, ResumelogError, UnsupportedFormat
from resumelog.format import Batch, SegmentHeader, TornSegment, decode_meta, decode_segment, decode_snapshot_frames
from resumelog.snapshot import encode_snapshot, load_snapshot


def small_segment() -> bytes:
    h = SegmentHeader("w1", "0" * 26, 3, "run", b"n" * 16, 123)
    b = Batch(["src-a", "src-b"], [0, 1, 0], ["k1", "k2", "k3"], [1, -1, 2], b"\x01\x00\x00")
    return fmt.encode_segment(h, [b], closed=False)


def small_snapshot(tmp_path) -> bytes:
    ck = resumelog.open(str(tmp_path / "snap"), run_id="r")
    with ck.writer("w") as w:
        w.complete("a")
        w.emit("b")
        w.record("k", "b", 2)
    ck.compact()
    return (tmp_path / "snap" / paths.snapshot_name(1)).read_bytes()


def small_layers(tmp_path) -> dict[str, bytes]:
    """The layers of :func:`small_snapshot`, by name."""
    root = tmp_path / "snap"
    return {f"layers/{p.name}": p.read_bytes() for p in (root / "layers").iterdir()}


def load_with(layers: dict[str, bytes]):
    def read_layer(ref):
        if ref.name not in layers:
            raise resumelog.errors.ObjectNotFound(ref.name)
        return layers[ref.name]

    return read_layer


def test_every_truncation_of_a_segment_is_torn():
    data = small_segment()
    decode_segment(data)
    for cut in range(len(data)):
        with pytest.raises(TornSegment):
            decode_segment(data[:cut], "seg")


def test_every_bit_flip_of_a_segment_is_detected():
    data = small_segment()
    for i in range(len(data)):
        for bit in range(8):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            with pytest.raises(ResumelogError) as info:
                decode_segment(bytes(bad), "seg")
            # a flip in the declared length may look like a tear; never like valid data
            assert isinstance(info.value, (CorruptSegment, UnsupportedFormat))


def test_every_bit_flip_of_a_snapshot_is_detected(tmp_path):
    data = small_snapshot(tmp_path)
    layers = small_layers(tmp_path)
    load_snapshot(data, read_layer=load_with(layers))
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x10
        with pytest.raises(ResumelogError):
            load_snapshot(bytes(bad), "snap", read_layer=load_with(layers))


def test_every_bit_flip_of_a_layer_is_detected(tmp_path):
    data = small_snapshot(tmp_path)
    ((name, layer),) = small_layers(tmp_path).items()
    for i in range(len(layer)):
        bad = bytearray(layer)
        bad[i] ^= 0x10
        with pytest.raises(ResumelogError):
            load_snapshot(data, "snap", read_layer=load_with({name: bytes(bad)}))


def test_every_truncation_of_a_snapshot_is_detected(tmp_path):
    data = small_snapshot(tmp_path)
    layers = small_layers(tmp_path)
    for cut in range(0, len(data)):
        with pytest.raises(ResumelogError):
            load_snapshot(data[:cut], "snap", read_layer=load_with(layers))
    ((name, layer),) = layers.items()
    for cut in range(0, len(layer)):
        with pytest.raises(ResumelogError):
            load_snapshot(data, "snap", read_layer=load_with({name: layer[:cut]}))


def test_crafted_4gib_frame_is_refused_without_allocating():
    data = bytearray(small_segment())
    # claim a 4 GiB - 1 header frame right after the preamble
    struct.pack_into(">I", data, fmt.PREAMBLE_SIZE, 0xFFFFFFFF)
    with pytest.raises(CorruptSegment, match="past the end"):
        decode_segment(bytes(data), "seg")
    # and a preamble claiming a 1 TiB object
    big = bytearray(small_segment())
    struct.pack_into(">Q", big, 8, 1 << 40)
    struct.pack_into(">I", big, 20, fmt.crc32c(bytes(big[:20])))
    with pytest.raises(TornSegment):
        decode_segment(bytes(big), "seg")


def test_future_version_snapshot_and_segment(tmp_path):
    for data, decode in [(small_segment(), decode_segment), (small_snapshot(tmp_path), decode_snapshot_frames)]:
        pre = bytearray(data[: fmt.PREAMBLE_SIZE])
        struct.pack_into(">H", pre, 6, fmt.FORMAT_VERSION + 1)
        struct.pack_into(">I", pre, 20, fmt.crc32c(bytes(pre[:20])))
        with pytest.raises(UnsupportedFormat):
            decode(bytes(pre) + data[fmt.PREAMBLE_SIZE :], "x")


DECODERS = [decode_segment, decode_snapshot_frames, decode_meta, load_snapshot]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512), st.sampled_from(DECODERS))
def test_random_bytes_only_raise_typed_errors(data, decode):
    with pytest.raises(ResumelogError):
        decode(data, "fuzz")


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.integers(min_value=0), st.sampled_from(["seg", "meta"]))
def test_valid_prefix_with_random_tail_only_raises_typed_errors(tail, pos, kind):
    if kind == "seg":
        data, decode = small_segment(), decode_segment
    else:
        data, decode = fmt.encode_meta(fmt.Meta(1, {"a": 1}, b"n" * 16)), decode_meta
    pos %= len(data)
    mutated = data[:pos] + tail + data[pos + len(tail) :]
    if mutated == data:
        return
    with pytest.raises(ResumelogError):
        decode(mutated, "fuzz")


def test_snapshot_frames_are_consistent_with_a_state():
    state_bytes = encode_snapshot(resumelog.algebra.FoldState(number=1), None)
    frames, state = load_snapshot(state_bytes)
    assert frames.header.number == 1 and state.completed_count() == 0


def test_a_large_done_frame_is_checked_on_first_use_not_at_open(tmp_path):
    """Opening a checkpoint does not read a large done-entry frame (memory-mapped,
    CRC deferred: startup does not grow with the final entries kept per completion);
    a bit flipped in it is still caught, as a typed error, before its bytes are used:
    by a late record's fold and by a compaction (never carried into a new snapshot)."""
    from resumelog import compactor

    url = str(tmp_path / "ck")
    ck = resumelog.open(url, run_id="r")
    with ck.writer("w") as w:
        for i in range(12_000):
            s = f"source-{i:08d}"
            t = f"task-{i:08d}-{'x' * 20}"  # keys without the source id: one shape per source
            w.record(f"0_{t}", s, 1, emission=True)
            w.record(f"0_{t}_0", s, 2)
            for j in range(3):
                w.record(f"0_{t}_{j}_0", s, -1)
    ck.compact()
    frames = decode_snapshot_frames((tmp_path / "ck" / paths.snapshot_name(1)).read_bytes())
    assert frames.layers is not None
    snap = tmp_path / "ck" / frames.layers[0].name  # the shapes live in the layer (format 5 on)
    data = bytearray(snap.read_bytes())
    lh = fmt.decode_layer_head(bytes(data))
    assert len(lh.shapes) >= fmt.DEFER_CRC_MIN  # the deferred case
    at = bytes(data).find(bytes(lh.shapes[:64]))
    data[at + len(lh.shapes) // 2] ^= 0x01  # inside the shape table (layer frame 2)
    snap.write_bytes(bytes(data))
    with pytest.raises(resumelog.CorruptSnapshot):
        fmt.decode_layer_head(bytes(data))  # an eager decode (verify, inspect) sees it
    view = resumelog.open(url)  # the open does not touch the frame
    assert len(view.completed) == 12_000 and view.is_completed("source-00000007")
    with resumelog.open(url, run_id="r").handle().writer("late") as w:
        w.record("0_task-7_9", "source-00000007", +1)  # a late record: needs the entries
    with pytest.raises(resumelog.CorruptSnapshot):
        resumelog.open(url)
    with pytest.raises(resumelog.CorruptSnapshot):
        compactor.compact(open_local(url))


def open_local(url):
    from resumelog.storage import LocalStore

    return LocalStore(url)
