"""Object stores through fsspec: S3 (s3fs) and GCS (gcsfs) with create-only writes.

``put_if_absent`` sends a conditional create: s3fs ``pipe_file(mode="create")`` adds
``If-None-Match: *`` (HTTP 412 if the key exists), gcsfs adds ``ifGenerationMatch=0``.
Servers and client versions report a failed precondition differently (s3fs raises
``FileExistsError`` when the response names the ``If-None-Match`` condition, and an
``OSError(EINVAL)`` "pre-conditions ... did not hold" otherwise; AWS answers 409
``ConditionalRequestConflict`` while a competing create is in flight). Every such
answer is confirmed by reading the object back: if it holds exactly our bytes, an
earlier attempt of ours succeeded and only its response was lost (an ambiguous retry),
so the create succeeded; if it holds other bytes, :class:`AlreadyExists`; if there is
nothing, the conflict was transient and the create is retried with jittered backoff.

Listing is one paginated listing per prefix (no per-object HEAD); reading many objects
runs concurrently through fsspec's async batch ``cat``.

``put_if_absent_file`` (how outputs are published) streams files larger than
``multipart_threshold`` on S3 as a *create-only multipart upload*, and so does
``put_if_absent`` of larger data (a large layer of the completed-id index, a read-only
view of a memory-mapped temporary file; and above 5 GB, S3's limit of one ``PUT``): the
parts are read from the file or buffer a few at a time (memory stays near
``multipart_concurrency`` x ``multipart_part_size`` whatever the object's size) and ``CompleteMultipartUpload``
carries ``If-None-Match: *``, so the object appears whole or not at all, and never
over an existing one (AWS S3, moto and SeaweedFS all refuse it with HTTP 412). The
upload carries a random nonce as user metadata: a complete whose first attempt landed
but whose answer was lost is recognised by it (one ``HeadObject``), a publisher that
loses gets :class:`AlreadyExists` and its upload is aborted.
"""

from __future__ import annotations

import errno
import io
import os
import random
import secrets
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from resumelog.errors import AlreadyExists, ObjectNotFound, StorageError, UnsupportedBackend
from resumelog.storage._base import ObjectInfo, Store, check_key

__all__ = ["FsspecStore"]

#: protocols whose fsspec implementation does an atomic create-only write
ATOMIC_CREATE_PROTOCOLS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}
_INSTALL_HINT = {"s3fs": "pip install 'resumelog[s3]'", "gcsfs": "pip install 'resumelog[gcs]'"}
_TRANSIENT_MARKERS = ("ConditionalRequestConflict", "SlowDown", "ServiceUnavailable", "503", "409", "Throttl")

READ_WINDOW = 2
""":meth:`FsspecStore.read_many` reads this many times ``concurrency`` objects at a time
(64 segments of 1 MiB by default), so that folding a long journal holds a window of it,
not all of it."""
MULTIPART_MIN_PART = 5 << 20
"""S3's smallest part (all parts but the last)."""
MULTIPART_MAX_PARTS = 10_000
"""S3's largest number of parts of one upload."""
DEFAULT_MULTIPART_THRESHOLD = 16 << 20
"""Files (and data) larger than this are published by :meth:`FsspecStore.put_if_absent_file`
(:meth:`FsspecStore.put_if_absent`) as a create-only multipart upload (S3), smaller ones
by one conditional ``PUT``."""
_NONCE_META = "resumelog-nonce"

PartReader = Callable[[int, int], "io.RawIOBase"]
"""``(start, length)`` -> a stream of those bytes of an object being uploaded in parts."""


@contextmanager
def _signals_kept_for_the_main_thread() -> Iterator[None]:
    """Block SIGTERM and SIGINT in this (main) thread while fsspec may start its threads.

    An async filesystem starts fsspec's event-loop thread (``fsspecIO``) when it is
    created, and that loop starts its executor's threads; threads inherit the signal
    mask of their creator. With these signals blocked there, the kernel hands a
    process-directed SIGTERM or SIGINT to the main thread, where Python's handlers
    (resumelog's flush on SIGTERM, ``KeyboardInterrupt``) run at once, instead of to
    the loop thread, where it would wait for the main thread's next bytecode. Only on
    the main thread (where the loop is usually first started) and where
    ``pthread_sigmask`` exists; signals arriving meanwhile are delivered on exit.
    """
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class FsspecStore(Store):
    """A :class:`Store` on an fsspec object-store filesystem rooted at ``url``.

    Parameters
    ----------
    url
        ``s3://bucket/prefix`` or ``gs://bucket/prefix``.
    storage_options
        Passed to the fsspec filesystem (credentials, ``client_kwargs``, ...). Listing
        caches are disabled unless you set ``use_listings_cache`` yourself.
    single_writer
        Accept a protocol without an atomic create (only one process may write).
    max_attempts
        Attempts for a create that meets a transient conflict or throttling.
    concurrency
        Parallel reads in :meth:`read_many`.
    multipart_threshold
        :meth:`put_if_absent_file` of a larger file (or :meth:`put_if_absent` of more
        data) streams it as a create-only multipart upload (S3); a smaller one is read
        into memory and sent as one conditional ``PUT``.
    multipart_part_size
        Bytes per part (at least 5 MiB; larger when the file would need more than
        10,000 parts).
    multipart_concurrency
        Parts uploaded at once: a publish holds about ``multipart_concurrency`` x
        ``multipart_part_size`` bytes in memory.
    """

    def __init__(
        self,
        url: str,
        storage_options: Mapping[str, Any] | None = None,
        *,
        single_writer: bool = False,
        max_attempts: int = 8,
        concurrency: int = 32,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        multipart_part_size: int = DEFAULT_MULTIPART_THRESHOLD,
        multipart_concurrency: int = 4,
    ) -> None:
        import fsspec

        if multipart_threshold < 0 or multipart_concurrency < 1:
            raise ValueError("multipart_threshold must be >= 0 and multipart_concurrency >= 1")

        proto, _, path = url.partition("://")
        proto = proto.lower()
        self.protocol = proto
        self.atomic_create = proto in ATOMIC_CREATE_PROTOCOLS
        if not self.atomic_create and not single_writer:
            raise UnsupportedBackend(
                f"{proto}:// has no atomic create-only write, so concurrent writers could overwrite each other; "
                "pass single_writer=True if exactly one process ever writes to this checkpoint"
            )
        opts = dict(storage_options or {})
        self.storage_options = dict(opts)
        opts.setdefault("use_listings_cache", False)
        opts.setdefault("skip_instance_cache", True)
        try:
            with _signals_kept_for_the_main_thread():
                self.fs = fsspec.filesystem(proto, **opts)
        except ImportError as exc:
            pkg = ATOMIC_CREATE_PROTOCOLS.get(proto, proto)
            hint = _INSTALL_HINT.get(pkg, f"install the fsspec backend for {proto}://")
            raise ImportError(f"{proto}:// needs {pkg}: {hint}") from exc
        self.root = path.strip("/")
        if not self.root:
            raise ValueError(f"{url!r}: name a bucket (and optionally a prefix)")
        self._url = f"{proto}://{self.root}"
        self.max_attempts = max_attempts
        self.concurrency = concurrency
        self.multipart_threshold = multipart_threshold
        self.multipart_part_size = max(multipart_part_size, MULTIPART_MIN_PART)
        self.multipart_concurrency = multipart_concurrency
        self.requests: Counter[str] = Counter()
        self.bytes_read = 0
        """Bytes this store read by :meth:`read` and :meth:`read_prefix` (for benchmarks)."""
        # s3fs sends a HEAD before every whole-object GET to decide on ranged reads
        self._cat_kwargs: dict[str, Any] = {"max_concurrency": 1} if proto in ("s3", "s3a") else {}
        self._hooked = False

    @property
    def url(self) -> str:
        return self._url

    def missing_root(self) -> str | None:
        """``"bucket 'x' does not exist ..."`` when the bucket is not there (or these
        credentials cannot see it); ``None`` otherwise or when the check fails."""
        bucket = self.root.split("/", 1)[0]
        try:
            found = bool(self._do(self.fs.exists, bucket))
        except Exception:  # noqa: BLE001 - a diagnostic only: "cannot tell"
            return None
        if found:
            return None
        return f"bucket {bucket!r} does not exist at {self.protocol}:// (or these credentials cannot see it)"

    def _full(self, key: str) -> str:
        return f"{self.root}/{check_key(key)}"

    # ------------------------------------------------------------------ request counting

    def _hook(self) -> None:
        """Count the S3 API calls this store makes (``self.requests``), once per client."""
        if self._hooked:
            return
        client = getattr(self.fs, "s3", None)
        if client is None and self.protocol in ("s3", "s3a") and hasattr(self.fs, "connect"):
            self.fs.connect()  # create the client now so that the first request is counted too
            client = getattr(self.fs, "s3", None)
        if client is None:
            return
        self._hooked = True

        def count(model: Any = None, **_: Any) -> None:
            if model is not None:
                self.requests[model.name] += 1

        client.meta.events.register("before-call.s3", count)

    def _do(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self._hook()
        return fn(*args, **kwargs)

    # ------------------------------------------------------------------ operations

    def put_if_absent(self, key: str, data: bytes | memoryview) -> None:
        """One conditional ``PUT``; on S3, ``data`` larger than ``multipart_threshold``
        goes as a create-only multipart upload instead (see the class), its parts read
        from ``data`` as they are sent: a large layer mapped from a temporary file is
        never copied whole into memory, and objects above S3's 5 GB limit of one
        ``PUT`` can be written. A smaller memoryview is copied into ``bytes`` (botocore
        takes no memoryview)."""
        if self._multipart(len(data)):
            view = memoryview(data).cast("B")
            self._multipart_put(key, lambda start, length: _ViewRange(view, start, length), len(view))
            return
        if not isinstance(data, bytes):
            data = bytes(data)
        full = self._full(key)
        delay = 0.05
        for attempt in range(1, self.max_attempts + 1):
            try:
                if self.atomic_create:
                    self._do(self.fs.pipe_file, full, data, mode="create")
                else:
                    if self._do(self.fs.exists, full):
                        raise FileExistsError(full)
                    self._do(self.fs.pipe_file, full, data)
                return
            except Exception as exc:
                if not _maybe_exists(exc) and not _transient(exc):
                    raise _storage_error("write", self._url, key, exc) from exc
                existing = self._read_or_none(key)
                if existing is not None:
                    if existing == data:
                        return  # our own earlier attempt landed; its response was lost
                    raise AlreadyExists(f"{self._url}/{key} already exists") from None
                if attempt == self.max_attempts:
                    raise _storage_error("write", self._url, key, exc) from exc
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)

    def put_if_absent_file(self, key: str, path: str) -> None:
        """:meth:`put_if_absent` of the file ``path``: one conditional ``PUT`` of its bytes
        up to ``multipart_threshold``; above it, on S3, a create-only multipart upload
        streamed from the file (bounded memory, see the class). Other protocols read
        the file whole."""
        size = os.path.getsize(path)
        if not self._multipart(size):
            super().put_if_absent_file(key, path)
            return
        self._multipart_put(key, lambda start, length: _FileRange(path, start, length), size)

    def _multipart(self, size: int) -> bool:
        """Whether an object of ``size`` bytes is written as a create-only multipart upload."""
        return size > self.multipart_threshold and self.protocol in ("s3", "s3a") and self.atomic_create

    def _multipart_put(self, key: str, body: PartReader, size: int) -> None:
        from fsspec.asyn import sync

        self._hook()
        sync(self.fs.loop, self._multipart_create, key, body, size)

    def _part_size(self, size: int) -> int:
        """``multipart_part_size``, or more (whole MiB) if ``size`` needs more than 10,000 parts."""
        per_part = -(-size // MULTIPART_MAX_PARTS)
        if per_part <= self.multipart_part_size:
            return self.multipart_part_size
        return -(-per_part // (1 << 20)) * (1 << 20)

    async def _multipart_create(self, key: str, body: PartReader, size: int) -> None:
        """Upload ``size`` bytes in parts (``body(start, length)``: a stream of one), then complete with ``If-None-Match: *``; abort the
        upload unless it completed (ours) — also on cancellation or a failed part."""
        import asyncio

        full = self._full(key)
        bucket, _, obj = full.partition("/")
        nonce = secrets.token_hex(16)
        part = self._part_size(size)
        n = -(-size // part)
        call = self.fs._call_s3
        try:
            r = await call("create_multipart_upload", Bucket=bucket, Key=obj, Metadata={_NONCE_META: nonce})
        except Exception as exc:
            raise _storage_error("write", self._url, key, exc) from exc
        upload = r["UploadId"]
        completed = False
        try:
            sem = asyncio.Semaphore(self.multipart_concurrency)

            async def one(i: int) -> dict[str, Any]:
                async with sem:  # at most multipart_concurrency parts in flight
                    with body(i * part, min(part, size - i * part)) as stream:
                        out = await call(
                            "upload_part", Bucket=bucket, Key=obj, UploadId=upload, PartNumber=i + 1, Body=stream
                        )
                    return {"PartNumber": i + 1, "ETag": out["ETag"]}

            tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
            try:
                parts = list(await asyncio.gather(*tasks))
            except BaseException as exc:
                for t in tasks:  # a failed part: stop the others before the abort
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if isinstance(exc, Exception):
                    raise _storage_error("write", self._url, key, exc) from exc
                raise
            delay = 0.05
            for attempt in range(1, self.max_attempts + 1):
                try:
                    await call(
                        "complete_multipart_upload",
                        Bucket=bucket,
                        Key=obj,
                        UploadId=upload,
                        MultipartUpload={"Parts": parts},
                        IfNoneMatch="*",
                    )
                    completed = True
                    return
                except Exception as exc:
                    # whatever the error (412, 409, or NoSuchUpload for a retry of a complete
                    # that landed), the object's nonce says who published it
                    owner = await self._nonce_of(bucket, obj, key)
                    if owner == nonce:
                        completed = True  # our earlier attempt landed; its response was lost
                        return
                    if owner is not None:
                        raise AlreadyExists(f"{self._url}/{key} already exists") from None
                    if (not _maybe_exists(exc) and not _transient(exc)) or attempt == self.max_attempts:
                        raise _storage_error("write", self._url, key, exc) from exc
                    await asyncio.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 2.0)
        finally:
            if not completed:
                try:
                    await call("abort_multipart_upload", Bucket=bucket, Key=obj, UploadId=upload)
                except Exception:  # noqa: BLE001 - best effort: a lifecycle rule collects the rest
                    pass

    async def _nonce_of(self, bucket: str, obj: str, key: str) -> str | None:
        """The nonce the object was uploaded with (``""`` if none), ``None`` if absent."""
        try:
            head = await self.fs._call_s3("head_object", Bucket=bucket, Key=obj)
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise _storage_error("check", self._url, key, exc) from exc
        return str((head.get("Metadata") or {}).get(_NONCE_META, ""))

    def _read_or_none(self, key: str) -> bytes | None:
        try:
            return self.read(key)
        except ObjectNotFound:
            return None

    def read(self, key: str) -> bytes:
        return self._cat(key)

    def read_prefix(self, key: str, n: int) -> bytes:
        return self._cat(key, start=0, end=n)

    def read_prefixes(self, items: Sequence[tuple[str, int]]) -> list[bytes]:
        if len(items) < 2:
            return super().read_prefixes(items)
        fulls = [self._full(key) for key, _ in items]
        try:
            got: list[bytes] = self._do(
                self.fs.cat_ranges, fulls, [0] * len(items), [n for _, n in items], on_error="raise"
            )
        except FileNotFoundError:
            return super().read_prefixes(items)  # one at a time: the error names the missing key
        except Exception as exc:
            raise _storage_error("read", self._url, items[0][0], exc) from exc
        self.bytes_read += sum(map(len, got))
        return got

    def read_ranges(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[bytes | memoryview]:
        want = [(a, b) for a, b in ranges if b > a]  # an empty range is no request (S3 refuses it)
        if not want:
            if ranges and not self.exists(key):
                raise ObjectNotFound(f"{self._url}/{key} does not exist")
            return [b""] * len(ranges)
        full = self._full(key)
        n = len(want)
        try:
            fetched = self._do(
                self.fs.cat_ranges, [full] * n, [a for a, _ in want], [b for _, b in want], on_error="raise"
            )
        except FileNotFoundError:
            raise ObjectNotFound(f"{self._url}/{key} does not exist") from None
        except Exception as exc:
            raise _storage_error("read", self._url, key, exc) from exc
        self.bytes_read += sum(len(g) for g in fetched)
        it = iter(fetched)
        got: list[bytes | memoryview] = [next(it) if b > a else b"" for a, b in ranges]
        if any(len(g) != b - a for g, (a, b) in zip(got, ranges)):
            raise StorageError(f"cannot read {self._url}/{key}: a ranged read came back short")
        return got

    def read_to_file(self, key: str, path: str) -> int:
        """One GET streamed into ``path`` (fsspec's ``get_file``: s3fs and gcsfs copy
        the body in chunks, resuming a broken stream with a ranged GET; s3fs told not to
        fetch parts concurrently, which would hold ten 50 MiB parts in memory)."""
        if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise FileNotFoundError(f"no directory for {path}")  # not the object's absence
        try:
            self._do(self.fs.get_file, self._full(key), path, **self._cat_kwargs)
        except FileNotFoundError:
            raise ObjectNotFound(f"{self._url}/{key} does not exist") from None
        except Exception as exc:
            raise _storage_error("read", self._url, key, exc) from exc
        size = os.path.getsize(path)
        self.bytes_read += size
        return size

    def _cat(self, key: str, **kw: Any) -> bytes:
        full = self._full(key)
        try:
            data: bytes = self._do(self.fs.cat_file, full, **kw, **self._cat_kwargs)
        except FileNotFoundError:
            raise ObjectNotFound(f"{self._url}/{key} does not exist") from None
        except Exception as exc:
            raise _storage_error("read", self._url, key, exc) from exc
        self.bytes_read += len(data)
        return data

    def read_many(self, keys: Sequence[str]) -> Iterator[tuple[str, bytes | BaseException]]:
        if not keys:
            return
        fulls = [self._full(k) for k in keys]
        if not getattr(self.fs, "async_impl", False):
            yield from super().read_many(keys)
            return
        from fsspec.asyn import sync

        self._hook()
        # A window of objects at a time: a compaction reads a journal of any length
        # through here, and holds only the window (``READ_WINDOW`` x concurrency objects).
        window = max(1, READ_WINDOW * self.concurrency)
        for i in range(0, len(keys), window):
            got: list[bytes | BaseException | None] = list(sync(self.fs.loop, self._cat_all, fulls[i : i + window]))
            for j, k in enumerate(keys[i : i + window]):
                v, got[j] = got[j], None  # the consumer holds it, not this window
                if isinstance(v, FileNotFoundError):
                    yield k, ObjectNotFound(f"{self._url}/{k} does not exist")
                elif isinstance(v, BaseException):
                    yield k, _storage_error("read", self._url, k, v)
                elif v is None:
                    yield k, ObjectNotFound(f"{self._url}/{k} does not exist")
                else:
                    yield k, v

    async def _cat_all(self, fulls: list[str]) -> list[bytes | BaseException]:
        """GET every object concurrently (bounded), one request each, no HEADs."""
        import asyncio

        sem = asyncio.Semaphore(self.concurrency)

        async def one(path: str) -> bytes | BaseException:
            async with sem:
                try:
                    data: bytes = await self.fs._cat_file(path, **self._cat_kwargs)
                    return data
                except Exception as exc:  # noqa: BLE001 - returned per object
                    return exc

        return list(await asyncio.gather(*(one(p) for p in fulls)))

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        try:
            # one paginated listing of everything under root/prefix (a non-empty prefix
            # also keeps s3fs from sending a HEAD when the listing is empty)
            found = self._do(self.fs.find, self.root, prefix=prefix, detail=True, withdirs=False)
        except FileNotFoundError:
            return []
        except TypeError:  # a backend whose find() has no prefix argument
            head = prefix.rpartition("/")[0]
            found = self._do(self.fs.find, f"{self.root}/{head}" if head else self.root, detail=True, withdirs=False)
        except Exception as exc:
            raise _storage_error("list", self._url, prefix, exc) from exc
        strip = len(self.root) + 1
        out = []
        for name, info in found.items():
            if info.get("type") == "directory":
                continue
            rel = name[strip:] if name.startswith(self.root + "/") else name
            if rel.startswith(prefix):
                out.append(ObjectInfo(rel, int(info.get("size") or 0), _mtime(info)))
        out.sort(key=lambda o: o.path)
        return out

    def delete(self, keys: Iterable[str]) -> None:
        fulls = [self._full(k) for k in keys]
        if not fulls:
            return
        try:
            self._do(self.fs.rm, fulls)
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise _storage_error("delete", self._url, fulls[0][len(self.root) + 1 :], exc) from exc

    def exists(self, key: str) -> bool:
        try:
            return bool(self._do(self.fs.exists, self._full(key)))
        except Exception as exc:
            raise _storage_error("check", self._url, key, exc) from exc

    def __reduce__(self) -> tuple[Any, ...]:
        multipart = (self.multipart_threshold, self.multipart_part_size, self.multipart_concurrency)
        return (_reopen, (self._url, self.storage_options, not self.atomic_create, multipart))


def _reopen(
    url: str, options: dict[str, Any], single_writer: bool, multipart: tuple[int, int, int] | None = None
) -> FsspecStore:
    if multipart is None:
        return FsspecStore(url, options, single_writer=single_writer)
    threshold, part, concurrency = multipart
    return FsspecStore(
        url,
        options,
        single_writer=single_writer,
        multipart_threshold=threshold,
        multipart_part_size=part,
        multipart_concurrency=concurrency,
    )


class _PartStream(io.RawIOBase):
    """``length`` bytes as a seekable read-only stream: the body of one part. botocore
    reads it once for the part's checksum and seeks back, aiohttp then sends it in
    small chunks (a retry seeks back again), so a part is never held in memory whole."""

    def __init__(self, length: int) -> None:
        super().__init__()
        self._length = length
        self._pos = 0

    def __len__(self) -> int:
        return self._length

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = min(max(base + offset, 0), self._length)
        return self._pos


class _FileRange(_PartStream):
    """Bytes ``start .. start + length`` of a local file."""

    def __init__(self, path: str, start: int, length: int) -> None:
        super().__init__(length)
        self._f = open(path, "rb")  # closed by close()
        self._start = start

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = min(len(view), self._length - self._pos)
        if n <= 0:
            return 0
        self._f.seek(self._start + self._pos)
        got = self._f.readinto(view[:n])
        self._pos += got
        return got

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


class _ViewRange(_PartStream):
    """Bytes ``start .. start + length`` of a buffer (a memory-mapped file: the pages are
    read as the part is sent, never copied whole)."""

    def __init__(self, view: memoryview, start: int, length: int) -> None:
        super().__init__(length)
        self._view: memoryview | None = view[start : start + length]

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = min(len(view), self._length - self._pos)
        if n <= 0 or self._view is None:
            return 0
        view[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        self._view = None
        super().close()


def _maybe_exists(exc: BaseException) -> bool:
    if isinstance(exc, FileExistsError):
        return True
    text = str(exc)
    return isinstance(exc, OSError) and (
        (exc.errno == errno.EINVAL and "condition" in text.lower()) or "PreconditionFailed" in text or "412" in text
    )


def _transient(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}"
    return any(m in text for m in _TRANSIENT_MARKERS)


def _storage_error(op: str, url: str, key: str, exc: BaseException) -> StorageError:
    # messages name the object, never the storage options (which may hold secrets)
    code = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EIO
    return StorageError(code, f"cannot {op} {url}/{key}: {type(exc).__name__}: {exc}")


def _mtime(info: Mapping[str, Any]) -> float | None:
    v = info.get("LastModified") or info.get("mtime") or info.get("updated")
    if isinstance(v, datetime):
        return v.timestamp()
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None
