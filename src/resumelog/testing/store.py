"""``StoreTests``: the conformance suite every storage backend must pass.

Subclass it in a test module, provide a ``store`` fixture (a fresh, empty store) and
the two backdoor methods ``raw_get`` / ``raw_put`` that reach the underlying storage
*without* the store's own methods, so that the store's methods are what is tested::

    class TestMyStore(StoreTests):
        @pytest.fixture
        def store(self, tmp_path):
            return MyStore(tmp_path)

        def raw_get(self, store, key): ...
        def raw_put(self, store, key, data): ...
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from resumelog.errors import AlreadyExists, InvalidId, ObjectNotFound, ResumelogError
from resumelog.storage import Store

__all__ = ["StoreTests"]


class StoreTests:
    """Shared behaviour of :class:`resumelog.storage.Store` implementations."""

    #: number of threads racing in the create-only test
    race_threads: int = 8

    def raw_get(self, store: Store, key: str) -> bytes | None:
        """Bytes stored under ``key`` (``None`` if absent), bypassing ``store``."""
        raise NotImplementedError

    def raw_put(self, store: Store, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, bypassing ``store``."""
        raise NotImplementedError

    def raw_put_many(self, store: Store, items: dict[str, bytes]) -> None:
        """Store many objects, bypassing ``store`` (override to batch requests)."""
        for k, v in items.items():
            self.raw_put(store, k, v)

    # ------------------------------------------------------------------ put/read

    def test_put_then_read(self, store: Store) -> None:
        store.put_if_absent("a/b/c.seg", b"hello")
        assert store.read("a/b/c.seg") == b"hello"
        assert self.raw_get(store, "a/b/c.seg") == b"hello"

    def test_read_sees_raw_put(self, store: Store) -> None:
        self.raw_put(store, "x/y", b"\x00\x01binary")
        assert store.read("x/y") == b"\x00\x01binary"

    def test_put_if_absent_refuses_existing(self, store: Store) -> None:
        store.put_if_absent("k", b"first")
        with pytest.raises(AlreadyExists) as info:
            store.put_if_absent("k", b"second")
        assert isinstance(info.value, FileExistsError)
        assert isinstance(info.value, ResumelogError)
        assert store.read("k") == b"first"

    def test_put_if_absent_refuses_raw_existing(self, store: Store) -> None:
        self.raw_put(store, "k2", b"theirs")
        with pytest.raises(AlreadyExists):
            store.put_if_absent("k2", b"mine")
        assert store.read("k2") == b"theirs"

    def test_put_if_absent_parts_writes_the_concatenation(self, store: Store) -> None:
        big = bytes(range(256)) * 4096 * 2
        parts: list[bytes | memoryview] = [b"head", b"", memoryview(big), b"x" * 1000, memoryview(b"tail")[1:]]
        store.put_if_absent_parts("p/one", parts)
        assert store.read("p/one") == b"head" + big + b"x" * 1000 + b"ail"
        store.put_if_absent_parts("p/none", [])
        assert store.read("p/none") == b""
        with pytest.raises(AlreadyExists):
            store.put_if_absent_parts("p/one", [b"other"])
        assert store.read("p/one")[:4] == b"head"

    def test_put_if_absent_takes_a_view_of_a_memory_map(self, store: Store, tmp_path: Any) -> None:
        """A large layer is handed over as a read-only view of a memory-mapped file."""
        import mmap

        body = bytes(range(256)) * 4096 * 3  # 3 MiB
        path = tmp_path / "layer.spool"
        path.write_bytes(b"hole" + body)
        with open(path, "rb") as f:
            view = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))[4:]
        store.put_if_absent("layers/a", view)
        store.put_if_absent("layers/small", view[:100])
        assert store.read("layers/a") == body and self.raw_get(store, "layers/a") == body
        assert store.read("layers/small") == body[:100]
        with pytest.raises(AlreadyExists):
            store.put_if_absent("layers/a", view[1:])
        assert store.read("layers/a") == body
        del view

    def test_put_if_absent_file_publishes_a_local_file_once(self, store: Store, tmp_path: Any) -> None:
        first, second = tmp_path / "first.spool", tmp_path / "second.spool"
        body = bytes(range(256)) * 4096  # 1 MiB
        first.write_bytes(body)
        second.write_bytes(b"other bytes")
        store.put_if_absent_file("out/a", str(first))
        assert store.read("out/a") == body and self.raw_get(store, "out/a") == body
        with pytest.raises(AlreadyExists) as info:
            store.put_if_absent_file("out/a", str(second))
        assert isinstance(info.value, FileExistsError)
        assert store.read("out/a") == body
        self.raw_put(store, "out/b", b"theirs")
        with pytest.raises(AlreadyExists):
            store.put_if_absent_file("out/b", str(second))
        assert store.read("out/b") == b"theirs"

    def test_read_prefixes(self, store: Store) -> None:
        store.put_if_absent("p/a", b"abcdef")
        store.put_if_absent("p/b", b"xy")
        assert store.read_prefixes([("p/a", 3), ("p/b", 5), ("p/a", 6)]) == [b"abc", b"xy", b"abcdef"]
        assert store.read_prefixes([("p/b", 1)]) == [b"x"] and store.read_prefixes([]) == []
        with pytest.raises(ObjectNotFound) as info:
            store.read_prefixes([("p/a", 2), ("p/none", 2)])
        assert "p/none" in str(info.value)

    @pytest.mark.parametrize("size", [0, 10, (3 << 20) + 7])
    def test_read_to_file_writes_the_object(self, store: Store, tmp_path: Any, size: int) -> None:
        data = bytes(range(256)) * (size // 256) + b"y" * (size % 256)
        store.put_if_absent("f/obj", data)
        path = tmp_path / "copy"
        path.write_bytes(b"left over from before, longer than ten bytes")
        assert store.read_to_file("f/obj", str(path)) == size
        assert path.read_bytes() == data
        with pytest.raises(ObjectNotFound):
            store.read_to_file("f/none", str(tmp_path / "absent"))
        assert not (tmp_path / "absent").exists()

    def test_empty_and_large_objects(self, store: Store) -> None:
        big = bytes(range(256)) * 4096 * 3  # 3 MiB
        store.put_if_absent("big", big)
        store.put_if_absent("empty", b"")
        assert store.read("big") == big
        assert store.read("empty") == b""

    def test_read_missing(self, store: Store) -> None:
        with pytest.raises(ObjectNotFound) as info:
            store.read("nope/none")
        assert isinstance(info.value, FileNotFoundError)

    @pytest.mark.parametrize("size", [0, 10, (1 << 20) + 7])
    def test_read_view_matches_read(self, store: Store, size: int) -> None:
        data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        store.put_if_absent("v/obj", data)
        view = store.read_view("v/obj")
        assert bytes(view) == data == store.read("v/obj")
        with pytest.raises(ObjectNotFound):
            store.read_view("v/none")

    def test_read_prefix(self, store: Store) -> None:
        data = bytes(range(256)) * 40
        store.put_if_absent("p/obj", data)
        assert store.read_prefix("p/obj", 100) == data[:100]
        assert store.read_prefix("p/obj", len(data) + 50) == data
        with pytest.raises(ObjectNotFound):
            store.read_prefix("p/missing", 10)

    def test_read_ranges(self, store: Store) -> None:
        data = bytes(range(256)) * 40
        store.put_if_absent("p/ranged", data)
        ranges = [(0, 10), (100, 356), (len(data) - 7, len(data)), (5, 5)]
        assert [bytes(b) for b in store.read_ranges("p/ranged", ranges)] == [data[a:b] for a, b in ranges]
        assert store.read_ranges("p/ranged", []) == []
        with pytest.raises(ObjectNotFound):
            store.read_ranges("p/missing", [(0, 10)])

    def test_exists(self, store: Store) -> None:
        assert not store.exists("e")
        store.put_if_absent("e", b"1")
        assert store.exists("e")

    @pytest.mark.parametrize("key", ["../escape", "/abs", "a//b", "a/./b", "a/../b", "", "a/", "nul\0x"])
    def test_rejects_keys_escaping_the_root(self, store: Store, key: str) -> None:
        with pytest.raises(InvalidId):
            store.put_if_absent(key, b"x")

    # ------------------------------------------------------------------ list

    def test_list_prefix_sorted_with_sizes(self, store: Store) -> None:
        for k in ["journal/w2/I/00000000000000000001.seg", "journal/w1/I/00000000000000000000.seg", "snapshots/1"]:
            store.put_if_absent(k, k.encode())
        listed = store.list("journal/")
        assert [o.path for o in listed] == [
            "journal/w1/I/00000000000000000000.seg",
            "journal/w2/I/00000000000000000001.seg",
        ]
        assert [o.size for o in listed] == [len(o.path) for o in listed]
        assert [o.path for o in store.list("")] == sorted(
            ["journal/w2/I/00000000000000000001.seg", "journal/w1/I/00000000000000000000.seg", "snapshots/1"]
        )

    def test_list_prefix_is_a_string_prefix(self, store: Store) -> None:
        store.put_if_absent("journal/w1/a", b"1")
        store.put_if_absent("journal/w10/a", b"2")
        assert [o.path for o in store.list("journal/w1/")] == ["journal/w1/a"]
        assert [o.path for o in store.list("journal/w1")] == ["journal/w1/a", "journal/w10/a"]

    def test_list_missing_prefix_is_empty(self, store: Store) -> None:
        assert store.list("nothing/here/") == []

    def test_list_many(self, store: Store) -> None:
        keys = [f"many/{i:05d}" for i in range(1100)]  # more than one S3 listing page
        self.raw_put_many(store, dict.fromkeys(keys, b"x"))
        assert [o.path for o in store.list("many/")] == keys

    def test_list_has_mtime(self, store: Store) -> None:
        store.put_if_absent("t", b"1")
        (info,) = store.list("t")
        assert info.mtime is None or info.mtime > 1_600_000_000

    # ------------------------------------------------------------------ delete

    def test_delete(self, store: Store) -> None:
        store.put_if_absent("d/1", b"1")
        store.put_if_absent("d/2", b"2")
        store.delete(["d/1", "d/missing"])
        assert self.raw_get(store, "d/1") is None
        assert store.read("d/2") == b"2"
        assert [o.path for o in store.list("d/")] == ["d/2"]
        store.put_if_absent("d/1", b"again")  # a deleted name can be created again
        assert store.read("d/1") == b"again"

    def test_clear(self, store: Store) -> None:
        store.put_if_absent("c/1", b"1")
        store.put_if_absent("c/2/3", b"2")
        store.clear()
        assert store.list("") == []

    def test_read_many(self, store: Store) -> None:
        store.put_if_absent("m/1", b"one")
        store.put_if_absent("m/2", b"two")
        got = list(store.read_many(["m/2", "m/none", "m/1"]))
        assert [k for k, _ in got] == ["m/2", "m/none", "m/1"]
        assert got[0][1] == b"two" and got[2][1] == b"one"
        assert isinstance(got[1][1], ObjectNotFound)

    # ------------------------------------------------------------------ atomicity

    def test_concurrent_create_has_one_winner(self, store: Store) -> None:
        if not store.atomic_create:
            pytest.skip("backend declares no atomic create")
        for round_ in range(3):
            key = f"race/{round_}"
            wins: list[int] = []
            errors: list[BaseException] = []
            barrier = threading.Barrier(self.race_threads)

            def attempt(
                i: int,
                key: str = key,
                wins: list[int] = wins,
                errors: list[BaseException] = errors,
                barrier: threading.Barrier = barrier,
            ) -> None:
                barrier.wait()
                try:
                    store.put_if_absent(key, f"writer-{i}".encode())
                    wins.append(i)
                except AlreadyExists:
                    pass
                except BaseException as exc:  # noqa: BLE001
                    errors.append(exc)

            threads = [threading.Thread(target=attempt, args=(i,)) for i in range(self.race_threads)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert errors == []
            assert len(wins) == 1, wins
            assert store.read(key) == f"writer-{wins[0]}".encode()

    def test_store_is_usable_through_the_checkpoint_api(
        self, store: Store, checkpoint_factory: Callable[..., Any]
    ) -> None:
        """End to end through the facade on this backend."""
        ck = checkpoint_factory(store)
        with ck.writer("w1") as w:
            w.complete("s1")
            w.emit("s2")
        ck.compact()
        assert sorted(ck.completed) == ["s1"]
        assert ck.pending(["s1", "s2", "s3"]) == ["s2", "s3"]
