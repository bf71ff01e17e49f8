"""Epochs (RFC 0004) against a model: a checkpoint deleted under live writers, views
and compactors stays deleted, whatever they do afterwards.

The model: every writer and view belongs to the epoch current when it was opened; a
flushed ``complete(s)`` of a writer of epoch ``e`` counts iff ``e`` is the current
epoch. A deletion (resumelog's ``clear``, or every object deleted in a random order as
``rm -r`` or Ray's ``delete_dir`` would) starts a new epoch once a view is opened
again. After every step a fresh reader must report exactly the flushed completions of
the current epoch (nothing while no ``meta.msgpack`` exists).
"""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st
from pt_settings import budget

import resumelog
from resumelog import compactor
from resumelog.errors import CheckpointReplaced, ObjectNotFound
from resumelog.snapshot import encode_snapshot
from resumelog.storage import MemoryStore

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("open_writer")),
        st.tuples(st.just("complete"), st.integers(0, 2), st.integers(0, 5)),
        st.tuples(st.just("flush"), st.integers(0, 2)),
        st.tuples(st.just("close"), st.integers(0, 2)),
        st.tuples(st.just("compact"), st.integers(0, 2)),
        st.tuples(st.just("stale_publish")),
        st.tuples(st.just("gc"), st.integers(1, 3)),
        st.tuples(st.just("clear"), st.booleans(), st.randoms(use_true_random=False)),
        st.tuples(st.just("reopen")),
    ),
    min_size=12,
    max_size=40,
)


class Epochs:
    """The model and the real checkpoint side by side."""

    def __init__(self) -> None:
        self.store = MemoryStore(f"epochs-{uuid.uuid4().hex}")
        self.epoch = 0
        self.meta = False  # does meta.msgpack exist (the current epoch is open)?
        self.view: resumelog.Checkpoint | None = None
        self.view_epoch = -1
        self.writers: list[tuple[resumelog.Writer, int, set[str]]] = []  # (writer, epoch, buffered)
        self.durable: dict[int, set[str]] = {}
        self.stale: tuple[compactor.Loaded, bytes] | None = None
        self.nonces: dict[int, bytes] = {}  # epoch -> its meta.msgpack nonce

    def open_view(self) -> resumelog.Checkpoint:
        if self.view is None or self.view_epoch != self.epoch or not self.meta:
            if not self.meta:
                self.epoch += 1
                self.meta = True
            self.view = resumelog.open(self.store, run_id="r")
            self.view_epoch = self.epoch
            assert self.view.meta is not None
            self.nonces[self.epoch] = self.view.meta.nonce
        return self.view

    def step(self, op: tuple) -> None:
        kind = op[0]
        if kind == "reopen":
            self.open_view()
        elif kind == "open_writer":
            view = self.open_view()
            self.writers.append((view.writer(f"w{len(self.writers)}"), self.view_epoch, set()))
        elif kind in ("complete", "flush", "close"):
            if not self.writers or (kind == "complete" and op[1] >= len(self.writers)):
                self.step(("open_writer",))  # the newest writer then does it
            w, e, buf = self.writers[op[1] % len(self.writers)]
            if w.closed:
                return
            if kind == "complete":
                w.complete(f"s{op[2]}")
                buf.add(f"s{op[2]}")
            else:
                w.flush() if kind == "flush" else w.close()
                self.durable.setdefault(e, set()).update(buf)
                buf.clear()
        elif kind == "compact" and self.writers:
            _, e, _ = self.writers[op[1] % len(self.writers)]  # that writer's view compacts
            try:
                compactor.compact(self.store, expect_epoch=self.nonces[e])
            except CheckpointReplaced:
                assert not (self.meta and e == self.epoch)
            else:
                assert self.meta and e == self.epoch
        elif kind == "stale_publish":
            # a compactor loaded now and publishes after whatever comes next
            if self.stale is None:
                if self.meta:
                    loaded = compactor.load(self.store, verify=True)
                    assert loaded.epoch is not None
                    self.stale = (loaded, loaded.epoch)
            else:
                loaded, epoch = self.stale
                self.stale = None
                data = encode_snapshot(loaded.state, loaded.frames, epoch=epoch)
                try:
                    compactor.put_snapshot(self.store, loaded.state.number, data)
                except resumelog.AlreadyExists:
                    pass
        elif kind == "gc":
            compactor.gc(self.store, retain=op[1], grace=0)
        elif kind == "clear":
            _, own, rnd = op
            if own and self.view is not None:
                self.view.clear()  # meta first, then the rest
                self.view = None
            else:
                keys = [o.path for o in self.store.list("")]
                rnd.shuffle(keys)
                for k in keys:
                    self.store.delete([k])
            self.meta = False

    def check(self) -> None:
        try:
            reader = resumelog.open(self.store, create=False)
        except ObjectNotFound:
            assert not self.meta or not self.durable.get(self.epoch)
            return
        expected = self.durable.get(self.epoch, set()) if self.meta else set()
        assert sorted(reader.completed) == sorted(expected)


@given(ops=OPS)
@budget(2.0)
def test_a_deleted_checkpoint_stays_deleted(ops: list[tuple]) -> None:
    m = Epochs()
    try:
        for op in ops:
            m.step(op)
            m.check()
    finally:
        for w, _, _ in m.writers:
            w.closed = True  # no atexit flush into a cleared store
        m.store.clear()
