"""Local and POSIX network filesystems (NFS, Lustre): temp file + ``os.link`` + fsync.

``os.link`` fails with ``EEXIST`` if the final name exists, which makes the create
atomic on every POSIX filesystem including NFS (where ``O_EXCL`` historically was
not). ``os.rename`` would silently overwrite, and fsspec's local ``mode="create"``
checks then writes; neither is used.

Where Linux offers it (ext4, XFS, btrfs, tmpfs), the temp file has no name at all
(``O_TMPFILE``, linked through ``/proc/self/fd``): a process killed mid-write leaves
nothing behind. Elsewhere (NFS, Lustre, macOS) it is ``<key>.<uuid>.partial`` (the
uuid as 32 lowercase hex digits), which listings ignore and :meth:`LocalStore.clear`
removes: only names of that form (:func:`is_temporary`), so that an object may be named
``x.partial``.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import IO, TypeVar

from resumelog.errors import AlreadyExists, ObjectNotFound, StorageError
from resumelog.storage._base import ObjectInfo, Store, check_key

__all__ = ["LocalStore", "is_temporary"]

_PARTIAL = ".partial"
_TEMPORARY = re.compile(r"\.[0-9a-f]{32}" + re.escape(_PARTIAL) + r"\Z")  # (uuid4().hex: see _create_named)


def is_temporary(name: str) -> bool:
    """Whether a file name is one of :class:`LocalStore`'s temporary files
    (``<key>.<uuid>.partial``): never an object, never listed."""
    return _TEMPORARY.search(name) is not None


_T = TypeVar("_T")

_DIR_ATTEMPTS = 5
"""Creates of a file whose directory a concurrent delete removed meanwhile (each
attempt makes the directory again)."""
_O_TMPFILE: int = getattr(os, "O_TMPFILE", 0)
_NO_TMPFILE = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL})
"""errnos of ``open(O_TMPFILE)`` meaning "not on this filesystem or kernel"."""
_NO_PROC_LINK = frozenset({errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM, errno.EXDEV})
"""errnos of the link through ``/proc/self/fd`` meaning "not possible here"."""


class _NoUnnamedTemp(Exception):
    """The ``O_TMPFILE`` could not be linked to its name; ``never``: not on this
    system (no ``/proc``, or a filesystem that refuses it), so stop trying."""

    def __init__(self, never: bool) -> None:
        super().__init__(never)
        self.never = never


MMAP_MIN = 1 << 20
"""Objects at least this large are memory-mapped by :meth:`LocalStore.read_view`."""


class LocalStore(Store):
    """Objects as files under ``root``."""

    atomic_create = True
    torn_writes_possible = True

    def __init__(self, root: str, *, fsync: bool = True) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))
        self.fsync = fsync
        self.requests: Counter[str] = Counter()
        self.unnamed_temp = bool(_O_TMPFILE)
        """Whether creates go through an ``O_TMPFILE`` (cleared the first time the
        filesystem refuses one; then named ``*.partial`` temp files are used)."""

    @property
    def url(self) -> str:
        return self.root

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *check_key(key).split("/"))

    def _makedirs(self, d: str) -> None:
        missing = []
        while not os.path.isdir(d):
            missing.append(d)
            parent = os.path.dirname(d)
            if parent == d:
                break
            d = parent
        for m in reversed(missing):
            try:
                os.mkdir(m)
            except FileExistsError:
                continue
            if self.fsync:
                _fsync_dir(os.path.dirname(m))

    def _in_dir(self, d: str, make: Callable[[], _T]) -> _T:
        """``make()`` a file in directory ``d`` and return what it returns, ``d`` created
        first if missing; again if the directory vanished meanwhile: :meth:`delete`
        removes the directories it leaves empty, and one may be this one, between its
        creation and the file's (a compaction's layer beside a GC, a writer's first
        segment beside a ``delete``). With ``d`` gone nothing of the file was left (``d``
        was empty)."""
        for _ in range(_DIR_ATTEMPTS - 1):
            self._makedirs(d)
            try:
                return make()
            except FileNotFoundError:
                if os.path.isdir(d):
                    raise
        self._makedirs(d)
        return make()  # (the last attempt: its error is the caller's)

    def put_if_absent(self, key: str, data: bytes | memoryview) -> None:
        self._create(key, [data])

    def put_if_absent_parts(self, key: str, parts: Sequence[bytes | memoryview]) -> None:
        """Written with ``os.writev``: the parts are never joined into one buffer (a
        1 MiB segment's join costs more than its encoding: fresh pages to fault in)."""
        if type(self).put_if_absent is not LocalStore.put_if_absent:
            super().put_if_absent_parts(key, parts)  # a subclass hooks put_if_absent: go through it
        else:
            self._create(key, parts)

    def put_if_absent_file(self, key: str, path: str) -> None:
        """A hard link from ``path`` to ``<key>`` (create-only), then fsync of the file
        and the directory; a copy through :meth:`put_if_absent` if ``path`` is on
        another filesystem (or the filesystem has no hard links). ``path`` must not be
        written to afterwards: it *is* the object. Its modification time is set to now
        first, so that the object's is when it was published (as on an object store),
        not when its bytes were last written: GC judges age by it."""
        self.requests["put"] += 1
        final = self._path(key)
        d = os.path.dirname(final)
        try:
            os.utime(path)
            if self.fsync:
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            try:
                self._in_dir(d, lambda: os.link(path, final))
            except FileExistsError:
                raise AlreadyExists(f"{final} already exists") from None
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                with open(path, "rb") as f:
                    data = f.read()
                self.requests["put"] -= 1  # counted by _create
                self._create(key, [data])
                return
            if self.fsync:
                _fsync_dir(d)
        except AlreadyExists:
            raise
        except OSError as exc:
            raise StorageError(exc.errno or errno.EIO, f"cannot write {final}: {exc.strerror or exc}") from exc

    def open_staging(self, key: str) -> tuple[str, IO[bytes]] | None:
        """The file of ``key``, created (exclusively) in its directory, made first and
        again if a concurrent delete removed it meanwhile (:meth:`_in_dir`; a
        :class:`FileNotFoundError` if it keeps vanishing)."""
        p = self._path(key)
        return p, self._in_dir(os.path.dirname(p), lambda: open(p, "x+b"))

    def _create(self, key: str, parts: Sequence[bytes | memoryview]) -> None:
        """Write a temp file, link it to ``<key>`` (create-only), then fsync the file and
        the directory.

        The link comes before the fsyncs so that one journal commit makes both the data
        and the new name durable (on ext4 and XFS the directory fsync then finds little
        left to write). Readers never see a partial file: every byte is written before
        the name appears. If a sync fails, the name is removed again before the error is
        raised, so a retry writes it anew and never takes unsynced bytes for its own
        earlier success.
        """
        self.requests["put"] += 1
        final = self._path(key)
        d = os.path.dirname(final)

        def make() -> None:
            if not (self.unnamed_temp and self._create_unnamed(d, final, parts)):
                self._create_named(d, final, parts)

        try:
            self._in_dir(d, make)
        except AlreadyExists:
            raise
        except OSError as exc:
            raise StorageError(exc.errno or errno.EIO, f"cannot write {final}: {exc.strerror or exc}") from exc

    def _create_unnamed(self, d: str, final: str, parts: Sequence[bytes | memoryview]) -> bool:
        """The create through an ``O_TMPFILE``; ``False`` if it could not be made or
        linked (the caller then takes the named way, which raises the real error if
        there is one; never again for this store if the system has no ``O_TMPFILE``)."""
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:
                fd = os.open(d, _O_TMPFILE | os.O_WRONLY, 0o644)
            except OSError as exc:
                # any failure: the named way decides (it raises the real error, if any)
                if exc.errno in _NO_TMPFILE:
                    self.unnamed_temp = False
                return False

            def link() -> None:
                try:
                    os.link(f"/proc/self/fd/{fd}", final, src_dir_fd=dfd, follow_symlinks=True)
                except FileExistsError:
                    raise
                except OSError as exc:
                    never = exc.errno in _NO_PROC_LINK or (
                        exc.errno == errno.ENOENT and not os.path.isdir("/proc/self/fd")
                    )
                    raise _NoUnnamedTemp(never) from exc

            try:
                self._write_link_sync(fd, parts, link, final, lambda: _fsync_fd(dfd))
            except _NoUnnamedTemp as exc:
                if exc.never:
                    self.unnamed_temp = False
                return False  # nothing has a name yet: the named way writes it again
            return True
        finally:
            os.close(dfd)

    def _create_named(self, d: str, final: str, parts: Sequence[bytes | memoryview]) -> None:
        """The create through ``<key>.<uuid>.partial`` (removed in every case)."""
        tmp = f"{final}.{uuid.uuid4().hex}{_PARTIAL}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            self._write_link_sync(fd, parts, lambda: os.link(tmp, final), final, lambda: _fsync_dir(d))
        finally:
            _remove_quietly(tmp)  # best effort; listing ignores it (is_temporary)

    def _write_link_sync(
        self,
        fd: int,
        parts: Sequence[bytes | memoryview],
        link: Callable[[], None],
        final: str,
        sync_dir: Callable[[], None],
    ) -> None:
        """Write ``parts`` to the temp file ``fd`` (closed here), ``link()`` it to
        ``final`` (create-only), fsync the file then its directory. If a sync fails,
        ``final`` is removed before the error is raised."""
        linked = False
        try:
            try:
                _write_all(fd, parts)
                try:
                    link()
                except FileExistsError:
                    raise AlreadyExists(f"{final} already exists") from None
                linked = True
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if self.fsync:
                sync_dir()
        except OSError:
            if linked:
                _remove_quietly(final)
            raise

    def read(self, key: str) -> bytes:
        data = self._read(key, mmap_min=None)
        assert isinstance(data, bytes)
        return data

    def read_prefix(self, key: str, n: int) -> bytes:
        self.requests["get"] += 1
        p = self._path(key)
        try:
            with open(p, "rb") as f:
                return f.read(n)
        except FileNotFoundError:
            raise ObjectNotFound(f"{p} does not exist") from None
        except IsADirectoryError:
            raise ObjectNotFound(f"{p} is a directory") from None

    def read_view(self, key: str) -> bytes | memoryview:
        """Objects of 1 MiB and more are memory-mapped (see :meth:`Store.read_view`)."""
        return self._read(key, mmap_min=MMAP_MIN)

    def _read(self, key: str, *, mmap_min: int | None) -> bytes | memoryview:
        self.requests["get"] += 1
        p = self._path(key)
        try:
            with open(p, "rb") as f:
                if mmap_min is not None and os.fstat(f.fileno()).st_size >= mmap_min:
                    return memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
                return f.read()
        except FileNotFoundError:
            raise ObjectNotFound(f"{p} does not exist") from None
        except IsADirectoryError:
            raise ObjectNotFound(f"{p} is a directory") from None
        except OSError as exc:
            raise StorageError(exc.errno or errno.EIO, f"cannot read {p}: {exc.strerror or exc}") from exc

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        self.requests["list"] += 1
        # walk the deepest directory the prefix names, then filter by the full prefix
        head = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = os.path.join(self.root, *head.split("/")) if head else self.root
        out: list[ObjectInfo] = []
        if not os.path.isdir(start):
            return out
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames.sort()
            rel = os.path.relpath(dirpath, self.root)
            rel = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            for name in filenames:
                if is_temporary(name):
                    continue
                key = rel + name
                if not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue
                out.append(ObjectInfo(key, st.st_size, st.st_mtime))
        out.sort(key=lambda o: o.path)
        return out

    def delete(self, keys: Iterable[str]) -> None:
        self.requests["delete"] += 1
        dirs = set()
        for k in keys:
            p = self._path(k)
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise StorageError(exc.errno or errno.EIO, f"cannot delete {p}: {exc.strerror or exc}") from exc
            dirs.add(os.path.dirname(p))
        # remove directories left empty (journal/<writer>/<incarnation>/), never the root
        for d in sorted(dirs, key=len, reverse=True):
            while d.startswith(self.root + os.sep):
                try:
                    os.rmdir(d)
                except OSError:
                    break
                d = os.path.dirname(d)

    def clear(self) -> None:
        super().clear()
        for dirpath, _dirs, files in os.walk(self.root, topdown=False):
            for f in files:
                if is_temporary(f):
                    os.unlink(os.path.join(dirpath, f))
            if dirpath != self.root:
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (LocalStore, (self.root,))


def _fsync_dir(d: str) -> None:
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        _fsync_fd(fd)
    finally:
        os.close(fd)


def _fsync_fd(dfd: int) -> None:
    """fsync a directory; some filesystems refuse it (the name is then as durable as
    they make it)."""
    try:
        os.fsync(dfd)
    except OSError:
        pass


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


_IOV_MAX = 1024


def _write_all(fd: int, parts: Sequence[bytes | memoryview]) -> None:
    """``os.writev`` every byte of ``parts`` (short writes resumed)."""
    views = [memoryview(p) for p in parts if len(p)]
    while views:
        n = os.writev(fd, views[:_IOV_MAX])
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if n:
            views[0] = views[0][n:]
