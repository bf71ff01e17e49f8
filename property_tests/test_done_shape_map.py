"""DoneShapeMap (``FoldState.done_shapes``) against a dict: what it holds as lists
(bulk and single sets since the last read) never changes an answer, an item or the
order of the items."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from pt_settings import budget

from resumelog.done_shapes import DoneShapeMap

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("extend"), st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(1, 9)), max_size=4)),
        st.tuples(st.just("set"), st.tuples(st.sampled_from("abcdef"), st.integers(1, 9))),
        st.tuples(st.sampled_from(["get", "pop", "del", "in", "len", "iter"]), st.sampled_from("abcdef")),
    ),
    max_size=30,
)


@given(st.dictionaries(st.sampled_from("abcdef"), st.integers(1, 9)), _ops)
@budget(2)
def test_a_done_shape_map_is_a_dict_whatever_it_holds_as_lists(initial, ops):
    """Every operation answers as on a dict and leaves the same items in the same order,
    what extend and set added being held as lists (settled by a read) or not."""
    m, d = DoneShapeMap(initial.items()), dict(initial)
    for op, arg in ops:
        if op == "extend":
            m.extend([k for k, _ in arg], [v for _, v in arg])
            d.update(arg)
        elif op == "set":
            m[arg[0]] = arg[1]
            d[arg[0]] = arg[1]
        elif op == "get":
            assert m.get(arg) == d.get(arg)
        elif op == "pop":
            assert m.pop(arg, None) == d.pop(arg, None)
        elif op == "del":
            if arg in d:
                del m[arg]
                del d[arg]
        elif op == "in":
            assert (arg in m) == (arg in d)
        elif op == "len":
            assert len(m) == len(d)
        else:
            assert list(m) == list(d)
    keys = dict.fromkeys("fdbz")
    assert list(m.subset(keys).items()) == [(k, d[k]) for k in keys if k in d]
    assert list(m.items()) == list(d.items())
    assert m == d and m.settle() == d
