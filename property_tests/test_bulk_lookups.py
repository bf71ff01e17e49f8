"""A fold looks its new sources up in its base in bulk (``LayeredIndex.find_many``:
ids sorted once, cut into runs by block, each block searched once); readers look ids
up one at a time (``find``). Both must give the same answer for every id, on any stack
of layers with tombstones, at any block size, with NumPy (one vectorised search per
block) and without."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pt_settings import budget

from resumelog import _fastfold, layers
from resumelog.done_shapes import ShapeTable
from resumelog.layers import LayeredIndex, make_layer

ids = st.text(alphabet="ab/\u00e9\U0001f600", min_size=0, max_size=6)


@st.composite
def stacks(draw: st.DrawFn) -> tuple[LayeredIndex, list[str]]:
    universe = sorted(draw(st.sets(ids, min_size=1, max_size=120)))
    stack = []
    for k in range(draw(st.integers(1, 4))):
        mine = sorted(draw(st.sets(st.sampled_from(universe), max_size=len(universe))))
        rest = [s for s in universe if s not in mine]
        tombs = frozenset(draw(st.sets(st.sampled_from(rest), max_size=10))) if k and rest else frozenset()
        stack.append(make_layer(mine, [k] * len(mine), [0] * len(mine), ShapeTable(), ["a", "b", "c", "d"], tombs))
    queries = draw(st.lists(st.one_of(st.sampled_from(universe), ids, st.just("\ud800")), max_size=200))
    return LayeredIndex(stack), queries


@pytest.mark.parametrize("numpy", [True, False])
@pytest.mark.parametrize("block_bytes", [1, 24, 200])
def test_bulk_lookups_equal_lookups_one_at_a_time(monkeypatch: pytest.MonkeyPatch, numpy: bool, block_bytes: int):
    if numpy and _fastfold.np is None:
        pytest.skip("NumPy is not installed")
    monkeypatch.setattr(_fastfold, "ENABLED", numpy)
    monkeypatch.setattr(layers, "BLOCK_BYTES", block_bytes)
    monkeypatch.setattr("resumelog.idset._BULK_MIN", 1)  # every block through the bulk search

    @given(stacks())
    @budget(0.5)
    def check(case: tuple[LayeredIndex, list[str]]) -> None:
        index, queries = case
        assert index.find_many(queries) == [index.find(q) for q in queries]

    check()


@given(
    st.lists(st.binary(min_size=1, max_size=3), min_size=1, max_size=12, unique=True),
    st.lists(st.binary(max_size=3), max_size=40),
)
@budget(2)
def test_a_layer_prefetches_the_blocks_its_lookups_reach(fences, keys) -> None:
    """``LayerIndex.prefetch`` of sorted ids reads the blocks ``find`` would bisect to
    (a bisect per block when there are fewer blocks than ids, per id otherwise)."""
    from bisect import bisect_right

    from resumelog.layers import LayerIndex

    fences = sorted(fences)
    asked: list[list[int]] = []

    def load(ks: list[int]):
        asked.append(ks)
        raise RuntimeError("(recorded)")

    index = LayerIndex(fences, [1] * len(fences), [None] * len(fences), load)
    keys = sorted(set(keys))
    want = sorted({bisect_right(fences, b) - 1 for b in keys} - {-1})
    if want:
        with pytest.raises(RuntimeError, match="recorded"):
            index.prefetch(keys)
        assert asked == [want]
    else:
        index.prefetch(keys)
        assert asked == []


def test_bulk_lookups_above_every_layer_read_nothing_and_find_the_largest() -> None:
    """Ids all above every layer's largest id are found in none, without a block search;
    an id equal to a layer's largest is still found (the fast exit is strict)."""
    stack = [
        make_layer([f"s{i:04d}" for i in range(0, 100)], [0] * 100, [0] * 100, ShapeTable(), ["r"], frozenset()),
        make_layer([f"s{i:04d}" for i in range(50, 150)], [0] * 100, [0] * 100, ShapeTable(), ["r"], frozenset()),
    ]
    index = LayeredIndex(stack)
    assert index.find_many(["s0150", "s0200", "t"]) == [-1, -1, -1]
    assert index.find_many(["s0149", "s0200"]) == [index.find("s0149"), -1] and index.find("s0149") >= 0
    assert index.find_many(["s0099"]) == [index.find("s0099")] != [-1]
