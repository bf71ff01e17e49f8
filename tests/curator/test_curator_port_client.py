"""Port of NeMo Curator 1.4's ``tests/utils/test_resumability_client.py``.

Curator's tests mock ``ray`` to check the three worker-side helpers: inactive
without an actor, fire-and-forget deltas, completed-subset lookup. Here the same
cases run against resumelog's three functions, with the backend installed or not
(no Ray involved: resumelog needs no actor lookup), and the effects are read from
storage instead of from mock calls.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from curator_support import triples

import resumelog
import resumelog.curator_backend as rcb

Factory = Callable[..., rcb.CuratorBackend]


class TestActorLookup:
    def test_inactive_when_not_enabled(self) -> None:
        rcb.disable()
        assert rcb.installed() is None
        assert rcb.is_resumability_actor_active() is False

    def test_active_when_enabled(self, backend_factory: Factory) -> None:
        b = backend_factory()
        assert rcb.is_resumability_actor_active() is True
        assert rcb.installed() == b.handle

    def test_curator_sees_the_replacements(self, backend_factory: Factory) -> None:
        from nemo_curator.backends import base

        backend_factory()
        assert base.is_resumability_actor_active is rcb.is_resumability_actor_active
        assert base.flush_resumability_deltas is rcb.flush_resumability_deltas
        assert base.completed_resumability_sources is rcb.completed_resumability_sources
        assert hasattr(base.BaseStageAdapter.process_batch, "__wrapped__")
        rcb.disable()
        from nemo_curator.utils import resumability_client as rc

        assert base.flush_resumability_deltas is rc.flush_resumability_deltas  # restored
        for name in ("process_batch", "_source_counters"):  # the two wrapped methods too
            assert not hasattr(base.BaseStageAdapter.__dict__[name], "__wrapped__"), name


class TestFlushDeltas:
    def test_writes_when_active_and_nonempty(self, backend_factory: Factory, tmp_path: Path) -> None:
        b = backend_factory()
        deltas = [("t0", "s0", 1), ("t1", "s0", -1)]
        rcb.flush_resumability_deltas(deltas)
        assert triples(tmp_path / "ckpt", b.run_id) == deltas  # durable when it returns

    def test_noop_when_no_deltas(self, backend_factory: Factory, tmp_path: Path) -> None:
        backend_factory()
        rcb.flush_resumability_deltas([])
        assert not (tmp_path / "ckpt" / "journal").exists() or not list((tmp_path / "ckpt" / "journal").rglob("*.seg"))

    def test_noop_when_inactive(self) -> None:
        rcb.disable()
        rcb.flush_resumability_deltas([("t0", "s0", 1)])  # must not raise


class TestSkipCompletedSources:
    def test_returns_completed_subset(self, backend_factory: Factory, tmp_path: Path) -> None:
        ck = resumelog.open(tmp_path / "ckpt")
        with ck.writer() as w:
            w.complete_many(["a", "c"])
        backend_factory()
        assert rcb.completed_resumability_sources(["a", "b", "c"]) == {"a", "c"}

    def test_empty_when_inactive(self) -> None:
        rcb.disable()
        assert rcb.completed_resumability_sources(["a"]) == set()

    def test_empty_when_no_sources(self, backend_factory: Factory) -> None:
        backend_factory()
        assert rcb.completed_resumability_sources([]) == set()
