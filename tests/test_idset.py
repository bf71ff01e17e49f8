"""The completed-id index: lookups (with and without the lookup directory) and rebuilds."""

from __future__ import annotations

from array import array
from itertools import accumulate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resumelog import idset
from resumelog.idset import CompletedIndex, id_hash, pack_uints

ids_strategy = st.sets(st.text(min_size=1, max_size=8), max_size=60)


def index_of(ids: dict[str, int]) -> CompletedIndex:
    """The index of ``ids`` (id -> run index), its arrays as a layer block stores them."""
    encoded = sorted((s.encode() for s in ids), key=id_hash)
    offsets = array("I", [0, *accumulate(map(len, encoded))])
    hashes = array("I", map(id_hash, encoded))
    runs = pack_uints([ids[b.decode()] for b in encoded])
    blob = b"".join(encoded)
    return CompletedIndex(idset._to_bytes(hashes), idset._to_bytes(offsets), runs, blob, blob.isascii())


@pytest.fixture
def eager_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lookup directory from the first lookup on, whatever the index size."""
    monkeypatch.setattr(idset, "_DIR_MIN", 0)
    monkeypatch.setattr(idset, "_DIR_AFTER", 1)


@pytest.mark.usefixtures("eager_directory")
@given(ids_strategy, st.lists(st.text(max_size=8), max_size=30))
def test_lookups_through_the_directory_find_exactly_the_stored_ids(ids, probes):
    idx = index_of({s: 0 for s in ids})
    stored = idx.ids()
    assert sorted(stored) == sorted(ids)
    for p in [*probes, *ids]:
        i = idx.find(p)
        assert (i >= 0) == (p in ids)
        if i >= 0:
            assert stored[i] == p
    assert idx._dir is not None or not ids  # the directory answered them


def test_a_large_index_builds_its_directory_after_many_lookups_and_answers_the_same():
    n = 70_000  # above _DIR_MIN
    idx = index_of({f"shard-{i:010d}": i % 3 for i in range(n)})
    stored = idx.ids()
    probes = [f"shard-{i:010d}" for i in range(0, 2 * n, 13)]  # half present, half absent
    before = [idx.find(p) for p in probes[: idset._DIR_AFTER - 1]]
    assert idx._dir is None
    after = [idx.find(p) for p in probes]
    assert idx._dir is not None
    assert after[: len(before)] == before
    for p, i in zip(probes, after):
        present = int(p[6:]) < n
        assert (i >= 0) == present and (not present or stored[i] == p)
        if present:
            assert idx.run_at(i) == int(p[6:]) % 3
