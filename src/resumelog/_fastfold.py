"""The fold's fast path: fresh states kept in columns, evaluated in bulk.

The reference fold (``docs/format.md`` §8) keeps one
:class:`~resumelog.algebra.SourceRunState` per ``(run, source)``: a dict entry
``key -> (stream, ordinal, delta)`` per record, the state itself in
:attr:`FoldState.pending <resumelog.algebra.FoldState.pending>` and in the touched
states, and :meth:`FoldState.finish <resumelog.algebra.FoldState.finish>` walks them
one by one. In a journal tail nearly every state is *fresh* (created by the fold) and
completes at the next evaluation; that per-record and per-state bookkeeping, not the
rule, is most of the fold's time. This module keeps fresh states out of it:

Apply (:func:`apply_batch`)
    A batch's sources are looked up once. A source whose run has no state for it
    gets a number (``gid``) in :class:`Buffer` instead of a state; its records are
    appended, with NumPy, to columns (state number, key, delta, ordinal, stream,
    flags). Records of states that exist already (pending from a snapshot or an
    earlier evaluation) go through :meth:`SourceRunState.apply
    <resumelog.algebra.SourceRunState.apply>` as in the reference. A batch that would
    need more — a *late* record (its run completed the source: reopening it changes
    the completed set), or a state touched for the first time after a fresh one (the
    touched states' order is the evaluation's order) — makes every fresh state
    pending (:meth:`FoldState.drain <resumelog.algebra.FoldState.drain>`) and takes
    the reference loop. So fresh states always come after every pending and touched
    state, in the order the reference fold would have created them.

Evaluate (:func:`evaluate`)
    After the touched states, one stable sort groups the columns by state, in fold
    order, and gives each state's record count, sum of deltas and emission flag. A
    state completes *in bulk* when its keys are distinct (then its entries are exactly
    its records, and the sum of deltas is the sum over its keys), the sum is ``0``, it
    was emitted, its source is not complete and appears in no other fresh state, and
    its run is neither damaged nor voided for it by a reset: the same conditions
    :attr:`_Evaluation.evaluate <resumelog.algebra._Evaluation.evaluate>` checks. The
    completions are recorded in bulk (``dict.update`` and ``map`` over the runs of
    consecutive such states, C loops): completed set, shape ids (found in a cache keyed
    by the keys with the source id cut out, :meth:`Columns.shapes`; a miss is interned
    as the reference interns), writers. Any other state is *materialized* (its records
    replayed through the reference rule into a plain state, made pending) and
    evaluated by the reference rule, in its turn.

The result is identical to the reference — completed set (and its order), pending
states (and their order), anomalies, marks, done shapes and writers, the snapshot's
bytes — which ``property_tests/test_fast_fold.py`` checks on random journals, and the
model-based machines run under both paths in CI.

Where the optional extension :mod:`resumelog._native` is built (:mod:`resumelog._compiled`),
some of these steps take its C loops, each the loop of the Python expression kept here as
its fallback: a batch's states numbered (``number_states``), its deltas packed
(``int64s``), a round's keys put in state order (``take``), and the bulk completions'
shape keys made and deduplicated with their distinct-keys flags (``shape_keys``). The
compaction's batches then come decoded into columns
(:class:`~resumelog._columns.ColumnBatch`): their deltas and source indexes are int64
arrays already, and their keys stay bytes (:class:`~resumelog._columns.KeySpans`) through
the columns and the shape keys (``take_spans``); only the keys of a state replayed
through the reference rule become ``str``. A batch that takes the reference loop is
converted to the :class:`~resumelog.format.Batch` msgspec decodes.

NumPy is an optional dependency (extra ``fast``). Without it, or with
``RESUMELOG_FOLD=python``, every batch takes the reference path; ``RESUMELOG_FOLD=numpy``
makes a missing NumPy an import error. ``RESUMELOG_FOLD_MIN_RECORDS`` (default
:data:`MIN_RECORDS`) is the smallest batch worth NumPy's fixed cost per call; tests set
it to 0 to send every batch through the fast path.
"""

from __future__ import annotations

import bisect
import operator
import os
from collections.abc import Callable, Collection, Sequence
from itertools import compress, repeat
from typing import TYPE_CHECKING, Any, NamedTuple

from resumelog._columns import ColumnBatch, KeySpans
from resumelog._compiled import native
from resumelog._hashed_dicts import hashed

if TYPE_CHECKING:
    from resumelog._native import SourceIndex
    from resumelog.algebra import FoldState, SourceRunState, _Evaluation
    from resumelog.format import Batch

__all__ = ["ENABLED", "MIN_RECORDS", "MODE", "Buffer", "Columns", "apply_batch", "evaluate"]

MODE = os.environ.get("RESUMELOG_FOLD", "auto").strip().lower() or "auto"
"""``RESUMELOG_FOLD``: ``auto`` (NumPy when importable), ``numpy`` (required) or
``python`` (the reference path only)."""
if MODE not in ("auto", "numpy", "python"):
    raise ValueError(f"RESUMELOG_FOLD must be auto, numpy or python, not {MODE!r}")

np: Any = None
if MODE != "python":
    try:
        import numpy as np
    except ImportError:
        if MODE == "numpy":
            raise ImportError(
                "RESUMELOG_FOLD=numpy but NumPy is not installed: pip install 'resumelog[fast]'"
            ) from None

ENABLED: bool = np is not None
"""Whether batches may take the fast path (tests switch it to compare both paths)."""

MIN_RECORDS: int = int(os.environ.get("RESUMELOG_FOLD_MIN_RECORDS", "128"))
"""Smaller batches take the reference path (NumPy's fixed cost per call would exceed
what it saves)."""

FEW_RECORDS = 1024
"""An evaluation that materializes states works out each one's records alone if it has
more than this many records per such state; else it makes the full columns of streams,
ordinals and deltas (cheaper per record). Tests set it to 0 or to a huge number to take
one way."""

_INT64_MAX = (1 << 63) - 1
_SOURCE = operator.itemgetter(1)  # of a state's key (run, source)
_NEW = -2  # a fresh source of the batch (number not given yet)
_EXACT = -1  # a source with a state: the reference rule
_MISS = object()
_DUPLICATE = object()  # cached: these keys are not distinct
_MARKS = [("\x1f", "\x1e"), ("\x1d", "\x1c"), ("\x00", "\x01")]
_CACHE_MAX = 1 << 16
"""A shape cache holding more keys is emptied before an evaluation (a cache, not state:
pipelines have a handful of shapes; keys that differ per source would make it grow
with the completed set)."""
"""Candidate (separator, cut mark) pairs of :meth:`Columns.shapes`'s cache keys."""


class Buffer:
    """The fresh states (state ``gid``: ``(druns[gid], sources[gid])``, ``index`` the
    inverse) and the columns of their records, one array per batch, in fold order."""

    __slots__ = (
        "base_pos",
        "deltas",
        "druns",
        "flags",
        "gids",
        "in_added",
        "index",
        "keys",
        "ordinals",
        "runs",
        "sources",
        "streams",
    )

    def __init__(self) -> None:
        self.clear()

    def __bool__(self) -> bool:
        return bool(self.sources)

    def __len__(self) -> int:
        return len(self.sources)

    def run_index(self, run: str) -> dict[str, int] | SourceIndex:
        """``index[run]``, made if missing. It grows by ~10^5 ids a round: with the
        kernels a :class:`resumelog._native.SourceIndex`, which ``number_states`` looks a
        whole batch up in with its memory reads prefetched (``number_states`` took 0.30 s
        instead of 0.41 s of the 5M-record compaction of ``benchmarks/bench_fold.py``);
        else a dict that stores its keys' hashes (its resizes then read no id)."""
        index = self.index.get(run)
        if index is None:
            index = self.index[run] = hashed({}) if native is None else native.SourceIndex()
        return index

    def key(self, gid: int) -> tuple[str, str]:
        """State ``gid``'s key ``(run, source)``."""
        return self.druns[gid], self.sources[gid]

    def clear(self) -> None:
        """Forget every fresh state and record (all were evaluated or made pending)."""
        self.sources: list[str] = []
        """Each fresh state's source."""
        self.druns: list[str] = []
        """Each fresh state's run."""
        self.base_pos: list[int] = []
        """Each fresh state's source's position in the fold's base, or ``-1`` (looked up
        once, when the state is numbered: the base changes only between evaluations)."""
        self.in_added: list[int] = []
        """The fresh states whose source was in :attr:`FoldState.added
        <resumelog.algebra.FoldState.added>` when they were numbered (looked up then,
        for the late-record test; :func:`evaluate` adds what was put there since)."""
        self.index: dict[str, dict[str, int] | SourceIndex] = {}
        """Per run, each of its fresh states' number by source (no ``(run, source)``
        tuple made per record; see :meth:`run_index`)."""
        self.runs: set[str] = set()
        """The runs of ``druns``."""
        self.gids: list[Any] = []
        self.keys: list[list[str] | KeySpans] = []
        self.deltas: list[Any] = []
        self.ordinals: list[Any] = []
        """Per batch: its first ordinal (``int``; its records' ordinals follow one by one)
        or, where some of its records were left out, their ordinals (an array)."""
        self.streams: list[int] = []
        """Per batch: its stream (every record's; the columns are made when needed)."""
        self.flags: list[Any] = []

    def columns(self, caches: dict[int, dict[object, object]]) -> Columns:
        """The records grouped by state (once per evaluation, then :meth:`clear`);
        ``caches``: the fold's shape caches (:meth:`Columns.shapes`), valid as long
        as its shape table."""
        return Columns(self, caches)


def apply_batch(state: FoldState, run: str, stream: int, first_ordinal: int, batch: Batch | ColumnBatch) -> bool:
    """Fold ``batch`` (ordinals ``first_ordinal + i``) the fast way and return ``True``,
    or change nothing and return ``False`` (the batch needs the reference loop)."""
    n = len(batch)
    if n < MIN_RECORDS or n == 0 or first_ordinal + n > _INT64_MAX:
        return False
    if native is not None:
        packed = batch.deltas if isinstance(batch, ColumnBatch) else native.int64s(batch.deltas)
        if packed is None:
            return False  # a delta beyond 64 bits (msgpack allows up to 2^64 - 1)
        deltas = np.frombuffer(packed, dtype=np.int64)
    else:
        try:
            deltas = np.asarray(batch.deltas, dtype=np.int64)
        except OverflowError:  # a delta beyond 64 bits (msgpack allows up to 2^64 - 1)
            return False
    buf = state._deferred
    index = buf.run_index(run)
    pending = state.pending
    if native is not None:
        pend = _pending_of(pending, run, len(batch.sources))
        numbered = native.number_states(index, pend, run, batch.sources, batch.source_index, len(buf), state.added)
        if numbered is False:
            return False  # a late record (in ``added``): the reference loop reopens the completion
        if numbered is not None:  # the common case below (a source named twice too), numbered in one C loop
            gid, new, in_added = numbered
            if new:
                pos = _in_base(state, run, new)
                if pos is None:
                    for src in new:  # (numbered in index already: change nothing)
                        del index[src]
                    return False  # a late record (in the base): the reference loop reopens the completion
                _number(buf, run, new, pos, in_added)
            return _apply_records(state, stream, first_ordinal, batch, deltas, np.frombuffer(gid, dtype=np.int64), {})
        if isinstance(batch, ColumnBatch):
            batch = batch.batch()  # (a state of the batch is pending: the lines below read a Batch)
    assert not isinstance(batch, ColumnBatch)  # (decoded so only where the kernels are)
    ks = list(zip(repeat(run), batch.sources))
    exact: dict[int, SourceRunState] = {}
    if not pending or not any(map(pending.__contains__, ks)):
        # The common case: every state is fresh (new, or in the columns already). Its
        # numbers in C loops; the reference loop for a late record, a repeated id.
        if len(set(batch.sources)) != len(ks):
            return _apply_general(state, run, stream, first_ordinal, batch, deltas, ks)  # an id named twice
        assert isinstance(index, dict)  # (no kernels: with them, a pending state goes to _apply_general)
        gs = list(map(index.get, batch.sources))
        fresh = [src for src, g in zip(batch.sources, gs) if g is None]
        start = len(buf.sources)
        if fresh:
            found = _base_positions(state, run, fresh)
            if found is None:
                return False  # a late record: the reference loop reopens the completion
            _number(buf, run, fresh, *found)
            index.update(zip(fresh, range(start, start + len(fresh))))
        if len(fresh) == len(ks):  # (all new: numbered in order)
            local = list(range(start, start + len(ks)))
        else:
            number = iter(range(start, start + len(fresh)))
            local = [next(number) if g is None else g for g in gs]
        return _apply_records(state, stream, first_ordinal, batch, deltas, _gids(local, batch), exact)
    return _apply_general(state, run, stream, first_ordinal, batch, deltas, ks)


def _apply_general(
    state: FoldState, run: str, stream: int, first_ordinal: int, batch: Batch, deltas: Any, ks: list[tuple[str, str]]
) -> bool:
    """:func:`apply_batch` of a batch some of whose sources have a pending state."""
    buf = state._deferred
    index = buf.run_index(run)
    pending = state.pending
    touched = state._touched
    # 1. classify every source, changing nothing yet
    local: list[int] = []
    exact: dict[int, SourceRunState] = {}
    new: list[str] = []
    fresh_before = bool(buf)  # a fresh state exists before this source
    for i, (k, src) in enumerate(zip(ks, batch.sources)):
        g = index.get(src)
        if g is not None:
            local.append(g)
            continue
        s = pending.get(k)
        if s is not None:
            if fresh_before and k not in touched:
                return False  # touched first after a fresh state: the evaluation order needs it pending
            local.append(_EXACT)
            exact[i] = s
            continue
        local.append(_NEW)
        new.append(src)
        fresh_before = True
    found = _base_positions(state, run, new)
    if found is None:
        return False  # a late record: the reference loop reopens the completion
    where = dict(zip(new, found[0]))
    in_added = set(map(new.__getitem__, found[1]))
    # 2. number the fresh states and touch the others, in the batch's order
    sources = buf.sources
    for i, g in enumerate(local):
        if g == _NEW:
            src = batch.sources[i]
            g = index.get(src)  # (a source id twice in one batch)
            if g is None:
                g = index[src] = len(sources)
                sources.append(src)
                buf.druns.append(run)
                buf.base_pos.append(where[src])
                buf.runs.add(run)
                if src in in_added:
                    buf.in_added.append(g)
            local[i] = g
        elif g == _EXACT:
            touched[ks[i]] = exact[i]
    return _apply_records(state, stream, first_ordinal, batch, deltas, _gids(local, batch), exact)


def _pending_of(pending: dict[tuple[str, str], SourceRunState], run: str, sources: int) -> Any:
    """What ``native.number_states`` looks a batch's ``sources`` (that many) up in: the
    sources of ``run``'s pending states, a set made for the batch while there are no
    more pending states than sources (no ``(run, source)`` tuple made per source), or
    ``pending`` itself."""
    if len(pending) > sources:
        return pending
    return {src for r, src in pending if r == run}


def _number(buf: Buffer, run: str, sources: list[str], pos: list[int], in_added: list[int]) -> None:
    """Append the fresh states of ``run``'s ``sources`` (numbered in order from
    ``len(buf)``), with what :func:`_base_positions` found of them."""
    first = len(buf.sources)
    buf.sources.extend(sources)
    buf.druns.extend(repeat(run, len(sources)))
    buf.base_pos.extend(pos)
    buf.in_added.extend(i + first for i in in_added)
    buf.runs.add(run)


def _gids(local: list[int], batch: Batch) -> Any:
    """Each record's state number (``local[i]``: that of the batch's source ``i``)."""
    return np.asarray(local, dtype=np.int64)[np.asarray(batch.source_index, dtype=np.intp)]


def _base_positions(state: FoldState, run: str, sources: list[str]) -> tuple[list[int], list[int]] | None:
    """The positions of the sources of new fresh states of ``run`` in the fold's base
    (``-1``: not there) and the indexes of those in :attr:`FoldState.added
    <resumelog.algebra.FoldState.added>` (completed by another run: for
    :attr:`Buffer.in_added`), or ``None`` if ``run`` completed one of them: a late
    record, which reopens the completion (:meth:`FoldState.completed_run
    <resumelog.algebra.FoldState.completed_run>` of each, the base looked up in bulk).
    (``native.number_states`` looks them up in ``added`` itself: :func:`_in_base`.)"""
    added = state.added
    in_added: list[int] = []
    if added:
        runs = list(map(added.get, sources))  # (C loops)
        if any(runs):
            if run in runs:
                return None
            in_added = [i for i, r in enumerate(runs) if r is not None]
    pos = _in_base(state, run, sources)
    return None if pos is None else (pos, in_added)


def _in_base(state: FoldState, run: str, sources: list[str]) -> list[int] | None:
    """The base's part of :func:`_base_positions`: the sources' positions in the base,
    or ``None`` if ``run`` completed one of them there (and no later fold voided or
    re-attributed it)."""
    base = state.base
    pos = base.find_many(sources) if base.count else [-1] * len(sources)
    added, removed = state.added, state.removed
    if base.count:
        for i in compress(range(len(pos)), map((-1).__lt__, pos)):  # those in the base
            src = sources[i]
            if src not in added and src not in removed and state._run_name(base.run_at(pos[i])) == run:
                return None
    return pos


def _apply_records(
    state: FoldState,
    stream: int,
    first_ordinal: int,
    batch: Batch | ColumnBatch,
    deltas: Any,
    gid: Any,
    exact: dict[int, SourceRunState],
) -> bool:
    """The records of a batch whose sources are classified (``gid[r]``: the number of
    record ``r``'s fresh state, or ``_EXACT`` with the state in ``exact[i]``, ``i`` its
    source): fresh states' into the columns, the others' through the rule; then the
    batch's resets."""
    buf = state._deferred
    n = len(batch)
    keys: list[str] | KeySpans = batch.keys
    flags = np.frombuffer(batch.flags, dtype=np.uint8)
    ordinals: Any = first_ordinal  # (consecutive: the column is made when needed)
    if exact:
        assert not isinstance(batch, ColumnBatch)  # (only a Batch has a pending state: apply_batch)
        mine = gid >= 0
        source_index, ks, ds = batch.source_index, batch.keys, batch.deltas
        for i in np.flatnonzero(~mine).tolist():
            s = exact[source_index[i]]
            s.apply(ks[i], stream, first_ordinal + i, ds[i])
            if flags[i]:
                s.emitted = True
        keys = list(compress(keys, mine.tolist()))
        ordinals = np.arange(first_ordinal, first_ordinal + n, dtype=np.int64)[mine]
        gid, deltas, flags = gid[mine], deltas[mine], flags[mine]
    if len(gid):
        buf.gids.append(gid)
        buf.keys.append(keys)
        buf.deltas.append(deltas)
        buf.ordinals.append(ordinals)
        buf.streams.append(stream)
        buf.flags.append(flags)
    for r in batch.resets:
        state.apply_reset(r)  # (makes the fresh states pending first)
    return True


class Columns:
    """The buffer's records grouped by state, as Python lists (fold order within a
    state): state ``g``'s records are ``keys[starts[g]:starts[g + 1]]`` etc."""

    __slots__ = (
        "_batches",
        "_buf",
        "_delta_list",
        "_few",
        "_marks",
        "_order",
        "_ordinals",
        "_patterns",
        "_starts",
        "_streams",
        "_touching",
        "counts",
        "delta_column",
        "emitted",
        "keys",
        "safe",
        "sources",
        "starts",
        "sums",
    )

    def __init__(self, buf: Buffer, caches: dict[int, dict[object, object]]) -> None:
        n_states = len(buf)
        if buf.gids:
            g = np.concatenate(buf.gids)
            order = np.argsort(g, kind="stable")
            counts = np.bincount(g, minlength=n_states)
            deltas = np.concatenate(buf.deltas)[order]
            flagged = np.bincount(
                g[np.concatenate(buf.flags) != 0], minlength=n_states
            )  # any flag bit, as the reference
        else:  # fresh states without records (a batch naming a source it has no record for)
            order = g = np.zeros(0, dtype=np.int64)
            counts = flagged = np.zeros(n_states, dtype=np.int64)
            deltas = np.zeros(0, dtype=np.int64)
        starts = np.zeros(n_states + 1, dtype=np.int64)
        np.cumsum(counts, out=starts[1:])
        # Sums of int64 deltas: prefix sums may wrap, but their differences are exact
        # whenever a state's true sum fits in 64 bits, which this bound guarantees.
        big = max(int(deltas.max()), -int(deltas.min())) if len(deltas) else 0
        self.safe = big * int(counts.max(initial=0)) <= _INT64_MAX
        prefix = np.zeros(len(deltas) + 1, dtype=np.int64)
        with np.errstate(over="ignore"):
            np.cumsum(deltas, out=prefix[1:])
            sums = prefix[starts[1:]] - prefix[starts[:-1]]
        self.starts: list[int] = starts.tolist()
        self.counts: Any = counts
        self.sums: Any = sums
        self.emitted: Any = flagged > 0
        self.delta_column: Any = deltas
        """Every record's delta, in state order (native int64: the kernels read it)."""
        self._delta_list: list[int] | None = None
        self.keys: list[str] | KeySpans
        spans = _spans(buf.keys) if native is not None else None
        if spans is not None:  # keys the C decoder read: kept as bytes
            self.keys = KeySpans(*native.take_spans(spans, order.astype(np.int64, copy=False)))
        else:
            flat: list[str] = []
            for keys in buf.keys:
                flat += keys
            self.keys = (
                native.take(flat, order.astype(np.int64, copy=False))
                if native is not None
                else list(map(flat.__getitem__, order.tolist()))
            )
        self._buf = buf
        self._order = order
        self._ordinals: Any = None
        self._streams: Any = None
        self._starts = starts
        self._batches: tuple[Any, Any] | None = None
        self._few = False
        self._touching: Any = None
        self.sources: list[str] = buf.sources  # (not a copy: the buffer is cleared after the evaluation)
        """Each state's source."""
        self._marks, self._patterns = _patterns(caches, self.sources)

    @property
    def deltas(self) -> list[int]:
        """Every record's delta, in state order (a list, made when first needed)."""
        if self._delta_list is None:
            self._delta_list = self.delta_column.tolist()
        return self._delta_list

    def ordinals(self, a: int, b: int) -> list[int]:
        """Records ``a..b-1``'s ordinals (the column made when first needed: to
        materialize a state)."""
        if self._ordinals is None:
            buf = self._buf
            o = [
                first if isinstance(first, np.ndarray) else np.arange(first, first + len(g), dtype=np.int64)
                for first, g in zip(buf.ordinals, buf.gids)
            ]
            self._ordinals = np.concatenate(o)[self._order] if o else np.zeros(0, dtype=np.int64)
        return self._ordinals[a:b].tolist()  # type: ignore[no-any-return]

    def _stream_column(self) -> Any:
        """Every record's stream, in state order (made when first needed: writers, or to
        materialize)."""
        if self._streams is None:
            buf = self._buf
            if buf.gids:
                st = np.repeat(np.asarray(buf.streams, dtype=np.int64), list(map(len, buf.gids)))
                self._streams = st[self._order]
            else:
                self._streams = np.zeros(0, dtype=np.int64)
        return self._streams

    def streams(self, a: int, b: int) -> list[int]:
        """Records ``a..b-1``'s streams."""
        return self._stream_column()[a:b].tolist()  # type: ignore[no-any-return]

    def _batch_of(self, records: Any) -> tuple[Any, Any]:
        """The batch of each of ``records`` (positions in state order) and its position
        in that batch, worked out for them only."""
        if self._batches is None:
            lens = np.fromiter(map(len, self._buf.gids), dtype=np.int64, count=len(self._buf.gids))
            self._batches = (np.cumsum(lens), lens)
        ends, lens = self._batches
        pos = self._order[records]  # (fold order)
        batch = np.searchsorted(ends, pos, side="right")
        return batch, pos - (ends[batch] - lens[batch])

    def stream_tuples(self, states: list[int]) -> list[tuple[int, ...]]:
        """The streams of each of ``states``'s records (in state order), worked out for
        their records only: the batch of each, a batch's records sharing its stream."""
        g = np.asarray(states, dtype=np.int64)
        lo, n = self._starts[g], np.diff(self._starts)[g]
        off = np.zeros(len(g) + 1, dtype=np.int64)
        np.cumsum(n, out=off[1:])
        records = np.repeat(lo - off[:-1], n) + np.arange(off[-1], dtype=np.int64)  # (state order)
        if self._streams is not None:
            flat = self._streams[records].tolist()
        else:
            flat = np.asarray(self._buf.streams, dtype=np.int64)[self._batch_of(records)[0]].tolist()
        o = off.tolist()
        return list(map(tuple, map(flat.__getitem__, map(slice, o, o[1:]))))

    def prepare(self, count: int) -> None:
        """Before :meth:`materialize` of ``count`` states: if they are few against the
        records (as the states a round leaves pending usually are), each one's records
        are worked out alone, without the full columns of streams, ordinals and deltas."""
        self._few = count * FEW_RECORDS < len(self.delta_column)

    def _records(self, a: int, b: int) -> tuple[list[int], list[int], list[int]]:
        """Records ``a..b-1``'s streams, ordinals and deltas."""
        if not self._few:
            return self.streams(a, b), self.ordinals(a, b), self.deltas[a:b]
        buf = self._buf
        batch, within = self._batch_of(np.arange(a, b, dtype=np.int64))
        streams = [buf.streams[x] for x in batch.tolist()]
        ordinals = [
            int(first[i]) if isinstance(first, np.ndarray) else first + i
            for first, i in zip(map(buf.ordinals.__getitem__, batch.tolist()), within.tolist())
        ]
        return streams, ordinals, self.delta_column[a:b].tolist()

    def touching(self, streams: Collection[int]) -> Any:
        """Whether an open stream (one of ``streams``) wrote a record of each state (a
        bool array; made once per evaluation, ``streams`` does not change in one)."""
        if self._touching is None:
            buf = self._buf
            written = list(compress(buf.gids, map(streams.__contains__, buf.streams)))  # (a batch's: one stream)
            if written:
                count = np.bincount(np.concatenate(written), minlength=len(buf))
            else:
                count = np.zeros(len(buf), dtype=np.int64)
            self._touching = count > 0
        return self._touching

    def materialize(self, g: int, new: SourceRunState) -> SourceRunState:
        """Fill ``new`` (a plain, empty state) with state ``g``'s emission flag and its
        records, replayed in fold order through the reference rule."""
        a, b = self.starts[g], self.starts[g + 1]
        new.emitted = bool(self.emitted[g])
        keys = self.keys[a:b]
        streams, ordinals, deltas = self._records(a, b)
        if len(set(keys)) == b - a:  # distinct keys: each record is one entry
            new.entries.update(zip(keys, zip(streams, ordinals, deltas)))
        else:
            apply = new.apply
            for key, stream, ordinal, delta in zip(keys, streams, ordinals, deltas):
                apply(key, stream, ordinal, delta)
        return new

    def shapes(
        self,
        groups: Sequence[list[str]],
        deltas: Sequence[tuple[int, ...]],
        sources: list[str],
        simple: set[int],
        known: tuple[list[object], bytes, list[object], bytes] | None = None,
    ) -> _Shapes:
        """The shape cache's keys and hits for many states at once (C loops): the
        key is ``None`` where it cannot be cached (no cache, an empty source id); the
        hit is ``_MISS`` where not cached yet, ``_DUPLICATE`` where the keys are not
        distinct (known for every state: the keys of each key not cached yet are
        checked once, distinct keys having distinct patterns); and, in order, the
        states that intern their shape: those whose key is not cached and no earlier
        state has, and those whose key cannot be cached. States in ``simple``
        (:data:`~resumelog.algebra.SIMPLE_COMPLETION`, never interned) are left out.
        ``known``: the keys, whether each state's keys are distinct, the distinct keys
        and each state's number among them, computed already
        (``resumelog._native.shape_keys``)."""
        pk: list[object]
        if known is not None:
            pk, distinct, uniq, which = known
            return self._shapes_of(pk, uniq, np.frombuffer(which, dtype=np.int32), distinct.__getitem__, simple)
        patterns = self._patterns
        if patterns is None:
            pk = [None] * len(groups)
        else:
            sep, cut = self._marks
            joined = list(map(sep.join, groups))
            pk = list(zip(map(str.replace, joined, sources, repeat(cut)), deltas))
            # exact only if no key holds a mark (the sources hold none: _patterns)
            seps = np.fromiter(map(str.count, joined, repeat(sep)), dtype=np.int64, count=len(joined))
            cuts = np.fromiter(map(str.__contains__, joined, repeat(cut)), dtype=bool, count=len(joined))
            lens = np.fromiter(map(len, groups), dtype=np.int64, count=len(groups))
            for j in np.flatnonzero((seps != lens - 1) | cuts).tolist():
                pk[j] = None
            if "" in sources:  # an empty id is not cut out of keys
                pk = [None if not src else k for k, src in zip(pk, sources)]
        numbers: dict[object, int] = {}  # the distinct keys, numbered as shape_keys numbers them
        which = np.fromiter(
            (-1 if k is None else numbers.setdefault(k, len(numbers)) for k in pk), dtype=np.int32, count=len(pk)
        )

        def unique(j: int) -> bool:
            return len(set(groups[j])) == len(groups[j])

        return self._shapes_of(pk, list(numbers), which, unique, simple)

    def _shapes_of(
        self, pk: list[object], uniq: list[object], which: Any, unique: Callable[[int], object], simple: set[int]
    ) -> _Shapes:
        """:meth:`shapes` from each state's key ``pk``, the distinct keys ``uniq`` and
        each state's number among them (``which``, int32; ``-1``: the key is ``None``):
        the lists are worked out once per distinct key, not once per state. ``unique(j)``
        tells whether state ``j``'s keys are distinct (asked of each key's first state
        not cached, and of each state whose key cannot be cached)."""
        patterns = self._patterns
        if patterns is not None:  # each distinct key looked up once
            found = [*map(patterns.get, uniq, repeat(_MISS)), _MISS]
        else:
            found = [_MISS] * (len(uniq) + 1)
        hits = list(map(found.__getitem__, which.tolist()))
        missed = np.fromiter(map(operator.is_, found, repeat(_MISS)), dtype=bool, count=len(found))
        miss = np.flatnonzero(missed[which])
        if simple:
            miss = miss[~np.isin(miss, np.fromiter(simple, dtype=np.int64, count=len(simple)))]
        mw = which[miss]
        keyed = mw >= 0
        numbers, first = np.unique(mw[keyed], return_index=True)
        firsts = miss[keyed][first].tolist()  # each key's first state
        duplicated = [u for u, j in zip(numbers.tolist(), firsts) if not unique(j)]
        if duplicated:
            assert patterns is not None  # (a key is cached only where there is a cache)
            for u in duplicated:
                patterns[uniq[u]] = _DUPLICATE
            for j in miss[np.isin(mw, duplicated)].tolist():
                hits[j] = _DUPLICATE
        uncached = miss[~keyed].tolist()
        for j in uncached:
            if not unique(j):
                hits[j] = _DUPLICATE
        interning = [j for j in firsts if hits[j] is _MISS]
        interning += [j for j in uncached if hits[j] is _MISS]
        return _Shapes(pk, hits, sorted(interning), which, uniq)

    def resolve(
        self,
        pk: object,
        keys: list[str],
        deltas: tuple[int, ...],
        source: str,
        intern: Callable[[Collection[str], tuple[int, ...], str], tuple[int, tuple[int, ...]]],
    ) -> tuple[int, tuple[int, ...]]:
        """The shape id and order of distinct ``keys`` not found by :meth:`shapes`
        (interned now, in the evaluation's order, and cached under ``pk``)."""
        if pk is None:
            return intern(keys, deltas, source)
        patterns = self._patterns
        assert patterns is not None
        hit = patterns.get(pk, _MISS)
        if hit is _MISS:
            hit = patterns[pk] = intern(keys, deltas, source)
        return hit  # type: ignore[return-value]


def _spans(parts: list[list[str] | KeySpans]) -> list[tuple[bytes, bytes]] | None:
    """The buffer's keys as spans (``KeySpans.raw``) if some are (the C decoder's) and the
    others can be (ASCII), else ``None``."""
    if not any(isinstance(k, KeySpans) for k in parts):
        return None
    spans = [k if isinstance(k, KeySpans) else KeySpans.of(k) for k in parts]
    return None if None in spans else [k.raw for k in spans]  # type: ignore[union-attr]


def _patterns(
    caches: dict[int, dict[object, object]], sources: list[str]
) -> tuple[tuple[str, str], dict[object, object] | None]:
    """The first (separator, cut mark) pair found in no source id of this evaluation,
    and the shape cache for that pair in ``caches`` (one per pair: the fold's, tied to
    its shape table), or ``None`` if no pair is free.

    If neither is in a source id nor in its keys (:meth:`Columns.shapes` checks the
    keys), ``sep.join(keys).replace(source, cut)`` of a non-empty source determines
    every key's parts ``key.split(source)`` and their order (split and replace cut
    the same non-overlapping occurrences, left to right), hence the shape and order
    ``ShapeTable.intern_ordered`` gives them; shape ids never change (the table only
    grows), so a cache lives as long as its table."""
    text = "".join(sources)
    for i, (sep, cut) in enumerate(_MARKS):
        if sep not in text and cut not in text:
            cache = caches.setdefault(i, {})
            if len(cache) > _CACHE_MAX:  # keys unlike from source to source (e.g. random task ids)
                cache.clear()
            return (sep, cut), cache
    return ("", ""), None


class _Shapes(NamedTuple):
    """:meth:`Columns.shapes` of a round's candidates."""

    pk: list[object]
    """Each candidate's shape cache key (``None``: it cannot be cached)."""
    hits: list[object]
    """Each one's cached ``(shape id, order)``, ``_MISS`` or ``_DUPLICATE``."""
    firsts: list[int]
    """In order, those that intern their shape."""
    which: Any
    """Each one's number among the distinct keys (int32; ``-1``: key ``None``)."""
    uniq: list[object]
    """The distinct keys."""


class _Groups(Sequence[Any]):
    """``items[starts[g]:starts[g + 1]]`` of each state ``g`` of ``states``, as ``kind``
    (made when asked for: most are never needed); ``items`` a list, a
    :class:`~resumelog._columns.KeySpans` or an int64 column."""

    __slots__ = ("items", "kind", "starts", "states")

    def __init__(self, items: Any, starts: list[int], states: list[int], kind: Callable[[Any], Any]):
        self.items, self.starts, self.states, self.kind = items, starts, states, kind

    def __len__(self) -> int:
        return len(self.states)

    def __getitem__(self, j: Any) -> Any:
        g = self.states[j]
        return self.kind(self.items[self.starts[g] : self.starts[g + 1]])  # (a list, of spans too)


def _int_tuple(column: Any) -> tuple[int, ...]:
    """A slice of an int64 column as a tuple of ``int``."""
    return tuple(column.tolist())


def evaluate(state: FoldState, ev: _Evaluation, cols: Columns) -> None:
    """Evaluate the fresh states (in the order they were numbered, after every touched
    state), as :attr:`_Evaluation.evaluate` would one by one; see the module docstring."""
    from resumelog.algebra import SourceRunState

    buf = state._deferred
    n = len(buf)
    one_run = next(iter(buf.runs)) if len(buf.runs) == 1 else None  # (the common case: no list of runs)
    runs = None if one_run is not None else buf.druns
    srcs = cols.sources
    starts = cols.starts
    # Which states may complete without the reference rule: decided once, since nothing
    # the evaluation does changes it for a source that is in one fresh state only.
    ok = (cols.sums == 0) & cols.emitted
    # Complete already (in ``added``: ``check_base`` below tells for the base): the
    # sources found there when their states were numbered, and those put there since,
    # which only this evaluation's touched states can have done: every other operation
    # that adds to it (a late record, a reset, damage...) makes the fresh states
    # pending first (``FoldState.drain``), and the bulk completions below come after.
    ok[buf.in_added] = False
    since = {*ev.done, *map(_SOURCE, ev.took)}
    if since:
        ok[[g for r in buf.runs for g in map(buf.index[r].get, since) if g is not None]] = False
    if ev.damaged:
        if runs is None:
            ok &= one_run not in ev.damaged
        else:
            ok &= ~np.fromiter(map(ev.damaged.__contains__, runs), dtype=bool, count=n)
    resets = ev.resets
    if resets:
        ok &= ~np.fromiter((r in resets.get(s, ()) for r, s in zip(buf.druns, srcs)), dtype=bool, count=n)
    if ev.check_base:  # (positions found when the states were numbered)
        removed = ev.removed
        in_base = np.asarray(buf.base_pos, dtype=np.int64) >= 0
        for g in np.flatnonzero(ok & in_base).tolist():
            if srcs[g] not in removed:
                ok[g] = False
    if runs is not None and len(set(srcs)) != n:  # a source fresh in two runs: the reference rule's
        seen: dict[str, int] = {}
        for g, src in enumerate(srcs):
            if src in seen:
                ok[g] = ok[seen[src]] = False
            else:
                seen[src] = g
    # the candidates' entries and cached shapes, in bulk
    cand_arr = np.flatnonzero(ok)
    cand = cand_arr.tolist()
    csrcs = srcs if len(cand) == n else list(map(srcs.__getitem__, cand))  # (all of them: the same list)
    groups: Sequence[list[str]]
    dgroups: Sequence[tuple[int, ...]]
    known = None
    if native is not None:  # the keys and distinct flags in one C loop, groups made when needed
        groups = _Groups(cols.keys, starts, cand, list)
        dgroups = _Groups(cols.delta_column, starts, cand, _int_tuple)
        sep, cut = cols._marks if cols._patterns is not None else (None, None)
        keys = cols.keys.raw if isinstance(cols.keys, KeySpans) else cols.keys
        known = native.shape_keys(keys, cols.delta_column, starts, cand, csrcs, sep, cut)
    else:
        slices = list(map(slice, [starts[g] for g in cand], [starts[g + 1] for g in cand]))
        groups = list(map(cols.keys.__getitem__, slices))
        dgroups = list(map(tuple, map(cols.deltas.__getitem__, slices)))
    two = np.flatnonzero(cols.counts[cand_arr] == 2).tolist()
    simple = _simple(two, groups, dgroups, csrcs, known)
    shapes = cols.shapes(groups, dgroups, csrcs, simple, known)
    firsts = shapes.firsts
    duplicate = np.fromiter(map(operator.is_, shapes.hits, repeat(_DUPLICATE)), dtype=bool, count=len(cand))
    ok[cand_arr[duplicate]] = False  # a key written twice: the reference rule decides
    crun: list[str] | str  # each candidate's run, or the one run of them all
    if one_run is not None:
        crun = one_run
    else:
        assert runs is not None
        crun = list(map(runs.__getitem__, cand))
    # walk the states in order: runs of bulk completions between the others
    pos = np.full(n + 1, -1, dtype=np.int64)
    pos[cand_arr] = np.arange(len(cand), dtype=np.int64)
    others = np.flatnonzero(~ok).tolist()
    cols.prepare(len(others))
    lo = 0
    for stop in [*others, n]:
        if stop > lo:
            a = int(pos[lo])  # (the states lo..stop-1 are candidates a..b-1)
            b = a + stop - lo
            lo_first = bisect.bisect_left(firsts, a)
            mine = firsts[lo_first : bisect.bisect_left(firsts, b, lo_first)]
            _complete(ev, cols, a, b, groups, dgroups, csrcs, crun, cand, shapes, mine, simple)
        if stop < n:
            k = buf.key(stop)
            s = ev.pending[k] = cols.materialize(stop, SourceRunState())
            ev.revived = True
            ev.evaluate(k, s)
        lo = stop + 1


def _simple(
    two: list[int],
    groups: Sequence[list[str]],
    dgroups: Sequence[tuple[int, ...]],
    csrcs: list[str],
    known: tuple[list[object], bytes, list[object], bytes] | None,
) -> set[int]:
    """The candidates among ``two`` (those with two records) whose final deltas are
    :data:`~resumelog.algebra.SIMPLE_COMPLETION` (a ``complete()``), decided once per
    shape key where the kernels gave them (``known``'s numbers).

    Two candidates with one shape key have keys equal up to their own source id and the
    same deltas. A source id found in neither reserved key cannot be cut out of the keys
    of a simple completion: so among such candidates, one with the key of a simple one
    has exactly its keys, and one of them tells for all. Others (no key, an id found in
    a reserved key) are checked one by one, as without the kernels."""
    from resumelog.algebra import DONE_KEY, EMIT_KEY, SIMPLE_COMPLETION

    def is_simple(j: int) -> bool:
        return dict(zip(groups[j], dgroups[j])) == SIMPLE_COMPLETION

    if known is None or not two:
        return set(filter(is_simple, two))
    tw = np.asarray(two, dtype=np.int64)
    which = np.frombuffer(known[3], dtype=np.int32)[tw]
    srcs = list(map(csrcs.__getitem__, two))
    solo = which < 0
    solo |= np.fromiter(map(EMIT_KEY.__contains__, srcs), dtype=bool, count=len(srcs))
    solo |= np.fromiter(map(DONE_KEY.__contains__, srcs), dtype=bool, count=len(srcs))
    simple = set(filter(is_simple, tw[solo].tolist()))
    keyed, ws = tw[~solo], which[~solo]
    if len(ws):
        uniq, first = np.unique(ws, return_index=True)
        yes = [w for w, f in zip(uniq.tolist(), keyed[first].tolist()) if is_simple(f)]
        if yes:
            simple.update(keyed[np.isin(ws, yes)].tolist())
    return simple


def _complete(
    ev: _Evaluation,
    cols: Columns,
    a: int,
    b: int,
    groups: Sequence[list[str]],
    dgroups: Sequence[tuple[int, ...]],
    csrcs: list[str],
    crun: list[str] | str,
    cand: list[int],
    shapes: _Shapes,
    firsts: list[int],
    simple: set[int],
) -> None:
    """Record the completions of candidates ``a..b-1`` (consecutive states, in order) as
    :attr:`_Evaluation.evaluate` records them one by one: a new shape is interned when the
    first state with it completes (``firsts``: those of them whose shape key was not
    cached), so shape ids follow the evaluation's order."""
    js = range(a, b)
    srcs = csrcs[a:b]
    ev.done.extend(srcs)
    if ev.fresh is not None:
        ev.fresh.update(srcs)
    runs = crun if isinstance(crun, str) else crun[a:b]
    if native is not None and isinstance(ev.added, native.SourceMap):
        ev.added.set_many(srcs, runs)  # (no pair made per completion)
    else:
        ev.added.update(zip(srcs, repeat(runs) if isinstance(runs, str) else runs))
    pk, hits = shapes.pk, shapes.hits
    for j in firsts:  # (in order)
        hits[j] = cols.resolve(pk[j], groups[j], dgroups[j], csrcs[j], ev.intern)
    # Each candidate's (shape id, order): that of its key in the cache, now that the
    # firsts above cached theirs (looked up once per key); its own hit where its key
    # is None. (_MISS left: SIMPLE_COMPLETION states only.)
    w = shapes.which[a:b]
    keyed = w >= 0  # (none without a shape cache: every key is None then)
    sids = np.zeros(b - a, dtype=np.int64)
    found: list[object] = []
    at: Any = None
    if keyed.any():
        patterns = cols._patterns
        assert patterns is not None
        us = np.unique(w[keyed])  # (this stretch's keys only: a stretch may be short)
        found = list(map(patterns.get, map(shapes.uniq.__getitem__, us.tolist()), repeat(_MISS)))
        sid_of = np.fromiter((h[0] if isinstance(h, tuple) else 0 for h in found), dtype=np.int64, count=len(found))
        at = np.searchsorted(us, w)
        sids[keyed] = sid_of[at[keyed]]
    for i in np.flatnonzero(~keyed).tolist():
        h = hits[a + i]
        sids[i] = h[0] if isinstance(h, tuple) else 0

    # Each source is one candidate, not complete (``ok``): it has no done shape nor
    # writers (``FoldState._uncomplete`` pops them), so the one-by-one loop's pops for a
    # SIMPLE_COMPLETION (reserved keys: their deltas never change) or for writers
    # unknown change nothing, and its sets, done in order, give the dicts (and their
    # order). A completion with a shape: shape set. Writers: set for a completion with a
    # shape that an open stream wrote to.
    writers, done_shapes = ev.done_writers, ev.done_shapes
    shaped = [j not in simple for j in js] if simple else None
    if shaped is None:
        done_shapes.extend(srcs, sids.tolist())  # (kept as lists: DoneShapeMap)
    else:
        done_shapes.extend(list(compress(srcs, shaped)), list(compress(sids.tolist(), shaped)))
    if not ev.open_streams:
        return  # (every stream closed: no writers to name)
    keep = cols.touching(ev.open_streams)[cand[a:b]].tolist()
    if shaped is not None:
        keep = list(map(operator.and_, keep, shaped))
    if any(keep):
        ordered = ev.ordered
        mine = keyed.tolist()
        at_key = at.tolist() if at is not None else []
        kept = list(compress(js, keep))
        for j, ws in zip(kept, cols.stream_tuples(list(map(cand.__getitem__, kept)))):
            order = (found[at_key[j - a]] if mine[j - a] else hits[j])[1]  # type: ignore[index]
            w = ordered.get((ws, order)) or ev.writers(ws, order)
            if w is None:  # (never: an open stream wrote one of its entries)
                writers.pop(csrcs[j], None)
            else:
                writers[csrcs[j]] = w
