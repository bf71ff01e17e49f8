from __future__ import annotations

import uuid

import pytest

from resumelog.storage import MemoryStore
from resumelog.testing.store import StoreTests


class TestMemoryStore(StoreTests):
    @pytest.fixture
    def store(self) -> MemoryStore:
        return MemoryStore(f"conformance-{uuid.uuid4().hex}")

    def raw_get(self, store, key):
        item = store._data.get(key)
        return None if item is None else item[0]

    def raw_put(self, store, key, data):
        store._data[key] = (data, 0.0)


def test_same_name_shares_data():
    a = MemoryStore("shared-name-test")
    a.clear()
    a.put_if_absent("k", b"v")
    assert MemoryStore("shared-name-test").read("k") == b"v"
    a.clear()
