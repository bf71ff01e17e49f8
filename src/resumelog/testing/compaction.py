"""Compare what compactions published (tests of bounded compaction: a fold that spills its
completions into layers must publish what a fold that does not would, layer boundaries
and nonces aside)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec

import resumelog
from resumelog import compactor
from resumelog.snapshot import load_snapshot
from resumelog.storage import Store

__all__ = ["copy_store", "published", "spilling"]


def copy_store(src: Store, dst: Store) -> None:
    """Put every object of ``src`` into ``dst`` (byte for byte)."""
    for o in src.list(""):
        dst.put_if_absent(o.path, src.read(o.path))


@contextmanager
def spilling(round_records: int, spill: int | None) -> Iterator[None]:
    """Inside the block folds evaluate every ``round_records`` records and spill at
    ``spill`` completions held (``None``: never)."""
    saved = compactor.ROUND_RECORDS, compactor.SPILL_COMPLETIONS
    compactor.ROUND_RECORDS, compactor.SPILL_COMPLETIONS = round_records, spill
    try:
        yield
    finally:
        compactor.ROUND_RECORDS, compactor.SPILL_COMPLETIONS = saved


def published(store: Store) -> dict[str, Any]:
    """Everything the latest snapshot of ``store`` says, but where its index is cut
    into layers: the snapshot's body (marks, runs, pending states, resets, anomalies,
    counters) and done-writers frame, every completed id with its run, final entries
    and writers (by stream name), and what a fresh client's ``status()`` reports. The
    layers are read from the store: a layer the snapshot names but nobody wrote fails.
    Left out with the layers: the header's ``ascii_ids`` (whether every layer holds
    ASCII ids only, masked ones included: a lookup hint).
    """
    snaps = compactor.list_snapshots(store)
    if not snaps:
        return {"snapshot": None}
    n, info = snaps[-1]
    frames, state = load_snapshot(store.read(info.path), info.path, read_layer=lambda ref: store.read(ref.name))
    completed = {}
    for src in sorted(state.iter_completed()):
        writers = state.done_writers_of(src)
        completed[src] = (
            state.completed_run(src),
            sorted(state.done_entries_of(src).items()),
            None
            if writers is None
            else [
                [state.stream_ids[x] for x in ((e,) if isinstance(e, int) else e)]
                for e in writers  # shape order: pair with the entries' order
            ],
            list(state.done_entries_of(src)),
        )
    layers = frames.layers or []
    assert len(layers) <= 24, f"{len(layers)} layers"
    named = {r.name for r in layers}
    assert all(store.exists(name) for name in named)
    status = resumelog.open(store, run_id="zz-viewer").status()
    st = msgspec.to_builtins(status)
    for k in ("url", "snapshot_bytes", "layers", "layer_bytes", "gc_reclaimable_objects", "gc_reclaimable_bytes"):
        st.pop(k, None)
    return {
        "snapshot": n,
        "body": msgspec.to_builtins(frames.body),
        "writers_frame": bytes(frames.writers),
        "count": frames.header.completed_count,
        "completed": completed,
        "completed_by_run": dict(state.completed_by_run()),
        "status": st,
    }
