"""Hypothesis strategies for resumelog's records, segments, snapshots and fold inputs.

Shipped with the package so that adapters and third-party backends can reuse them::

    from hypothesis import given
    from resumelog.testing import strategies as rst

    @given(rst.segments())
    def test_round_trip(seg): ...

Ids are arbitrary Unicode text without lone surrogates (the writer refuses those with
:class:`~resumelog.errors.InvalidId`); deltas span the signed 64-bit range the writer
accepts. Small pools (:func:`small_keys`, :func:`small_sources`) make collisions —
duplicates, rewrites, conflicts — likely, which is where the fold's rules live.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import NamedTuple, TypeVar

from hypothesis import strategies as st

from resumelog.format import EMISSION, Batch, Reset, SegmentHeader

__all__ = [
    "MAX_DELTA",
    "SegmentSpec",
    "TaggedRecord",
    "batches",
    "deltas",
    "incarnations",
    "interleavings",
    "run_ids",
    "segment_headers",
    "segment_specs",
    "small_deltas",
    "small_keys",
    "small_sources",
    "tagged_records",
    "text_ids",
    "with_redeliveries",
    "writer_ids",
    "writer_keys",
]

T = TypeVar("T")

MAX_DELTA = (1 << 63) - 1
"""Largest delta magnitude a writer accepts (``-MAX_DELTA <= delta <= MAX_DELTA``)."""

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def text_ids(min_size: int = 1, max_size: int = 24) -> st.SearchStrategy[str]:
    """Any Unicode text without lone surrogates (valid UTF-8 once encoded)."""
    return st.text(st.characters(exclude_categories=["Cs"]), min_size=min_size, max_size=max_size)


def writer_keys(max_size: int = 24) -> st.SearchStrategy[str]:
    """Keys a :class:`~resumelog.Writer` accepts from ``record``: any text without lone
    surrogates that does not begin with NUL (reserved for ``emit``/``complete``)."""
    return text_ids(min_size=0, max_size=max_size).filter(lambda k: not k.startswith("\x00"))


def small_sources() -> st.SearchStrategy[str]:
    """A few source ids, some non-ASCII, so that records collide on sources."""
    return st.sampled_from(["s0", "s1", "dir/part-2.parquet", "ünïcødé ☃", "\x00\t "])


def small_keys() -> st.SearchStrategy[str]:
    """A few keys, so that duplicates and rewrites are likely."""
    return st.sampled_from(["k0", "k1", "k2", "0_1", "ключ", ""])


def deltas() -> st.SearchStrategy[int]:
    """Any delta a writer accepts."""
    return st.integers(-MAX_DELTA, MAX_DELTA)


def small_deltas() -> st.SearchStrategy[int]:
    """Deltas of real pipelines: small, so sums hit zero often."""
    return st.integers(-2, 2)


def writer_ids() -> st.SearchStrategy[str]:
    """Valid writer ids (``[A-Za-z0-9._-]{1,128}``, not ``.``/``..``)."""
    return st.from_regex(r"[A-Za-z0-9._-]{1,40}", fullmatch=True).filter(lambda s: s not in (".", ".."))


run_ids = writer_ids


def incarnations() -> st.SearchStrategy[str]:
    """ULID-shaped incarnations (26 Crockford base32 characters)."""
    return st.text(st.sampled_from(_CROCKFORD), min_size=26, max_size=26)


@st.composite
def batches(
    draw: st.DrawFn,
    sources: st.SearchStrategy[str] | None = None,
    keys: st.SearchStrategy[str] | None = None,
    delta: st.SearchStrategy[int] | None = None,
    max_records: int = 8,
    resets: bool = True,
) -> Batch:
    """A consistent columnar :class:`~resumelog.format.Batch` (and maybe resets)."""
    sources = sources if sources is not None else text_ids()
    keys = keys if keys is not None else text_ids(min_size=0)
    delta = delta if delta is not None else deltas()
    recs = draw(st.lists(st.tuples(keys, sources, delta, st.booleans()), max_size=max_records))
    names: list[str] = []
    index: dict[str, int] = {}
    for _, s, _, _ in recs:
        if s not in index:
            index[s] = len(names)
            names.append(s)
    rs: list[Reset] = []
    if resets:
        rs = draw(st.lists(st.builds(Reset, sources, st.lists(run_ids(), max_size=3)), max_size=2))
    return Batch(
        names,
        [index[s] for _, s, _, _ in recs],
        [k for k, _, _, _ in recs],
        [d for _, _, d, _ in recs],
        bytes(EMISSION if e else 0 for _, _, _, e in recs),
        rs,
    )


def segment_headers(seq: st.SearchStrategy[int] | None = None) -> st.SearchStrategy[SegmentHeader]:
    """Segment headers with valid ids and any non-negative sequence number."""
    return st.builds(
        SegmentHeader,
        writer_ids(),
        incarnations(),
        seq if seq is not None else st.integers(0, 2**63 - 1),
        run_ids(),
        st.binary(min_size=16, max_size=16),
        st.integers(0, 2**48),
    )


class TaggedRecord(NamedTuple):
    """A record with its place: stream, ordinal within the stream, run."""

    stream: str
    ordinal: int
    run: str
    key: str
    source: str
    delta: int
    emission: bool


@st.composite
def tagged_records(
    draw: st.DrawFn,
    streams: Sequence[str] = ("A", "B", "C"),
    runs: Sequence[str] = ("r1",),
    max_records: int = 30,
) -> list[TaggedRecord]:
    """Records of a few streams with small keys, sources and deltas; ordinals are
    unique and increasing per stream (the order the stream wrote them in)."""
    raw = draw(
        st.lists(
            st.tuples(
                st.sampled_from(list(streams)),
                st.sampled_from(list(runs)),
                small_keys(),
                small_sources(),
                small_deltas(),
                st.booleans(),
            ),
            max_size=max_records,
        )
    )
    next_ordinal: dict[str, int] = {}
    out = []
    for stream, run, key, source, delta, emission in raw:
        o = next_ordinal.get(stream, 0)
        next_ordinal[stream] = o + draw(st.integers(1, 3))
        out.append(TaggedRecord(stream, o, run, key, source, delta, emission))
    return out


class SegmentSpec(NamedTuple):
    """One segment to build: its stream, run and records ``(key, source, delta, emission)``."""

    stream: str
    run: str
    records: list[tuple[str, str, int, bool]]
    resets: list[Reset]


@st.composite
def segment_specs(
    draw: st.DrawFn,
    streams: Sequence[tuple[str, str]] = (("A", "r1"), ("B", "r1"), ("C", "r2")),
    max_segments: int = 10,
    resets: bool = False,
) -> list[SegmentSpec]:
    """Segments of a few ``(stream, run)`` pairs, in each stream's order."""
    specs = []
    for _ in range(draw(st.integers(0, max_segments))):
        stream, run = draw(st.sampled_from(list(streams)))
        recs = draw(
            st.lists(st.tuples(small_keys(), small_sources(), small_deltas(), st.booleans()), min_size=1, max_size=5)
        )
        rs = []
        if resets and draw(st.integers(0, 5)) == 0:
            rs = [Reset(draw(small_sources()), sorted(set(draw(st.lists(st.sampled_from(["r1", "r2"]), min_size=1)))))]
        specs.append(SegmentSpec(stream, run, recs, rs))
    return specs


def interleavings(items: Sequence[T], key: object = None) -> st.SearchStrategy[list[T]]:
    """Every reordering of ``items`` that keeps the relative order of items with equal
    ``key(item)`` (per-stream order); ``key=None`` allows any permutation."""
    if key is None:
        return st.permutations(list(items))
    keyf = key

    def rebuild(order: list[object]) -> list[T]:
        queues: dict[object, list[T]] = {}
        for it in items:
            queues.setdefault(keyf(it), []).append(it)  # type: ignore[operator]
        return [queues[k].pop(0) for k in order]

    labels = [keyf(it) for it in items]  # type: ignore[operator]
    return st.permutations(labels).map(rebuild)


@st.composite
def with_redeliveries(draw: st.DrawFn, items: Sequence[T], max_extra: int = 5) -> list[T]:
    """``items`` with some of them delivered again, each repeat after its original."""
    out = list(items)
    if not out:
        return out
    for _ in range(draw(st.integers(0, max_extra))):
        i = draw(st.integers(0, len(out) - 1))
        j = draw(st.integers(i + 1, len(out)))
        out.insert(j, out[i])
    return out


def shuffled(items: Sequence[T], seed: int) -> list[T]:
    """A deterministic shuffle (for callers that already drew a seed)."""
    out = list(items)
    random.Random(seed).shuffle(out)
    return out
