"""The fold's large tables store their keys' hashes (``resumelog._hashed_dicts``).

A pure speed property of CPython's dicts, with no effect on what a fold computes: so the
tests read the table's layout from its size (CPython 3.11+: a general entry is 24 bytes,
a unicode-keys entry 16) and check that the fold's completed set, done shapes and done
writers keep the general layout through rounds, spills and a compaction's publish.
"""

from __future__ import annotations

import sys
import uuid

import pytest

import resumelog
from resumelog import compactor
from resumelog._compiled import native
from resumelog._hashed_dicts import hashed, hashed_dict
from resumelog.storage import MemoryStore
from resumelog.testing.compaction import spilling

pytestmark = pytest.mark.skipif(
    sys.implementation.name != "cpython" or sys.version_info < (3, 11),
    reason="reads CPython 3.11+'s dict layout (the property is a CPython speed-up)",
)


def table(d: object) -> str | None:
    """``"general"`` (entries store hashes) or ``"unicode"``: the layout whose size is
    ``sys.getsizeof(d)`` (CPython's ``_PyDict_KeysSize``), ``None`` if neither; a
    ``SourceMap`` (the completed set with the compiled kernels) stores hashes in its
    slots by construction: ``"general"``."""
    if native is not None and isinstance(d, native.SourceMap):
        return "general"
    assert isinstance(d, dict)
    total = sys.getsizeof(d) - sys.getsizeof({})  # (an empty dict's keys are shared, not counted)
    for log2 in range(3, 40):
        n = 1 << log2
        index_bytes = 1 if n <= 0xFF else 2 if n <= 0xFFFF else 4 if n <= 0xFFFFFFFF else 8
        for kind, entry in (("general", 24), ("unicode", 16)):
            if 32 + n * index_bytes + (2 * n) // 3 * entry == total:
                return kind
    return None


IDS = [f"source-{i:06d}" for i in range(5000)]


def test_the_layouts_are_told_apart() -> None:
    assert table(dict.fromkeys(IDS)) == "unicode"
    assert table({i: None for i in range(5000)}) == "general"


def test_a_hashed_dict_holds_its_items_in_order_in_the_general_layout() -> None:
    d = hashed_dict(zip(IDS, range(len(IDS))))
    assert type(d) is dict
    assert list(d.items()) == list(zip(IDS, range(len(IDS))))
    assert table(d) == "general"
    for s in IDS[:4000]:
        del d[s]
    d.update(zip(IDS, range(3)))  # through resizes and deletions
    assert list(d) == IDS[4000:] + IDS[:3] and d[IDS[0]] == 0 and d[IDS[4000]] == 4000
    assert table(d) == "general"
    assert table(d.copy()) == "general"
    assert table(hashed_dict()) == "general" and hashed_dict() == {}


def test_hashed_switches_a_dict_in_place_keeping_its_contents() -> None:
    d = dict(zip(IDS, IDS))
    assert table(d) == "unicode"
    same = hashed(d)
    assert same is d and list(d.items()) == list(zip(IDS, IDS))
    assert table(d) == "general"
    assert hashed(d) is d and table(d) == "general" and len(d) == len(IDS)


def _journal(store: MemoryStore, n: int) -> None:
    ck = resumelog.open(store, run_id="r1", flush_policy=resumelog.FlushPolicy(max_records=50))
    with ck.writer("a") as a, ck.writer("b") as b:
        for i in range(n):
            src = f"s{i:05d}"
            (a if i % 2 else b).emit(src)
            b.record(f"{src}/part-0", src, -1)  # two keys, two streams: a done shape and writers
            if i % 7 == 0:
                a.record(f"{src}/part-1", src, +1)
                a.record(f"{src}/part-1-done", src, -1)
        b.flush()  # (a stays open: its writers are recorded)


def test_the_folds_tables_stay_general_through_rounds_and_spills() -> None:
    store = MemoryStore(f"hashed-{uuid.uuid4().hex}")
    _journal(store, 3000)
    seen: list[tuple[int, tuple[str | None, ...]]] = []
    spill = compactor._spill

    def watching(loaded: compactor.Loaded) -> bool:
        done = spill(loaded)
        s = loaded.state
        seen.append((len(s.added), (table(s.added), table(s.done_shapes.settle()), table(s.done_writers))))
        compactor.SPILL_COMPLETIONS = 300  # later spills hold more than the first layer: they keep some
        return done

    with spilling(round_records=100, spill=150):
        compactor._spill = watching  # type: ignore[assignment]
        try:
            loaded = compactor.load(store, progress=False)
        finally:
            compactor._spill = spill  # type: ignore[assignment]
    state = loaded.state
    assert len(seen) >= 3 and seen[0][0] == 0, seen  # the first spill moves every completion
    assert any(kept for kept, _ in seen[1:]), seen  # a later one keeps the newest ones in new tables
    assert len(state.added) + state.base.count >= 2900  # (some sources still open)
    kinds = [k for _, k in seen] + [(table(state.added), table(state.done_shapes.settle()), table(state.done_writers))]
    assert kinds == [("general",) * 3] * len(kinds)
    assert table(compactor.FoldState().added) == "general"
    assert type(compactor.FoldState().added) is (dict if native is None else native.SourceMap)
