"""Helpers shared by the NeMo Curator ports: read back what a backend recorded."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from resumelog.format import decode_segment


class Rec(NamedTuple):
    """One journal record as written: ``(key, source, delta)`` plus the emission flag."""

    key: str
    source: str
    delta: int
    emission: bool


def journal_records(root: str | Path) -> list[Rec]:
    """Every record of every segment under ``<root>/journal``, in stream and segment order."""
    out: list[Rec] = []
    for seg in sorted(Path(root, "journal").rglob("*.seg")):
        for b in decode_segment(seg.read_bytes(), str(seg)).batches:
            for i, key in enumerate(b.keys):
                out.append(Rec(key, b.sources[b.source_index[i]], b.deltas[i], bool(b.flags[i] & 1)))
    return out


def triples(root: str | Path) -> list[tuple[str, str, int]]:
    """:func:`journal_records` as Curator's ``(task_id, source_id, delta)`` tuples."""
    return [(r.key, r.source, r.delta) for r in journal_records(root)]
