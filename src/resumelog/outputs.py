"""Exactly-once outputs: each output's commit is tied to the record that counts it.

A task writes an output through :meth:`Writer.output <resumelog.Writer.output>`::

    with w.output("shard-7", "s3://bucket/out") as f:   # the whole source
        f.write(result)                                    # spooled to a local file
    # committed under <root>/<run>/shard-7/~/output, then complete("shard-7") flushed

The bytes are spooled to a local file; on leaving the block they are published with
**put-if-absent** under a name fixed by ``(run, source, key, name)``::

    <root>/<run>/<escaped source>/<escaped key, or ~ for the whole source>/<escaped name>

and only *then* the record is written (and, by default, flushed). A reader lists the
outputs with :func:`committed` (or :meth:`Checkpoint.outputs
<resumelog.Checkpoint.outputs>`): for each completed source, the outputs under the run
that completed it (:meth:`Checkpoint.completed_run`), nothing else. So after any crash
an output is visible iff its source's completion counts, and it is then whole and
there is exactly one of it per name. ``docs/exactly-once.md`` has the argument.

Spool files of local roots live under ``<root>/~staging/`` (so that the publish is a
hard link, no copy); of object-store roots in the system's temporary directory.
:func:`scan` tells committed outputs from those still in flight, orphans of voided
attempts and staging debris; :func:`gc` deletes orphans and debris older than a grace.
``~`` is outside the run-id alphabet, so ``~staging`` never names a run.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from resumelog import paths
from resumelog.compactor import DEFAULT_GRACE
from resumelog.errors import AlreadyExists, InvalidId, StorageError
from resumelog.storage import Store, open_store, split_url
from resumelog.storage._local import is_temporary

if TYPE_CHECKING:
    from resumelog.checkpoint import Checkpoint, OutputsStatus
    from resumelog.format import StreamMark
    from resumelog.journal import Writer
    from resumelog.storage import ObjectInfo

__all__ = [
    "STAGING_PREFIX",
    "WHOLE_SOURCE",
    "Output",
    "OutputGcResult",
    "OutputName",
    "OutputScan",
    "PendingOutput",
    "committed",
    "escape",
    "gc",
    "gc_many",
    "output_name",
    "output_store",
    "parse_output_name",
    "scan",
    "summarize",
    "unescape",
    "write_output",
]


def __dir__() -> list[str]:
    return __all__


logger = logging.getLogger("resumelog")

STAGING_PREFIX = "~staging/"
"""Spool files of outputs being written to a local root (removed on commit or failure;
:func:`gc` deletes those a killed process left, once older than the grace)."""

WHOLE_SOURCE = "~"
"""The key component of an output written with ``key=None`` (the whole source)."""

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.")
_MAX_COMPONENT = 255


# ---------------------------------------------------------------------- names


def escape(value: str) -> str:
    """One path component for an opaque id: UTF-8 bytes outside ``[A-Za-z0-9_.-]``
    (and a leading ``.``) as ``%XX``. Reversible (:func:`unescape`), never empty,
    never ``.``/``..``, never holds ``/`` or ``~``."""
    if type(value) is not str or not value:
        raise InvalidId(f"an output id must be a non-empty str, got {value!r:.80}")
    try:
        raw = value.encode()
    except UnicodeEncodeError:
        raise InvalidId(f"an output id is not valid UTF-8 text: {value!r:.80}") from None
    out = "".join(chr(c) if c in _SAFE and not (i == 0 and c == 0x2E) else f"%{c:02X}" for i, c in enumerate(raw))
    if len(out) > _MAX_COMPONENT:
        raise InvalidId(f"an output id escapes to {len(out)} > {_MAX_COMPONENT} characters: {value!r:.80}")
    return out


def unescape(component: str) -> str | None:
    """The id :func:`escape` made ``component`` from; ``None`` if no id escapes to it."""
    if not component:
        return None
    buf = bytearray()
    i = 0
    try:
        while i < len(component):
            c = component[i]
            if c == "%":
                buf.append(int(component[i + 1 : i + 3], 16))
                i += 3
            else:
                buf += c.encode("ascii")
                i += 1
        value = buf.decode()
    except (ValueError, UnicodeError):
        return None
    try:
        return value if escape(value) == component else None  # only the canonical spelling
    except InvalidId:
        return None


class OutputName(NamedTuple):
    """The parts of an output's object name."""

    run: str
    source: str
    key: str | None
    """The task key, ``None`` for an output of the whole source."""
    name: str


def output_name(run: str, source: str, key: str | None, name: str) -> str:
    """Object name (relative to the outputs root) of an output.

    Raises :class:`~resumelog.errors.InvalidId` for a ``name`` of the form
    ``<x>.<32 lowercase hex digits>.partial``: a local store's temporary files are named
    so, and its listings skip them (such an output would be published but never shown).
    """
    k = WHOLE_SOURCE if key is None else escape(key)
    last = escape(name)
    if is_temporary(last):
        raise InvalidId(f"output name {name!r:.80} has the form of a local store's temporary file (*.<uuid>.partial)")
    return f"{paths.validate_id(run, 'run id')}/{escape(source)}/{k}/{last}"


def parse_output_name(path: str) -> OutputName | None:
    """Parse an output's object name; ``None`` if it is not one (staging, foreign objects)."""
    parts = path.split("/")
    if len(parts) != 4:
        return None
    run, src, key, name = parts
    try:
        paths.validate_id(run, "run id")
    except InvalidId:
        return None
    source, nm = unescape(src), unescape(name)
    k = None if key == WHOLE_SOURCE else unescape(key)
    if source is None or nm is None or (k is None and key != WHOLE_SOURCE):
        return None
    return OutputName(run, source, k, nm)


# ---------------------------------------------------------------------- stores


_STORES: dict[tuple[int, str, str], Store] = {}
_STORES_LOCK = threading.Lock()


def output_store(root: str | Store, storage_options: Mapping[str, Any] | None = None) -> Store:
    """The store of an outputs root (opened once per process, root and options)."""
    if isinstance(root, Store):
        return root
    opts = json.dumps(dict(storage_options or {}), sort_keys=True, default=repr)
    key = (os.getpid(), str(root), opts)
    with _STORES_LOCK:
        s = _STORES.get(key)
        if s is None:
            s = _STORES[key] = open_store(str(root), storage_options)
        return s


def _apart_from(store: Store, checkpoint: Store) -> Store:
    """``store``, the store of an outputs root, if it is not ``checkpoint``'s own root.

    Raises
    ------
    ValueError
        If it is: a journal segment's name there, ``journal/<writer>/<incarnation>/<seq>.seg``,
        has an output's shape (run ``journal``), and output GC would judge segments as
        outputs (it deleted a checkpoint's journal so)."""
    if store.url.rstrip("/") == checkpoint.url.rstrip("/"):
        raise ValueError(
            f"the outputs root {store.url} is the checkpoint's own root: write outputs under another "
            "directory or prefix, not beside the checkpoint's objects"
        )
    return store


def _options_for(root: str | Store, w: Writer, given: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """Storage options for an outputs root: those given, else the checkpoint's when the
    root uses the same protocol (same bucket or endpoint, another prefix)."""
    if given is not None or isinstance(root, Store):
        return given
    if split_url(str(root))[0] == split_url(w.store.url)[0]:
        return dict(getattr(w.store, "storage_options", {}) or {})
    return None


# ---------------------------------------------------------------------- writing


class PendingOutput:
    """One output being written: the steps of the commit protocol, in order.

    :meth:`Writer.output <resumelog.Writer.output>` runs them for you; they are public
    so that adapters (and the property test of the protocol) can run them one by one:

    1. :attr:`file` — write the bytes (a local spool file);
    2. :meth:`publish` — put-if-absent under :attr:`key`; ``AlreadyExists`` means an
       earlier attempt of this task in this run published it: that one is kept;
    3. :meth:`record` — the record that counts the output (``complete`` for a whole
       source, else ``(key, source, delta)``), and :meth:`Writer.flush` if asked;
    4. :meth:`discard` — remove the spool file (always; also after a failure).

    A crash between any two steps leaves at worst an invisible object: a spool file
    (staging debris) or a published output whose record never counted.
    """

    def __init__(
        self,
        writer: Writer,
        store: Store,
        source: str,
        key: str | None,
        name: str,
    ) -> None:
        if type(source) is not str or not source:
            raise InvalidId(f"source id must be a non-empty str, got {source!r:.80}")
        self.writer = writer
        self.store = _apart_from(store, writer.store)
        self.source = source
        self.task_key = key
        self.name = name
        self.key = output_name(writer.run_id, source, key, name)
        """The output's object name under the root."""
        self.published = False
        """Whether :meth:`publish` returned (the bytes are under :attr:`key`)."""
        self.existed = False
        """Whether an earlier attempt had already published it (its bytes were kept)."""
        spool, file = _open_spool(store)
        self.spool = spool
        """The local spool file."""
        self.file: IO[bytes] = file
        """The spool file, open for writing."""

    def publish(self) -> None:
        """Make the spooled bytes the output (put-if-absent; durable when it returns)."""
        if not self.file.closed:
            self.file.flush()
            self.file.close()
        try:
            self.store.put_if_absent_file(self.key, self.spool)
        except AlreadyExists:
            self.existed = True
            logger.debug("resumelog: output %s/%s was published by an earlier attempt: kept", self.store.url, self.key)
        self.published = True

    def record(self, *, delta: int = -1, flush: bool = True) -> None:
        """Write the record that counts this output (after :meth:`publish`)."""
        if not self.published:
            raise RuntimeError("record() before publish(): the output would count without its bytes")
        if self.task_key is None:
            self.writer.complete(self.source)
        else:
            self.writer.record(self.task_key, self.source, delta)
        if flush:
            self.writer.flush()

    def discard(self) -> None:
        """Close and remove the spool file (the published object, a hard link on local
        roots, stays)."""
        if not self.file.closed:
            self.file.close()
        try:
            os.unlink(self.spool)
        except OSError:
            pass


def _open_spool(store: Store) -> tuple[str, IO[bytes]]:
    """A new spool file: in the store's staging directory if its objects are local files
    (:meth:`Store.open_staging <resumelog.storage.Store.open_staging>`: made again if a
    GC of spool files removed it, empty, meanwhile), else in the system's temporary
    directory."""
    try:
        staged = store.open_staging(f"{STAGING_PREFIX}{paths.new_ulid()}-{os.getpid()}.spool")
    except FileNotFoundError as exc:  # (the directory kept vanishing)
        raise StorageError(
            exc.errno or errno.ENOENT, f"cannot create spool file {exc.filename}: {exc.strerror}"
        ) from exc
    if staged is not None:
        return staged
    fd, spool = tempfile.mkstemp(prefix="resumelog-output-", suffix=".spool")
    return spool, os.fdopen(fd, "w+b")


@contextmanager
def write_output(
    writer: Writer,
    source: str,
    root: str | Store,
    *,
    key: str | None = None,
    name: str = "output",
    delta: int = -1,
    record: bool = True,
    flush: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> Iterator[IO[bytes]]:
    """The implementation of :meth:`Writer.output <resumelog.Writer.output>`."""
    store = output_store(root, _options_for(root, writer, storage_options))
    p = PendingOutput(writer, store, source, key, name)
    try:
        yield p.file
        p.publish()
        if record:
            p.record(delta=delta, flush=flush)
    finally:
        p.discard()


# ---------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Output:
    """One output object."""

    source: str
    key: str | None
    """The task key; ``None`` for an output of the whole source."""
    name: str
    run: str
    path: str
    """Object name relative to the outputs root."""
    url: str
    """Where it is: ``<root url>/<path>``."""
    size: int
    mtime: float | None = None


def _output(store: Store, o: Any, n: OutputName) -> Output:
    return Output(n.source, n.key, n.name, n.run, o.path, f"{store.url}/{o.path}", o.size, o.mtime)


def committed(
    ckpt: Checkpoint,
    root: str | Store,
    storage_options: Mapping[str, Any] | None = None,
    *,
    run: str | None = None,
    refresh: bool = True,
) -> list[Output]:
    """The committed outputs: for each completed source, those under the run that
    completed it (only those of ``run``, if given), sorted by source, key and name.

    Outputs of pending sources, of other runs (voided attempts) and of sources an
    operator reset are left out, and so is staging debris. The checkpoint is read
    (``refresh``) *before* the outputs are listed, which is what makes the answer
    exact while a job runs: an output is published before its record is written, so
    every output of a source complete at that read is already listed.
    """
    if refresh:
        ckpt.refresh()
    st = ckpt._state
    store = _checkpoint_outputs(ckpt, root, storage_options)
    runs = [run] if run is not None else sorted(st.completed_by_run())
    out: list[Output] = []
    for r in runs:
        for o in store.list(f"{paths.validate_id(r, 'run id')}/"):
            n = parse_output_name(o.path)
            if n is not None and n.run == r and st.completed_run(n.source) == r:
                out.append(_output(store, o, n))
    out.sort(key=lambda x: (x.source, x.key or "", x.name))
    return out


def _ckpt_options(ckpt: Checkpoint, root: str | Store) -> Mapping[str, Any] | None:
    if isinstance(root, Store):
        return None
    if split_url(str(root))[0] == split_url(ckpt.store.url)[0]:
        return dict(ckpt._storage_options)
    return None


def _checkpoint_outputs(ckpt: Checkpoint, root: str | Store, storage_options: Mapping[str, Any] | None) -> Store:
    """The store of outputs root ``root`` of ``ckpt`` (its options: those given, else the
    checkpoint's for the same protocol), refused if it is the checkpoint's own root."""
    options = storage_options if storage_options is not None else _ckpt_options(ckpt, root)
    return _apart_from(output_store(root, options), ckpt.store)


@dataclass
class OutputScan:
    """Every object under an outputs root, by what it is (:func:`scan`)."""

    root: str
    committed: list[Output] = field(default_factory=list)
    """Visible: the source completed in the output's run."""
    in_flight: list[Output] = field(default_factory=list)
    """Of a source not (yet) complete in its run, which may still complete it."""
    orphaned: list[Output] = field(default_factory=list)
    """Of a voided attempt: the source completed in another run and the output's run
    holds no state for it, or that run can never complete it (retired, damaged, or
    voided by a reset). Invisible; collectable."""
    staging: list[tuple[str, int, float | None]] = field(default_factory=list)
    """Spool files ``(path, size, mtime)`` left by killed writers."""
    foreign: int = 0
    """Objects whose names are not outputs (never touched)."""

    def counts(self) -> dict[str, int]:
        """Number of objects of each kind."""
        return {
            "committed": len(self.committed),
            "in_flight": len(self.in_flight),
            "orphaned": len(self.orphaned),
            "staging": len(self.staging),
            "foreign": self.foreign,
        }


def scan(
    ckpt: Checkpoint,
    root: str | Store,
    storage_options: Mapping[str, Any] | None = None,
    *,
    refresh: bool = True,
    grace: float = DEFAULT_GRACE,
    now: float | None = None,
) -> OutputScan:
    """List the whole outputs root and classify each object (one listing).

    An output of run ``R`` for source ``s`` is *committed* if ``R`` completed ``s``;
    *orphaned* if ``R`` can never complete ``s`` (damaged, voided by a reset, retired
    without a drained state for ``s``), or if ``s`` completed in another run while
    ``R`` holds no state for it, or a state not drained yet and ``R`` wrote no segment
    in the last ``grace`` seconds before ``now`` (by the storage's clock where it
    gives times: :func:`last_writes`); else *in flight*. A state of ``R``
    may still complete ``s``: drained, it takes over if that completion is voided; not
    drained yet, it may drain and take over from a larger run id (two runs on one
    source at once) as long as ``R`` is alive, which :func:`gc` takes to mean that it
    writes at least once per ``grace``. ``grace=0``: what ``gc(grace=0)`` collects.
    """
    if refresh:
        ckpt.refresh()
    st = ckpt._state
    store = _checkpoint_outputs(ckpt, root, storage_options)
    result = OutputScan(store.url)
    quiet_before = (time.time() if now is None else now) - grace
    last_write: dict[str, float] | None = None  # run -> when it last wrote (computed when first needed)

    def quiet(run: str) -> bool:
        nonlocal last_write
        if last_write is None:
            loaded = getattr(ckpt, "_loaded", None)
            last_write = last_writes(st.streams.values(), loaded.journal if loaded is not None else ())
        return last_write.get(run, 0.0) <= quiet_before

    listing = store.list("")
    if any(o.path == paths.META for o in listing):  # (the same root under another spelling)
        raise ValueError(
            f"the outputs root {store.url} holds a checkpoint ({paths.META}): output GC never judges a "
            "checkpoint's objects; write outputs under another directory or prefix"
        )
    for o in listing:
        if o.path.startswith(STAGING_PREFIX):
            result.staging.append((o.path, o.size, o.mtime))
            continue
        n = parse_output_name(o.path)
        if n is None:
            result.foreign += 1
            continue
        out = _output(store, o, n)
        crun = st.completed_run(n.source)
        if crun == n.run:
            result.committed.append(out)
            continue
        info = st.runs.get(n.run)
        state = st.pending.get((n.run, n.source))
        # A state of the output's run may still complete the source: drained, it takes
        # over if the holder's completion is voided; not drained yet, it may drain and
        # take over from a larger run id (two runs at once). A retired run's records
        # are ignored: only a drained state (kept where a smaller run took its
        # completion over) can still complete.
        drained = state is not None and state.complete
        retired = info is not None and info.retired and not drained
        voided = retired or (info is not None and info.damaged) or n.run in st.resets.get(n.source, ())
        if voided or (crun is not None and (state is None or state.tainted or (not drained and quiet(n.run)))):
            result.orphaned.append(out)
        else:
            result.in_flight.append(out)
    return result


def last_writes(streams: Iterable[StreamMark], journal: Iterable[ObjectInfo]) -> dict[str, float]:
    """When each run last wrote, in seconds since the epoch: the newest segment of any of
    its ``streams``, by the storage's clock where ``journal`` (a listing of the journal
    with modification times) shows that segment, the clock segment GC trusts too; else
    by its writer's clock (the time in the segment's header), for a stream whose newest
    folded segment is no longer (or not yet) listed or a store that gives no times.

    The storage's clock is the one that counts: a writer whose clock lags by more than
    the grace period would otherwise look quiet while it still writes, and GC would
    collect the outputs of a run that may still take its sources over."""
    newest: dict[tuple[str, str], tuple[int, float]] = {}  # stream -> (its newest listed seq, newest mtime)
    for o in journal:
        n = paths.parse_segment(o.path) if o.mtime is not None else None
        if n is not None:
            seq, mtime = newest.get((n.writer_id, n.incarnation), (-1, 0.0))
            newest[n.writer_id, n.incarnation] = (max(seq, n.seq), max(mtime, o.mtime or 0.0))
    out: dict[str, float] = {}
    for m in streams:
        seen = newest.get((m.writer_id, m.incarnation))
        t = seen[1] if seen is not None and seen[0] >= m.seq else m.last_ms / 1000
        out[m.run_id] = max(out.get(m.run_id, 0.0), t)
    return out


@dataclass
class OutputGcResult:
    """What :func:`gc` deleted (or would delete with ``dry_run``)."""

    root: str
    dry_run: bool
    orphaned: int = 0
    staging: int = 0
    bytes: int = 0
    kept_recent: int = 0
    """Orphans and spool files younger than the grace, kept for now."""
    keys: list[str] = field(default_factory=list)


def gc(
    ckpt: Checkpoint,
    root: str | Store,
    storage_options: Mapping[str, Any] | None = None,
    *,
    grace: float = DEFAULT_GRACE,
    dry_run: bool = False,
    now: float | None = None,
) -> OutputGcResult:
    """Delete orphaned outputs (voided attempts) and staging debris older than ``grace``
    seconds. Never an output of the run that completed its source, nor one still in
    flight, nor an object whose name is not an output's."""
    now = time.time() if now is None else now
    sc = scan(ckpt, root, storage_options, grace=grace, now=now)
    result = _collectable(sc, grace, now, dry_run)
    if result.keys and not dry_run:
        store = _checkpoint_outputs(ckpt, root, storage_options)
        store.delete(result.keys)
    return result


def _collectable(sc: OutputScan, grace: float, now: float, dry_run: bool) -> OutputGcResult:
    """What :func:`gc` deletes from a scan: orphans and spool files older than ``grace``."""
    result = OutputGcResult(sc.root, dry_run)

    def old(mtime: float | None) -> bool:
        return mtime is not None and now - mtime >= grace

    for o in sc.orphaned:
        if old(o.mtime):
            result.keys.append(o.path)
            result.orphaned += 1
            result.bytes += o.size
        else:
            result.kept_recent += 1
    for path, size, mtime in sc.staging:
        if old(mtime):
            result.keys.append(path)
            result.staging += 1
            result.bytes += size
        else:
            result.kept_recent += 1
    return result


def summarize(
    ckpt: Checkpoint,
    root: str | Store,
    storage_options: Mapping[str, Any] | None = None,
    *,
    grace: float = DEFAULT_GRACE,
    refresh: bool = True,
    now: float | None = None,
) -> OutputsStatus:
    """Counts and bytes of each kind of object under ``root`` and what :func:`gc` would
    delete now (one listing): the entry :meth:`Checkpoint.status
    <resumelog.Checkpoint.status>` reports per outputs root, and what ``resumelog
    status``/``verify --outputs`` print."""
    from resumelog.checkpoint import OutputsStatus

    now = time.time() if now is None else now
    sc = scan(ckpt, root, storage_options, refresh=refresh, grace=grace, now=now)
    g = _collectable(sc, grace, now, True)
    return OutputsStatus(
        root=sc.root,
        committed=len(sc.committed),
        committed_bytes=sum(o.size for o in sc.committed),
        in_flight=len(sc.in_flight),
        in_flight_bytes=sum(o.size for o in sc.in_flight),
        orphaned=len(sc.orphaned),
        orphaned_bytes=sum(o.size for o in sc.orphaned),
        staging=len(sc.staging),
        staging_bytes=sum(size for _, size, _ in sc.staging),
        foreign=sc.foreign,
        gc_objects=g.orphaned + g.staging,
        gc_bytes=g.bytes,
    )


def gc_many(
    ckpt: Checkpoint,
    roots: Sequence[str | Store],
    storage_options: Mapping[str, Any] | None = None,
    *,
    grace: float = DEFAULT_GRACE,
    dry_run: bool = False,
) -> list[OutputGcResult]:
    """:func:`gc` of each root (the hook :meth:`Checkpoint.gc` calls)."""
    return [gc(ckpt, r, storage_options, grace=grace, dry_run=dry_run) for r in roots]
