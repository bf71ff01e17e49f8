"""In-process memory backend (``memory://name``): a dict behind a lock."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable

from resumelog.errors import AlreadyExists, ObjectNotFound
from resumelog.storage._base import ObjectInfo, Store, check_key

__all__ = ["MemoryStore"]

_REGISTRY: dict[str, tuple[threading.Lock, dict[str, tuple[bytes, float]]]] = {}
_REGISTRY_LOCK = threading.Lock()


class MemoryStore(Store):
    """Objects in a process-global dict; stores with the same ``name`` share data.

    ``put_if_absent`` checks and inserts under one lock (fsspec's ``MemoryFileSystem``
    checks then writes, which is not atomic). Data lives as long as the process.
    """

    atomic_create = True
    torn_writes_possible = False

    def __init__(self, name: str = "default") -> None:
        self.name = name.strip("/") or "default"
        self.requests: Counter[str] = Counter()
        with _REGISTRY_LOCK:
            self._lock, self._data = _REGISTRY.setdefault(self.name, (threading.Lock(), {}))

    @property
    def url(self) -> str:
        return f"memory://{self.name}"

    def put_if_absent(self, key: str, data: bytes | memoryview) -> None:
        check_key(key)
        self.requests["put"] += 1
        with self._lock:
            if key in self._data:
                raise AlreadyExists(f"{self.url}/{key} already exists")
            self._data[key] = (bytes(data), time.time())

    def read(self, key: str) -> bytes:
        check_key(key)
        self.requests["get"] += 1
        with self._lock:
            item = self._data.get(key)
        if item is None:
            raise ObjectNotFound(f"{self.url}/{key} does not exist")
        return item[0]

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        self.requests["list"] += 1
        with self._lock:
            items = [(k, v) for k, v in self._data.items() if k.startswith(prefix)]
        return [ObjectInfo(k, len(v[0]), v[1]) for k, v in sorted(items)]

    def delete(self, keys: Iterable[str]) -> None:
        self.requests["delete"] += 1
        with self._lock:
            for k in keys:
                self._data.pop(k, None)

    def exists(self, key: str) -> bool:
        with self._lock:
            return key in self._data

    def set_mtime(self, key: str, mtime: float) -> None:
        """Test hook: pretend ``key`` was written at ``mtime``."""
        with self._lock:
            data, _ = self._data[key]
            self._data[key] = (data, mtime)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (MemoryStore, (self.name,))
