"""Final entries of completions stored as shapes: exact round trips and sharing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

import resumelog
from resumelog import paths
from resumelog.done_shapes import ShapeTable
from resumelog.format import decode_snapshot_frames

keys = st.text(min_size=1, max_size=12)  # any text, NUL included
sources = st.text(max_size=6)  # the empty id too (never written by a Writer)


@given(st.dictionaries(keys, st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=6), sources)
def test_entries_round_trip_exactly_for_any_keys_and_source(entries, source):
    table = ShapeTable()
    sid = table.intern(entries, source)
    assert table.entries(sid, source) == entries
    assert list(table.entries(sid, source)) == sorted(entries)  # sorted: independent of fold order
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
    assert frames.header.completed_count == n
    assert len(frames.shape_ids) == n  # one byte each: a single shape
    assert len(data) / n < 30, len(data) / n
    # the entries came back from the shape: a duplicate is told from a late record
    a, b = f"{5:016d}", f"{6:016d}"
    with resumelog.open(tmp_path / "ck", run_id="r").handle().writer("late") as w:
        w.record(f"0_{a}_1_0", a, -1)  # a redelivered sink record: changes nothing
        w.record(f"0_{b}_9_0", b, +1)  # new work for b: b is not complete any more
    again = resumelog.open(tmp_path / "ck", run_id="r2")
    assert again.is_completed(a) and not again.is_completed(b)
    assert again.is_completed(f"{n - 1:016d}") and len(again.completed) == n - 1
