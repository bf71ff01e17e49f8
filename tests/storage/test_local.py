from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from resumelog.storage import LocalStore
from resumelog.storage._local import is_temporary
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


class TestLocalStoreNamedTemp(TestLocalStore):
    """The same suite through named ``*.partial`` temp files: what filesystems without
    ``O_TMPFILE`` (NFS, Lustre, macOS) use."""

    @pytest.fixture
    def store(self, tmp_path) -> LocalStore:
        s = LocalStore(str(tmp_path / "root"))
        s.unnamed_temp = False
        return s


KILL_CHILD = """
import os, sys
from resumelog.storage import LocalStore
store = LocalStore(sys.argv[1])
blob = bytes(range(256)) * (4 << 12)  # 4 MiB: a write takes milliseconds
i = 0
while True:
    store.put_if_absent(f"objs/{i:06d}", blob)
    if i == 0:
        print("unnamed" if store.unnamed_temp else "named", flush=True)
    i += 1
"""


def test_sigkill_mid_create_leaves_only_whole_objects(tmp_path):
    """A process killed while creating objects leaves every named object whole (names
    appear only after every byte is written) and, with unnamed temp files, no
    leftover at all; named ``*.partial`` leftovers are invisible to listings."""
    blob = bytes(range(256)) * (4 << 12)
    modes = set()
    for attempt in range(8):
        root = tmp_path / f"r{attempt}"
        p = subprocess.Popen([sys.executable, "-c", KILL_CHILD, str(root)], stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None
        modes.add(p.stdout.readline().strip())
        time.sleep(0.005 + 0.007 * attempt)  # somewhere inside a create
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        names = sorted(os.listdir(root / "objs"))
        objs = [n for n in names if not is_temporary(n)]
        assert objs and objs == [f"{i:06d}" for i in range(len(objs))]
        assert all((root / "objs" / n).read_bytes() == blob for n in objs)
        store = LocalStore(str(root))
        assert [o.path for o in store.list("objs/")] == [f"objs/{n}" for n in objs]
        if store.unnamed_temp and modes == {"unnamed"}:
            assert names == objs, "an unnamed temp file left a name behind"
    assert modes <= {"unnamed", "named"} and len(modes) == 1


def test_partial_files_are_invisible_and_cleaned(tmp_path):
    store = LocalStore(str(tmp_path))
    store.put_if_absent("a/b", b"1")
    (tmp_path / "a" / f"b.{uuid.uuid4().hex}.partial").write_bytes(b"half")  # a killed create's
    # an object may end in .partial (an output named so was published and never listed)
    store.put_if_absent("a/c.partial", b"2")
    store.put_if_absent(f"a/d.{uuid.uuid4().hex.upper()}.partial", b"3")  # (not the temp form)
    assert [o.path for o in store.list("")][:2] == ["a/b", "a/c.partial"]
    assert len(store.list("")) == 3 and store.read("a/c.partial") == b"2"
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


class _DeletedUnderIt(LocalStore):
    """A store whose directory a concurrent ``delete`` removes right after it was
    made, ``times`` times (what a GC removing the directories it empties does to a
    compaction writing its first object there)."""

    def __init__(self, root: str, times: int) -> None:
        super().__init__(root)
        self.times = times

    def _makedirs(self, d: str) -> None:
        super()._makedirs(d)
        if self.times > 0:
            self.times -= 1
            os.rmdir(d)


@pytest.mark.parametrize("unnamed", [True, False])
def test_a_create_whose_directory_a_delete_removed_meanwhile_makes_it_again(tmp_path, unnamed):
    store = _DeletedUnderIt(str(tmp_path / "r"), times=2)
    store.unnamed_temp = unnamed
    store.put_if_absent("layers/1.layer", b"one")
    assert store.read("layers/1.layer") == b"one"
    staged = tmp_path / "staged"
    staged.write_bytes(b"two")
    store.times = 2
    store.put_if_absent_file("outputs/2.out", str(staged))
    assert store.read("outputs/2.out") == b"two"
    assert store.times == 0  # (both raced twice)


def test_a_create_whose_directory_keeps_vanishing_fails_with_a_storage_error(tmp_path):
    from resumelog.errors import StorageError

    store = _DeletedUnderIt(str(tmp_path / "r"), times=100)
    with pytest.raises(StorageError, match="cannot write"):
        store.put_if_absent("layers/1.layer", b"one")
    assert not store.exists("layers/1.layer")


def test_a_published_file_is_as_old_as_its_publish(tmp_path):
    # a hard link shares the file's mtime: that of its last write, maybe long before the
    # publish (output GC judges an output's age by it)
    store = LocalStore(str(tmp_path / "root"))
    spool = tmp_path / "spool"
    spool.write_bytes(b"bytes")
    past = time.time() - 7200
    os.utime(spool, (past, past))
    store.put_if_absent_file("a/b", str(spool))
    (o,) = store.list("a/")
    assert o.mtime is not None and o.mtime > time.time() - 60
    assert store.read("a/b") == b"bytes"
