"""The storage interface every backend implements (``Store``) and its object listing type."""

from __future__ import annotations

import posixpath
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO

from resumelog.errors import InvalidId

__all__ = ["ObjectInfo", "Store", "check_key"]


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object: ``path`` relative to the store root, ``size`` in bytes,
    ``mtime`` in seconds since the epoch (``None`` if the backend does not say)."""

    path: str
    size: int
    mtime: float | None = None


def check_key(key: str) -> str:
    """Refuse object keys that could escape the checkpoint root."""
    if (
        not key
        or key.startswith("/")
        or "\\" in key
        or "\0" in key
        or any(part in ("", ".", "..") for part in key.split("/"))
        or posixpath.normpath(key) != key
    ):
        raise InvalidId(f"invalid object key {key[:80]!r}: must be a relative path without '.', '..' or empty parts")
    return key


class Store(ABC):
    """A flat namespace of immutable objects under one root.

    Five operations — create-only put, read, list under a prefix, delete, and
    ``clear`` — plus capability flags. The journal, compactor and readers use nothing
    else, so a backend is correct iff it passes
    :class:`resumelog.testing.store.StoreTests`.
    """

    #: ``put_if_absent`` is atomic: of N concurrent creators exactly one succeeds.
    atomic_create: bool = True
    #: A crash can leave a truncated object visible (local filesystems).
    torn_writes_possible: bool = False
    #: Requests made by this store object, by operation (S3 API names for S3).
    requests: Counter[str]

    @property
    @abstractmethod
    def url(self) -> str:
        """Where the store lives, for messages (never contains credentials)."""

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes | memoryview) -> None:
        """Create ``key`` with ``data``; raise :class:`~resumelog.errors.AlreadyExists`
        if it exists. When this returns, the object is durable.

        ``data`` may be a read-only memoryview, e.g. of a memory-mapped file (a large
        layer of the completed-id index, spooled to a temporary file): backends must
        not copy it whole into memory unless they keep objects in memory anyway."""

    def put_if_absent_parts(self, key: str, parts: Sequence[bytes | memoryview]) -> None:
        """:meth:`put_if_absent` of the concatenation of ``parts``. Backends that can
        write scattered buffers (local files: ``os.writev``) override this to skip the
        copy; the default joins them."""
        self.put_if_absent(key, b"".join(parts))

    def put_if_absent_file(self, key: str, path: str) -> None:
        """:meth:`put_if_absent` of the bytes of the local file ``path`` (left in place).

        Backends that can take the file without reading it into memory override this
        (local files: a hard link). The default reads it whole."""
        with open(path, "rb") as f:
            data = f.read()
        self.put_if_absent(key, data)

    def open_staging(self, key: str) -> tuple[str, IO[bytes]] | None:
        """A new local file for object ``key``, open for writing, and its path, if
        objects are local files (its directory created), so that a file written there
        can be handed to :meth:`put_if_absent_file` without a copy; ``None`` otherwise
        (spool the file elsewhere, e.g. in the system's temporary directory)."""
        return None

    @abstractmethod
    def read(self, key: str) -> bytes:
        """Return the bytes of ``key``; :class:`~resumelog.errors.ObjectNotFound` if absent."""

    def read_view(self, key: str) -> bytes | memoryview:
        """Like :meth:`read`, but the result may be a read-only view of a memory map
        (local files), so that the parts of a large object never looked at are never
        read. Objects are immutable, so the view stays valid."""
        return self.read(key)

    def read_prefix(self, key: str, n: int) -> bytes:
        """The first ``n >= 1`` bytes of ``key`` (all of it if shorter): one ranged request on
        object stores. :class:`~resumelog.errors.ObjectNotFound` if absent."""
        return bytes(self.read(key)[:n])

    def read_prefixes(self, items: Sequence[tuple[str, int]]) -> list[bytes]:
        """:meth:`read_prefix` of each ``(key, n)``, in order: object stores issue the
        ranged requests concurrently (the heads of a snapshot's layers, at open).
        :class:`~resumelog.errors.ObjectNotFound` if a key is absent."""
        return [self.read_prefix(key, n) for key, n in items]

    def read_ranges(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[bytes | memoryview]:
        """The bytes ``[start, end)`` of ``key`` for each of ``ranges`` (within the object;
        object stores issue the ranged requests concurrently).
        :class:`~resumelog.errors.ObjectNotFound` if absent."""
        data = self.read_view(key)
        return [data[a:b] for a, b in ranges]

    def read_to_file(self, key: str, path: str) -> int:
        """Write the bytes of ``key`` to the local file ``path`` (created, or truncated)
        and return how many. Object stores stream them (one GET, never whole in memory:
        a large layer read whole goes to a file and is memory-mapped); the default writes
        :meth:`read_view`'s bytes. :class:`~resumelog.errors.ObjectNotFound` if absent
        (``path`` is then not created)."""
        data = self.read_view(key)
        with open(path, "wb") as f:
            f.write(data)
        return len(data)

    def read_many(self, keys: Sequence[str]) -> Iterator[tuple[str, bytes | BaseException]]:
        """Read several objects; yield ``(key, bytes or the exception)`` in input order.

        Backends with request latency override this to read concurrently.
        """
        for k in keys:
            try:
                yield k, self.read(k)
            except Exception as exc:  # noqa: BLE001 - handed to the caller per key
                yield k, exc

    @abstractmethod
    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (recursive), sorted by key."""

    @abstractmethod
    def delete(self, keys: Iterable[str]) -> None:
        """Delete objects; missing ones are ignored."""

    def clear(self) -> None:
        """Delete every object under the root."""
        self.delete(o.path for o in self.list(""))

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists (by reading; backends may do better)."""
        from resumelog.errors import ObjectNotFound

        try:
            self.read(key)
        except ObjectNotFound:
            return False
        return True

    def missing_root(self) -> str | None:
        """Why the root cannot hold anything at all, e.g. ``"bucket 'x' does not exist"``;
        ``None`` if it can, or if the backend cannot tell.

        A diagnostic for callers that found nothing under the root and want to say why
        (one request at most; never raises).
        """
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
