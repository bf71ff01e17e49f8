"""Background merges (``compactor.merge``) against a twin that never merges.

Ticks that defer their merges (``compact(defer_merges=True)``) stack layers; merges
run apart from them, and race them: before a merge publishes, a tick publishes (the
merge rebases onto it), another merge takes its layers (it starts again), or GC
collects what the newest snapshot no longer names. The same completions and resets go
to a twin checkpoint that only ever folds its journal. Whatever the interleaving, a
fresh reader of the merged checkpoint sees exactly the twin's completed set, and which
run completed each id; the latest snapshot names only stored layers; and no layer is
left that no snapshot names once every merge has returned (a merge deletes the layer
it could not publish).
"""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from pt_settings import budget

import resumelog
from resumelog import compactor, paths
from resumelog.format import decode_snapshot_frames
from resumelog.testing.stateful import HookedStore, memory_store_factory

IDS = [f"dir/part-{i:03d}" for i in range(60)]


class MergeMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        inner, self.cleanup = memory_store_factory("merge")()
        twin, self.cleanup_twin = memory_store_factory("twin")()
        self.store = HookedStore(inner)
        self.twin_store = twin
        self.run = 0
        self.cks = [resumelog.open(inner, run_id="r0"), resumelog.open(twin, run_id="r0")]
        self.writes = 0
        self.done: set[str] = set()

    def teardown(self) -> None:
        self.cleanup()
        self.cleanup_twin()

    @rule(ids=st.lists(st.sampled_from(IDS), min_size=1, max_size=12, unique=True), new_run=st.booleans())
    def complete(self, ids: list[str], new_run: bool) -> None:
        if new_run:
            self.run += 1
            self.cks = [resumelog.open(st_, run_id=f"r{self.run}") for st_ in (self.store.inner, self.twin_store)]
        self.writes += 1
        for ck in self.cks:
            with ck.writer(f"w{self.writes}") as w:
                w.complete_many(ids)
        self.done.update(ids)

    @precondition(lambda self: bool(self.done))
    @rule(data=st.data())
    def reset(self, data: st.DataObject) -> None:
        ids = data.draw(st.lists(st.sampled_from(sorted(self.done)), min_size=1, max_size=5, unique=True))
        for ck in self.cks:
            ck.reset(ids)  # tombstones: a layer masks ids below it

    @rule()
    def tick(self) -> None:
        compactor.compact(self.store.inner, progress=False, defer_merges=True)

    @rule(
        full=st.booleans(),
        meanwhile=st.sampled_from(["nothing", "write+tick", "write+tick+gc", "tick+gc", "merge", "merge+gc"]),
    )
    def merge(self, full: bool, meanwhile: str) -> None:
        def other() -> None:
            if meanwhile.startswith("write"):
                self.complete([IDS[self.writes % len(IDS)]], False)
            if "tick" in meanwhile:
                compactor.compact(self.store.inner, progress=False, defer_merges=True)
            if meanwhile.startswith("merge"):
                compactor.merge(self.store.inner, full=True)
            if "gc" in meanwhile:
                compactor.gc(self.store.inner, retain=1, grace=0)

        if meanwhile != "nothing":
            self.store.before_snapshot_put = other
        try:
            compactor.merge(self.store, full=full)
        finally:
            self.store.disarm()

    @rule()
    def gc(self) -> None:
        compactor.gc(self.store.inner, retain=1, grace=0)

    @invariant()
    def a_reader_sees_what_the_twin_sees(self) -> None:
        got, want = (
            {s: view._state.completed_run(s) for s in view.completed}
            for view in (resumelog.open(st_, create=False) for st_ in (self.store.inner, self.twin_store))
        )
        assert got == want

    @invariant()
    def every_layer_is_named_and_every_named_layer_stored(self) -> None:
        inner = self.store.inner
        stored = {o.path for o in inner.list(paths.LAYER_PREFIX)}
        named: set[str] = set()
        latest: set[str] = set()
        number = 0
        for number, o in compactor.list_snapshots(inner):
            refs = decode_snapshot_frames(inner.read(o.path), o.path).layers or []
            latest = {r.name for r in refs}
            named |= latest
        assert latest <= stored, f"the latest snapshot names missing layers: {sorted(latest - stored)}"
        # unnamed: only merged layers superseded within MERGE_HEADROOM snapshots (GC
        # collects them once the snapshots pass their number), never a tick's
        for name in stored - named:
            n = paths.parse_layer(name)
            assert n is not None and number < n <= number + 1 + compactor.MERGE_HEADROOM, (name, number)


def test_background_merges_against_a_model() -> None:
    run_state_machine_as_test(MergeMachine, settings=budget(0.5))
