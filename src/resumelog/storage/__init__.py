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
    _check_protocol(str(url))
    from resumelog.storage._fsspec import FsspecStore

    return FsspecStore(url, opts, single_writer=single_writer)


_SUPPORTED = ["file", "memory", "s3", "gs", "gcs"]


def _check_protocol(url: str) -> None:
    """Raise :class:`UnsupportedBackend` for a protocol fsspec does not know (a typo such
    as ``htp://``), parsing the URL the way fsspec does."""
    try:
        from fsspec.core import split_protocol
        from fsspec.registry import available_protocols
    except ImportError:  # pragma: no cover - fsspec is a dependency
        return
    proto, _ = split_protocol(url)
    if proto is None:
        return
    known = available_protocols()
    if proto not in known:
        import difflib

        close = difflib.get_close_matches(proto, _SUPPORTED, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]}://?)" if close else ""
        raise UnsupportedBackend(
            f"unknown protocol {proto}://{hint}: fsspec knows no such filesystem; a checkpoint lives on a local "
            "path, file://, memory://, s3:// or gs://"
        )


def __getattr__(name: str) -> Any:
    if name == "FsspecStore":
        from resumelog.storage._fsspec import FsspecStore

        return FsspecStore
    raise AttributeError(name)


_ = UnsupportedBackend  # re-exported for callers that catch it from here
