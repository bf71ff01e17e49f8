"""The pure, order-independent fold of delta records (``docs/concepts.md``). No I/O, no clocks.

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
* **Sticky completion**: once a fold *finishes* (a snapshot is cut) a completed
  source is collapsed to its id, its completing run and its final ``key -> delta``
  entries, which is all the fold needs to go on as if it had not collapsed: a later
  record of that run that is a same-key duplicate changes nothing, a new key with
  delta ``0`` joins the entries (the sum stays zero), and any other record reopens
  the state (anomaly ``late_record``, one warning) so the source completes only when
  it drains again — ``fold(snapshot(fold(A)), B) == fold(A + B)``. A key reopened
  with a *different* value is judged a conflict (the collapsed entries no longer say
  which stream wrote them): conservative, never falsely complete. Records of *other*
  runs never un-complete it (completion is global and sticky across runs); a second
  run that drains it too keeps its state, which takes over if the first completion
  is voided. Only a :class:`~resumelog.format.Reset` tombstone voids a completion,
  for the runs it names.
* Records of a *retired* run are ignored (counted as anomaly ``retired_run``).

Where the rules are
    The rule for a record is :meth:`SourceRunState.apply` (with :meth:`SourceRunState.sums`
    for what a state adds up to); the rule for an evaluation is
    ``_Evaluation.evaluate`` (complete, over-drained, conflict, which run holds a
    completion). :class:`FoldState` is the bookkeeping around them: runs and marks,
    anomalies, the completed set and its done entries, late records, resets,
    quarantine. :mod:`resumelog._fastfold` computes the same fold for fresh states in
    bulk (NumPy, optional) and hands every other state to these rules.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from itertools import chain

from resumelog import _fastfold
from resumelog._columns import ColumnBatch
from resumelog._hashed_dicts import hashed_dict, source_map
from resumelog._provisional import ProvisionalSet
from resumelog.done_shapes import DoneShapeMap, ShapeTable
from resumelog.format import (
    EMISSION,
    Anomaly,
    Batch,
    Reset,
    RunInfo,
    SegmentHeader,
    StreamMark,
)
from resumelog.layers import LayeredDone, LayeredIndex

__all__ = [
    "DONE_KEY",
    "EMIT_KEY",
    "FoldState",
    "SourceRunState",
    "merge",
]

logger = logging.getLogger("resumelog")

MAX_ANOMALIES = 1000
_CONFLICT = object()

EMIT_KEY = "\x00emit"
"""Reserved key of ``emit(source)`` without a key (one per source and run: retries dedupe)."""
DONE_KEY = "\x00done"
"""Reserved key of the ``-1`` that ``complete(source)`` writes."""
SIMPLE_COMPLETION: Mapping[str, int] = {EMIT_KEY: 1, DONE_KEY: -1}
"""Final deltas of a source completed by ``complete()``; not stored per source."""
REOPENED_STREAM = "\x00reopened"
"""Pseudo-stream of a collapsed completion's entries written by streams that are closed
(or unknown): it never writes again, so its value of a key is final."""

Writers = tuple["int | tuple[int, ...]", ...]
"""Per element of a completion's shape: the stream index that wrote the key (an ``int``)
or a sorted tuple of them (several streams wrote the same value)."""


class SourceRunState:
    """Fold state of one source in one run.

    ``entries[key]`` is either a tuple ``(stream, ordinal, delta)`` (one stream wrote
    the key, the fast path) or a dict ``{stream: (ordinal, delta)}`` (``multi`` is set
    once any key has one). Sums are computed when the state is evaluated, not per
    record.
    """

    __slots__ = ("emitted", "entries", "multi", "overdrawn", "reported", "tainted")

    def __init__(self) -> None:
        self.emitted = False
        self.tainted = False
        self.reported = False
        self.overdrawn = False
        self.multi = False
        self.entries: dict[str, tuple[int, int, int] | dict[int, tuple[int, int]]] = {}

    def apply(self, key: str, stream: int, ordinal: int, delta: int) -> None:
        """Fold one record into the state."""
        entries = self.entries
        e = entries.get(key)
        if e is None:
            entries[key] = (stream, ordinal, delta)
        elif type(e) is tuple:
            if e[0] == stream:
                if ordinal > e[1]:
                    entries[key] = (stream, ordinal, delta)
            else:
                entries[key] = {e[0]: (e[1], e[2]), stream: (ordinal, delta)}
                self.multi = True
        else:
            assert isinstance(e, dict)
            cur = e.get(stream)
            if cur is None or ordinal > cur[0]:
                e[stream] = (ordinal, delta)

    def sums(self) -> tuple[int, int]:
        """``(total, conflicts)``: the sum of effective deltas of agreeing keys, and the
        number of keys whose streams' final values differ."""
        if not self.multi:
            return sum([e[2] for e in self.entries.values()]), 0  # type: ignore[misc]
        total = conflicts = 0
        for e in self.entries.values():
            if type(e) is tuple:
                total += e[2]
            else:
                v = _effective(e)  # type: ignore[arg-type]
                if v is _CONFLICT:
                    conflicts += 1
                else:
                    total += v  # type: ignore[operator]
        return total, conflicts

    @property
    def total(self) -> int:
        """Sum of the effective deltas of non-conflicting keys."""
        return self.sums()[0]

    @property
    def conflicts(self) -> int:
        """Number of keys written with different final deltas by different streams."""
        return self.sums()[1]

    @property
    def complete(self) -> bool:
        """Emitted, not tainted, no conflict, and the deltas sum to zero."""
        return self.emitted and not self.tainted and self.sums() == (0, 0)

    def final_deltas(self) -> dict[str, int]:
        """``key -> effective delta`` of a state without conflicts (kept once complete)."""
        if not self.multi:
            return {k: e[2] for k, e in self.entries.items()}  # type: ignore[misc]
        return {k: v for k, v in self.effective().items() if v is not None}

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


class GapError(ValueError):
    """A segment was offered out of sequence (the caller must fold streams in order)."""


@dataclass
class FoldState:
    """The whole fold: completed set (base index + overlay), pending states, marks.

    ``base`` is the completed index of the snapshot the state was loaded from and
    ``base_runs`` its run table; ``number`` is the snapshot number this state will be
    written as. ``base_done`` supplies the entries of the base's completions, decoded
    lazily (they are only needed when a late record arrives). ``warn`` receives the one
    warning per un-completed source (defaults to the ``resumelog`` logger).
    """

    number: int = 1
    base: LayeredIndex = field(default_factory=LayeredIndex.empty)
    runs: dict[str, RunInfo] = field(default_factory=dict)
    run_order: list[str] = field(default_factory=list)
    stream_ids: list[str] = field(default_factory=list)
    streams: dict[str, StreamMark] = field(default_factory=dict)
    pending: dict[tuple[str, str], SourceRunState] = field(default_factory=dict)
    added: MutableMapping[str, str] = field(default_factory=source_map)
    removed: set[str] = field(default_factory=set)
    done_shapes: DoneShapeMap = field(default_factory=DoneShapeMap)
    """Final entries of completions made by this fold, as ids into ``shapes`` (absent:
    :data:`SIMPLE_COMPLETION`); millions are held as small ints, those the fast path
    completes in bulk as lists until a lookup asks for them (:class:`DoneShapeMap`)."""
    shapes: ShapeTable = field(default_factory=ShapeTable)
    done_writers: dict[str, Writers] = field(default_factory=hashed_dict)
    """Which streams wrote each key of a completion (shape order; see :data:`Writers`):
    completions made by this fold, and base completions whose writers changed (a
    duplicate from another stream). Absent: the base's (frame 8), or none known."""
    _writer_tuples: dict[Writers, Writers] = field(default_factory=dict)
    provisional: set[str] | ProvisionalSet | None = None
    """While a fold evaluates in rounds to bound memory: sources completed by an
    intermediate evaluation, which a record later in the same fold may reopen quietly
    (the records came in another order, nothing arrived late). A fold that spills its
    completions into layers (:func:`resumelog.compactor.fold_journal`) holds them in a
    :class:`~resumelog._provisional.ProvisionalSet`: they are then in :attr:`base`,
    no longer in :attr:`added`."""
    resets: dict[str, set[str]] = field(default_factory=dict)
    anomalies: list[Anomaly] = field(default_factory=list)
    anomaly_counts: Counter[str] = field(default_factory=Counter)
    records_folded: int = 0
    base_done: LayeredDone | None = None
    warn: Callable[[str], None] = logger.warning
    _stream_index: dict[str, int] = field(default_factory=dict)
    _touched: dict[tuple[str, str], SourceRunState] = field(default_factory=dict)
    _deferred: _fastfold.Buffer = field(default_factory=_fastfold.Buffer, repr=False)
    """Records of the states the fast path keeps in columns (see :meth:`drain`)."""
    _shape_cache: tuple[ShapeTable | None, dict[int, dict[object, object]]] = field(
        default_factory=lambda: (None, {}), repr=False
    )

    # ------------------------------------------------------------------ queries

    def completed_run(self, source: str) -> str | None:
        """The run that completed ``source``, or ``None`` if it is not complete."""
        r = self.added.get(source)
        if r is not None:
            return r
        if source in self.removed:
            return None
        i = self.base.find(source)
        return self._run_name(self.base.run_at(i)) if i >= 0 else None

    def is_completed(self, source: str) -> bool:
        """``True`` iff ``source`` is in the completed set."""
        if source in self.added:
            return True
        return source not in self.removed and self.base.find(source) >= 0

    def completed_count(self) -> int:
        """Number of completed sources (O(1): an added id that is also in the base is
        always in ``removed``, see :meth:`_uncomplete`)."""
        return self.base.count - len(self.removed) + len(self.added)

    def completed_by_run(self) -> Counter[str]:
        """Number of completed sources per completing run."""
        counts: Counter[str] = Counter()
        for idx, n in self.base.run_counts().items():
            counts[self._run_name(idx)] += n
        for s in self.removed:
            counts[self._run_name(self.base.run_at(self.base.find(s)))] -= 1
        counts.update(self.added.values())  # none of them is counted in the base (see completed_count)
        return +counts

    def _run_name(self, idx: int) -> str:
        try:
            return self.run_order[idx]
        except IndexError:
            from resumelog.errors import CorruptSnapshot

            raise CorruptSnapshot("a completed id refers to a run missing from the run table") from None

    def iter_completed(self) -> Iterator[str]:
        """All completed ids (base order, then additions)."""
        removed = self.removed
        added = self.added
        for s in self.base.ids():
            if s not in removed and s not in added:
                yield s
        yield from added

    def completed_leaves(self, source: str, prefix: str | None = None) -> set[str]:
        """Leaf keys of ``source`` whose ``-1`` was recorded in any run still known.

        Leaf keys are lineage keys ``<source>::<i>::<j>...`` (``docs/concepts.md``,
        leaf-level resume): the sink's ``-1`` for such a key means that leaf's output was
        written. Pending states of live runs and the final deltas of a completion
        both count; a retired run's leaves are forgotten (they are redone).
        ``prefix`` replaces ``f"{source}::"`` as the filter on keys (``""``: every key
        with a ``-1``, for adapters whose keys are not lineage keys).
        """
        self.drain()
        if prefix is None:
            prefix = f"{source}::"
        leaves: set[str] = set()
        voided = self.resets.get(source, set())
        for run, info in self.runs.items():
            if info.retired or run in voided:
                continue
            s = self.pending.get((run, source))
            if s is not None:
                leaves.update(k for k, v in s.effective().items() if v == -1 and k.startswith(prefix))
        if self.is_completed(source):
            leaves.update(k for k, v in self.done_entries_of(source).items() if v == -1 and k.startswith(prefix))
        return leaves

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

    def anomaly_once(self, kind: str, source: str, run_id: str, detail: str) -> bool:
        """Record an anomaly unless one of the same kind and detail is already kept
        (a fact found again at every fold, such as a torn tail); whether it was new."""
        if any(a.kind == kind and a.detail == detail for a in self.anomalies):
            return False
        self.anomaly(kind, source, run_id, detail)
        return True

    def anomaly(self, kind: str, source: str, run_id: str, detail: str = "") -> None:
        """Record an anomaly (bounded list + unbounded counts)."""
        self.anomaly_counts[kind] += 1
        self.anomalies.append(Anomaly(kind, source, run_id, detail))
        if len(self.anomalies) > MAX_ANOMALIES:
            del self.anomalies[: len(self.anomalies) - MAX_ANOMALIES]

    def apply_segment(
        self, header: SegmentHeader, batches: Sequence[Batch | ColumnBatch], closed: bool = False
    ) -> bool:
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
        n = sum(map(len, batches))
        if st is None:
            st = self.streams[sid] = StreamMark(header.writer_id, header.incarnation, header.run_id, header.seq)
        st.seq = header.seq
        st.closed = closed
        st.records += n
        st.last_ms = header.created_ms
        info = self._run(header.run_id)
        if info.retired:
            if n:
                self.anomaly("retired_run", "", header.run_id, f"{n} records of segment {sid}/{header.seq} ignored")
            for b in batches:  # an operator's tombstone is not a record of the run that carried it
                for r in b.resets:
                    self.apply_reset(r)
                self._void_reopened(header.run_id, b)
            return True
        stream = self._stream(sid)
        if self.base.count:  # the base's blocks its sources fall in, in one batch (if read in parts)
            self.base.prefetch(chain.from_iterable(b.sources for b in batches))
        base_ord = header.seq << 32
        pos = 0
        for b in batches:
            self.apply_batch(header.run_id, stream, base_ord + pos, b)
            pos += len(b)
        self.records_folded += n
        return True

    def apply_batch(self, run: str, stream: int, first_ordinal: int, batch: Batch | ColumnBatch) -> None:
        """Fold the records of one batch (ordinals ``first_ordinal + i``) and its resets.

        The records of a fresh state (created by this fold) may wait in the fast
        path's columns instead (:mod:`resumelog._fastfold`) until :meth:`finish`."""
        if _fastfold.ENABLED and _fastfold.apply_batch(self, run, stream, first_ordinal, batch):
            return
        if isinstance(batch, ColumnBatch):
            batch = batch.batch()  # (the fast path's columns; the reference reads a Batch)
        if self._deferred:
            self.drain()  # this batch takes the reference loop: every state it may touch is pending
        pending = self.pending
        touched = self._touched
        added = self.added
        check_base = self.base.count > 0
        states: list[SourceRunState | None] = []
        for src in batch.sources:
            k = (run, src)
            s = pending.get(k)
            if s is None:  # (a pending state means the run has not completed the source)
                if (src in added or check_base) and self.completed_run(src) == run:
                    states.append(None)  # late record for a source this run completed
                    continue
                s = pending[k] = SourceRunState()
            touched[k] = s
            states.append(s)
        ents = [s.entries if s is not None else None for s in states]
        ordinal = first_ordinal - 1
        for si, key, delta, flag in zip(batch.source_index, batch.keys, batch.deltas, batch.flags):
            ordinal += 1
            entries = ents[si]
            if entries is None:
                late = self._late(run, batch.sources[si], key, delta, stream)
                if late is None:
                    continue
                states[si] = late
                entries = ents[si] = late.entries
            if key in entries:
                states[si].apply(key, stream, ordinal, delta)  # type: ignore[union-attr]
            else:
                entries[key] = (stream, ordinal, delta)
            if flag:
                states[si].emitted = True  # type: ignore[union-attr]
        for r in batch.resets:
            self.apply_reset(r)

    def drain(self) -> None:
        """Make every state whose records wait in the fast path's columns a pending
        state, its records replayed through :meth:`SourceRunState.apply` in fold order.

        Such states are fresh: created after every pending or touched state (the fast
        path leaves a batch to the reference loop rather than touch a state first
        after one of them), so appending them to :attr:`pending` and the touched
        states keeps both in the order the reference fold creates them. Called by
        every operation that reads or changes pending states other than
        :meth:`apply_batch` and :meth:`finish`, which leave none waiting.
        """
        if self._deferred:
            self._drain(self._deferred.columns(self._shape_caches()))

    def _drain(self, cols: _fastfold.Columns) -> None:
        pending = self.pending
        touched = self._touched
        buf = self._deferred
        for g, k in enumerate(zip(buf.druns, buf.sources)):
            pending[k] = touched[k] = cols.materialize(g, SourceRunState())
        buf.clear()

    def _shape_caches(self) -> dict[int, dict[object, object]]:
        """The fast path's shape caches, valid for :attr:`shapes` (ids never change in a table)."""
        table, caches = self._shape_cache
        if table is not self.shapes:
            caches = {}
            self._shape_cache = (self.shapes, caches)
        return caches

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
        self.drain()
        self._run(header.run_id)
        stream = self._stream(f"{header.writer_id}/{header.incarnation}")
        ordinal = header.seq << 32
        for b in batches:
            for si, key, delta, flag in zip(b.source_index, b.keys, b.deltas, b.flags):
                if delta > 0:
                    src = b.sources[si]
                    if self.completed_run(src) == header.run_id:
                        s = self._late(header.run_id, src, key, delta, stream)
                        if s is None:
                            ordinal += 1
                            continue
                    else:
                        k = (header.run_id, src)
                        s = self.pending.get(k)
                        if s is None:
                            s = self.pending[k] = SourceRunState()
                        self._touched[k] = s
                    if flag & EMISSION:
                        s.emitted = True
                    s.apply(key, stream, ordinal, delta)
                ordinal += 1

    def _late(self, run: str, source: str, key: str, delta: int, stream: int) -> SourceRunState | None:
        """A record of run ``run`` for ``source``, which that run already completed.

        The completion kept the source's final ``key -> delta`` entries, so the fold can
        go on exactly as if it had never collapsed the state: a same-key duplicate
        changes nothing, a new key with delta ``0`` leaves the sum at zero (the
        completion stands, the key joins its entries), and anything else reopens the
        state from those entries plus the new record (the source is no longer complete
        until its sum drains again). Reopened entries belong to a stream of their own,
        so a later different value for one of their keys is a conflict: conservative,
        never falsely complete.
        """
        # (no fresh state waits: the fast path's evaluation relies on it, see Buffer.in_added)
        assert not self._deferred, "a late record with fresh states waiting: drain first"
        entries = self.done_entries_of(source)
        old = entries.get(key)
        if old == delta:
            self._add_writer(source, entries, key, stream)
            return None  # same-key duplicate of a record the completion included
        if old is None and delta == 0:
            kept = dict(entries)
            kept[key] = 0
            writers = self.done_writers_of(source)
            pseudo = self._stream(REOPENED_STREAM)
            by_key = dict(zip(entries, writers)) if writers is not None else {}
            self._uncomplete(source, touch=False)
            self.added[source] = run
            sid, order = self.shapes.intern_ordered(list(kept), tuple(kept.values()), source)
            self.done_shapes[source] = sid
            ws = [by_key.get(k, pseudo) for k in kept]
            ws[-1] = stream
            self.done_writers[source] = self._interned(tuple([ws[i] for i in order]))
            return None
        s = self._reopened(entries, self.done_writers_of(source), stream)
        self._uncomplete(source)
        if self.provisional is not None and source in self.provisional:
            self.provisional.discard(source)  # evaluated before all its records were folded
        else:
            self.anomaly("late_record", source, run, f"key {key!r} delta {delta} after completion")
            self.warn(
                f"resumelog: source {source!r} received a new record after it completed in run {run}; "
                "it is not complete until its counter drains again"
            )
        self.pending[(run, source)] = s
        self._touched[(run, source)] = s
        return s

    def _void_reopened(self, run: str, batch: Batch | ColumnBatch) -> None:
        """Records of retired run ``run`` are ignored, but one that would reopen a
        completion the run holds (:meth:`_late`: not a same-key duplicate, nor a new key
        with delta ``0``) voids it: the run's durable records no longer drain the
        source, whichever compaction retired it (had that one folded the record first,
        retirement would have dropped the reopened state). The source reruns, or a drained
        state another run keeps takes it over."""
        if self.base.count:
            self.base.prefetch(batch.sources)
        held = {i for i, src in enumerate(batch.sources) if self.completed_run(src) == run}
        if not held:
            return
        b = batch.batch() if isinstance(batch, ColumnBatch) else batch
        for key, i, delta in zip(b.keys, b.source_index, b.deltas):
            source = b.sources[i]
            if i not in held or self.completed_run(source) != run:
                continue
            old = self.done_entries_of(source).get(key)
            if old == delta or (old is None and delta == 0):
                continue
            self.drain()
            self._uncomplete(source)
            self.anomaly("late_record", source, run, f"key {key!r} delta {delta} after completion, run retired")
            self.warn(
                f"resumelog: source {source!r} received a new record of retired run {run} after it completed "
                "in that run; the completion is void and the source reruns"
            )

    def _reopened(self, entries: Mapping[str, int], writers: Writers | None, current: int = -1) -> SourceRunState:
        """A pending state holding a collapsed completion's final entries (emitted),
        each attributed to the streams that wrote it (``writers``, shape order; closed
        or unknown writers: :data:`REOPENED_STREAM`), at ordinal ``-1``: a later record
        of a writer is a rewrite, as if the state had never collapsed. ``current``: the
        stream whose segment is being folded (its closing segment's own records are
        still to come: it is not final yet)."""
        s = SourceRunState()
        s.emitted = True
        pseudo = self._stream(REOPENED_STREAM)
        if writers is None or len(writers) != len(entries):
            writers = (pseudo,) * len(entries)
        # A writer that closed (or whose run retired) since it wrote is final too: the
        # same attribution whether or not a snapshot (frame 8) or a spill came between.
        final: dict[int, int] = {}

        def live(x: int) -> int:
            y = final.get(x)
            if y is None:
                m = self.streams.get(self.stream_ids[x])
                info = self.runs.get(m.run_id) if m is not None else None
                y = final[x] = (
                    x
                    if x == current or (m is not None and not m.closed and not (info is not None and info.retired))
                    else pseudo
                )
            return y

        for (k, d), w in zip(entries.items(), writers):
            if isinstance(w, int):
                s.entries[k] = (live(w), -1, d)
            else:
                xs = sorted({live(x) for x in w})
                if len(xs) == 1:
                    s.entries[k] = (xs[0], -1, d)
                else:
                    s.entries[k] = {x: (-1, d) for x in xs}
                    s.multi = True
        return s

    def open_stream_ids(self) -> set[str]:
        """Stream ids (``writer/incarnation``) that may still write: not closed, run not
        retired. Only their names are worth keeping in a completion's writers."""
        runs = self.runs
        return {
            sid
            for sid, m in self.streams.items()
            if not m.closed and not ((info := runs.get(m.run_id)) is not None and info.retired)
        }

    def _interned(self, writers: Writers) -> Writers:
        """One shared tuple per distinct writers (millions of completions share a few)."""
        return self._writer_tuples.setdefault(writers, writers)

    def done_writers_of(self, source: str) -> Writers | None:
        """The writers of a completed source's entries (shape order), in this state's
        stream indexes; ``None`` when none are known (all attributed to closed ones)."""
        w = self.done_writers.get(source)
        if w is not None or source in self.added or self.base_done is None:
            return w
        stored = self.base_done.writers(source)
        if stored is None:
            return None
        table = self.base_done.all_writers()[0]
        pseudo = self._stream(REOPENED_STREAM)

        def one(x: int) -> int:
            return pseudo if x < 0 else self._stream(table[x])

        return self._interned(
            tuple(one(e) if isinstance(e, int) else tuple(sorted({one(x) for x in e})) for e in stored)
        )

    def _add_writer(self, source: str, entries: Mapping[str, int], key: str, stream: int) -> None:
        """A duplicate of completed ``source``'s ``key`` from ``stream``: it becomes one
        more writer of the key (a later rewrite by another writer is then a conflict,
        as in a fold that never collapsed the state).

        Writers unknown because every one closed (a snapshot or a spill left them out:
        their values are final) are the pseudo-writer, as :meth:`_reopened` attributes
        them, so the duplicate is kept whether or not a snapshot or a spill came between
        the completion and it (a fold holding the closed writers keeps it, and its
        snapshot names them ``-1``)."""
        writers = self.done_writers_of(source)
        if writers is None:
            if entries == SIMPLE_COMPLETION:
                return  # reserved keys: their values never change, no writers are kept
            writers = (self._stream(REOPENED_STREAM),) * len(entries)
        i = list(entries).index(key)
        e = writers[i]
        have = (e,) if isinstance(e, int) else e
        if stream in have:
            return
        new = list(writers)
        new[i] = tuple(sorted({*have, stream}))
        self.done_writers[source] = self._interned(tuple(new))

    def _uncomplete(self, source: str, *, touch: bool = True) -> None:
        # Keeps the invariant the O(1) counts rely on: an id in both ``added`` and the
        # base is in ``removed`` (a completion never lands on a base id without first
        # passing here: ``finish`` adds only ids that are not complete).
        self.added.pop(source, None)
        self.done_shapes.pop(source, None)
        self.done_writers.pop(source, None)
        if self.base.find(source) >= 0:
            self.removed.add(source)
        if touch:
            # another run may have drained the source too (its state was kept when the
            # first completion shadowed it): let the next evaluation complete it
            for run in self.run_order:
                k = (run, source)
                s = self.pending.get(k)
                if s is not None:
                    self._touched[k] = s

    def done_entries_of(self, source: str) -> Mapping[str, int]:
        """Final deltas of a completed source (loading the base's lazily).

        Completions whose deltas are exactly :data:`SIMPLE_COMPLETION` (what
        ``Writer.complete`` writes) are not stored, so that is the default.
        """
        if source in self.added:
            sid = self.done_shapes.get(source)
            return self.shapes.entries(sid, source) if sid else SIMPLE_COMPLETION
        stored = self.base_done.get(source) if self.base_done is not None else None
        return SIMPLE_COMPLETION if stored is None else stored

    def damage_run(self, run_id: str, detail: str, kind: str = "journal_gap") -> bool:
        """Quarantine a run whose records were partly lost from storage (a journal gap,
        or ``kind="corrupt_segment"``: a segment that does not decode).

        A lost segment may have held any record of its run, a fan-out ``+k`` among them,
        so no source may complete in that run any more: its pending states are tainted
        and :meth:`finish` completes nothing for it, and the completions an earlier
        round of the same fold made in it (:attr:`provisional`) are voided. Its sources
        rerun in a new run; completions published before the loss stand. Idempotent
        (one anomaly per gap); returns whether this loss was new to the state.
        """
        self.drain()
        info = self._run(run_id)
        if info.retired:
            return False  # its records are ignored anyway (a collected stream of a retired run)
        new = self.anomaly_once(kind, "", run_id, detail)
        if new:
            what = "are missing from storage" if kind == "journal_gap" else "are unreadable (a corrupt segment)"
            self.warn(
                f"resumelog: journal records of run {run_id} {what} ({detail}); "
                "the run completes nothing more, its pending sources rerun in a new run"
            )
        info.damaged = True
        for (run, _), s in self.pending.items():
            if run == run_id:
                s.tainted = True
        if self.provisional:
            # Completions an earlier round of this fold made in the run are as unproven
            # as its pending states (the lost segment may hold a fan-out of them): void
            # them. Completions published by earlier folds stand. (In sorted order: the
            # pending states they become are the same whatever holds the set.)
            for src in sorted(src for src in self.provisional if self.completed_run(src) == run_id):
                s = self._reopened(self.done_entries_of(src), self.done_writers_of(src))
                s.tainted = True
                self._uncomplete(src)
                self.provisional.discard(src)
                self.pending[(run_id, src)] = s
        return new

    def apply_reset(self, reset: Reset) -> None:
        """Fold an operator tombstone: void completions of ``reset.source`` by ``reset.runs``."""
        self.drain()
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

    def finish(self, sole_stream: str | None = None, *, final: bool = True, writers: bool = True) -> list[str]:
        """Evaluate every state touched since the last call; return newly completed ids.

        A state whose agreed deltas sum below zero was drained more than it was
        entered (a pipeline accounting bug: a sink record for a task never fanned
        out): it never completes, and a ``final`` evaluation reports it once as
        anomaly ``over_drained`` with a warning. (An evaluation round inside a fold,
        ``final=False``, may see a ``-1`` before the ``+k`` of a stream folded later.)
        ``writers=False``: do not record which open streams wrote each completion
        (:attr:`done_writers`), for a state that is never encoded nor folded further
        (a reader's view after its last evaluation).

        Completed states are collapsed into the completed set (with their entries);
        conflicts are reported once per state. With ``sole_stream`` (a process folding
        its own flush into its view), only states written entirely by that stream may
        complete — other streams' records may not all be visible — and the rest stay
        touched for the next full evaluation. The rule applied to each state is
        :attr:`_Evaluation.evaluate`; states whose records wait in the fast path's
        columns are evaluated after the others, in the order they were created
        (:func:`resumelog._fastfold.evaluate`, the same rule in bulk).
        """
        cols = self._deferred.columns(self._shape_caches()) if self._deferred else None
        if cols is not None and (sole_stream is not None or not cols.safe):
            self._drain(cols)  # (a sum beyond 64 bits: the reference rule, with Python's integers)
            cols = None
        ev = _Evaluation(self, final=final, writers=writers)
        pending = self.pending
        only = self._stream_index.get(sole_stream) if sole_stream is not None else None
        keep: dict[tuple[str, str], SourceRunState] = {}
        evaluate = ev.evaluate
        for k, s in self._touched.items():  # insertion order: walks memory sequentially
            if pending.get(k) is not s:
                continue  # dropped or replaced since it was touched
            if sole_stream is not None and any(e[1] != only for e in s.items()):
                keep[k] = s
                continue
            evaluate(k, s)
        if cols is not None:  # touched after every state above (see FoldState.apply_batch)
            _fastfold.evaluate(self, ev, cols)
            self._deferred.clear()
        self._touched = keep
        return ev.close()

    def _over_drained(self, k: tuple[str, str], s: SourceRunState, total: int) -> None:
        s.overdrawn = True
        run, src = k
        self.anomaly("over_drained", src, run, f"deltas sum to {total}")
        self.warn(
            f"resumelog: source {src!r} was drained below zero in run {run} (deltas sum to {total}): "
            "a record for a task that never entered; it cannot complete in that run"
        )

    def retire_runs(self, keep: Iterable[str]) -> list[str]:
        """Retire every run not in ``keep``: drop its pending states, ignore its records.

        Its drained states stay: one that a smaller run's completion shadows (held to
        take the source back if that completion is voided, as the evaluation keeps it
        for a run retired before the takeover) never changes again, since the run's
        records are ignored."""
        self.drain()
        keep = set(keep)
        retired = []
        for run_id, info in self.runs.items():
            if not info.retired and run_id not in keep:
                info.retired = True
                retired.append(run_id)
        if retired:
            gone = set(retired)
            for k in [k for k, s in self.pending.items() if k[0] in gone and not s.complete]:
                del self.pending[k]
        return retired

    def stream_marks(self) -> list[StreamMark]:
        """High-water marks of every stream, for the snapshot."""
        return list(self.streams.values())


class _Evaluation:
    """One evaluation of touched states (:meth:`FoldState.finish`): the completion rule
    (:attr:`evaluate`, ``docs/format.md`` §8; the bookkeeping a completion makes is
    its last block: completed set, done shapes and writers) and the completed states'
    deletion from the pending ones afterwards (:meth:`close`)."""

    __slots__ = (
        "added",
        "check_base",
        "damaged",
        "done",
        "done_shapes",
        "done_writers",
        "evaluate",
        "evaluated",
        "final",
        "find",
        "fresh",
        "held",
        "intern",
        "open_streams",
        "ordered",
        "pending",
        "removed",
        "resets",
        "revived",
        "state",
        "took",
    )

    def __init__(self, state: FoldState, *, final: bool, writers: bool) -> None:
        self.state = state
        self.final = final
        self.done: list[str] = []
        """Sources completed by this evaluation, in order (returned by :meth:`close`)."""
        self.evaluated: list[str] = []
        """Those whose completing state is pending (to delete when closing)."""
        self.fresh: set[str] | None = None  # set(done), made when first needed (rarely)
        self.took: list[tuple[str, str]] = []
        self.held: list[tuple[str, str]] = []
        """Pending states this evaluation added (a completion taken over: the former holder's)."""
        self.revived = False
        """Whether a state of the fast path's columns was made pending during it."""
        self.damaged = {r for r, info in state.runs.items() if info.damaged}
        self.pending = state.pending
        self.resets = state.resets
        self.added = state.added
        self.done_shapes = state.done_shapes
        self.done_writers = state.done_writers
        index = state._stream_index
        self.open_streams = (
            {i for sid in state.open_stream_ids() if (i := index.get(sid)) is not None} if writers else set()
        )
        self.ordered: dict[tuple[tuple[int, ...], tuple[int, ...]], Writers] = {}  # (writers, order) -> interned
        self.intern = state.shapes.intern_ordered
        self.check_base = state.base.count > 0
        self.removed = state.removed
        self.find = state.base.find
        self.evaluate = self._rules()
        """``evaluate(k, s)``: the completion rule applied to state ``s`` of ``k``, then
        the bookkeeping of a completion (completed set, shape, writers)."""

    def _rules(self) -> Callable[[tuple[str, str], SourceRunState], None]:
        """:attr:`evaluate`, a closure over this evaluation's tables (a state is
        evaluated a million times in a large fold: no attribute lookups on the way)."""
        state = self.state
        final = self.final
        done, evaluated, took, held_keys = self.done, self.evaluated, self.took, self.held
        damaged, resets, pending, added = self.damaged, self.resets, self.pending, self.added
        check_base, removed, find = self.check_base, self.removed, self.find
        done_shapes, done_writers, intern, open_streams = (
            self.done_shapes,
            self.done_writers,
            self.intern,
            self.open_streams,
        )

        def evaluate(k: tuple[str, str], s: SourceRunState) -> None:
            """Complete the state ``s`` of ``k = (run, source)`` if the rule says so:
            emitted, not tainted, no conflicting key, agreed deltas summing to zero, its
            run neither damaged nor voided by a reset for the source; of two runs that
            drained a source, the smaller run id holds the completion."""
            deltas: tuple[int, ...] | None = None  # the final deltas, in key order (one-stream states)
            if s.multi:
                total, conflicts = s.sums()
                if conflicts and not s.reported:
                    s.reported = True
                    state.anomaly("conflict", k[1], k[0], f"{conflicts} key(s) with different deltas across streams")
                if total or conflicts:
                    if total < 0 and final and not s.overdrawn:
                        state._over_drained(k, s, total)
                    return
            else:
                deltas = tuple([e[2] for e in s.entries.values()])  # type: ignore[misc]
                total = sum(deltas)
                if total:
                    if total < 0 and final and not s.overdrawn:
                        state._over_drained(k, s, total)
                    return
            if not s.emitted or s.tainted:
                return
            run, src = k
            if (resets and run in resets.get(src, ())) or run in damaged:
                s.tainted = True
                return
            if src in added or (check_base and src not in removed and find(src) >= 0):
                # Already complete (by another run): completion is sticky, and of two
                # runs that drained it the smaller run id holds it, whenever each was
                # evaluated (in this evaluation, an earlier round or an earlier
                # snapshot), so the holder does not depend on the order the records
                # came in or on the compaction schedule. The other run's drained state
                # is kept, to take over if the completion is voided or reopened.
                holder = state.completed_run(src)
                assert holder is not None
                if run >= holder:
                    return
                if self.fresh is None:
                    self.fresh = set(done)
                if src not in self.fresh:  # held since an earlier evaluation: take it over
                    held = state._reopened(state.done_entries_of(src), state.done_writers_of(src))
                    state._uncomplete(src, touch=False)
                    # Kept for a retired holder too: its completion stood, so it takes
                    # the source back if the taker's is voided (a reset, a late record),
                    # as in a fold that saw the taker's records together with the voiding
                    # ones. (Its records are ignored: the state never changes again.)
                    if (holder, src) not in pending:  # (else it keeps its place)
                        held_keys.append((holder, src))
                    pending[(holder, src)] = held
                    took.append(k)
            else:
                done.append(src)
                evaluated.append(src)
                if self.fresh is not None:
                    self.fresh.add(src)
            # -- the bookkeeping of the completion: completed set, shape, open writers
            added[src] = run
            keys: Collection[str] = s.entries
            if deltas is None:
                keys = final_deltas = s.final_deltas()
                deltas = tuple(final_deltas.values())
            if len(deltas) == 2 and dict(zip(keys, deltas)) == SIMPLE_COMPLETION:
                done_shapes.pop(src, None)
                done_writers.pop(src, None)  # reserved keys: their deltas never change
                return
            done_shapes[src], order = intern(keys, deltas, src)
            w = None
            if open_streams:  # else every writer is closed: its values are final, no names needed
                if not s.multi:  # one stream per key: the writers are the entries' streams
                    w = self.writers(tuple([e[0] for e in s.entries.values()]), order)  # type: ignore[misc]
                else:
                    ents = s.entries
                    wm = [e[0] if type(e) is tuple else tuple(sorted(e)) for e in map(ents.__getitem__, keys)]
                    if any(not open_streams.isdisjoint((x,) if isinstance(x, int) else x) for x in wm):
                        w = state._interned(tuple([wm[i] for i in order]))
            if w is None:
                done_writers.pop(src, None)
            else:
                done_writers[src] = w

        return evaluate

    def writers(self, ws: tuple[int, ...], order: tuple[int, ...]) -> Writers | None:
        """The writers to keep for a completion whose keys were written by streams ``ws``
        (one each, entry order) and whose shape lists its entries in ``order``:
        ``None`` if none of them is open."""
        if self.open_streams.isdisjoint(ws):
            return None
        w = self.ordered.get((ws, order))
        if w is None:
            w = self.ordered[(ws, order)] = self.state._interned(tuple([ws[i] for i in order]))
        return w

    def close(self) -> list[str]:
        """Delete the completed states from the pending ones; return the completed ids."""
        pending = self.pending
        added = self.added
        for src in self.evaluated:  # the state that completed it (the smaller run, if two did)
            del pending[(added[src], src)]
        for k in self.took:  # a completion taken over from a larger run id
            if added.get(k[1]) == k[0]:
                del pending[k]
        if self.held and self.revived:
            # States of the fast path's columns were pending (unseen) before this
            # evaluation began, so before every state it created: restore that order.
            for k in self.held:
                if k in pending:
                    pending[k] = pending.pop(k)
        if self.state.provisional is not None:
            self.state.provisional.update(self.done)
        del self.evaluate  # a closure over this evaluation: the cycle would outlive it while the GC is paused
        return self.done
