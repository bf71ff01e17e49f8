"""Dicts that store their keys' hashes: the fold's tables of a million source ids.

CPython (3.11 and later) keeps a dict whose keys are all exact ``str`` in a compact
*unicode* table: its entries hold key and value but not the key's hash, which is read
from the string object instead, at every resize and at every probe that meets another
key. For the fold's tables of ~10^6 source ids (the completed set ``FoldState.added``,
``done_shapes``, ``done_writers``), each id a string somewhere else in memory, those
reads are cache misses. A dict that has once held a key of another type uses the
*general* table, whose entries store the hash, for the rest of its life: across resizes,
deletions and ``dict.copy()`` (not ``clear()``, nor a copy made by ``dict(d)`` of a
unicode dict). Measured on 10^6 ids of 49 bytes (this machine, 2026-12-07): inserting
0.32 → 0.24 s, looking up the same strings 0.20 → 0.12 s, equal strings that are other
objects 0.31 → 0.12 s; the 5M-record compaction of ``benchmarks/bench_fold.py`` ~10 %
faster. The cost: 8 more bytes per entry.

The dicts are plain ``dict`` objects with the same contents, order and behaviour on
every Python; only their speed depends on this. No library offers it (it is a property
of CPython's table layout), hence these few lines.

With the compiled kernels the completed set is a ``resumelog._native.SourceMap``
instead (:func:`source_map`): a table of its own whose slots hold the hashes, and whose
batch lookups and inserts prefetch their memory reads.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from typing import TypeVar

from resumelog._compiled import native

__all__ = ["hashed", "hashed_dict", "source_map"]

_K = TypeVar("_K")
_V = TypeVar("_V")
_MARK = object()  # a key no caller holds (not a str: it makes the table general)


def hashed(d: dict[_K, _V]) -> dict[_K, _V]:
    """Switch ``d`` to the table that stores hashes, in place (one pass over its entries
    if it was a unicode table, a no-op otherwise), and return it."""
    d[_MARK] = None  # type: ignore[index, assignment]
    del d[_MARK]  # type: ignore[arg-type]
    return d


def hashed_dict(items: Iterable[tuple[_K, _V]] = ()) -> dict[_K, _V]:
    """A new dict that stores its keys' hashes, holding ``items`` (pairs, in order)."""
    d: dict[_K, _V] = hashed({})
    d.update(items)
    return d


def source_map(items: Iterable[tuple[str, str]] = ()) -> MutableMapping[str, str]:
    """A new table of source ids to run names holding ``items`` (pairs, in order), for a
    fold's completed set (``FoldState.added``): with the compiled kernels a
    :class:`resumelog._native.SourceMap` (a dict's behaviour and order, exact ``str``
    keys and values; its table stores the hashes, and ``number_states`` looks a batch of
    sources up in it and ``update`` inserts pairs with their memory reads prefetched),
    else :func:`hashed_dict`."""
    if native is None:
        return hashed_dict(items)
    table: MutableMapping[str, str] = native.SourceMap(items)
    return table
