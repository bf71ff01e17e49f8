"""Port of NeMo Curator 1.4's ``tests/utils/test_resumability_actor.py``.

Curator instantiates its LMDB actor class directly and feeds ``apply_deltas``; here
the same delta lists go through resumelog's ``flush_resumability_deltas`` (the
function :func:`~resumelog.curator_backend.enable` installs in place of the actor
call) and the same questions are asked of the checkpoint: is the source complete,
what is its counter, does a reopen see the completion. The first ``+1`` of each
source is the source stage's (an emission), as it is in a real pipeline.

Differences, on purpose:

* the counter of a source is the sum of the final deltas of its keys in the run's
  pending state (Curator: ``actor._pending``); "persisted" means a fresh
  ``resumelog.open`` sees it (Curator: reopen the LMDB file);
* an un-completion is reported by the fold (a warning on logger ``resumelog`` and a
  ``late_record`` anomaly) when a reader folds the record, not by the writer;
* a writer that recorded nothing leaves no journal stream (Curator: an empty
  ``<writer>.mdb``);
* the same key with two deltas from two *different* writers is a conflict that
  keeps the source pending (Curator has one actor, so the later arrival wins):
  ``test_conflict_across_writers_stays_pending``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

import resumelog
import resumelog.curator_backend as rcb
from resumelog.checkpoint import Checkpoint

Factory = Callable[..., rcb.CuratorBackend]
Deltas = list[tuple[str, str, int]]


class _Src:
    is_sink_stage = False


_emitted: dict[str, set[str]] = {}


def _apply(per_task: Deltas) -> None:
    """``actor.apply_deltas``: a delta list as a stage batch flushes it; the first
    ``+1`` of a source in a run is the source stage's (an emission)."""
    h = rcb.installed()
    assert h is not None
    seen = _emitted.setdefault(h.run_id, set())
    emitted: Deltas = []
    for k, s, d in per_task:
        if d == 1 and s not in seen:
            seen.add(s)
            emitted.append((k, s, d))
    rest = [t for t in per_task if t not in emitted]
    if emitted:
        with rcb.source_stage(_Src()):
            rcb.flush_resumability_deltas(emitted)
    rcb.flush_resumability_deltas(rest)


def _reopen(root: Path) -> Checkpoint:
    return resumelog.open(root)


def _pending(b: rcb.CuratorBackend) -> dict[str, int]:
    """Counter per pending source of the backend's run (Curator's ``actor._pending``)."""
    ck = b.checkpoint
    ck.refresh()
    out: dict[str, int] = {}
    for (run, src), st in ck._state.pending.items():
        if run != b.run_id or ck.is_completed(src):
            continue
        total = 0
        for e in st.entries.values():
            total += e[2] if isinstance(e, tuple) else max(v[1] for v in e.values())
        out[src] = total
    return out


def _completed(b: rcb.CuratorBackend) -> set[str]:
    b.checkpoint.refresh()
    return set(b.checkpoint.completed)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "ckpt"


class TestApplyDeltasCounterMath:
    def test_source_emit_increments_pending(self, backend_factory: Factory, root: Path) -> None:
        b = backend_factory(root)
        _apply([("h0", "0", +1), ("h1", "1", +1)])
        assert _pending(b) == {"0": 1, "1": 1}
        assert _completed(b) == set()

    def test_counter_reaches_zero_persists(self, backend_factory: Factory, root: Path) -> None:
        b = backend_factory(root)
        _apply([("h0", "0", +1)])
        _apply([("h_sink", "0", -1)])
        assert _completed(b) == {"0"}
        assert "0" not in _pending(b)
        assert set(_reopen(root).completed) == {"0"}

    def test_nonsink_real_task_is_zero_delta(self, backend_factory: Factory, root: Path) -> None:
        b = backend_factory(root)
        _apply([("h0", "0", +1)])
        _apply([("h_passthrough", "0", 0)])
        assert _pending(b) == {"0": 1}
        assert _completed(b) == set()

    def test_nonetask_decrements(self, backend_factory: Factory, root: Path) -> None:
        b = backend_factory(root)
        _apply([("h0", "0", +1)])
        _apply([("h_filter", "0", -1)])
        assert _completed(b) == {"0"}

    def test_fanout_grows_counter(self, backend_factory: Factory, root: Path) -> None:
        b = backend_factory(root)
        _apply([("h0", "0", +1)])
        _apply([("h_fanout", "0", +2)])
        assert _pending(b) == {"0": 3}


class TestDedupAndRewrite:
    def test_same_task_same_delta_is_idempotent(self, backend_factory: Factory, root: Path) -> None:
        b = backend_factory(root)
        _apply([("h0", "0", +1)])
        _apply([("h_t", "0", -1)])
        _apply([("h_t", "0", -1)])
        assert _completed(b) == {"0"}
        assert b.checkpoint.status().anomaly_counts == {}

    def test_same_task_different_delta_rewrites(self, backend_factory: Factory, root: Path) -> None:
        b = backend_factory(root)
        _apply([("h0", "0", +1)])
        _apply([("h_t", "0", 0)])
        assert _pending(b) == {"0": 1}
        _apply([("h_t", "0", -1)])  # same writer stream: the later record wins
        assert _completed(b) == {"0"}

    def test_rewrite_does_not_raise(self, backend_factory: Factory, root: Path) -> None:
        b = backend_factory(root)
        _apply([("h0", "0", +1)])
        _apply([("h_t", "0", 0)])
        _apply([("h_t", "0", +5)])
        _apply([("h_t", "0", -1)])
        assert _completed(b) == {"0"}  # the final delta (-1) is the one that counts


class TestUncompleteOnAnomaly:
    def test_new_task_after_source_completed_warns_and_uncompletes(
        self, backend_factory: Factory, root: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        b = backend_factory(root)
        _apply([("h0", "0", +1), ("h_t", "0", -1)])
        assert _completed(b) == {"0"}
        _apply([("h_late", "0", -1)])
        with caplog.at_level(logging.WARNING, logger="resumelog"):
            assert _completed(b) == set()
        assert any("'0'" in r.getMessage() for r in caplog.records)
        # the late -1 belongs to the run that completed "0": its sum is now -1
        assert b.checkpoint.status().anomaly_counts == {"over_drained": 1}
        assert "0" not in set(_reopen(root).completed)

    def test_rewrite_attempt_after_source_completed_uncompletes(self, backend_factory: Factory, root: Path) -> None:
        b = backend_factory(root)
        _apply([("h0", "0", +1)])
        _apply([("h_t", "0", -1)])
        assert _completed(b) == {"0"}
        _apply([("h_t", "0", 0)])
        assert _completed(b) == set()
        # no warning: one stream rewrote its own key, and the fold judges each
        # stream's final value (0), as if the completion had never been seen
        assert "0" not in set(_reopen(root).completed)

    def test_apply_deltas_never_raises(self, backend_factory: Factory, root: Path) -> None:
        b = backend_factory(root)
        _apply([("h0", "0", +1)])
        _apply([("h_t", "0", -1)])
        _apply([("h_t", "0", +5)])
        _apply([("h_new", "0", -1)])
        _apply([("h1", "1", +1), ("h_t1", "1", -5)])  # negative counter
        assert _completed(b) == set()  # a negative sum never completes


class TestAreCompleted:
    def test_returns_completed_subset(self, backend_factory: Factory, root: Path) -> None:
        backend_factory(root)
        _apply([("h0", "0", +1), ("h1", "1", +1)])
        _apply([("h_t", "0", -1)])
        assert rcb.completed_resumability_sources(["0", "1", "unknown"]) == {"0"}

    def test_loads_on_construction(self, backend_factory: Factory, root: Path) -> None:
        backend_factory(root)
        _apply([("h_a", "a", +1), ("h_t", "a", -1)])
        backend_factory(root)  # a new run
        assert rcb.completed_resumability_sources(["a", "b"]) == {"a"}


class TestLifecycle:
    def test_disable_is_idempotent(self, backend_factory: Factory, root: Path) -> None:
        b = backend_factory(root)
        b.disable()
        b.disable()
        rcb.disable()
        assert rcb.installed() is None

    def test_completion_persisted_once_drained(self, backend_factory: Factory, root: Path) -> None:
        b = backend_factory(root)
        _apply([("h0", "0", +1)])
        assert _completed(b) == set()
        _apply([("h_t", "0", -1)])
        assert _completed(b) == {"0"}
        assert set(_reopen(root).completed) == {"0"}


def test_nothing_completed_for_pending_only_deltas(backend_factory: Factory, root: Path) -> None:
    backend_factory(root)
    _apply([("h0", "0", +1), ("h1", "1", +1), ("h_fanout_0", "0", +2)])
    assert set(_reopen(root).completed) == set()


class TestMultipleWriters:
    def _as(self, root: Path, writer_id: str) -> Checkpoint:
        ck = resumelog.open(root)
        rcb.install(ck.handle(writer_id=writer_id), on_nothing_to_do="ignore")
        return ck

    def test_union_of_completed_across_writers(self, backend_factory: Factory, root: Path) -> None:
        backend_factory(root)  # creates the checkpoint; disabled at teardown
        self._as(root, "hostA-1")
        _apply([("hA", "0", +1), ("hA_sink", "0", -1)])
        self._as(root, "hostB-2")
        assert rcb.completed_resumability_sources(["0", "1"]) == {"0"}
        _apply([("hB", "1", +1), ("hB_sink", "1", -1)])
        self._as(root, "hostC-3")
        assert rcb.completed_resumability_sources(["0", "1", "2"]) == {"0", "1"}
        streams = sorted(p.name for p in (root / "journal").iterdir())
        assert streams == ["hostA-1", "hostB-2"]  # hostC-3 wrote nothing: no stream

    def test_writer_does_not_write_other_writers_streams(self, backend_factory: Factory, root: Path) -> None:
        backend_factory(root)
        self._as(root, "A")
        _apply([("h", "s", +1), ("h_sink", "s", -1)])
        self._as(root, "B")
        self._as(root, "reader")
        assert rcb.completed_resumability_sources(["s"]) == {"s"}
        assert sorted(p.name for p in (root / "journal").iterdir()) == ["A"]


def test_conflict_across_writers_stays_pending(backend_factory: Factory, root: Path) -> None:
    """resumelog differs on purpose: one key, two deltas from two writers of one run is
    a conflict (judged on each stream's final value, whatever the arrival order), so
    the source stays pending and reruns; Curator's single actor lets the later win."""
    b = backend_factory(root)
    run_handle = b.handle
    rcb.install(resumelog.WriterHandle(**{**run_handle.__dict__, "writer_id": "w1"}))
    _apply([("h0", "0", +1), ("h_t", "0", 0)])
    rcb.install(resumelog.WriterHandle(**{**run_handle.__dict__, "writer_id": "w2"}))
    _apply([("h_t", "0", -1)])
    assert _completed(b) == set()
    assert "conflict" in b.checkpoint.status().anomaly_counts
