"""A local read-through cache of snapshots read from object stores.

A snapshot is immutable, but its *name* is not unique forever: a cleared checkpoint
numbers its snapshots from 1 again. So a cached copy is used only if its header
``nonce`` (random per snapshot write, docs/format.md §5) equals the remote one, read
with one ranged GET of the object's first bytes. A hit then costs that small GET
instead of downloading the whole snapshot, and the copy is memory-mapped, so the
done-entry frames are never read unless used. A miss downloads once and keeps the
bytes (a layer of :data:`RANGED_MIN` bytes or more is streamed into its copy and
mapped, never held whole in memory). Layers (format version 5 on) are cached the same way; their snapshot names each
layer's nonce, so a cached layer is used without any request. A reader that finds a
large version-6 layer not cached reads it in parts instead (its head, then the blocks
its lookups need: :class:`RangedLayer`), and caches it whole only if it comes to read
most of it.

Where: ``$RESUMELOG_CACHE_DIR``, else ``$XDG_CACHE_HOME/resumelog`` or
``~/.cache/resumelog``; ``RESUMELOG_CACHE_DIR=off`` turns it off. At most
``$RESUMELOG_CACHE_MAX_BYTES`` (default 20 GiB): the least recently used copies go
first. Local and memory stores are never cached (they are read in place). The cache is
shared by processes: copies are written to a temporary name and renamed, so a reader
never sees half a copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import mmap
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from resumelog.errors import CorruptSnapshot
from resumelog.format import (
    HEADER_PREFIX,
    KIND_LAYER,
    KIND_SNAPSHOT,
    LayerHeader,
    LayerRef,
    SnapshotHeader,
    decode_header,
)
from resumelog.layers import LayerSource, spool_dir
from resumelog.paths import LAYER_PREFIX
from resumelog.storage import Store

__all__ = ["Prefetched", "RangedLayer", "cache_dir", "evict", "prefetch_layers", "read_layer", "read_snapshot"]

logger = logging.getLogger("resumelog")

DEFAULT_MAX_BYTES = 20 << 30


def cache_dir() -> Path | None:
    """The cache directory (``None``: caching is off)."""
    env = os.environ.get("RESUMELOG_CACHE_DIR")
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "none") else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "resumelog"


def _cacheable(store: Store) -> bool:
    from resumelog.storage._fsspec import FsspecStore

    return isinstance(store, FsspecStore) and not store.url.startswith(("file://", "local://"))


def _entry(root: Path, store: Store, key: str) -> Path:
    digest = hashlib.sha256(f"{store.url}\0{key}".encode()).hexdigest()
    if key.startswith(LAYER_PREFIX):
        return root / "layers" / digest[:2] / f"{digest}.layer"
    return root / "snapshots" / digest[:2] / f"{digest}.snap"


def read_snapshot(store: Store, key: str) -> tuple[bytes | memoryview, bool]:
    """The bytes of snapshot ``key`` of ``store``, and whether they are a cached copy:
    the copy if it is the same snapshot write, else read from the store (and cached).
    Never stale."""
    root = cache_dir()
    if root is None or not _cacheable(store):
        return store.read_view(key), False
    path = _entry(root, store, key)
    try:
        remote = decode_header(store.read_prefix(key, HEADER_PREFIX), KIND_SNAPSHOT, key)
    except CorruptSnapshot:
        remote = None  # the loader reads it whole and reports the corruption
    if isinstance(remote, SnapshotHeader):
        cached = _open_copy(path, remote.nonce)
        if cached is not None:
            return cached, True
    data = store.read(key)
    if isinstance(remote, SnapshotHeader):
        _store_copy(root, path, data)
    return data, False


class Prefetched(NamedTuple):
    """What :func:`prefetch_layers` read of a layer: its head, or all of it."""

    data: bytes
    head: bool
    """``True``: the first ``LayerRef.head`` bytes (the rest read in parts)."""


def _read_in_parts(ref: LayerRef) -> bool:
    return bool(ref.head) and ref.size >= RANGED_MIN


def prefetch_layers(store: Store, refs: Sequence[LayerRef]) -> dict[str, Prefetched]:
    """The first read :func:`read_layer` (``lazy``) would make of each layer of ``refs``
    not in the cache, made at once: the heads of those read in parts (ranged GETs, issued
    concurrently) and the small ones whole (concurrently too), so that opening a snapshot
    of many layers costs one round trip, not one per layer. Empty on local and memory
    stores, for a single layer, or if any read fails: :func:`read_layer` then reads each
    itself and names what is wrong."""
    if len(refs) < 2 or not _cacheable(store):
        return {}
    root = cache_dir()
    heads: list[LayerRef] = []
    wholes: list[LayerRef] = []
    for ref in refs:
        if root is not None and _entry(root, store, ref.name).exists():
            continue  # (probably cached: read_layer checks the copy)
        if _read_in_parts(ref):
            heads.append(ref)
        elif ref.size < RANGED_MIN:  # (a large one read whole goes to a file: read_layer)
            wholes.append(ref)
    out: dict[str, Prefetched] = {}
    try:
        if heads:
            got = store.read_prefixes([(ref.name, ref.head) for ref in heads])
            out.update((ref.name, Prefetched(head, True)) for ref, head in zip(heads, got))
        for key, data in store.read_many([ref.name for ref in wholes]):
            if isinstance(data, BaseException):
                return {}
            out[key] = Prefetched(data, False)
    except Exception:  # noqa: BLE001 - read again one by one, where the error is named
        return {}
    return out


def read_layer(
    store: Store, ref: LayerRef, *, lazy: bool = False, prefetched: Prefetched | None = None
) -> tuple[bytes | memoryview | LayerSource, bool]:
    """The layer ``ref`` names, and whether it is a cached copy: the copy if its header
    nonce is the one the snapshot names (no request at all), else read from the store
    (and cached).

    ``lazy`` (a reader): a version-6 layer of :data:`RANGED_MIN` bytes or more that is not
    cached, on an object store, is read in parts: its head now (one ranged GET), then the
    blocks lookups need (:class:`RangedLayer`). ``prefetched``: what
    :func:`prefetch_layers` read of it (not read again)."""
    root = cache_dir()
    if not _cacheable(store):
        return store.read_view(ref.name), False
    path = _entry(root, store, ref.name) if root is not None else None
    if path is not None:
        cached = _open_copy(path, ref.nonce, KIND_LAYER)
        if cached is not None:
            return cached, True
    if lazy and _read_in_parts(ref):
        head = prefetched.data if prefetched is not None and prefetched.head else store.read_prefix(ref.name, ref.head)
        return LayerSource(head, RangedLayer(store, ref, root, path)), False
    whole = prefetched.data if prefetched is not None and not prefetched.head else None
    return _read_whole(store, ref, root, path, whole), False


def _read_whole(
    store: Store, ref: LayerRef, root: Path | None, path: Path | None, data: bytes | None = None
) -> bytes | memoryview:
    """Layer ``ref`` read whole (``data``: already read), and cached. One of
    :data:`RANGED_MIN` bytes or more is streamed to a file and memory-mapped, never held
    whole in the process's own memory (its pages are the kernel's to drop and read
    again): to the cache copy itself, or, with the cache off or not writable, to an
    unnamed file in the spool directory (:func:`~resumelog.layers.spool_dir`, as a
    merge's output)."""
    if data is not None or ref.size < RANGED_MIN:
        data = store.read(ref.name) if data is None else data
        if root is not None and path is not None:
            _store_copy(root, path, data)
        return data
    if root is not None and path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".partial")
            os.close(fd)
        except OSError as exc:
            logger.debug("resumelog: snapshot cache not written (%s)", exc)
        else:
            try:
                view = _download(store, ref.name, tmp)
                os.replace(tmp, path)  # (the map stays valid)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            _trim(root)
            return view
    fd, tmp = tempfile.mkstemp(dir=spool_dir(), suffix=".layer")
    os.close(fd)
    try:
        return _download(store, ref.name, tmp)
    finally:
        os.unlink(tmp)  # (the map keeps the unnamed file)


def _download(store: Store, key: str, tmp: str) -> memoryview:
    """``key`` streamed into the file ``tmp``, memory-mapped (read-only)."""
    store.read_to_file(key, tmp)
    with open(tmp, "rb") as f:
        return memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))


RANGED_MIN = 4 << 20
"""Layers smaller than this are read whole (one GET either way)."""

RANGED_CALLS = 16
"""After this many ranged reads of one layer, the next reads it whole (and caches it):
a fold of a long journal tail that looks ids up one at a time costs a bounded number
of extra requests."""


class RangedLayer:
    """Reads byte ranges of one stored layer (its blocks), concurrently, until reading
    it whole is cheaper: past :data:`RANGED_CALLS` reads, or once the ranges would add
    up to a quarter of the object. Then the layer is read whole, once, and cached."""

    def __init__(self, store: Store, ref: LayerRef, root: Path | None, path: Path | None) -> None:
        self.store = store
        self.ref = ref
        self._root = root
        self._path = path
        self.calls = 0
        self.fetched = 0
        self._whole: memoryview | None = None

    def __call__(self, ranges: list[tuple[int, int]]) -> list[bytes | memoryview]:
        if self._whole is None:
            want = sum(b - a for a, b in ranges)
            self.calls += 1
            if self.calls <= RANGED_CALLS and 4 * (self.fetched + want) < self.ref.size:
                self.fetched += want
                return self.store.read_ranges(self.ref.name, ranges)
            self._whole = memoryview(_read_whole(self.store, self.ref, self._root, self._path))
        whole = self._whole
        return [whole[a:b] for a, b in ranges]


def evict(store: Store, key: str) -> None:
    """Drop the cached copy of ``key`` (it failed a check after it was used)."""
    root = cache_dir()
    if root is not None and _cacheable(store):
        with contextlib.suppress(OSError):
            _entry(root, store, key).unlink()


def _open_copy(path: Path, nonce: bytes, kind: int = KIND_SNAPSHOT) -> memoryview | None:
    try:
        with open(path, "rb") as f:
            header = decode_header(f.read(HEADER_PREFIX), kind, str(path))
            if not isinstance(header, (SnapshotHeader, LayerHeader)) or header.nonce != nonce:
                return None
            view = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
    except (OSError, ValueError, CorruptSnapshot):
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # recently used
    return view


def _store_copy(root: Path, path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".partial")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        _trim(root)
    except OSError as exc:  # a cache that cannot be written is no cache, not an error
        logger.debug("resumelog: snapshot cache not written (%s)", exc)


def _trim(root: Path) -> None:
    """Delete the least recently used copies past ``$RESUMELOG_CACHE_MAX_BYTES``."""
    max_bytes = int(os.environ.get("RESUMELOG_CACHE_MAX_BYTES", DEFAULT_MAX_BYTES))
    entries = []
    for p in [*(root / "snapshots").glob("*/*.snap"), *(root / "layers").glob("*/*.layer")]:
        with contextlib.suppress(OSError):
            st = p.stat()
            entries.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in entries)
    for _, size, p in sorted(entries, key=lambda e: e[0]):
        if total <= max_bytes:
            break
        with contextlib.suppress(OSError):
            p.unlink()
            total -= size
