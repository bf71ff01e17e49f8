"""The journal writer: buffer records, flush them as immutable segments of one stream.

One :class:`Writer` per process (or worker) and run. Its stream is
``journal/<writer_id>/<incarnation>/``; the incarnation is a new ULID per writer open,
so a reused writer id never collides with an old journal. Segments are numbered
``0, 1, 2...`` and written with put-if-absent; nothing is ever overwritten.
"""

from __future__ import annotations

import atexit
import os
import secrets
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from types import FrameType
from typing import IO, Any, NamedTuple

from resumelog import paths
from resumelog.algebra import DONE_KEY, EMIT_KEY
from resumelog.errors import AlreadyExists, FlushError, InvalidId, ResumelogError
from resumelog.format import EMISSION, Batch, Reset, SegmentHeader, crc32c, decode_segment, encode, segment_parts
from resumelog.storage import Store

__all__ = ["DONE_KEY", "EMIT_KEY", "FlushPolicy", "Writer"]


_MAX_DELTA = (1 << 63) - 1

SEAL_BYTES = 128 << 10
"""The open batch is encoded ("sealed") into its frame once it holds about this many
bytes of records, so a flush encodes only the last one: the encoding of a segment is
spread over the ``record`` calls that filled it instead of adding ~2 ms to
``flush()`` (a 1 MiB segment is about 8 batch frames; see docs/format.md §3)."""


class FlushPolicy:
    """When a writer flushes on its own: buffered bytes, buffered records, seconds.

    The interval is checked as records arrive (every 1024 records) and on ``flush``;
    there is no background thread.
    """

    __slots__ = ("max_bytes", "max_records", "max_seconds")

    def __init__(self, max_bytes: int = 1 << 20, max_records: int = 200_000, max_seconds: float = 10.0) -> None:
        if max_bytes <= 0 or max_records <= 0 or max_seconds <= 0:
            raise ValueError("flush policy limits must be positive")
        self.max_bytes = max_bytes
        self.max_records = max_records
        self.max_seconds = max_seconds

    def __repr__(self) -> str:
        return (
            f"FlushPolicy(max_bytes={self.max_bytes}, max_records={self.max_records}, max_seconds={self.max_seconds})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (FlushPolicy, (self.max_bytes, self.max_records, self.max_seconds))


class Writer:
    """Appends delta records to this process's own journal stream.

    Not thread-safe for concurrent ``record`` calls (use one writer per thread or a
    lock); ``flush`` is serialised. Use as a context manager: leaving the block
    flushes and closes. ``atexit`` and ``SIGTERM`` flush every open writer.

    A writer pickles as a *handle*: unpickling in another process opens a new writer
    (new incarnation, its own buffer) on the same checkpoint and run.
    """

    def __init__(
        self,
        store: Store,
        writer_id: str | None,
        run_id: str,
        *,
        policy: FlushPolicy | None = None,
        clock: Callable[[], float] = time.time,
        incarnation: str | None = None,
        handle: Any = None,
        on_flush: Callable[[SegmentHeader, list[Batch], bool], None] | None = None,
        on_close: Callable[[], None] | None = None,
        epoch: bytes = b"",
    ) -> None:
        self.store = store
        self.epoch = epoch
        """The nonce of the checkpoint's ``meta.msgpack`` at open, stamped on every
        segment: if that checkpoint is deleted, the segments written after are ignored."""
        self.writer_id = paths.validate_id(writer_id if writer_id is not None else paths.default_writer_id())
        self.run_id = paths.validate_id(run_id, "run id")
        self.incarnation = incarnation or paths.new_ulid(clock)
        self.policy = policy or FlushPolicy()
        self._clock = clock
        self._handle = handle
        self._on_flush = on_flush
        self._on_close = on_close
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self.seq = 0
        self.closed = False
        self._pending: _PendingSegment | None = None
        self._reset_buffer()
        self._last_flush = clock()
        self.records_written = 0
        self.bytes_written = 0
        self.flush_count = 0
        self.flush_seconds: list[float] = []
        _register(self)

    # ------------------------------------------------------------------ buffer

    def _reset_buffer(self) -> None:
        self._sealed: list[tuple[bytes, int]] = []  # encoded batch frames of this segment, with CRCs
        self._sealed_batches: list[Batch] = []  # the same, kept only for on_flush
        self._sealed_records = 0
        self._bytes = 0
        self._tick = 0
        self._open_batch()

    def _open_batch(self) -> None:
        self._src: dict[str, int] = {}
        self._sources: list[str] = []
        self._idx: list[int] = []
        self._keys: list[str] = []
        self._deltas: list[int] = []
        self._flags = bytearray()
        self._resets: list[Reset] = []
        # the one check on the record path: flush (policy) or seal, whichever is first
        self._check_bytes = min(self.policy.max_bytes, self._bytes + SEAL_BYTES)
        self._check_records = self.policy.max_records - self._sealed_records

    def _batch(self) -> Batch:
        return Batch(self._sources, self._idx, self._keys, self._deltas, bytes(self._flags), self._resets)

    def _threshold(self) -> None:
        """A record crossed ``_check_bytes`` or ``_check_records``: flush or seal."""
        if self._bytes >= self.policy.max_bytes or len(self._keys) >= self._check_records:
            self.flush()
        else:
            self._seal()

    def _seal(self) -> None:
        with self._lock:
            if not self._keys and not self._resets:
                return
            batch = self._batch()
            payload = encode(batch)
            self._sealed.append((payload, crc32c(payload)))
            if self._on_flush is not None:
                self._sealed_batches.append(batch)
            self._sealed_records += len(batch.keys)
            self._open_batch()

    def _new_source(self, source: object) -> int:
        if type(source) is not str or not source:
            raise InvalidId(f"source id must be a non-empty str, got {source!r:.80}")
        _check_text(source, "source id")
        i = self._src[source] = len(self._sources)
        self._sources.append(source)
        self._bytes += len(source) + 2
        return i

    @property
    def buffered(self) -> int:
        """Records not yet durable (buffered plus a segment awaiting retry)."""
        return self._sealed_records + len(self._keys) + (self._pending.records if self._pending else 0)

    def record(self, key: str, source: str, delta: int, *, emission: bool = False) -> None:
        """Buffer one record ``(key, source, delta)``.

        ``emission=True`` marks the source as entered into this run (what ``emit``
        does). Positive deltas must be made durable with :meth:`flush` before the
        work they account for is dispatched (the durability barrier). Keys beginning
        with NUL are reserved for :meth:`emit` and :meth:`complete` (``InvalidId``).
        """
        if type(key) is not str or not (key.isascii() or _check_text(key, "key")):
            raise InvalidId(f"record key must be a str, got {key!r:.80}")
        if key.startswith("\x00") and not (key == EMIT_KEY and delta == 1 and emission):
            # reserved keys carry fixed deltas (what emit/complete write), so a collapsed
            # completion never needs to know which stream wrote them (algebra.FoldState)
            raise InvalidId(f"record keys beginning with NUL are reserved for emit() and complete(): {key!r:.80}")
        if type(delta) is not int or not -_MAX_DELTA <= delta <= _MAX_DELTA:
            raise InvalidId(f"delta must be a 64-bit int, got {delta!r:.80}")
        if self.closed:
            raise ResumelogError("writer is closed")
        i = self._src.get(source)
        if i is None:
            i = self._new_source(source)
        self._idx.append(i)
        self._keys.append(key)
        self._deltas.append(delta)
        self._flags.append(EMISSION if emission else 0)
        self._bytes += len(key) + 4
        self._tick += 1
        if self._bytes >= self._check_bytes or len(self._keys) >= self._check_records:
            self._threshold()
        elif not self._tick & 1023 and self._clock() - self._last_flush >= self.policy.max_seconds:
            self.flush()

    def record_many(self, keys: Sequence[str], sources: Sequence[str], deltas: Sequence[int]) -> None:
        """Buffer many records at once (same checks as :meth:`record`)."""
        if not len(keys) == len(sources) == len(deltas):
            raise ValueError("keys, sources and deltas must have the same length")
        for k, s, d in zip(keys, sources, deltas):
            self.record(k, s, d)

    def emit(self, source: str, key: str | None = None) -> None:
        """The source enters the pipeline in this run: ``+1`` (an emission).

        Without ``key`` a reserved key derived from the source is used, so retries
        deduplicate. Flush before dispatching the source's work.
        """
        self.record(EMIT_KEY if key is None else key, source, 1, emission=True)

    def complete(self, source: str) -> None:
        """The simple case: ``source`` is fully done (``+1`` emission and ``-1``, one segment)."""
        if self.closed:
            raise ResumelogError("writer is closed")
        i = self._src.get(source)
        if i is None:
            i = self._new_source(source)
        # both records are appended before any flush check, so they share a segment
        self._idx += (i, i)
        self._keys += (EMIT_KEY, DONE_KEY)
        self._deltas += (1, -1)
        self._flags += b"\x01\x00"
        self._bytes += 20
        if self._bytes >= self._check_bytes or len(self._keys) >= self._check_records:
            self._threshold()

    def complete_many(self, sources: Iterable[str]) -> None:
        """``complete`` each source."""
        for s in sources:
            self.complete(s)

    def output(
        self,
        source: str,
        root: str | Store,
        *,
        key: str | None = None,
        name: str = "output",
        delta: int = -1,
        record: bool = True,
        flush: bool = True,
        storage_options: Mapping[str, Any] | None = None,
    ) -> AbstractContextManager[IO[bytes]]:
        """Write an output exactly once: ``with w.output(source, root) as f: f.write(...)``.

        The bytes go to a local spool file; on leaving the block without an exception
        they are published with put-if-absent as
        ``<root>/<run>/<source>/<key or ~>/<name>`` (ids escaped), and only then the
        record that counts them is written: :meth:`complete` of ``source`` if ``key``
        is ``None``, else ``record(key, source, delta)``; then :meth:`flush` (unless
        ``flush=False``). If an earlier attempt of the same task in this run already
        published the name, its bytes are kept. An exception in the block publishes
        and records nothing. Read the outputs back with
        :func:`resumelog.outputs.committed` (only those of completed sources, from
        the run that completed them): see ``docs/exactly-once.md``.

        Parameters
        ----------
        source : str
            The source the output belongs to.
        root : str or Store
            The outputs root: a local path or any fsspec URL (it may differ from the
            checkpoint's), or an opened store.
        key : str, optional
            The task that writes the output (as in :meth:`record`); ``None``: the
            output is the whole source's, and it is recorded with :meth:`complete`.
        name : str
            The output's name within ``(source, key)``: give each output of a task its
            own, the same on every attempt (as keys are).
        delta : int
            The record's delta when ``key`` is given (``-1``: a sink task).
        record : bool
            ``False``: publish only; you record the source's completion yourself after
            all its outputs are published (several outputs per source).
        flush : bool
            Flush after the record (default), so the output counts when the block ends.
        storage_options : mapping, optional
            For ``root``; default: the checkpoint's if ``root`` uses its protocol.
        """
        from resumelog.outputs import write_output

        return write_output(
            self,
            source,
            root,
            key=key,
            name=name,
            delta=delta,
            record=record,
            flush=flush,
            storage_options=storage_options,
        )

    def reset(self, source: str, runs: Iterable[str]) -> None:
        """Buffer an operator tombstone voiding ``source``'s completion by ``runs``."""
        if type(source) is not str or not source:
            raise InvalidId(f"source id must be a non-empty str, got {source!r:.80}")
        self._resets.append(Reset(source, sorted(set(runs))))
        self._bytes += len(source) + 32

    # ------------------------------------------------------------------ flush

    def flush(self) -> None:
        """Make every buffered record durable; returns when they are.

        On failure raises :class:`~resumelog.errors.FlushError` and keeps everything
        for the next ``flush`` (the same segment bytes are retried, so an ambiguous
        earlier success is recognised by its nonce and not duplicated).
        """
        self._flush(closed=False)

    def _flush(self, closed: bool) -> None:
        with self._lock:
            if os.getpid() != self._pid:
                raise ResumelogError("this writer was created in another process; open a new writer here")
            closing = False  # (the closing segment of a close() that failed: once put, the stream is closed)
            if self._pending is not None:
                closing = self._pending.closed
                self._put_pending()
            if not self._sealed and not self._keys and not self._resets and (closing or not (closed and self.seq > 0)):
                self._last_flush = self._clock()
                return
            nonce = secrets.token_bytes(16)
            header = SegmentHeader(
                self.writer_id, self.incarnation, self.seq, self.run_id, nonce, int(self._clock() * 1000), self.epoch
            )
            self._seal()  # the open batch joins the sealed ones
            frames, batches, records = self._sealed, self._sealed_batches, self._sealed_records
            parts = segment_parts(header, frames, records, closed=closed)
            key = paths.segment_name(self.writer_id, self.incarnation, self.seq)
            self._pending = _PendingSegment(header, batches, closed, key, parts, sum(map(len, parts)), records)
            self._reset_buffer()
            self._put_pending()

    def _put_pending(self) -> None:
        p = self._pending
        assert p is not None
        key, n = p.key, p.records
        t0 = time.perf_counter()
        try:
            try:
                self.store.put_if_absent_parts(key, p.parts)
            except AlreadyExists:
                # an earlier attempt may have succeeded without us hearing back
                existing = self.store.read(key)
                if decode_segment(existing, key).header.nonce != p.header.nonce:
                    raise FlushError(
                        f"{self.store.url}/{key} exists and was written by someone else "
                        "(two processes share one writer incarnation?)"
                    ) from None
        except FlushError:
            raise
        except Exception as exc:
            msg = f"flush of {n} records to {self.store.url}/{key} failed: {exc}"
            code = exc.errno if isinstance(exc, OSError) else None
            raise (FlushError(code, msg) if code else FlushError(msg)) from exc
        self._pending = None
        self.seq = p.header.seq + 1
        self.records_written += n
        self.bytes_written += p.size
        self.flush_count += 1
        self.flush_seconds.append(time.perf_counter() - t0)
        if len(self.flush_seconds) > 4096:
            del self.flush_seconds[:2048]
        self._last_flush = self._clock()
        if self._on_flush is not None:
            self._on_flush(p.header, p.batches, p.closed)

    def close(self) -> None:
        """Flush and mark the stream closed (its last segment may then be collected)."""
        if self.closed or os.getpid() != self._pid:
            return
        self._flush(closed=True)
        self.closed = True
        _unregister(self)
        if self._on_close is not None:
            self._on_close()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        if self._handle is None:
            raise TypeError("this writer has no handle to pickle; use Checkpoint.writer()")
        return (_open_from_handle, (self._handle,))

    def __repr__(self) -> str:
        return f"Writer({self.store.url!r}, writer_id={self.writer_id!r}, run_id={self.run_id!r}, seq={self.seq})"


class _PendingSegment(NamedTuple):
    header: SegmentHeader
    batches: list[Batch]
    closed: bool
    key: str
    parts: list[bytes | memoryview]
    size: int
    records: int


def _open_from_handle(handle: Any) -> Writer:
    w: Writer = handle.writer()
    return w


def _check_text(value: str, what: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidId(f"{what} is not valid UTF-8 text (lone surrogate): {value!r:.80}") from None
    return True


# ---------------------------------------------------------------------- lifecycle

_OPEN: weakref.WeakSet[Writer] = weakref.WeakSet()
_HOOK_LOCK = threading.RLock()  # re-entrant: the SIGTERM handler closes writers on the main thread
_AT_EXIT = False
_UNHOOKED: Any = object()
_PREV_SIGTERM: Any = _UNHOOKED  # the disposition our SIGTERM handler replaced, while it is installed


def _register(w: Writer) -> None:
    global _AT_EXIT
    with _HOOK_LOCK:
        _OPEN.add(w)
        if not _AT_EXIT:
            _AT_EXIT = True
            atexit.register(_flush_all)
        _hook_sigterm()


def _unregister(w: Writer) -> None:
    with _HOOK_LOCK:
        _OPEN.discard(w)
        if not _OPEN:
            _unhook_sigterm()


def _hook_sigterm() -> None:
    """Install the flush-on-SIGTERM handler while writers are open (main thread only).

    A Python-level handler runs only when the main thread next executes bytecode: a
    SIGTERM the kernel hands to another thread (fsspec's I/O thread, say) while the
    main thread is blocked in C is not acted on until that wait ends, where the default
    action would have ended the process. So the handler is installed only while it has
    something to flush, and the previous disposition is put back with the last close.
    """
    global _PREV_SIGTERM
    if _PREV_SIGTERM is not _UNHOOKED or os.environ.get("RESUMELOG_NO_SIGTERM"):
        return
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        prev = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # not the main interpreter / unsupported
        return
    _PREV_SIGTERM = prev


def _unhook_sigterm() -> None:
    global _PREV_SIGTERM
    prev = _PREV_SIGTERM
    if prev is _UNHOOKED or threading.current_thread() is not threading.main_thread():
        return  # a close on another thread leaves it to the next close on the main thread
    try:
        if signal.getsignal(signal.SIGTERM) is _on_sigterm:  # not if the application replaced it since
            signal.signal(signal.SIGTERM, signal.SIG_DFL if prev is None else prev)
    except (ValueError, OSError):
        return
    _PREV_SIGTERM = _UNHOOKED


def _after_fork_in_child() -> None:
    """A forked child cannot use its parent's writers (they refuse: other pid), so it
    forgets them and puts SIGTERM back as the parent had it before any writer."""
    global _HOOK_LOCK
    _HOOK_LOCK = threading.RLock()  # another parent thread may have held the old one
    _OPEN.clear()
    _unhook_sigterm()


if hasattr(os, "register_at_fork"):  # after threading's own hook, which names the new main thread
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _flush_all() -> None:
    """Close every open writer (at exit, on SIGTERM); then, if none is left open
    (writers dropped unclosed leave the set silently), put SIGTERM back as it was."""
    for w in list(_OPEN):
        if w.closed:  # marked closed without closing (a simulated crash): nothing to flush
            _OPEN.discard(w)
            continue
        try:
            w.close()
        except Exception:  # noqa: BLE001 - best effort at exit; flush errors were raised before
            pass
    with _HOOK_LOCK:
        if not _OPEN:
            _unhook_sigterm()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    prev = _PREV_SIGTERM  # read first: closing the last writer puts it back
    _flush_all()
    if prev == signal.SIG_IGN:
        return
    if callable(prev) and prev is not _on_sigterm:
        prev(signum, frame)
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
