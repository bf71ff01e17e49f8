"""Storage backends behind one small interface, :class:`Store`.

``open_store(url)`` picks the backend from the URL: a plain path or ``file://`` gives
:class:`LocalStore`, ``memory://name`` gives :class:`MemoryStore`, and object-store
URLs (``s3://``, ``gs://``/``gcs://``) give :class:`FsspecStore`, imported lazily
with an install hint if its package is missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from resumelog.errors import UnsupportedBackend
from resumelog.storage._base import ObjectInfo, Store, check_key
from resumelog.storage._local import LocalStore
from resumelog.storage._memory import MemoryStore

__all__ = ["FsspecStore", "LocalStore", "MemoryStore", "ObjectInfo", "Store", "check_key", "open_store", "split_url"]


def __dir__() -> list[str]:
    return __all__


def split_url(url: str) -> tuple[str, str]:
    """``(protocol, path)``; a plain path has protocol ``"file"``."""
    if "://" in url:
        proto, _, rest = url.partition("://")
        return proto.lower(), rest
    return "file", url


def open_store(url: str, storage_options: Mapping[str, Any] | None = None, *, single_writer: bool = False) -> Store:
    """Open the backend for ``url``.

    Raises :class:`~resumelog.errors.UnsupportedBackend` for a filesystem without an
    atomic create-only write unless ``single_writer=True``.
    """
    proto, path = split_url(str(url))
    opts = dict(storage_options or {})
    if proto in ("file", "local"):
        return LocalStore(path, **opts)
    if proto == "memory":
        return MemoryStore(path)
    from resumelog.storage._fsspec import FsspecStore

    return FsspecStore(url, opts, single_writer=single_writer)


def __getattr__(name: str) -> Any:
    if name == "FsspecStore":
        from resumelog.storage._fsspec import FsspecStore

        return FsspecStore
    raise AttributeError(name)


_ = UnsupportedBackend  # re-exported for callers that catch it from here
