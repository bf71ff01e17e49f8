"""Each kernel of the optional extension ``resumelog._native`` computes exactly the Python
expression it replaces (its caller's fallback), on random inputs.

The fold's and the layers' results with and without the extension are compared as a
whole by ``test_fast_fold.py`` (the fast path, with the extension when it is built,
against the reference fold), ``test_layer_merges.py`` and the snapshot-bytes checks of
``benchmarks/bench_fold.py``; CI runs the fold's tests with ``RESUMELOG_NATIVE=1`` and
``RESUMELOG_NATIVE=0`` (``.ci/run``). Here each kernel alone, including inputs the fold
rarely makes (non-ASCII keys, keys holding the cache's marks, empty source ids).
"""

from __future__ import annotations

import os
import struct
from array import array
from collections.abc import MutableMapping
from itertools import accumulate

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pt_settings import budget

from resumelog import _compiled
from resumelog._columns import ColumnBatch, KeySpans
from resumelog._crc import crc32c
from resumelog._fastfold import _MARKS
from resumelog.done_shapes import DoneShapeMap
from resumelog.format import Batch, Reset, encode

native = _compiled.native
pytestmark = pytest.mark.skipif(
    native is None and os.environ.get("CI") != "true",  # (CI builds it: there a missing module fails)
    reason=f"resumelog._native is not in use: {_compiled.why_not}",
)


def test_the_extension_is_in_use_in_ci():
    """CI installs with a compiler: the extension must be built there and current."""
    assert native is not None, _compiled.why_not


@given(st.binary(max_size=300))
@budget(2)
def test_crc32c_is_the_packages(data: bytes) -> None:
    assert native.crc32c(data) == crc32c(data)


@given(st.lists(st.binary(max_size=40), max_size=200))
@budget(2)
def test_hash_order_is_the_python_expression(ids: list[bytes]) -> None:
    hs = [crc32c(b) for b in ids]
    order = sorted(range(len(ids)), key=hs.__getitem__)
    ordered = [ids[i] for i in order]
    offsets = [0]
    for b in ordered:
        offsets.append(offsets[-1] + len(b))
    got = native.hash_order(ids)
    assert got == (
        order,
        b"".join(hs[i].to_bytes(4, "little") for i in order),
        b"".join(ordered),
        b"".join(o.to_bytes(4, "little") for o in offsets),
    )


def test_hash_order_keeps_the_order_of_equal_hashes() -> None:
    ids = [b"same", b"x", b"same", b"same"]
    assert native.hash_order(ids)[0] == sorted(range(4), key=lambda i: crc32c(ids[i]))


def test_hash_order_of_a_full_block() -> None:
    """A block's few thousand ids (every radix digit of the hashes in use), repeats among them."""
    ids = [f"shard-{i % 4000:010d}".encode() for i in range(6000)]
    order = native.hash_order(ids)[0]
    assert order == sorted(range(len(ids)), key=lambda i: crc32c(ids[i]))


def shape_keys_reference(keys, deltas, starts, cand, sources, sep, cut):
    """``_fastfold.Columns.shapes``'s keys and ``len(set(keys)) == len(keys)``."""
    pk, distinct = [], bytearray()
    for j, g in enumerate(cand):
        ks, ds = keys[starts[g] : starts[g + 1]], tuple(deltas[starts[g] : starts[g + 1]])
        distinct.append(len(set(ks)) == len(ks))
        joined = sep.join(ks) if sep is not None else ""
        if sep is None or not sources[j] or joined.count(sep) != len(ks) - 1 or cut in joined:
            pk.append(None)
        else:
            pk.append((joined.replace(sources[j], cut), ds))
    return pk, bytes(distinct)


TEXT = "ab_0é中😀"  # ASCII, then a Latin-1, a BMP and an astral character


@st.composite
def evaluations(draw: st.DrawFn):
    marks = draw(st.sampled_from([*_MARKS, None]))
    sep, cut = marks if marks is not None else (None, None)
    n_states = draw(st.integers(1, 8))
    sources = [draw(st.text(TEXT, max_size=4)) for _ in range(n_states)]
    keys, deltas, starts = [], [], [0]
    for src in sources:
        for _ in range(draw(st.integers(0, 30))):
            parts = draw(
                st.lists(st.sampled_from([src, "a", "_0", "é", "😀", "ab", "\x1f", "\x1e", "\x00", "\x1d"]), max_size=5)
            )
            keys.append(draw(st.sampled_from(["".join(parts), f"0_{src}", f"0_{src}_{src}", src])))
            deltas.append(draw(st.sampled_from([1, -1, 2, 0, 1 << 70])))
        starts.append(len(keys))
    cand = sorted(set(draw(st.lists(st.integers(0, n_states - 1), max_size=n_states))))
    return keys, deltas, starts, cand, [sources[g] for g in cand], sep, cut


@given(evaluations())
@budget(3)
def test_shape_keys_are_the_python_expression(case) -> None:
    pk, distinct, uniq, which = native.shape_keys(*case)
    assert (pk, distinct) == shape_keys_reference(*case)
    # the distinct keys in order of first appearance, and each state's among them
    assert uniq == list(dict.fromkeys(k for k in pk if k is not None))
    numbers = array("i", which).tolist()
    assert [None if u < 0 else uniq[u] for u in numbers] == pk
    assert all(pk[j] is uniq[u] for j, u in enumerate(numbers) if u >= 0)
    keys, deltas, *rest = case
    if all(-(1 << 63) <= d < 1 << 63 for d in deltas):  # the columns' deltas: native int64
        assert native.shape_keys(keys, array("q", deltas), *rest) == (pk, distinct, uniq, which)


def test_shape_keys_of_lineage_keys() -> None:
    keys = ["0_s1", "0_s1_0", "0_s1_0_0", "s1s1", "x"]
    case = (keys, [1, 2, -1, -1, -1], [0, 5], [0], ["s1"], "\x1f", "\x1e")
    pk, distinct, uniq, which = native.shape_keys(*case)
    assert pk == [("0_\x1e\x1f0_\x1e_0\x1f0_\x1e_0_0\x1f\x1e\x1e\x1fx", (1, 2, -1, -1, -1))]
    assert distinct == b"\x01" and uniq == pk and array("i", which).tolist() == [0]
    assert (pk, distinct) == shape_keys_reference(*case)


def test_shape_keys_of_many_sources_of_one_shape_are_one_key() -> None:
    """A pipeline's sources share a handful of shapes: one key object each, any number
    of sources (the table of distinct keys grows past its first size)."""
    n = 5000
    keys, deltas, starts, sources = [], [], [0], []
    for i in range(n):
        src = f"shard-{i:06d}"
        shape = i % 3
        own = i % 7 == 6
        keys += [f"0_{src}", f"0_{src}_{shape}"] + ([f"extra-{i}"] if own else [])
        deltas += [1, -1] + ([0] if own else [])
        starts.append(len(keys))
        sources.append(src)
    case = (keys, deltas, starts, list(range(n)), sources, "\x1f", "\x1e")
    pk, distinct, uniq, which = native.shape_keys(*case)
    assert (pk, distinct) == shape_keys_reference(*case)
    assert len(uniq) == 3 + n // 7  # three shapes, and the sources with a key of their own
    assert array("i", which).tolist()[:4] == [0, 1, 2, 0]


def test_shape_keys_refuses_what_it_cannot_read() -> None:
    with pytest.raises(IndexError):
        native.shape_keys(["a"], [1], [0, 5], [0], ["s"], "\x1f", "\x1e")  # records beyond the keys
    with pytest.raises(IndexError):
        native.shape_keys(["a"], [1], [0, 1], [3], ["s"], "\x1f", "\x1e")  # no such state
    with pytest.raises(ValueError):
        native.shape_keys(["a"], [], [0, 1], [0], ["s"], "\x1f", "\x1e")  # columns of other lengths
    with pytest.raises(ValueError):
        native.shape_keys(["a"], b"\x01\x00\x00", [0, 1], [0], ["s"], "\x1f", "\x1e")  # not int64
    with pytest.raises(ValueError):
        native.shape_keys(["a"], bytes(16), [0, 1], [0], ["s"], "\x1f", "\x1e")  # two deltas, one key
    with pytest.raises(TypeError):
        native.shape_keys(["a"], (1,), [0, 1], [0], ["s"], "\x1f", "\x1e")  # neither list nor buffer
    with pytest.raises(TypeError):
        native.hash_order(["not bytes"])


def number_states_reference(index, pending, run, sources, source_index, start, added):
    """``_fastfold.apply_batch``'s common case: numbers of the batch's states (``index``:
    ``run``'s, by source), new ones from ``start`` in the order of ``sources``, and
    which of the new ones are in ``added``; at the first source that has a pending
    state (``pending``: keyed by ``(run, source)``, or a set of sources) ``None``, or
    that is new and that ``run`` completed ``False`` (``index`` unchanged either way)."""
    local, fresh = [], []
    numbered = dict(index)
    for s in sources:
        if (s if isinstance(pending, set) else (run, s)) in pending:
            return None
        g = numbered.get(s)
        if g is None:
            if added.get(s) == run:
                return False
            fresh.append(s)
            g = numbered[s] = start + len(fresh) - 1
        local.append(g)
    index.update(numbered)
    in_added = [i for i, s in enumerate(fresh) if s in added]
    return array("q", [local[i] for i in source_index]).tobytes(), fresh, in_added


@st.composite
def batches_to_number(draw: st.DrawFn):
    names = ["s0", "s1", "s2", "é", "", "s\x1f"]
    runs = ["r1", "r2"]
    run = draw(st.sampled_from(runs))
    index = {s: draw(st.integers(0, 1000)) for s in draw(st.lists(st.sampled_from(names), unique=True))}
    pending: dict | set = {
        (draw(st.sampled_from(runs)), s): None for s in draw(st.lists(st.sampled_from(names), max_size=2))
    }
    if draw(st.booleans()):  # (as _fastfold._pending_of gives it: the run's pending sources)
        pending = {s for r, s in pending if r == run}
    sources = draw(st.lists(st.sampled_from(names)))  # (a source named twice: numbered once)
    source_index = draw(st.lists(st.integers(0, len(sources) - 1), max_size=20)) if sources else []
    added = {s: draw(st.sampled_from(runs)) for s in draw(st.lists(st.sampled_from(names), unique=True, max_size=3))}
    return index, pending, run, sources, source_index, draw(st.integers(0, 10**6)), added


@given(batches_to_number())
@budget(3)
def test_number_states_is_the_python_loop(case) -> None:
    index, rest = case[0], case[1:]
    mine, theirs = dict(index), dict(index)
    assert native.number_states(mine, *rest) == number_states_reference(theirs, *rest)
    assert list(mine.items()) == list(theirs.items())  # the new states entered, in order (none if pending)


def index_of(items: dict[str, int]):
    """A ``native.SourceIndex`` holding ``items``."""
    index = native.SourceIndex()
    for k, v in items.items():
        index[k] = v
    return index


def contents(index, keys) -> dict[str, int]:
    """What ``index`` (a SourceIndex: not iterable) holds of ``keys``, all it holds."""
    held = {k: index[k] for k in keys if k in index}
    assert len(index) == len(held)
    return held


@given(batches_to_number())
@budget(3)
def test_number_states_in_a_source_index_is_in_a_dict(case) -> None:
    index, rest = case[0], case[1:]
    mine, theirs = index_of(index), dict(index)
    assert native.number_states(mine, *rest) == native.number_states(theirs, *rest)
    assert contents(mine, [*theirs, *rest[2]]) == theirs


# Keys of each kind of str (ASCII, Latin-1, 2- and 4-byte code points), an empty one, and
# equal keys that are other objects (sliced from a longer string).
INDEX_KEYS = ["", "a", "b", "src-1", "src-2", "é", "ŝource", "😀", "s\x1f", *(f"shard-{i:04d}" for i in range(40))]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["set", "del", "get", "in", "[]"]),
            st.sampled_from(INDEX_KEYS),
            st.integers(-(1 << 63), (1 << 63) - 1),
        ),
        max_size=300,
    )
)
@budget(3)
def test_a_source_index_is_a_dict(ops) -> None:
    index, model = native.SourceIndex(), {}
    for op, key, value in ops:
        key = (key + "#")[:-1]  # (an equal str, most often another object)
        if op == "set":
            index[key] = value
            model[key] = value
        elif op == "del":
            if key in model:
                del index[key]
                del model[key]
            else:
                with pytest.raises(KeyError):
                    del index[key]
        elif op == "get":
            assert index.get(key) == model.get(key)
            assert index.get(key, "none") == model.get(key, "none")
        elif op == "in":
            assert (key in index) == (key in model)
        elif key in model:
            assert index[key] == model[key]
        else:
            with pytest.raises(KeyError):
                index[key]
        assert len(index) == len(model)
    assert contents(index, INDEX_KEYS) == model


def test_a_source_index_of_many_keys_after_deletions() -> None:
    """Deletions in long runs of slots (backward shifts across the table's end too)."""
    import random

    rng = random.Random(7)
    keys = [f"shard-{i:08d}" for i in range(20_000)]
    index, model = native.SourceIndex(), {}
    for round_ in range(3):
        for k in rng.sample(keys, 12_000):
            index[k] = model[k] = round_
        for k in rng.sample(sorted(model), len(model) // 2):
            del index[k], model[k]
        assert contents(index, keys) == model


def keys_at_home(mask: int, homes: list[int]) -> list[str]:
    """A key whose hash puts it at each of ``homes`` in a table of ``mask + 1`` slots
    (this process's str hashes)."""
    found: dict[int, str] = {}
    i = 0
    while not all(h in found for h in homes):
        k = f"key-{i}"
        found.setdefault(hash(k) & mask, k)
        i += 1
    return [found[h] for h in homes]


def test_a_deletion_keeps_a_key_whose_run_wraps_round_the_table() -> None:
    """A run of slots from the last ones round to slot 0 (linear probing wraps): the key
    at slot 0 is at its own home, so deleting the run's first key leaves it there."""
    for table, mask in [(native.SourceIndex(), 7), (native.SourceMap(), 15)]:  # (3 keys: 8 and 16 slots)
        x, y, z = keys_at_home(mask, [mask - 1, mask, 0])
        for k in (x, y, z):
            table[k] = 1 if isinstance(table, native.SourceIndex) else "r"
        del table[x]
        assert x not in table and y in table and z in table and len(table) == 2


def test_a_source_index_refuses_what_is_not_a_str_key_or_an_int() -> None:
    index = native.SourceIndex()
    with pytest.raises(TypeError):
        native.SourceIndex({"a": 1})
    with pytest.raises(TypeError):
        index[1] = 2
    with pytest.raises(TypeError):
        index[Name("a")] = 2  # (a str subclass: its equality is its own)
    with pytest.raises(TypeError):
        index["a"] = "1"
    with pytest.raises(OverflowError):
        index["a"] = 1 << 64
    with pytest.raises(TypeError):
        hash(index)
    with pytest.raises(TypeError):
        iter(index)
    assert len(index) == 0 and "a" not in index


class Name(str):
    pass


MAP_OPS = st.sampled_from(
    ["set", "del", "pop", "get", "in", "[]", "update", "update_map", "set_many", "copy", "clear", "eq"]
)


@given(
    st.lists(
        st.tuples(MAP_OPS, st.sampled_from(INDEX_KEYS), st.sampled_from(["r1", "r2", "ŕ"]), st.integers(0, 40)),
        max_size=200,
    )
)
@budget(3)
def test_a_source_map_is_a_dict(ops) -> None:
    """Every operation the fold uses, in insertion order (the order of iteration and of
    the views, live as a dict's), keys that are other equal objects."""
    table, model = native.SourceMap(), {}
    for op, key, value, n in ops:
        key = (key + "#")[:-1]
        if op == "set":
            table[key] = value
            model[key] = value
        elif op in ("del", "pop"):
            if key in model:
                assert (table.pop(key) if op == "pop" else table.__delitem__(key)) == (
                    model.pop(key) if op == "pop" else model.__delitem__(key)
                )
            else:
                with pytest.raises(KeyError):
                    table.pop(key) if op == "pop" else table.__delitem__(key)
                assert table.pop(key, "none") == "none"
        elif op == "get":
            assert table.get(key) == model.get(key) and table.get(key, 0) == model.get(key, 0)
        elif op == "in":
            assert (key in table) == (key in model) and (key in table.keys()) == (key in model)
            assert ((key, value) in table.items()) == ((key, value) in model.items())
            assert (value in table.values()) == (value in model.values())
        elif op == "[]":
            if key in model:
                assert table[key] == model[key]
            else:
                with pytest.raises(KeyError):
                    table[key]
        elif op == "update":  # (pairs, some keys new, some not, more than a chunk)
            pairs = [(INDEX_KEYS[(n + i) % len(INDEX_KEYS)], value) for i in range(n * 20)]
            table.update(pairs if n % 2 else zip(*zip(*pairs)) if pairs else ())
            model.update(pairs)
        elif op == "set_many":  # (one value for all, or one each; more than a chunk)
            keys = [INDEX_KEYS[(n + 3 * i) % len(INDEX_KEYS)] for i in range(n * 30)]
            values = value if n % 2 else [f"{value}{i % 3}" for i in range(len(keys))]
            table.set_many(keys, values)
            model.update(zip(keys, [values] * len(keys) if isinstance(values, str) else values))
        elif op == "update_map":
            other = {INDEX_KEYS[(n + i) % len(INDEX_KEYS)]: value for i in range(n)}
            table.update(native.SourceMap(other) if n % 2 else other)
            model.update(other)
        elif op == "copy":
            copied = table.copy()
            assert copied == table and list(copied.items()) == list(table.items())
            table = copied
        elif op == "clear":
            table.clear()
            model.clear()
        else:
            assert (table == model) and not (table != model) and table == native.SourceMap(model)
            assert table != {**model, "other": "r"}
        assert len(table) == len(model) and bool(table) == bool(model)
        assert len(table.keys()) == len(table.values()) == len(table.items()) == len(model)
    assert list(table) == list(model) and list(table.keys()) == list(model)
    assert list(table.values()) == list(model.values()) and list(table.items()) == list(model.items())
    assert repr(table) == f"SourceMap({model!r})"


def test_a_source_map_of_many_keys_after_deletions() -> None:
    import random

    rng = random.Random(11)
    keys = [f"shard-{i:08d}" for i in range(30_000)]
    table, model = native.SourceMap(), {}
    for round_ in range(3):
        fresh = rng.sample(keys, 15_000)
        table.update(zip(fresh, [f"r{round_}"] * len(fresh)))
        model.update(zip(fresh, [f"r{round_}"] * len(fresh)))
        for k in rng.sample(sorted(model), len(model) // 2):
            del table[k], model[k]
        assert list(table.items()) == list(model.items())
        assert all(table.get(k) == model.get(k) for k in keys)
        assert table.copy() == model


def test_a_source_map_refuses_what_a_dict_of_str_would_not_hold() -> None:
    table = native.SourceMap({"a": "r"})
    with pytest.raises(TypeError):
        table[1] = "r"
    with pytest.raises(TypeError):
        table["b"] = 1
    with pytest.raises(TypeError):
        table[Name("b")] = "r"  # (set: an exact str only)
    with pytest.raises(TypeError):
        table.update({"b": "r", "c": 3})
    with pytest.raises(ValueError):
        table.update([("d", "r", "extra")])
    with pytest.raises(TypeError):
        table.update([5])
    with pytest.raises(TypeError):
        table.update(x="r")
    with pytest.raises(TypeError):
        hash(table)
    with pytest.raises(TypeError):
        table.get([])  # unhashable, as in a dict
    with pytest.raises(TypeError):
        table.set_many(["x", "y"], ["r"])  # (as many values as keys)
    with pytest.raises(TypeError):
        table.set_many(("x",), "r")  # (a list of keys)
    with pytest.raises(TypeError):
        table.set_many(["b", "c", "d"], ["r", 2, "r"])
    assert table == {"a": "r", "b": "r"}  # (an update keeps the pairs before the failing one)
    assert Name("a") in table and table[Name("a")] == "r" and 1 not in table and table.get(2) is None
    it = iter(table)
    next(it)
    table["e"] = "r"
    with pytest.raises(RuntimeError):
        next(it)
    it = iter(table)
    next(it)
    del table["e"]
    with pytest.raises(RuntimeError):
        next(it)
    it = iter(table.items())
    table.set_many(["a"] * 40 + ["b"] * 600, "r")  # (no new key, but room reserved: a resize moves entries)
    with pytest.raises(RuntimeError):
        next(it)
    assert isinstance(table, MutableMapping)


def test_number_states_looks_sources_up_in_a_source_map_as_in_a_dict() -> None:
    sources = [f"s{i}" for i in range(100)]
    added = {f"s{i}": "q" for i in range(0, 100, 3)}
    for run, late in [("r", False), ("q", True)]:
        mine, theirs = native.SourceIndex(), native.SourceIndex()
        got = native.number_states(mine, set(), run, sources, list(range(100)), 7, native.SourceMap(added))
        assert got == native.number_states(theirs, set(), run, sources, list(range(100)), 7, added)
        assert (got is False) == late
    with pytest.raises(TypeError):  # (a SourceMap with a SourceIndex only)
        native.number_states({}, set(), "r", sources, [0], 0, native.SourceMap(added))


def test_number_states_changes_nothing_on_an_error() -> None:
    index = {"x": 0}
    with pytest.raises(IndexError):
        native.number_states(index, {}, "r", ["a", "b"], [0, 2], 1, {})  # no source 2
    assert index == {"x": 0}
    with pytest.raises(TypeError):
        native.number_states(index, {}, "r", ["a", ["unhashable"]], [0], 1, {})
    assert index == {"x": 0}
    with pytest.raises(TypeError):
        native.number_states(index, ["not", "a", "dict"], "r", ["a"], [0], 1, {})
    with pytest.raises(TypeError):
        native.number_states(index, {}, "r", ["a"], [0], 1, None)
    assert native.number_states(index, {("r", "a"): None}, "r", ["b", "a"], [0], 1, {}) is None
    assert native.number_states(index, {"a"}, "r", ["b", "a"], [0], 1, {}) is None
    assert native.number_states(index, set(), "r", ["b", "a"], [0], 1, {"a": "r"}) is False  # a late record
    assert index == {"x": 0}  # (b was numbered, then taken back)
    assert native.number_states(index, set(), "r", ["b", "a"], [0, 1], 1, {"a": "q"})[1:] == (["b", "a"], [1])
    table = index_of({"x": 0})
    for args, error in [
        (({}, "r", ["a", "b"], [0, 2], 1, {}), IndexError),  # no source 2
        (({}, "r", ["a", 3], [0], 1, {}), TypeError),  # not a str
        (({}, "r", ["a", Name("b")], [0], 1, {}), TypeError),
    ]:
        with pytest.raises(error):
            native.number_states(table, *args)
        assert contents(table, ["x", "a", "b"]) == {"x": 0}
    assert native.number_states(table, set(), "r", ["b", "a"], [0], 1, {"a": "r"}) is False  # a late record
    assert native.number_states(table, {"a"}, "r", ["b", "a"], [0], 1, {}) is None
    assert contents(table, ["x", "a", "b"]) == {"x": 0}  # (b was numbered, then taken back)


@given(st.lists(st.text(max_size=3)), st.data())
@budget(2)
def test_take_is_the_list_expression(items, data) -> None:
    order = data.draw(st.lists(st.integers(0, len(items) - 1), max_size=30)) if items else []
    assert native.take(items, array("q", order)) == [items[i] for i in order]


def test_take_refuses_an_index_out_of_range() -> None:
    with pytest.raises(IndexError):
        native.take(["a"], array("q", [1]))
    with pytest.raises(ValueError):
        native.take(["a"], b"\x00" * 7)


@given(st.lists(st.integers(-(1 << 65), 1 << 65), max_size=30))
@budget(2)
def test_int64s_packs_or_refuses(values) -> None:
    fits = all(-(1 << 63) <= v < 1 << 63 for v in values)
    assert native.int64s(values) == (array("q", values).tobytes() if fits else None)


@given(st.lists(st.integers(-(1 << 65), 1 << 65), min_size=1, max_size=30), st.integers(0, 40))
@budget(2)
def test_in_range_is_min_and_max(values, n) -> None:
    assert native.in_range(values, n) == (min(values) >= 0 and max(values) < n)


@given(
    st.lists(st.integers(0, (1 << 64) - 1), max_size=30), st.sampled_from([(1, 2, 4), (4,), (8,), (1, 2, 4, 8), (2, 8)])
)
@budget(2)
def test_pack_uints_is_the_array_expression(values, widths) -> None:
    from resumelog import idset

    top = max(values, default=0)
    width = next((w for w in widths if top < 1 << (8 * w)), None)
    if width is None:
        with pytest.raises(OverflowError, match="does not fit"):
            native.pack_uints(values, widths)
    else:
        assert native.pack_uints(values, widths) == b"".join(v.to_bytes(width, "little") for v in values)
        assert native.pack_uints(values, widths) == idset.pack_uints(array("Q", values), widths)


def test_pack_uints_refuses_a_negative_value() -> None:
    with pytest.raises(OverflowError):
        native.pack_uints([1, -1], (1, 2, 4))


@given(st.lists(st.binary(max_size=6), max_size=40), st.sampled_from([4, 8]))
@budget(2)
def test_key_order_is_the_python_expression(ids, width) -> None:
    blob = b"".join(ids)
    offsets = [0]
    for b in ids:
        offsets.append(offsets[-1] + len(b))
    packed = b"".join(o.to_bytes(width, "little") for o in offsets)
    order = sorted(range(len(ids)), key=ids.__getitem__)
    assert native.key_order(blob, packed, width) == ([ids[i] for i in order], order)
    assert native.key_order(memoryview(blob), memoryview(packed), width)[1] == order


def test_key_order_refuses_offsets_it_cannot_follow() -> None:
    def u32(*xs: int) -> bytes:
        return b"".join(x.to_bytes(4, "little") for x in xs)

    for blob, offsets, width in [(b"abc", u32(0, 2, 1), 4), (b"abc", u32(0, 4), 4), (b"abc", b"\0" * 6, 4)]:
        with pytest.raises(ValueError):
            native.key_order(blob, offsets, width)
    with pytest.raises(ValueError):
        native.key_order(b"", u32(0), 2)


@st.composite
def new_layers(draw):
    """A fold's completions (id -> run), shape tags of some, the runs' indexes: ASCII
    ids sharing a prefix, many alike past it (equal sort keys: compared in full). The
    tags are keyed by the same id objects in the completions' order (as a fold sets
    them), or in another order, by equal copies of the ids, with ids not completed."""
    prefix = draw(st.sampled_from(["", "shard-0000", "s3://bucket/part-"]))
    tails = draw(st.lists(st.text(alphabet="ab0\x00\x7f", max_size=14), unique=True, max_size=60))
    ids = [prefix + t for t in tails]
    runs = draw(st.lists(st.sampled_from(["r1", "r2", "r10"]), min_size=len(ids), max_size=len(ids)))
    added = dict(zip(ids, runs))
    tagged = [i for i in ids if draw(st.booleans())]
    how = draw(st.sampled_from(["in order", "shuffled", "copies", "others"]))
    if how == "shuffled":
        tagged = draw(st.permutations(tagged))
    elif how == "copies":  # equal, not the same objects: looked up
        tagged = ["".join(list(i)) if draw(st.booleans()) else i for i in tagged]
    elif how == "others":  # ids not completed among them (never read)
        tagged = [x for i in tagged for x in (i, i + "\x01other")]
    tags = {i: draw(st.integers(1, 5)) for i in tagged}
    where = {r: i for i, r in enumerate(sorted(set(runs)))}
    return added, tags, where


def sorted_entries_reference(added, tags, where):
    """``native.sorted_entries``'s Python expression."""
    ids = sorted(added)
    encoded = [i.encode() for i in ids]
    ends = array("q", accumulate(map(len, encoded))).tobytes()
    return encoded, [where[added[i]] for i in ids], [tags.get(i, 0) for i in ids], ends


@given(new_layers())
@budget(2)
def test_sorted_entries_is_the_python_expression(case) -> None:
    added, tags, where = case
    assert native.sorted_entries(added, tags, where) == sorted_entries_reference(added, tags, where)


@given(new_layers(), st.data())
@budget(2)
def test_sorted_entries_reads_the_lists_of_a_done_shape_map_or_says_they_do_not_line_up(case, data) -> None:
    """The tags as a DoneShapeMap holds them (a dict, then lists from bulk and single
    sets): the same entries as from the settled dict, or ``False`` (then settled), and
    never ``False`` when the tags are the completions' own ids in their order."""
    added, tags, where = case
    items = list(tags.items())
    cut = data.draw(st.integers(0, len(items)))
    m = DoneShapeMap(items[:cut])
    rest = items[cut:]
    while rest:
        n = data.draw(st.integers(1, len(rest)))
        if data.draw(st.booleans()):
            m.extend([k for k, _ in rest[:n]], [v for _, v in rest[:n]])
        else:
            for k, v in rest[:n]:
                m[k] = v
        rest = rest[n:]
    expected = sorted_entries_reference(added, tags, where)
    got = native.sorted_entries(added, m.parts(), where)
    at = {id(k): i for i, k in enumerate(added)}
    ranks = [at.get(id(k), -1) for k in tags]
    if -1 not in ranks and ranks == sorted(ranks):
        assert got == expected  # (the fold's case: the walk takes every listed id)
    else:
        assert got is False or got == expected
    assert native.sorted_entries(added, m.settle(), where) == expected


def test_sorted_entries_says_when_the_lists_do_not_line_up() -> None:
    a, b, c = "id-a", "id-b", "id-c"
    added = {a: "r", b: "r", c: "r"}
    where = {"r": 0}
    copy = "".join(["id-", "a"])  # equal to a, another object
    assert copy == a and copy is not a
    for initial, ids, sids in [
        ([(a, 1)], [[a, b]], [[2, 3]]),  # a listed id set before (dict.update keeps its place)
        ([], [[a, b], [b]], [[1, 2], [3]]),  # a listed id twice
        ([], [[b, a]], [[2, 1]]),  # out of order
        ([], [[copy], [b]], [[1], [2]]),  # not the completion's own id object
    ]:
        m = DoneShapeMap(initial)
        for i, t in zip(ids, sids):
            m.extend(i, t)
        assert native.sorted_entries(added, m.parts(), where) is False
        assert native.sorted_entries(added, m.settle(), where) == sorted_entries_reference(added, m.settle(), where)
    with pytest.raises(TypeError):
        native.sorted_entries(added, ({}, [[a]], [[1, 2]]), where)
    with pytest.raises(TypeError):
        native.sorted_entries(added, ({}, [[a]], []), where)


def test_sorted_entries_of_many_ids() -> None:
    """Every radix digit in use, a shared digit skipped, input already in order."""
    import random

    rng = random.Random(5)
    for ids in (
        [f"{rng.getrandbits(64):016x}{rng.getrandbits(8):02x}" for _ in range(5000)],
        [f"id-{i:012d}" for i in range(5000)],
        [f"s{rng.getrandbits(20)}/{i}" for i in range(5000)],
    ):
        added = dict.fromkeys(ids, "r")
        assert native.sorted_entries(added, {}, {"r": 0}) == sorted_entries_reference(added, {}, {"r": 0})


def test_sorted_entries_leaves_what_it_cannot_read() -> None:
    assert native.sorted_entries({"a": "r", "é": "r"}, {}, {"r": 0}) is None  # non-ASCII: the Python lines
    with pytest.raises(KeyError):
        native.sorted_entries({"a": "r", "b": "s"}, {}, {"r": 0})
    assert native.sorted_entries({}, {}, {}) == ([], [], [], b"")


def test_the_kernels_leak_nothing() -> None:
    """Each kernel, on success and on its error paths, run many times: the memory
    Python's allocators hold (objects and the kernels' buffers, both traced) stays put."""
    import gc
    import tracemalloc

    keys, deltas, starts, sources = [], [], [0], []
    for i in range(300):
        src = f"s{i}"
        keys += [f"0_{src}", f"0_{src}_0", f"é{i}" if i % 5 == 0 else f"x{i % 3}"]
        deltas += [1, -1, (1 << 70) if i % 7 == 0 else 0]
        starts.append(len(keys))
        sources.append(src)
    cand = list(range(300))
    order = array("q", range(len(keys) - 1, -1, -1))
    encoded = [k.encode() for k in keys]
    blob = b"".join(encoded)
    offsets = array("I", [0, *accumulate(map(len, encoded))])
    ascii_keys = [k for k in keys if k.isascii()]
    spans = KeySpans.of(ascii_keys)
    assert spans is not None
    frame = encode(Batch(sources, list(range(300)), ascii_keys[:300], [1] * 300, bytes(300)))
    damaged = frame.replace(b"\xa40_s7", b"\xa40_\xc3\xa9")  # a non-ASCII key: None, late

    def once() -> None:
        native.decode_batch(frame)
        native.decode_batch(damaged)
        native.decode_batch(frame[:-3])
        native.span_strs(*spans.raw, 10, 200)
        native.take_spans([spans.raw, spans.raw], order)
        native.shape_keys(spans.raw, [1] * len(spans), [0, 100, len(spans)], [0, 1], ["s1", "s2"], "\x1f", "\x1e")
        native.number_states({}, {}, "r", sources, array("q", range(300)).tobytes(), 0, {})
        native.shape_keys(keys, deltas, starts, cand, sources, "\x1f", "\x1e")
        native.shape_keys(keys, deltas, starts, cand, sources, None, None)
        index: dict = {}
        native.number_states(index, {}, "r", sources, list(range(300)), 0, {"s1": "q"})  # (all new)
        native.number_states(index, {}, "r", sources, list(range(300)), 0, {})  # (all known)
        native.number_states(index, {("r", "s5"): 1}, "r", sources, list(range(300)), 0, {})  # (pending)
        native.number_states(index, {"s5"}, "r", sources, list(range(300)), 0, {})  # (pending, as a set)
        native.number_states({}, set(), "r", sources, list(range(300)), 0, {"s7": "r"})  # (late)
        table = native.SourceIndex()
        completed = native.SourceMap(zip(sources[::5], ["q"] * 60))
        native.number_states(table, {}, "r", sources, list(range(300)), 0, completed)  # (all new)
        native.number_states(native.SourceIndex(), {}, "q", sources, list(range(300)), 0, completed)  # (late)
        more = completed.copy()
        more.update(zip(sources, ["r"] * 300))
        more.update({"x": "y"})
        more.set_many(sources[:100], "q")
        more.set_many(sources[50:150], ["r", "q"] * 50)
        with pytest.raises(TypeError):
            more.set_many(sources[:3], ["r", "r", 3])
        del more["s1"], more["x"]
        more.pop("s2"), more.pop("s2", None), list(more.items()), list(more.values()), more == completed
        repr(more), "s3" in more.keys(), ("s3", "r") in more.items(), "r" in more.values()
        native.sorted_entries(more, {}, {"q": 0, "r": 1})
        more.clear()
        native.number_states(table, {}, "r", sources, list(range(300)), 0, {"s1": "q"})  # (all new)
        native.number_states(table, {}, "r", sources, list(range(300)), 0, {})  # (all known)
        native.number_states(table, {"s5"}, "r", sources, list(range(300)), 0, {})  # (pending)
        native.number_states(native.SourceIndex(), set(), "r", sources, list(range(300)), 0, {"s7": "r"})  # (late)
        for k in sources[::2]:
            del table[k]
        table["s1"], table["s3"] = 5, 6
        table.get("s3"), table.get("nothing", 0), "s9" in table
        native.hash_order([k.encode() for k in keys[:100]])
        native.take(keys, order)
        native.int64s(deltas)
        native.in_range(list(range(100)), 50)
        native.pack_uints(list(range(300)), (1, 2, 4))
        native.key_order(blob, offsets, 4)
        native.sorted_entries(dict.fromkeys(ascii_keys, "r"), dict.fromkeys(ascii_keys[:50], 2), {"r": 0})
        native.sorted_entries({"é": "r"}, {}, {"r": 0})
        listed = ({}, [ascii_keys[:50], ascii_keys[60:70]], [[2] * 50, [3] * 10])  # (a DoneShapeMap's parts)
        native.sorted_entries(dict.fromkeys(ascii_keys, "r"), listed, {"r": 0})
        native.sorted_entries(dict.fromkeys(ascii_keys, "r"), ({}, [ascii_keys[9::-1]], [[2] * 10]), {"r": 0})  # False
        for call, args, error in [
            (native.number_states, ({}, {}, "r", sources, [0, 10**6], 0, {}), IndexError),
            (native.pack_uints, ([1 << 40], (1, 2, 4)), OverflowError),
            (native.shape_keys, (["a"], [1], [0, 5], [0], ["s"], "\x1f", "\x1e"), IndexError),
            (native.take, (["a"], array("q", [3])), IndexError),
            (native.key_order, (b"abc", array("I", [0, 2, 1]), 4), ValueError),
            (native.sorted_entries, (dict.fromkeys(keys[:200], "r"), {}, {}), KeyError),
            (native.sorted_entries, (dict.fromkeys(keys[:200], "r"), ({}, [["a"]], [[1, 2]]), {"r": 0}), TypeError),
            (native.take_spans, ([spans.raw], array("q", [10**6])), IndexError),
            (native.span_strs, (b"abc", array("q", [2, 1]), 0, 2), ValueError),
            (native.number_states, ({}, {}, "r", sources, array("q", [0, 10**6]).tobytes(), 0, {}), IndexError),
            (native.number_states, (native.SourceIndex(), {}, "r", sources, [0, 10**6], 0, {}), IndexError),
            (native.number_states, (native.SourceIndex(), {}, "r", [*sources, 1], [0], 0, {}), TypeError),
            (native.SourceIndex().__getitem__, ("absent",), KeyError),
            (native.SourceMap().__getitem__, ("absent",), KeyError),
            (native.SourceMap().update, ([("a", "r"), ("b", 1)],), TypeError),
            (native.SourceMap().update, ([("a", "r"), ("b",)],), ValueError),
        ]:
            with pytest.raises(error):
                call(*args)

    for _ in range(20):
        once()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(200):
            once()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 16 << 10, f"{after - before} bytes more after 200 rounds"


# ------------------------------------------------------------------ batches decoded into columns

INT64_EDGES = [0, 1, -1, 127, 128, -32, -33, 255, 256, -128, -129, 65535, 65536, -32768, -32769]
INT64_EDGES += [(1 << 31) - 1, 1 << 31, -(1 << 31), -(1 << 31) - 1, (1 << 32) - 1, 1 << 32, (1 << 63) - 1, -(1 << 63)]


@st.composite
def encoded_batches(draw: st.DrawFn) -> Batch:
    """Batches as writers encode them, and the kinds the decoder leaves to msgspec:
    non-ASCII keys or sources, deltas beyond int64, resets."""
    sources = draw(st.lists(st.text(TEXT, max_size=6), min_size=1, max_size=5))
    n = draw(st.integers(0, 40))
    index = [draw(st.integers(0, len(sources) - 1)) for _ in range(n)]
    ascii_keys = draw(st.integers(0, 4)) > 0
    ks = [draw(st.text("ab_0" if ascii_keys else TEXT, max_size=300 if i == 0 else 8)) for i in range(n)]
    ints = st.one_of(st.integers(-300, 300), st.sampled_from(INT64_EDGES), st.integers(-(1 << 63), (1 << 63) - 1))
    wide = draw(st.integers(0, 6)) == 0
    deltas = [draw(st.one_of(ints, st.sampled_from([1 << 63, (1 << 64) - 1])) if wide else ints) for _ in range(n)]
    flags = bytes(draw(st.lists(st.integers(0, 255), min_size=n, max_size=n)))
    resets = [Reset("s", ["r"])] if draw(st.integers(0, 8)) == 0 else []
    return Batch(sources, index, ks, deltas, flags, resets)


def _columns_of(frame: bytes):
    got = native.decode_batch(frame)
    return None if got is None else ColumnBatch(*got)


@given(encoded_batches())
@budget(4)
def test_decode_batch_is_msgspecs_batch(batch: Batch) -> None:
    frame = encode(batch)
    got = _columns_of(frame)
    plain = (
        all(k.isascii() for k in batch.keys)
        and all(-(1 << 63) <= d < 1 << 63 for d in batch.deltas)
        and not batch.resets
    )
    assert (got is not None) == plain  # (every batch a writer makes of ASCII keys is decoded)
    if got is not None:
        assert got.batch() == msgspec.msgpack.decode(frame, type=Batch) == batch
        assert len(got) == len(batch.keys) and got.keys.tolist() == batch.keys
        assert array("q", got.deltas).tolist() == batch.deltas


def _mp_int(v: int, tag: int) -> bytes:
    """``v`` in the msgpack int encoding ``tag`` (not the shortest one a writer uses)."""
    fmt = {0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q", 0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q"}[tag]
    return bytes([tag]) + struct.pack(fmt, v)


def test_decode_batch_reads_every_int_and_length_encoding() -> None:
    """msgpack has several encodings of one value; msgspec reads them all, so must the
    decoder (here: ints of every width, arrays 16/32, str 8/16/32, bin 16/32)."""
    values = [(5, 0xCC), (5, 0xCD), (5, 0xCE), (5, 0xCF), (-5, 0xD0), (-5, 0xD1), (-5, 0xD2), (-5, 0xD3), (0, 0xD3)]
    values += [((1 << 63) - 1, 0xCF), (-(1 << 63), 0xD3), (200, 0xCC), (-100, 0xD0), (40000, 0xCD)]
    n = len(values)
    frame = b"\x96"  # the six fields
    frame += b"\xdc\x00\x01" + b"\xd9\x01s"  # sources: array 16, str 8
    frame += b"\xdd" + struct.pack(">I", n) + b"".join(_mp_int(0, 0xCE) for _ in range(n))  # array 32
    frame += b"\xdc" + struct.pack(">H", n)
    frame += b"".join(
        b"\xda" + struct.pack(">H", 2) + b"k%d" % (i % 10) if i % 2 else b"\xdb\x00\x00\x00\x01x" for i in range(n)
    )
    frame += b"\x9e" if n == 14 else b"\xdc" + struct.pack(">H", n)
    frame += b"".join(_mp_int(v, tag) for v, tag in values)
    frame += b"\xc5" + struct.pack(">H", n) + bytes(range(n))  # bin 16
    frame += b"\x90"  # no resets
    want = msgspec.msgpack.decode(frame, type=Batch)
    got = _columns_of(frame)
    assert got is not None and got.batch() == want
    assert array("q", got.deltas).tolist() == [v for v, _ in values]
    assert got.batch() == _columns_of(frame.replace(b"\xc5\x00\x0e", b"\xc6\x00\x00\x00\x0e")).batch()  # bin 32


@given(encoded_batches(), st.data())
@budget(4)
def test_decode_batch_of_damaged_bytes_decodes_only_what_msgspec_does(batch: Batch, data) -> None:
    """Flipped, cut or added bytes: where the decoder decodes a frame, msgspec decodes the
    same batch from it and ``decode_segment``'s checks pass; else ``None`` (msgspec's error)."""
    frame = bytearray(encode(batch))
    for _ in range(data.draw(st.integers(1, 3))):
        how = data.draw(st.sampled_from(["flip", "cut", "add"]))
        at = data.draw(st.integers(0, max(0, len(frame) - 1)))
        if how == "flip" and frame:
            frame[at] ^= 1 << data.draw(st.integers(0, 7))
        elif how == "cut":
            del frame[at:]
        else:
            frame[at:at] = data.draw(st.binary(min_size=1, max_size=3))
    got = _columns_of(bytes(frame))
    if got is not None:
        want = msgspec.msgpack.decode(bytes(frame), type=Batch)  # (raises if msgspec refuses it)
        assert got.batch() == want
        assert len(want.keys) == len(want.deltas) == len(want.flags) == len(want.source_index)
        assert all(0 <= i < len(want.sources) for i in want.source_index) and not want.resets


def test_decode_batch_leaves_to_msgspec_what_it_does_not_read() -> None:
    ok = Batch(["s"], [0], ["k"], [1], b"\x01")
    assert _columns_of(encode(ok)) is not None
    for bad in [
        Batch(["s"], [0], ["ké"], [1], b"\x01"),  # a non-ASCII key
        Batch(["s"], [0], ["k"], [1 << 63], b"\x01"),  # a delta beyond int64
        Batch(["s"], [0], ["k"], [1], b"\x01", [Reset("s", ["r"])]),  # resets
        Batch(["s"], [1], ["k"], [1], b"\x01"),  # a source index out of range
        Batch(["s"], [0, 0], ["k"], [1], b"\x01"),  # columns of other lengths
    ]:
        assert _columns_of(encode(bad)) is None
    assert _columns_of(encode(ok) + b"\x00") is None  # trailing bytes
    assert _columns_of(encode(ok)[:-1]) is None
    assert _columns_of(b"\xa5\xff\xfe\xfd\xfc\xfb") is None
    frame = encode(Batch(["s\xff"], [0], ["k"], [1], b"\x01")).replace(b"s\xc3\xbf", b"s\xff\xff")  # bad UTF-8
    assert _columns_of(frame) is None


@st.composite
def spans_and_order(draw: st.DrawFn):
    parts = draw(st.lists(st.lists(st.text("ab_0\x00\x7f", max_size=5), max_size=8), max_size=4))
    total = sum(map(len, parts))
    if not total:
        return parts, []
    if draw(st.booleans()):
        return parts, draw(st.lists(st.integers(0, total - 1), max_size=20))
    # runs of consecutive keys (across parts too), as records grouped by state mostly are
    runs = draw(st.lists(st.tuples(st.integers(0, total - 1), st.integers(1, total)), max_size=5))
    return parts, [i for a, n in runs for i in range(a, min(a + n, total))]


@given(spans_and_order())
@budget(2)
def test_key_spans_are_the_list_expressions(case) -> None:
    parts, order = case
    spans = [KeySpans.of(p) for p in parts]
    assert all(s is not None and s.tolist() == p for s, p in zip(spans, parts))
    flat = [k for p in parts for k in p]
    taken = KeySpans(*native.take_spans([s.raw for s in spans], array("q", order)))
    assert taken.tolist() == [flat[i] for i in order] and len(taken) == len(order)
    for a in range(len(taken) + 1):
        assert taken[a:] == [flat[i] for i in order][a:] and taken[:a] == [flat[i] for i in order][:a]
    if order:
        assert taken[-1] == flat[order[-1]]
    assert KeySpans.of(["a", "é"]) is None


def test_key_spans_refuse_what_they_cannot_read() -> None:
    with pytest.raises(ValueError):
        native.span_strs(b"abc", array("q", [2, 1]), 0, 2)  # ends not ascending
    with pytest.raises(ValueError):
        native.span_strs(b"abc", array("q", [5]), 0, 1)  # beyond the blob
    with pytest.raises(ValueError):
        native.span_strs(b"\xc3\xa9", array("q", [2]), 0, 1)  # not ASCII
    with pytest.raises(IndexError):
        native.span_strs(b"abc", array("q", [3]), 0, 2)
    with pytest.raises(IndexError):
        native.take_spans([(b"abc", array("q", [3]))], array("q", [1]))
    with pytest.raises(ValueError):
        native.take_spans([(b"abc", array("q", [4]))], array("q", [0]))
    with pytest.raises(ValueError):
        native.shape_keys((b"\xc3\xa9", array("q", [2])), [1], [0, 1], [0], ["s"], "\x1f", "\x1e")


@given(evaluations())
@budget(3)
def test_shape_keys_of_spans_are_those_of_the_list(case) -> None:
    keys, *rest = case
    keys = [k.encode("ascii", "replace").decode() for k in keys]  # (spans hold ASCII keys)
    rest[3] = [s.encode("ascii", "replace").decode() for s in rest[3]]
    spans = KeySpans.of(keys)
    assert spans is not None
    assert native.shape_keys(spans.raw, *rest) == native.shape_keys(keys, *rest)


@given(batches_to_number())
@budget(2)
def test_number_states_of_packed_source_indexes(case) -> None:
    index, pending, run, sources, source_index, start, added = case
    mine, theirs = dict(index), dict(index)
    packed = array("q", source_index).tobytes()
    assert native.number_states(mine, pending, run, sources, packed, start, added) == native.number_states(
        theirs, pending, run, sources, source_index, start, added
    )
    assert mine == theirs
