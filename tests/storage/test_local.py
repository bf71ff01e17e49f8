from __future__ import annotations

import os

import pytest

from resumelog.storage import LocalStore
from resumelog.testing.store import StoreTests


class TestLocalStore(StoreTests):
    @pytest.fixture
    def store(self, tmp_path) -> LocalStore:
        return LocalStore(str(tmp_path / "root"))

    def raw_get(self, store, key):
        p = os.path.join(store.root, *key.split("/"))
        try:
            with open(p, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def raw_put(self, store, key, data):
        p = os.path.join(store.root, *key.split("/"))
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)


def test_partial_files_are_invisible_and_cleaned(tmp_path):
    store = LocalStore(str(tmp_path))
    store.put_if_absent("a/b", b"1")
    (tmp_path / "a" / "b.123.partial").write_bytes(b"half")
    assert [o.path for o in store.list("")] == ["a/b"]
    store.clear()
    assert not (tmp_path / "a").exists()


def test_create_does_not_leave_temp_files(tmp_path):
    store = LocalStore(str(tmp_path))
    store.put_if_absent("x/y", b"1")
    with pytest.raises(FileExistsError):
        store.put_if_absent("x/y", b"2")
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["y"]


def test_delete_removes_empty_directories_but_not_root(tmp_path):
    store = LocalStore(str(tmp_path / "r"))
    store.put_if_absent("journal/w/inc/0.seg", b"1")
    store.delete(["journal/w/inc/0.seg"])
    assert os.path.isdir(tmp_path / "r")
    assert not os.path.exists(tmp_path / "r" / "journal")
