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


def journal_records(root: str | Path, run_id: str | None = None) -> list[Rec]:
    """Every record of every segment under ``<root>/journal`` (of run ``run_id`` if
    given), in stream and segment order."""
    out: list[Rec] = []
    for seg in sorted(Path(root, "journal").rglob("*.seg")):
        decoded = decode_segment(seg.read_bytes(), str(seg))
        if run_id is not None and decoded.header.run_id != run_id:
            continue
        for b in decoded.batches:
            for i, key in enumerate(b.keys):
                out.append(Rec(key, b.sources[b.source_index[i]], b.deltas[i], bool(b.flags[i] & 1)))
    return out


def triples(root: str | Path, run_id: str | None = None) -> list[tuple[str, str, int]]:
    """:func:`journal_records` as Curator's ``(task_id, source_id, delta)`` tuples."""
    return [(r.key, r.source, r.delta) for r in journal_records(root, run_id)]
