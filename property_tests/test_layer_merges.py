"""A merge of two layers (``layers.merge_layers``) holds exactly the entries of the
upper layer stacked on the lower: every id of either, the upper's entry winning, the
lower's ids masked by the upper's tombstones gone, runs and shapes unchanged but for
retired runs (no shape). It copies the blocks no entry of the other layer falls between
as they are stored and re-cuts the rest; whatever it copies, the result must be that
stack, every block in key order between its fences, and read back whole (CRCs, block
index) from its stored bytes. Ids arrive interleaved, in key-ordered runs (a pipeline's
shards: most blocks copied) or all above or below the other layer."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pt_settings import budget

from resumelog import layers
from resumelog.done_shapes import ShapeTable
from resumelog.layers import Layer, encode_new_layer, make_layer, merge_layers, open_layer

SHAPES = [[[["a", ""], 1]], [[["b", ""], -1]], [[["", "/c"], 2], [["", "/d"], -2]]]
"""Shapes the layers' tables are prefixes of (equal tables: shape ids that mean the
same in both layers, so their blocks may be copied)."""

ALPHABETS = ["0123456789", "ab\u00e9"]


def _ids(n: int, offset: int, alphabet: str) -> list[str]:
    return [f"s{i + offset:05d}" if alphabet[0] == "0" else f"s{alphabet[i % 3]}{i + offset:05d}" for i in range(n)]


@st.composite
def pairs(draw: st.DrawFn) -> tuple[Layer, Layer, dict[str, object], bool, frozenset[str]]:
    alphabet = draw(st.sampled_from(ALPHABETS))
    universe = sorted(_ids(draw(st.integers(1, 400)), 0, alphabet), key=str.encode)  # (key order)
    mode = draw(st.sampled_from(["interleaved", "runs", "above", "below"]))
    n = len(universe)
    if mode == "interleaved":
        lo = sorted(draw(st.sets(st.sampled_from(universe), max_size=n)), key=str.encode)
        up = sorted(draw(st.sets(st.sampled_from(universe), max_size=n)), key=str.encode)
    elif mode == "runs":  # the upper layer's ids in a few key-ordered runs
        lo = sorted(draw(st.sets(st.sampled_from(universe), max_size=n)), key=str.encode)
        up = []
        for _ in range(draw(st.integers(0, 4))):
            a = draw(st.integers(0, n - 1))
            up += universe[a : a + draw(st.integers(1, 60))]
        up = sorted(set(up), key=str.encode)
    else:
        cut = draw(st.integers(0, n))
        lo, up = (universe[:cut], universe[cut:]) if mode == "above" else (universe[cut:], universe[:cut])
    lower_names = draw(st.sampled_from([["r1"], ["r1"], ["r1", "r2"]]))  # (one run: merged by the ids alone)
    # the same run table most often (run indexes that mean the same: copies allowed)
    upper_names = draw(st.sampled_from([lower_names, lower_names, ["r2", "r9", "r1"], ["r9"]]))
    ltable = ShapeTable(SHAPES[: draw(st.integers(0, 3))])
    utable = draw(st.sampled_from([ltable, ShapeTable(SHAPES[::-1]), ShapeTable(SHAPES[: draw(st.integers(0, 3))])]))

    def entries(ids: list[str], names: list[str], table: ShapeTable) -> tuple[list[int], list[int]]:
        runs = [draw(st.integers(0, len(names) - 1)) for _ in ids]
        tags = [draw(st.integers(0, len(table))) for _ in ids] if draw(st.booleans()) else [0] * len(ids)
        return runs, tags

    lower_tombs = frozenset(draw(st.sets(st.sampled_from(universe), max_size=3)))
    lruns, ltags = entries(lo, lower_names, ltable)
    uruns, utags = entries(up, upper_names, utable)
    masked = frozenset(draw(st.sets(st.sampled_from(universe), max_size=20))) - set(up)
    lower = make_layer(lo, lruns, ltags, ltable, lower_names, lower_tombs - set(lo))
    upper = make_layer(up, uruns, utags, utable, upper_names, masked)
    bottom = draw(st.booleans())
    retired = draw(st.sampled_from([frozenset(), frozenset(), frozenset({"r1"}), frozenset({"r9"})]))
    return lower, upper, {}, bottom, retired


def _contents(layer: Layer) -> dict[str, tuple[str, object]]:
    """Every entry: id -> (run name, shape or None)."""
    table = layer.table()
    out: dict[str, tuple[str, object]] = {}
    for pos, sid in enumerate(layer.index.ids()):
        tag = layer.index.tag_at(pos)
        out[sid] = (layer.run_names[layer.index.run_at(pos)], table.shapes[tag - 1] if tag else None)
    return out


@pytest.mark.parametrize("block_bytes", [24, 64, 256])
def test_a_merge_holds_the_upper_layer_stacked_on_the_lower(monkeypatch: pytest.MonkeyPatch, block_bytes: int):
    monkeypatch.setattr(layers, "BLOCK_BYTES", block_bytes)

    @given(pairs())
    @budget(1.0)
    def check(case: tuple[Layer, Layer, dict[str, object], bool, frozenset[str]]) -> None:
        lower, upper, _, bottom, retired = case
        low, high = _contents(lower), _contents(upper)
        want = {s: v for s, v in low.items() if s not in upper.tombstones}
        want.update(high)
        want = {s: (run, None if run in retired else shape) for s, (run, shape) in want.items()}
        merged = merge_layers(lower, upper, bottom=bottom, retired=retired)
        assert _contents(merged) == want
        assert merged.tombstones == (
            frozenset() if bottom else lower.tombstones | {t for t in upper.tombstones if t not in low}
        )
        fences = merged.index.fences
        assert fences == sorted(set(fences))
        for k in range(merged.index.nblocks):  # every block between its fences
            a, b = merged.index.starts[k], merged.index.starts[k + 1]
            keys = [s.encode() for s in merged.index.ids()[a:b]]
            assert min(keys) == fences[k] and (k + 1 == len(fences) or max(keys) < fences[k + 1])
        _, data = encode_new_layer(merged, number=3, epoch=b"e" * 16, created_ms=1)
        back = open_layer(data, "merged", defer=False)  # every CRC, the block index
        assert _contents(back) == want
        for s in want:
            assert back.index.find(s) >= 0

    check()


def _ordered(n: int, start: int = 0) -> list[str]:
    return [f"shard-{i:06d}" for i in range(start, start + n)]


def test_a_merge_of_ids_in_key_order_copies_the_blocks(monkeypatch: pytest.MonkeyPatch):
    """Ids above every id of the lower layer (a pipeline going through its shards in
    order): every block but the last of the lower layer is copied as stored, never
    decoded, and the upper layer's blocks are copied too (same run and shape tables)."""
    monkeypatch.setattr(layers, "BLOCK_BYTES", 512)
    table = ShapeTable(SHAPES[:2])
    lo, up = _ordered(600), _ordered(300, 600)
    built = make_layer(lo, [0] * 600, [0] * 600, ShapeTable(), ["r1"], frozenset())
    lower = open_layer(encode_new_layer(built, number=1, epoch=b"e" * 16, created_ms=1)[1], "lower")  # blocks unread
    upper = make_layer(up, [0] * 300, [0] * 300, ShapeTable(), ["r1"], frozenset())
    merged = merge_layers(lower, upper, bottom=True)
    assert sorted(merged.index.ids()) == lo + up
    assert lower.frames is not None and upper.frames is not None and merged.frames is not None
    nl, nu = lower.index.nblocks, upper.index.nblocks
    assert nl > 10 and nu > 5
    assert [bytes(lower.frames.read(k)) for k in range(nl - 1)] == [bytes(merged.frames.read(k)) for k in range(nl - 1)]
    assert lower.index._blocks[: nl - 1] == [None] * (nl - 1)  # copied, never decoded
    assert bytes(upper.frames.read(nu - 1)) == bytes(merged.frames.read(merged.index.nblocks - 1))
    # with shapes: the same when both layers number them alike
    lower = make_layer(lo, [0] * 600, [1, 2] * 300, table, ["r1"], frozenset())
    upper = make_layer(up, [0] * 300, [2, 1] * 150, ShapeTable(SHAPES[:2]), ["r1"], frozenset())
    merged = merge_layers(lower, upper, bottom=True)
    assert _contents(merged) == {**_contents(lower), **_contents(upper)}
    assert bytes(upper.frames.read(0)) in {bytes(merged.frames.read(k)) for k in range(merged.index.nblocks)}


def test_a_merge_renumbers_what_it_cannot_copy(monkeypatch: pytest.MonkeyPatch):
    """Blocks whose run indexes or shape ids mean something else in the merged layer
    are decoded and re-cut, whatever their place: the entries keep their runs and shapes."""
    monkeypatch.setattr(layers, "BLOCK_BYTES", 512)
    lo, up = _ordered(600), _ordered(300, 600)
    lower = make_layer(lo, [0, 1] * 300, [1, 2] * 300, ShapeTable(SHAPES[:2]), ["r1", "r2"], frozenset())
    for names, table in (
        (["r1", "r2"], ShapeTable(SHAPES[::-1])),  # shape ids renumbered
        (["r2", "r1"], ShapeTable(SHAPES)),  # run indexes renumbered
    ):
        upper = make_layer(up, [0, 1] * 150, [1, 2, 3] * 100, table, names, frozenset())
        merged = merge_layers(lower, upper, bottom=True)
        assert _contents(merged) == {**_contents(lower), **_contents(upper)}
        frames = {bytes(merged.frames.read(k)) for k in range(merged.index.nblocks)}  # type: ignore[union-attr]
        assert not frames & {bytes(upper.frames.read(k)) for k in range(upper.index.nblocks)}  # type: ignore[union-attr]
    # the lower layer's shape ids renumbered (shape 1 unused: 2 becomes 1)
    lower = make_layer(lo, [0] * 600, [2] * 600, ShapeTable(SHAPES[:2]), ["r1"], frozenset())
    upper = make_layer(up, [0] * 300, [0] * 300, ShapeTable(), ["r1"], frozenset())
    merged = merge_layers(lower, upper, bottom=True)
    assert _contents(merged) == {**_contents(lower), **_contents(upper)}
