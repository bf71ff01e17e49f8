"""The pure, order-independent fold of delta records (DESIGN §3-§4). No I/O, no clocks.

Records
    A record is ``(key, source, delta)`` plus an *emission* flag, written by one
    *stream* (a writer incarnation) at an *ordinal* (``seq << 32 | index``) that orders
    the records of that stream. Every record belongs to the *run* of its segment.

Per ``(run, source)`` the fold keeps a :class:`SourceRunState`: for each key, each
stream's *last* value (highest ordinal wins — Curator's "rewrite"), an *emitted* flag
and a *tainted* flag. From it:

* a key's effective delta is the value all streams agree on; if two streams' final
  values differ the key is a *conflict* and the source cannot complete in that run;
* a source is **complete** in a run iff it was emitted, is not tainted, has no
  conflict, and the sum of effective deltas over its distinct keys is ``0``.

Laws (property-tested in ``property_tests/test_algebra_laws.py``):

* :func:`merge` of two states is **commutative**, **associative** and **idempotent**
  (the states form a join-semilattice: union of ``(key, stream)`` entries with
  last-writer-wins by ordinal, OR of the flags). Hence the state reached is the same
  for any interleaving, duplication or grouping of the records, and completion, being
  a function of the state, is order-independent.
* **Sticky completion** is the one deliberate exception: once a fold *finishes*
  (a snapshot is cut) a completed source is collapsed to its id, its completing run
  and a digest of its ``(key, delta)`` pairs. A later record for it in the same run
  that is a same-key, same-delta duplicate changes nothing; any other record of that
  run *un-completes* it (anomaly ``late_record``, one warning) and taints the run's
  state so it reruns — conservative, never falsely complete. Records of *other* runs
  never un-complete it (completion is global and sticky across runs); only a
  :class:`~resumelog.format.Reset` tombstone does, for the runs it names.
* Records of a *retired* run are ignored (counted as anomaly ``retired_run``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from resumelog.format import EMISSION, Anomaly, Batch, Reset, RunInfo, SegmentHeader, StreamMark
from resumelog.idset import CompletedIndex, hash64

__all__ = [
    "FoldState",
    "SourceRunState",
    "key_digest",
    "merge",
]

logger = logging.getLogger("resumelog")

MAX_ANOMALIES = 1000
_CONFLICT = object()


def key_digest(key: str, delta: int) -> int:
    """64-bit digest of a ``(key, delta)`` pair kept for completed sources."""
    return hash64(key.encode("utf-8", "surrogatepass") + b"\0" + str(delta).encode())


class SourceRunState:
    """Fold state of one source in one run.

    ``entries[key]`` is either a tuple ``(stream, ordinal, delta)`` (one stream wrote
    the key, the fast path) or a dict ``{stream: (ordinal, delta)}``.
    ``total`` is the sum of effective deltas of non-conflicting keys and ``conflicts``
    the number of conflicting keys; both are maintained incrementally.
    """

    __slots__ = ("conflicts", "emitted", "entries", "reported", "tainted", "total")

    def __init__(self) -> None:
        self.emitted = False
        self.tainted = False
        self.reported = False
        self.entries: dict[str, tuple[int, int, int] | dict[int, tuple[int, int]]] = {}
        self.total = 0
        self.conflicts = 0

    def apply(self, key: str, stream: int, ordinal: int, delta: int) -> None:
        """Fold one record into the state."""
        e = self.entries.get(key)
        if e is None:
            self.entries[key] = (stream, ordinal, delta)
            self.total += delta
        elif type(e) is tuple:
            if e[0] == stream:
                if ordinal > e[1]:
                    self.total += delta - e[2]
                    self.entries[key] = (stream, ordinal, delta)
            else:
                m = {e[0]: (e[1], e[2]), stream: (ordinal, delta)}
                self.entries[key] = m
                self._adjust(e[2], _effective(m))
        else:
            assert isinstance(e, dict)
            cur = e.get(stream)
            if cur is None or ordinal > cur[0]:
                old = _effective(e)
                e[stream] = (ordinal, delta)
                self._adjust(old, _effective(e))

    def _adjust(self, old: object, new: object) -> None:
        if old is _CONFLICT:
            self.conflicts -= 1
        else:
            assert isinstance(old, int)
            self.total -= old
        if new is _CONFLICT:
            self.conflicts += 1
        else:
            assert isinstance(new, int)
            self.total += new

    @property
    def complete(self) -> bool:
        """Emitted, not tainted, no conflict, and the deltas sum to zero."""
        return self.emitted and not self.tainted and self.conflicts == 0 and self.total == 0

    def items(self) -> Iterator[tuple[str, int, int, int]]:  # (key, stream, ordinal, delta)
        """All ``(key, stream, ordinal, delta)`` entries."""
        for k, e in self.entries.items():
            if type(e) is tuple:
                yield k, e[0], e[1], e[2]
            else:
                assert isinstance(e, dict)
                for s, (o, d) in e.items():
                    yield k, s, o, d

    def effective(self) -> dict[str, int | None]:
        """Each key's effective delta (``None`` for a conflicting key)."""
        out: dict[str, int | None] = {}
        for k, e in self.entries.items():
            v = e[2] if type(e) is tuple else _effective(e)  # type: ignore[arg-type]
            out[k] = None if v is _CONFLICT else v  # type: ignore[assignment]
        return out

    def digest(self) -> frozenset[int]:
        """Digests of the effective ``(key, delta)`` pairs (for a completed source)."""
        return frozenset(key_digest(k, v) for k, v in self.effective().items() if v is not None)

    def signature(self) -> tuple[bool, bool, frozenset[tuple[str, int, int, int]]]:
        """A value that is equal for equal states (for tests)."""
        return self.emitted, self.tainted, frozenset(self.items())


def _effective(m: dict[int, tuple[int, int]]) -> object:
    it = iter(m.values())
    first = next(it)[1]
    for _, d in it:
        if d != first:
            return _CONFLICT
    return first


def merge(a: SourceRunState, b: SourceRunState) -> SourceRunState:
    """Join of two states (a new object; inputs are not modified).

    Commutative, associative and idempotent, so folding records in any grouping and
    order reaches the same state.
    """
    out = SourceRunState()
    for st in (a, b):
        for k, s, o, d in st.items():
            out.apply(k, s, o, d)
        out.emitted |= st.emitted
        out.tainted |= st.tainted
    return out


@dataclass
class _Stream:
    writer_id: str
    incarnation: str
    run_id: str
    seq: int
    closed: bool = False
    records: int = 0
    last_ms: int = 0


class GapError(ValueError):
    """A segment was offered out of sequence (the caller must fold streams in order)."""


@dataclass
class FoldState:
    """The whole fold: completed set (base index + overlay), pending states, marks.

    ``base`` is the completed index of the snapshot the state was loaded from and
    ``base_runs`` its run table; ``number`` is the snapshot number this state will be
    written as. ``digest_loader`` lazily supplies digests of the base's completions
    (they are only needed when a late record arrives). ``warn`` receives the one
    warning per un-completed source (defaults to the ``resumelog`` logger).
    """

    number: int = 1
    base: CompletedIndex = field(default_factory=CompletedIndex.empty)
    runs: dict[str, RunInfo] = field(default_factory=dict)
    run_order: list[str] = field(default_factory=list)
    stream_ids: list[str] = field(default_factory=list)
    streams: dict[str, _Stream] = field(default_factory=dict)
    pending: dict[tuple[str, str], SourceRunState] = field(default_factory=dict)
    added: dict[str, str] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    digests: dict[str, frozenset[int]] = field(default_factory=dict)
    resets: dict[str, set[str]] = field(default_factory=dict)
    anomalies: list[Anomaly] = field(default_factory=list)
    anomaly_counts: Counter[str] = field(default_factory=Counter)
    records_folded: int = 0
    digest_loader: Callable[[], Mapping[str, Sequence[int]]] | None = None
    warn: Callable[[str], None] = logger.warning
    _stream_index: dict[str, int] = field(default_factory=dict)
    _touched: set[tuple[str, str]] = field(default_factory=set)
    _base_digests: Mapping[str, Sequence[int]] | None = None

    # ------------------------------------------------------------------ queries

    def completed_run(self, source: str) -> str | None:
        """The run that completed ``source``, or ``None`` if it is not complete."""
        r = self.added.get(source)
        if r is not None:
            return r
        if source in self.removed:
            return None
        i = self.base.find(source)
        return self.run_order[self.base.run_at(i)] if i >= 0 else None

    def is_completed(self, source: str) -> bool:
        """``True`` iff ``source`` is in the completed set."""
        if source in self.added:
            return True
        return source not in self.removed and self.base.find(source) >= 0

    def completed_count(self) -> int:
        """Number of completed sources."""
        return (
            len(self.base) - len(self.removed) + sum(1 for s in self.added if s not in self.base or s in self.removed)
        )

    def iter_completed(self) -> Iterator[str]:
        """All completed ids (base order, then additions)."""
        removed = self.removed
        added = self.added
        for s in self.base.ids():
            if s not in removed and s not in added:
                yield s
        yield from added

    def stream_mark(self, writer_id: str, incarnation: str) -> int:
        """Last folded seq of a stream, ``-1`` if none."""
        st = self.streams.get(f"{writer_id}/{incarnation}")
        return st.seq if st else -1

    # ------------------------------------------------------------------ folding

    def _stream(self, sid: str) -> int:
        i = self._stream_index.get(sid)
        if i is None:
            i = self._stream_index[sid] = len(self.stream_ids)
            self.stream_ids.append(sid)
        return i

    def _run(self, run_id: str) -> RunInfo:
        info = self.runs.get(run_id)
        if info is None:
            info = self.runs[run_id] = RunInfo(run_id, self.number, self.number)
            self.run_order.append(run_id)
        else:
            info.last_snapshot = self.number
        return info

    def anomaly(self, kind: str, source: str, run_id: str, detail: str = "") -> None:
        """Record an anomaly (bounded list + unbounded counts)."""
        self.anomaly_counts[kind] += 1
        self.anomalies.append(Anomaly(kind, source, run_id, detail))
        if len(self.anomalies) > MAX_ANOMALIES:
            del self.anomalies[: len(self.anomalies) - MAX_ANOMALIES]

    def apply_segment(self, header: SegmentHeader, batches: Sequence[Batch], closed: bool = False) -> bool:
        """Fold one segment of a stream; ``False`` if it was already folded.

        Segments of one stream must be offered in ``seq`` order (:class:`GapError`
        otherwise); offering an already folded one is a no-op (idempotence).
        """
        sid = f"{header.writer_id}/{header.incarnation}"
        st = self.streams.get(sid)
        expected = st.seq + 1 if st else 0
        if header.seq < expected:
            return False
        if header.seq > expected:
            raise GapError(f"stream {sid}: segment {header.seq} offered, expected {expected}")
        n = sum(len(b.keys) for b in batches)
        if st is None:
            st = self.streams[sid] = _Stream(header.writer_id, header.incarnation, header.run_id, header.seq)
        st.seq = header.seq
        st.closed = closed
        st.records += n
        st.last_ms = header.created_ms
        info = self._run(header.run_id)
        if info.retired:
            if n:
                self.anomaly("retired_run", "", header.run_id, f"{n} records of segment {sid}/{header.seq} ignored")
            return True
        stream = self._stream(sid)
        base_ord = header.seq << 32
        pos = 0
        for b in batches:
            self.apply_batch(header.run_id, stream, base_ord + pos, b)
            pos += len(b.keys)
        self.records_folded += n
        return True

    def apply_batch(self, run: str, stream: int, first_ordinal: int, batch: Batch) -> None:
        """Fold the records of one batch (ordinals ``first_ordinal + i``) and its resets."""
        pending = self.pending
        touched = self._touched
        states: list[SourceRunState | None] = []
        for src in batch.sources:
            crun = self.completed_run(src)
            if crun == run:
                states.append(None)  # late record for a source this run completed
                continue
            k = (run, src)
            s = pending.get(k)
            if s is None:
                s = pending[k] = SourceRunState()
            touched.add(k)
            states.append(s)
        ordinal = first_ordinal
        for si, key, delta, flag in zip(batch.source_index, batch.keys, batch.deltas, batch.flags):
            s = states[si]
            if s is None:
                s = self._late(run, batch.sources[si], key, delta)
                if s is None:
                    ordinal += 1
                    continue
                states[si] = s
            if flag & EMISSION:
                s.emitted = True
            entries = s.entries
            e = entries.get(key)
            if e is None:
                entries[key] = (stream, ordinal, delta)
                s.total += delta
            else:
                s.apply(key, stream, ordinal, delta)
            ordinal += 1
        for r in batch.resets:
            self.apply_reset(r)

    def apply_positive(self, header: SegmentHeader, batches: Sequence[Batch]) -> None:
        """Fold only the positive records of a segment, without advancing its stream.

        Used for segments that appeared between two listings of the journal: their
        positive deltas may be causal predecessors of records already folded (a
        fan-out ``+k`` flushed while the first listing was walking), so they must
        count; their other records wait for the next fold. Positive records only
        ever raise a sum, so this can delay a completion but never cause one.
        """
        info = self.runs.get(header.run_id)
        if info is not None and info.retired:
            return
        self._run(header.run_id)
        stream = self._stream(f"{header.writer_id}/{header.incarnation}")
        ordinal = header.seq << 32
        for b in batches:
            for si, key, delta, flag in zip(b.source_index, b.keys, b.deltas, b.flags):
                if delta > 0:
                    src = b.sources[si]
                    if self.completed_run(src) == header.run_id:
                        s = self._late(header.run_id, src, key, delta)
                        if s is None:
                            ordinal += 1
                            continue
                    else:
                        k = (header.run_id, src)
                        s = self.pending.get(k)
                        if s is None:
                            s = self.pending[k] = SourceRunState()
                        self._touched.add(k)
                    if flag & EMISSION:
                        s.emitted = True
                    s.apply(key, stream, ordinal, delta)
                ordinal += 1

    def _late(self, run: str, source: str, key: str, delta: int) -> SourceRunState | None:
        digest = self.digest_of(source)
        if key_digest(key, delta) in digest:
            return None  # same-key duplicate of a record the completion included
        self._uncomplete(source)
        self.anomaly("late_record", source, run, f"key {key!r} delta {delta} after completion")
        self.warn(
            f"resumelog: source {source!r} received a new record after it completed in run {run}; "
            "it is no longer complete and will rerun"
        )
        s = self.pending[(run, source)] = SourceRunState()
        s.tainted = True
        self._touched.add((run, source))
        return s

    def _uncomplete(self, source: str) -> None:
        self.added.pop(source, None)
        self.digests.pop(source, None)
        if self.base.find(source) >= 0:
            self.removed.add(source)

    def digest_of(self, source: str) -> frozenset[int]:
        """Key digests of a completed source (loading the base's lazily)."""
        d = self.digests.get(source)
        if d is not None:
            return d
        if self._base_digests is None:
            self._base_digests = self.digest_loader() if self.digest_loader else {}
        return frozenset(self._base_digests.get(source, ()))

    def apply_reset(self, reset: Reset) -> None:
        """Fold an operator tombstone: void completions of ``reset.source`` by ``reset.runs``."""
        voided = self.resets.setdefault(reset.source, set())
        voided.update(reset.runs)
        crun = self.completed_run(reset.source)
        if crun is not None and crun in voided:
            self._uncomplete(reset.source)
            self.anomaly_counts["reset"] += 1
        for run in reset.runs:
            s = self.pending.get((run, reset.source))
            if s is not None:
                s.tainted = True

    def finish(self, sole_stream: str | None = None) -> list[str]:
        """Evaluate every state touched since the last call; return newly completed ids.

        Completed states are collapsed into the completed set (with their digest);
        conflicts are reported once per state. With ``sole_stream`` (a process folding
        its own flush into its view), only states written entirely by that stream may
        complete — other streams' records may not all be visible — and the rest stay
        touched for the next full evaluation.
        """
        done: list[str] = []
        pending = self.pending
        only = self._stream_index.get(sole_stream) if sole_stream is not None else None
        keep: set[tuple[str, str]] = set()
        for k in self._touched:
            s = pending.get(k)
            if s is None:
                continue
            if sole_stream is not None and any(e[1] != only for e in s.items()):
                keep.add(k)
                continue
            run, src = k
            if s.conflicts and not s.reported:
                s.reported = True
                self.anomaly("conflict", src, run, f"{s.conflicts} key(s) with different deltas across streams")
            if not s.complete:
                continue
            if run in self.resets.get(src, ()):
                s.tainted = True
                continue
            del pending[k]
            if self.completed_run(src) is None:
                self.added[src] = run
                self.digests[src] = s.digest()
                done.append(src)
        self._touched = keep
        return done

    def retire_runs(self, keep: Iterable[str]) -> list[str]:
        """Retire every run not in ``keep``: drop its pending state, ignore its records."""
        keep = set(keep)
        retired = []
        for run_id, info in self.runs.items():
            if not info.retired and run_id not in keep:
                info.retired = True
                retired.append(run_id)
        if retired:
            gone = set(retired)
            for k in [k for k in self.pending if k[0] in gone]:
                del self.pending[k]
        return retired

    def stream_marks(self) -> list[StreamMark]:
        """High-water marks of every stream, for the snapshot."""
        return [
            StreamMark(s.writer_id, s.incarnation, s.run_id, s.seq, s.closed, s.records, s.last_ms)
            for s in self.streams.values()
        ]
