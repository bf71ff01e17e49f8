"""The provisional completions of a fold that spills (:attr:`FoldState.provisional
<resumelog.algebra.FoldState.provisional>`), held compactly.

A long journal tail is evaluated in rounds, and the sources an intermediate round
completes are *provisional*: a later record of the same fold reopens one quietly (the
records came in another order, nothing arrived late), and a segment of its run found
lost later in the fold voids it (``FoldState.damage_run``). A plain ``set`` of them
grows with every completion the fold makes, which is what a spilling compaction
(:func:`resumelog.compactor.fold_journal`) must not hold in Python objects: so the ids
made provisional before a spill are *frozen* into sorted runs of compressed chunks
(a few bytes per id), and only the changes since are Python sets.

Exactly a set of strings for the operations the fold uses (``in``, ``add``,
``update``, ``discard``, iteration): ``s`` is a member iff it is in :attr:`recent` (once
the lists :meth:`update` keeps are moved there), or it is in a frozen run and not in
:attr:`gone` (discarded since it was frozen). A lookup
in a frozen run is a bisect over the chunks' first ids and the decoding of one chunk
(tens of microseconds); the fold looks up only on a reopen or a quarantine.
"""

from __future__ import annotations

import heapq
import operator
import zlib
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from itertools import chain, islice, repeat

import msgspec

__all__ = ["ProvisionalSet"]

CHUNK = 256
"""Ids per compressed chunk of a frozen run."""

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(list[str]).decode


class _Run:
    """Sorted distinct ids in compressed chunks of :data:`CHUNK` (immutable)."""

    __slots__ = ("_cache", "chunks", "firsts", "n")

    def __init__(self, ids: Iterable[str]) -> None:
        self.firsts: list[str] = []
        self.chunks: list[bytes] = []
        self.n = 0
        self._cache: tuple[int, list[str]] = (-1, [])
        it = iter(ids)  # sorted, distinct; a chunk at a time
        while chunk := list(islice(it, CHUNK)):
            self._add(chunk)

    @classmethod
    def of_lists(cls, lists: Iterable[list[str]]) -> _Run:
        """The run of the ids of ``lists`` (sorted and distinct across them), cut into
        chunks as they come."""
        run = cls(())
        held: list[str] = []  # (fewer than CHUNK ids: a long list is cut without a copy of it)
        for ids in lists:
            if held:
                held += ids
                ids = held
            cut = len(ids) - len(ids) % CHUNK
            for i in range(0, cut, CHUNK):
                run._add(ids[i : i + CHUNK])
            held = ids[cut:]
        if held:
            run._add(held)
        return run

    @classmethod
    def joined(cls, runs: tuple[_Run, _Run], gone: list[str]) -> _Run:
        """The run of the ids of ``runs`` (the first's all below the second's) not in
        ``gone`` (sorted): their chunks kept as they are, but those that may hold a
        discarded id, decoded and filtered (ids completed in about key order freeze
        into such runs)."""
        run = cls(())
        for r in runs:
            removed = 0
            for first, chunk, upto in zip(r.firsts, r.chunks, [*r.firsts[1:], None]):
                i = bisect_left(gone, first)
                j = len(gone) if upto is None else bisect_left(gone, upto, i)
                if i < j:  # a discarded id in the chunk's range
                    ids = _decode(zlib.decompress(chunk))
                    drop = set(gone[i:j])
                    kept = [x for x in ids if x not in drop]
                    removed += len(ids) - len(kept)
                    if not kept:
                        continue
                    first, chunk = kept[0], zlib.compress(_encode(kept), 1)
                run.firsts.append(first)
                run.chunks.append(chunk)
            run.n += r.n - removed
        return run

    def last(self) -> str:
        """The largest id (of a run that is not empty)."""
        return self._chunk(len(self.chunks) - 1)[-1]

    def _add(self, chunk: list[str]) -> None:
        self.firsts.append(chunk[0])
        self.chunks.append(zlib.compress(_encode(chunk), 1))
        self.n += len(chunk)

    def _chunk(self, i: int) -> list[str]:
        if self._cache[0] != i:
            self._cache = (i, _decode(zlib.decompress(self.chunks[i])))
        return self._cache[1]

    def __contains__(self, s: str) -> bool:
        i = bisect_right(self.firsts, s) - 1
        if i < 0:
            return False
        chunk = self._chunk(i)
        j = bisect_left(chunk, s)
        return j < len(chunk) and chunk[j] == s

    def __iter__(self) -> Iterator[str]:
        for c in self.chunks:
            yield from _decode(zlib.decompress(c))

    def lists(self) -> Iterator[list[str]]:
        """The ids, a chunk (a sorted list) at a time."""
        for c in self.chunks:
            yield _decode(zlib.decompress(c))

    @property
    def nbytes(self) -> int:
        return sum(len(c) for c in self.chunks) + sum(len(s) for s in self.firsts)


def _merged(lower: _Run, upper: _Run, gone: set[str]) -> Iterator[list[str]]:
    """The ids of both runs not in ``gone``, sorted, each once, a list at a time: merged
    a window at a time in C (``sorted`` of two sorted runs is one merge, ``dict.fromkeys``
    drops the ids both hold), holding a chunk of each."""
    a_lists, b_lists = lower.lists(), upper.lists()
    a, b = next(a_lists, []), next(b_lists, [])
    while a and b:
        bound = min(a[-1], b[-1])  # every id up to it is in a or b already
        i, j = bisect_right(a, bound), bisect_right(b, bound)
        window = list(dict.fromkeys(sorted(a[:i] + b[:j])))
        yield [s for s in window if s not in gone] if gone else window
        a = a[i:] or next(a_lists, [])
        b = b[j:] or next(b_lists, [])
    for rest, more in ((a, a_lists), (b, b_lists)):
        while rest:
            yield [s for s in rest if s not in gone] if gone else rest
            rest = next(more, [])


def _unique(ids: Iterable[str]) -> Iterator[str]:
    """``ids`` (sorted) without repeats."""
    last: str | None = None
    for s in ids:
        if s != last:
            yield s
            last = s


class ProvisionalSet:
    """A set of source ids whose bulk is frozen into compressed sorted runs (:meth:`freeze`)."""

    __slots__ = ("gone", "lists", "recent", "runs")

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self.recent: dict[str, None] = dict.fromkeys(ids)
        """Members added since the last :meth:`freeze` (never in :attr:`gone`), in the
        order they were added: the fold completes sources in about the order of their
        ids, and :meth:`freeze` sorts them (an adaptive sort: runs in order cost little)."""
        self.lists: list[list[str]] = []
        """Members :meth:`update` added since, as it was given them (moved into
        :attr:`recent` before any other operation; a fold evaluated in rounds adds each
        round's completions and asks nothing before its next spill freezes them, so
        they are sorted once, never hashed)."""
        self.gone: set[str] = set()
        """Ids discarded since they were frozen (a frozen run cannot change)."""
        self.runs: list[_Run] = []
        """Frozen runs, oldest first; an id may be in several (frozen, discarded, added
        again, frozen again): :meth:`__iter__` yields it once."""

    def _settle(self) -> None:
        """Move :attr:`lists` into :attr:`recent` (in order, as one ``update`` each)."""
        lists, self.lists = self.lists, []
        for ids in lists:
            if self.gone:
                self.gone.difference_update(ids)
            self.recent.update(zip(ids, repeat(None)))  # (one pass: 0.15 s per 1M ids, 0.27 s through fromkeys)

    def __contains__(self, s: object) -> bool:
        if self.lists:
            self._settle()
        if s in self.recent:
            return True
        if not isinstance(s, str) or s in self.gone:
            return False
        return any(s in run for run in reversed(self.runs))

    def add(self, s: str) -> None:
        if self.lists:
            self._settle()
        self.gone.discard(s)
        self.recent[s] = None

    def update(self, ids: Iterable[str]) -> None:
        self.lists.append(list(ids))  # (a copy: the caller's list may change)

    def discard(self, s: str) -> None:
        if self.lists:
            self._settle()
        self.recent.pop(s, None)
        if self.runs:
            self.gone.add(s)

    def __iter__(self) -> Iterator[str]:
        """Each member once: the frozen ones in order, then :attr:`recent`."""
        if self.lists:
            self._settle()
        recent, gone = self.recent, self.gone
        for s in _unique(heapq.merge(*self.runs)):
            if s not in gone and s not in recent:
                yield s
        yield from list(recent)

    def __bool__(self) -> bool:
        if any(self.lists) or self.recent:
            return True
        if self.gone:  # (a frozen run's ids may all be discarded)
            return next(iter(self), None) is not None
        return any(run.n for run in self.runs)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def freeze(self) -> None:
        """Move :attr:`recent` and :attr:`lists` into a frozen run; merge the newest runs
        while the older is no larger (a binary counter: ``log2`` runs, each id
        recompressed ``log2`` times), leaving out ids discarded since."""
        if self.recent or any(self.lists):
            # (sorted together, the lists never hashed; ids of recent are never in gone,
            # so taking every id out of gone takes out those the lists added again)
            ids = sorted(chain(self.recent, *self.lists))
            self.recent, self.lists = {}, []
            if self.gone:
                self.gone.difference_update(ids)
            if any(map(operator.eq, ids, islice(ids, 1, None))):  # (C loops: a source completed twice)
                ids = list(_unique(ids))
            self.runs.append(_Run.of_lists([ids]))
        runs = self.runs
        while len(runs) >= 2 and runs[-2].n <= runs[-1].n:
            upper, lower = runs.pop(), runs.pop()
            gone = self.gone
            if lower.n and upper.n and (lower.last() < upper.firsts[0] or upper.last() < lower.firsts[0]):
                pair = (lower, upper) if lower.firsts[0] < upper.firsts[0] else (upper, lower)
                runs.append(_Run.joined(pair, sorted(gone)))  # (disjoint: chunks kept)
            else:
                runs.append(_Run.of_lists(_merged(lower, upper, gone)))
        if len(runs) == 1 and self.gone:
            # every frozen id is in the one run: drop discards it does not hold (none
            # can come back from it) so the set stays bounded by what is pending
            self.gone = {s for s in self.gone if s in runs[0]}

    @property
    def nbytes(self) -> int:
        """Bytes of the frozen runs (compressed chunks and their first ids)."""
        return sum(run.nbytes for run in self.runs)
