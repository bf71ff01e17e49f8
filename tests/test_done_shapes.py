"""Final entries of completions stored as shapes: exact round trips and sharing."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import resumelog
from resumelog import paths
from resumelog.done_shapes import DoneShapeMap, ShapeTable
from resumelog.format import decode_snapshot_frames
from resumelog.layers import open_layer

keys = st.text(min_size=1, max_size=12)  # any text, NUL included
sources = st.text(max_size=6)  # the empty id too (never written by a Writer)


def canonical(entries: dict[str, int], source: str) -> list[tuple[list[str], int]]:
    return sorted((k.split(source) if source else [k], d) for k, d in entries.items())


@given(st.dictionaries(keys, st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=6), sources)
def test_entries_round_trip_exactly_for_any_keys_and_source(entries, source):
    table = ShapeTable()
    sid = table.intern(entries, source)
    assert table.entries(sid, source) == entries
    assert table.shapes[sid - 1] == canonical(entries, source)  # sorted: independent of fold order
    back = ShapeTable.decode(table.encode())
    assert back.entries(sid, source) == entries
    assert back.intern(entries, source) == sid  # a decoded table still interns


@given(st.dictionaries(keys, st.integers(-3, 3), min_size=1, max_size=4), sources, sources)
def test_interning_never_confuses_two_different_entry_sets(entries, s1, s2):
    table = ShapeTable()
    a = table.intern(entries, s1)
    other = {k + "x": d for k, d in entries.items()}
    b = table.intern(other, s2)
    assert table.entries(a, s1) == entries and table.entries(b, s2) == other


tiny = st.text("ab\x00\x01", max_size=3)  # few letters: ids and keys overlap, NUL and \x01 too
tiny_entries = st.dictionaries(tiny.filter(bool), st.integers(-1, 1), min_size=1, max_size=3)


@given(st.lists(st.tuples(tiny_entries, tiny), min_size=2, max_size=8))
@example([({"\x01": 0}, "a"), ({"a": 0}, "a")])  # a key holding \x01, the id's stand-in
@example([({"a\x00": 0}, "b"), ({"a": 0, "": 0}, "b")])  # a key holding NUL, the separator
@example([({"ab": 0, "a": 0}, "b\x00a"), ({"aa": 0, "a": 0}, "a\x00a")])  # an id holding NUL
@example([({"a\x00b": 0, "b": 0}, "aa"), ({"a": 0, "b\x00b": 0}, "aa")])  # NUL in keys, same count
@example([({"ab": 0}, "\x01"), ({"ab": 0}, "a")])  # an id holding \x01
@example([({"aa": 0}, "a"), ({"bb": 0}, "b"), ({"ab": 0}, "a")])  # overlapping occurrences
def test_two_completions_share_an_id_iff_their_shapes_are_equal(pairs):
    """The interning cache's lookup key (keys joined by NUL, the id replaced by \x01,
    or the per-key form) never merges two different shapes nor splits an equal one."""
    table = ShapeTable()
    ids = [table.intern(entries, source) for entries, source in pairs]
    for (entries, source), sid in zip(pairs, ids):
        assert table.entries(sid, source) == entries
    for i, (e1, s1) in enumerate(pairs):
        for j, (e2, s2) in enumerate(pairs):
            assert (ids[i] == ids[j]) == (canonical(e1, s1) == canonical(e2, s2)), (pairs[i], pairs[j])


@given(st.lists(st.tuples(tiny_entries, tiny), min_size=1, max_size=8))
def test_the_shapes_stored_do_not_depend_on_the_order_completions_came_in(pairs):
    forward, backward = ShapeTable(), ShapeTable()
    for entries, source in pairs:
        forward.intern(entries, source)
    for entries, source in reversed(pairs):
        backward.intern(entries, source)
    assert sorted(map(repr, forward)) == sorted(map(repr, backward))


def test_a_shape_is_sorted_by_parts_not_by_the_key_of_its_first_source():
    table = ShapeTable()
    a = table.intern({"xa": 1, "xb": -1}, "a")  # keys sort xa < xb
    c = table.intern({"xc": 1, "xb": -1}, "c")  # keys sort xb < xc: the same shape
    assert a == c and len(table) == 1
    assert table.shapes[0] == [(["x", ""], 1), (["xb"], -1)]


def lineage(src: str) -> dict[str, int]:
    return {f"0_{src}": 1, f"0_{src}_0": 2, **{f"0_{src}_{j}_0": -1 for j in range(3)}}


def test_lineage_completions_of_many_sources_share_one_shape():
    table = ShapeTable()
    ids = {table.intern(lineage(f"src-{i:06d}"), f"src-{i:06d}") for i in range(1000)}
    assert ids == {1} and len(table) == 1
    assert table.entries(1, "zz") == lineage("zz")


def test_a_snapshot_costs_under_30_bytes_per_completed_lineage_source(tmp_path):
    """The bytes target of the benchmarks (Curator's LMDB: 30-34 B per completed source)
    as a value check: 16-character ids, 5 records each, the final entries kept."""
    ck = resumelog.open(tmp_path / "ck", run_id="r")
    n = 20_000
    with ck.writer("w") as w:
        for i in range(n):
            src = f"{i:016d}"
            w.record(f"0_{src}", src, 1, emission=True)
            w.record(f"0_{src}_0", src, 2)
            for j in range(3):
                w.record(f"0_{src}_{j}_0", src, -1)
    ck.compact()
    data = (tmp_path / "ck" / paths.snapshot_name(1)).read_bytes()
    frames = decode_snapshot_frames(data)
    assert frames.header.completed_count == n and frames.layers is not None
    (ref,) = frames.layers
    layer = open_layer((tmp_path / "ck" / ref.name).read_bytes(), ref.name, defer=False)
    assert sum(len(b.tags or ()) for b in layer.index.blocks()) == n  # one byte each: a single shape
    assert (len(data) + ref.size) / n < 30, (len(data) + ref.size) / n
    # the entries came back from the shape: a duplicate is told from a late record
    a, b = f"{5:016d}", f"{6:016d}"
    with resumelog.open(tmp_path / "ck", run_id="r").handle().writer("late") as w:
        w.record(f"0_{a}_1_0", a, -1)  # a redelivered sink record: changes nothing
        w.record(f"0_{b}_9_0", b, +1)  # new work for b: b is not complete any more
    again = resumelog.open(tmp_path / "ck", run_id="r2")
    assert again.is_completed(a) and not again.is_completed(b)
    assert again.is_completed(f"{n - 1:016d}") and len(again.completed) == n - 1


# ------------------------------------------------------------------ DoneShapeMap


def test_a_done_shape_map_keeps_bulk_and_single_sets_as_lists_until_read():
    m = DoneShapeMap([("a", 1)])
    ids = ["b", "c"]
    m.extend(ids, [2, 3])
    m["d"] = 4
    m["e"] = 5
    d, lists, sids = m.parts()
    assert d == {"a": 1} and lists == [["b", "c"], ["d", "e"]] and sids == [[2, 3], [4, 5]]
    assert lists[0] is ids  # (taken as given: no copy)
    assert m.get("c") == 3 and m.parts() == ({"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}, [], [])
    with pytest.raises(ValueError, match="differ in length"):
        m.extend(["x"], [])
