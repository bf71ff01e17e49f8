"""Hypothesis state machines driving the real library against :mod:`resumelog.testing.model`.

:class:`PipelineMachine` runs a pipeline on a real store: writers buffer and flush real
segments, processes crash (their buffers are lost, optionally leaving a torn segment),
tasks are retried on other writers (duplicate keys), compactors run alone, twice, or
interleaved with other compactors, flushes and GC, listings miss segments, checkpoints
are reopened and sources reset. After every step the invariants of ``docs/guarantees.md`` are checked
against the model:

1. **safety** — every source a fold or a checkpoint view reports complete truly
   drained in the run that completed it;
2. **convergence** — a fold of the store reports exactly the sources the durable
   records complete (``must ⊆ completed ⊆ may``, see the model), however segments
   were ordered, split into compactions or redelivered;
3. **idempotence** — recompaction and redelivery change nothing;
4. **no loss** — flushed completions survive crashes, GC and concurrent compaction;
5. **bounded** — a snapshot keeps no more pending entries than distinct durable
   ``(key, stream)`` pairs, and redelivered segments do not grow it.

The store is a constructor argument (a factory returning ``(store, cleanup)``), so one
machine runs on every backend::

    from hypothesis.stateful import run_state_machine_as_test
    from resumelog.testing.stateful import PipelineMachine, memory_store_factory

    def test_pipeline_on_memory():
        run_state_machine_as_test(lambda: PipelineMachine(memory_store_factory()))
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import resumelog
from resumelog import compactor, journal, paths
from resumelog.algebra import FoldState
from resumelog.checkpoint import Checkpoint
from resumelog.errors import CorruptSegment, CorruptSnapshot, FlushError, StorageError
from resumelog.format import (
    FRAME_HEADER_SIZE,
    PREAMBLE_SIZE,
    Reset,
    SegmentHeader,
    decode_segment,
    decode_snapshot_frames,
    segment_parts,
)
from resumelog.snapshot import encode_snapshot, load_snapshot
from resumelog.storage import LocalStore, MemoryStore, ObjectInfo, Store
from resumelog.testing.model import FAILED, LIVE, PipelineModel, Rec, Task

__all__ = [
    "HookedStore",
    "PipelineMachine",
    "StoreFactory",
    "crash_writer",
    "fold_summary",
    "leave_torn_tail",
    "local_store_factory",
    "memory_store_factory",
    "object_store_factory",
    "replaced_object",
]

StoreFactory = Callable[[], tuple[Store, Callable[[], None]]]
"""Returns a fresh, empty store and a function that disposes of it."""


# --------------------------------------------------------------------------- stores


def memory_store_factory(prefix: str = "prop") -> StoreFactory:
    """Fresh ``memory://`` stores, dropped from the process registry on cleanup."""

    def make() -> tuple[Store, Callable[[], None]]:
        store = MemoryStore(f"{prefix}-{uuid.uuid4().hex}")

        def cleanup() -> None:
            store.clear()
            from resumelog.storage import _memory

            with _memory._REGISTRY_LOCK:
                _memory._REGISTRY.pop(store.name, None)

        return store, cleanup

    return make


def local_store_factory(base: str | None = None, *, fsync: bool = False) -> StoreFactory:
    """Fresh :class:`LocalStore` roots in temporary directories (``fsync`` off by
    default: a crash here is simulated, not a power cut)."""

    def make() -> tuple[Store, Callable[[], None]]:
        root = tempfile.mkdtemp(prefix="resumelog-prop-", dir=base)
        return LocalStore(root, fsync=fsync), lambda: shutil.rmtree(root, ignore_errors=True)

    return make


def object_store_factory(url_prefix: str, storage_options: dict[str, Any]) -> StoreFactory:
    """Fresh prefixes under an object-store URL (e.g. the S3 test server)."""

    def make() -> tuple[Store, Callable[[], None]]:
        from resumelog.storage import FsspecStore

        store = FsspecStore(f"{url_prefix.rstrip('/')}/{uuid.uuid4().hex}", storage_options)
        return store, store.clear

    return make


class HookedStore(Store):
    """A store wrapper with one-shot fault and interleaving hooks (all off by default).

    * ``fail_next_put = "before_write" | "after_write"``: the next journal put raises
      :class:`~resumelog.errors.StorageError`, before or after the object is written
      (the second is an ambiguous failure: the write succeeded);
    * ``hide_in_next_listing``: keys the next journal listing leaves out (a listing
      that walked that stream before those segments appeared);
    * ``before_snapshot_put`` / ``before_segment_read`` / ``before_journal_list``: a
      callable run once, with the hooks off, when a compactor is about to publish /
      read a segment / list the journal (a reader between its two listings).
    """

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.atomic_create = inner.atomic_create
        self.torn_writes_possible = inner.torn_writes_possible
        self.requests = inner.requests
        self.fail_next_put: str | None = None
        self.hide_in_next_listing: set[str] = set()
        self.before_snapshot_put: Callable[[], None] | None = None
        self.before_segment_read: Callable[[], None] | None = None
        self.before_journal_list: Callable[[], None] | None = None
        self._off = 0

    @property
    def url(self) -> str:
        return self.inner.url

    @contextlib.contextmanager
    def hooks_off(self) -> Iterator[None]:
        self._off += 1
        try:
            yield
        finally:
            self._off -= 1

    def disarm(self) -> None:
        self.fail_next_put = None
        self.hide_in_next_listing = set()
        self.before_snapshot_put = self.before_segment_read = self.before_journal_list = None

    def _fire(self, name: str) -> None:
        hook = getattr(self, name)
        if hook is not None and not self._off:
            setattr(self, name, None)
            with self.hooks_off():
                hook()

    def put_if_absent(self, key: str, data: bytes | memoryview) -> None:
        if key.startswith(paths.SNAPSHOT_PREFIX):  # (its layers are written before it)
            self._fire("before_snapshot_put")
        mode = self.fail_next_put if key.startswith(paths.JOURNAL_PREFIX) and not self._off else None
        if mode == "before_write":
            self.fail_next_put = None
            raise StorageError(f"injected failure before writing {key}")
        self.inner.put_if_absent(key, data)
        if mode == "after_write":
            self.fail_next_put = None
            raise StorageError(f"injected failure after writing {key} (the write succeeded)")

    def read(self, key: str) -> bytes:
        if key.startswith(paths.JOURNAL_PREFIX):
            self._fire("before_segment_read")
        return self.inner.read(key)

    def read_many(self, keys: Sequence[str]) -> Iterator[tuple[str, bytes | BaseException]]:
        if self.before_segment_read is None or self._off:
            return self.inner.read_many(keys)
        return super().read_many(keys)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        if prefix == paths.JOURNAL_PREFIX:
            self._fire("before_journal_list")
        out = self.inner.list(prefix)
        if prefix == paths.JOURNAL_PREFIX and self.hide_in_next_listing and not self._off:
            hide, self.hide_in_next_listing = self.hide_in_next_listing, set()
            out = [o for o in out if o.path not in hide]
        return out

    def delete(self, keys: Iterable[str]) -> None:
        self.inner.delete(keys)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)


# --------------------------------------------------------------------------- crash helpers


def crash_writer(w: journal.Writer) -> None:
    """Simulate the death of ``w``'s process: its buffer (and a segment whose flush
    failed) is lost, nothing more is ever written, and no exit hook flushes it."""
    w._reset_buffer()
    w._pending = None
    w.closed = True
    journal._unregister(w)


@contextlib.contextmanager
def replaced_object(store: Store, key: str, data: bytes) -> Iterator[None]:
    """Inside the block object ``key`` holds ``data`` (damage done behind the library's
    back, by delete and create); its original bytes are put back afterwards."""
    raw = store.read(key)
    store.delete([key])
    store.put_if_absent(key, data)
    try:
        yield
    finally:
        store.delete([key])
        store.put_if_absent(key, raw)


def leave_torn_tail(store: Store, w: journal.Writer, fraction: float) -> str | None:
    """Write a truncated prefix of the segment ``w`` was writing when it died (local
    stores only): its pending segment or its buffer, as the stream's next object.
    Returns the key, or ``None`` if that object already exists. Call before
    :func:`crash_writer`."""
    inner = store.inner if isinstance(store, HookedStore) else store
    assert isinstance(inner, LocalStore), "torn writes are simulated on local storage only"
    if w._pending is not None:
        data, seq = b"".join(w._pending.parts), w._pending.header.seq
    else:
        header = SegmentHeader(w.writer_id, w.incarnation, w.seq, w.run_id, secrets.token_bytes(16))
        w._seal()  # the open batch too (invisible: the next flush writes the same records)
        data, seq = b"".join(segment_parts(header, w._sealed, w._sealed_records)), w.seq
    key = paths.segment_name(w.writer_id, w.incarnation, seq)
    if inner.exists(key):
        return None
    cut = min(len(data) - 1, int(len(data) * fraction))
    path = inner._path(key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data[:cut])
    return key


# --------------------------------------------------------------------------- fold summaries


def fold_summary(state: FoldState) -> tuple[dict[str, str], dict[tuple[str, str], Any]]:
    """``(completed source -> run, (run, source) -> pending signature)`` of a fold, with
    stream indexes replaced by stream names so folds in different orders compare."""
    completed: dict[str, str] = {}
    yielded = 0
    for s in state.iter_completed():
        run = state.completed_run(s)
        assert run is not None
        completed[s] = run
        yielded += 1
    # the O(1) counts agree with the set itself (no id yielded twice, none missed)
    assert yielded == len(completed) == state.completed_count(), (yielded, len(completed), state.completed_count())
    assert state.completed_by_run() == Counter(completed.values()), (state.completed_by_run(), completed)
    pending = {}
    for (run, src), srs in state.pending.items():
        emitted, tainted, items = srs.signature()
        # a reset naming the run voids the state whenever it arrived; the flag records
        # only whether the state existed then, so compare the effect, not the flag
        tainted = tainted or run in state.resets.get(src, ())
        pending[(run, src)] = (emitted, tainted, frozenset((k, state.stream_ids[i], o, d) for k, i, o, d in items))
    return completed, pending


# --------------------------------------------------------------------------- the machine


FAN_OUTS = ["RR", "RRR", "RF", "RX", "RRF", "FF", "RRX", "FX", "XX"]
"""Fan-out shapes: one letter per output, R real, F failed, X filtered."""


class PipelineMachine(RuleBasedStateMachine):
    """A pipeline on a real store, checked against :class:`PipelineModel` (module doc).

    Class attributes select the scope:

    ``SOURCES``, ``MAX_RUNS``, ``MAX_LIVE_WRITERS``, ``MAX_WRITERS``
        size of the world.
    ``WRITERS_FROM_ANY_VIEW``
        ``False``: every writer of a run is opened from that run's first checkpoint
        (one driver process), so that view sees every flush of its run. ``True``:
        writers also come from reopened checkpoints (other processes).
    ``STRICT_CONVERGENCE``
        ``True``: no ``(run, source)`` is *at risk*; the fold must agree with a fold
        of all durable records at once even across sticky completions.
    """

    SOURCES: Sequence[str] = ("s0", "s1", "dir/part-2.parquet", "ünïcødé ☃")
    MAX_RUNS = 3
    MAX_LIVE_WRITERS = 3
    MAX_WRITERS = 8
    WRITERS_FROM_ANY_VIEW = True
    STRICT_CONVERGENCE = True

    def __init__(self, store_factory: StoreFactory) -> None:
        super().__init__()
        inner, self._cleanup = store_factory()
        self.store = HookedStore(inner)
        self.model = PipelineModel()
        self.views: dict[str, Checkpoint] = {}  # run -> the checkpoint its writers come from
        self.readers: list[Checkpoint] = []  # reopened checkpoints (other processes' views)
        self.writers: dict[str, journal.Writer] = {}
        self.archive: dict[str, bytes] = {}  # every segment that ever became durable
        self.labels: dict[str, str] = {}  # writer_id/incarnation -> short name
        self.story: list[str] = []
        self._resets = 0
        self.unfolded = False  # segments written since the last compaction
        self.uncollected = False  # snapshots published since the last GC
        self.unseen = False  # segments written since the last reopen
        self.refolded = 0  # archive size at the last refold

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.store.url})"

    # ------------------------------------------------------------------ plumbing

    def say(self, line: str) -> None:
        self.story.append(line)

    def explain(self) -> str:
        return "\n  ".join(["story:", *self.story[-40:]])

    @property
    def run(self) -> str:
        return self.model.runs[-1]

    @property
    def torn_tails_possible(self) -> bool:
        return isinstance(self.store.inner, LocalStore)

    def teardown(self) -> None:
        for w in self.writers.values():
            crash_writer(w)
        self.store.disarm()
        self._cleanup()

    def open_view(self, run: str) -> Checkpoint:
        return resumelog.open(self.store, run_id=run)

    def new_writer(self, run: str, view: Checkpoint | None = None) -> str:
        name = f"w{len(self.writers) + 1}"
        w = (view or self.views[run]).writer(name)
        self.writers[name] = w
        self.labels[f"{w.writer_id}/{w.incarnation}"] = name
        self.model.add_writer(name, run)
        self.say(f"open writer {name} in {run}")
        return name

    def write(self, name: str, records: list[Rec]) -> None:
        w = self.writers[name]
        if [r.key for r in records] == [journal.EMIT_KEY, journal.DONE_KEY]:
            w.complete(records[0].source)
        else:
            for r in records:
                w.record(r.key, r.source, r.delta, emission=r.emission)
        self.model.write(name, records)
        self.say(f"{name} buffers {records}")

    def flush(self, name: str) -> None:
        w = self.writers[name]
        first = w.seq
        w.flush()
        self.model.flush(name)
        self.archive_segments(w, range(first, w.seq))
        self.unfolded = self.unseen = self.unfolded or w.seq > first
        self.say(f"{name} flushed (segments {first}..{w.seq - 1})")

    def archive_segments(self, w: journal.Writer, seqs: Iterable[int]) -> None:
        for seq in seqs:
            key = paths.segment_name(w.writer_id, w.incarnation, seq)
            self.archive.setdefault(key, self.store.inner.read(key))

    def archive_new_journal(self) -> list[Reset]:
        """Archive segments written behind the machine's back (reset writers); returns
        the tombstones they hold. Torn tails the machine left are not archived: their
        flush never returned, so they hold nothing durable."""
        found: list[Reset] = []
        for o in self.store.inner.list(paths.JOURNAL_PREFIX):
            p = paths.parse_segment(o.path)
            if o.path in self.archive or p is None:
                continue
            data = self.store.inner.read(o.path)
            try:
                seg = decode_segment(data, o.path)
            except CorruptSegment:
                continue
            sid = f"{p.writer_id}/{p.incarnation}"
            if sid not in self.labels:
                self._resets += 1
                self.labels[sid] = f"reset#{self._resets}"
            self.archive[o.path] = data
            self.unfolded = self.unseen = True
            found += [r for b in seg.batches for r in b.resets]
        return found

    def run_action(self, name: str, action: Any, crash_before_barrier: bool = False) -> None:
        """Write an action's records; flush first if it has a positive delta (barrier)."""
        self.write(name, action.records)
        if action.barrier:
            if crash_before_barrier:
                self.kill(name)
                self.say("  (crashed before the barrier: nothing dispatched)")
                return
            self.flush(name)
        self.model.dispatch(action)

    def kill(self, name: str, torn: float | None = None) -> None:
        """Crash writer ``name`` (optionally leaving a torn tail of ``torn`` of its next segment)."""
        w = self.writers[name]
        key = leave_torn_tail(self.store, w, torn) if torn is not None else None
        self.unfolded = self.unseen = self.unfolded or key is not None
        crash_writer(w)
        lost = self.model.crash(name)
        self.say(f"{name} crashed, losing {lost}" + (f", torn tail {key}" if key else ""))

    def compacted(self, result: compactor.CompactResult, what: str) -> None:
        self.say(f"{what} -> snapshot {result.snapshot} (written={result.written})")
        self.unfolded = False
        self.uncollected = self.uncollected or result.written
        self.check_latest_snapshot_bounded()

    def fresh_fold(self) -> compactor.Loaded:
        with self.store.hooks_off():
            return compactor.load(self.store, progress=False)

    def live_writers(self, run: str | None = None) -> list[str]:
        return [w.name for w in self.model.live_writers(run)]

    def pick(self, data: st.DataObject, items: Sequence[Any], label: str) -> Any:
        return data.draw(st.sampled_from(list(items)), label=label)

    def workable(self, tasks: Iterable[Task]) -> list[Task]:
        """Tasks whose run still has a live writer."""
        runs = {w.run for w in self.model.live_writers()}
        return [t for t in tasks if t.run in runs]

    def pick_task_and_writer(self, data: st.DataObject, tasks: Sequence[Task]) -> tuple[Task, str]:
        task = self.pick(data, tasks, "task")
        return task, self.pick(data, self.live_writers(task.run), "writer")

    def live_tasks(self, max_depth: int | None = None) -> list[Task]:
        return self.workable(t for t in self.model.tasks(LIVE) if max_depth is None or t.depth < max_depth)

    def retryable(self) -> list[Task]:
        return self.workable(t for t in self.model.tasks() if t.records and self.retry_is_duplicate(t))

    def retry_is_duplicate(self, task: Task) -> bool:
        """A retry after the source completed may only repeat durable records exactly
        (anything else is a late record, which the model treats as at risk)."""
        p = self.model.pair(task.run, task.source)
        return p.sealed is None or all(p.sealed.get(r.key) == r.delta for r in task.records)

    # ------------------------------------------------------------------ runs and writers

    @initialize()
    def first_run(self) -> None:
        self.model.tolerate_sticky = not self.STRICT_CONVERGENCE
        self.start_run()
        self.new_writer(self.run)

    @precondition(lambda self: len(self.model.runs) < self.MAX_RUNS)
    @rule()
    def start_run(self) -> None:
        """A new pipeline execution: reruns pending sources from scratch."""
        run = f"run{len(self.model.runs) + 1}"
        self.model.add_run(run)
        self.views[run] = self.open_view(run)
        self.say(f"start {run}")

    @precondition(
        lambda self: len(self.live_writers()) < self.MAX_LIVE_WRITERS and len(self.writers) < self.MAX_WRITERS
    )
    @rule(data=st.data())
    def open_writer(self, data: st.DataObject) -> None:
        """A new worker process of the current run (or, rarely, a straggler's run)."""
        view = None
        if self.WRITERS_FROM_ANY_VIEW and self.readers:
            view = self.pick(data, [None, *self.readers], "from view")
        run = self.run if view is None else view.run_id
        self.new_writer(run, view)

    @precondition(lambda self: self.unseen)
    @rule()
    def reopen_checkpoint(self) -> None:
        """Another process opens the checkpoint (loads snapshot + journal tail)."""
        self.unseen = False
        view = self.open_view(self.run)
        self.readers = [*self.readers[-2:], view]
        self.say(f"reopen the checkpoint of {self.run}")
        self.check_view(view)

    # ------------------------------------------------------------------ the pipeline

    @precondition(lambda self: bool(self.live_writers()))
    @rule(data=st.data(), roots=st.integers(1, 2), crash_before_barrier=st.booleans())
    def emit_source(self, data: st.DataObject, roots: int, crash_before_barrier: bool) -> None:
        """Source stage: ``roots`` tasks enter the run, ``+1`` each, flushed before dispatch."""
        name = self.pick(data, self.live_writers(), "writer")
        run = self.model.writers[name].run
        todo = [s for s in self.SOURCES if not self.model.emitted(run, s)]
        if not todo:
            return
        source = self.pick(data, todo, "source")
        self.say(f"emit {source!r} in {run} with {roots} task(s) on {name}")
        self.run_action(name, self.model.emit(run, source, roots), crash_before_barrier)

    @precondition(lambda self: bool(self.live_writers()))
    @rule(data=st.data())
    def complete_source(self, data: st.DataObject) -> None:
        """``Writer.complete``: a single-stage pipeline (emission and sink in one segment)."""
        name = self.pick(data, self.live_writers(), "writer")
        run = self.model.writers[name].run
        todo = [s for s in self.SOURCES if not self.model.emitted(run, s)]
        if not todo:
            return
        source = self.pick(data, todo, "source")
        self.say(f"complete {source!r} in {run} on {name}")
        self.run_action(name, self.model.complete(run, source))

    @precondition(lambda self: bool(self.live_tasks(PipelineModel.MAX_DEPTH)))
    @rule(data=st.data(), outputs=st.sampled_from(FAN_OUTS), at_sink=st.booleans(), crash_before_barrier=st.booleans())
    def fan_out(self, data: st.DataObject, outputs: str, at_sink: bool, crash_before_barrier: bool) -> None:
        """Fan-out 1→N: one record ``(0 if sink else real) + failed - 1`` on the first output."""
        task, name = self.pick_task_and_writer(data, self.live_tasks(PipelineModel.MAX_DEPTH))
        action = self.model.fan_out(task, outputs.count("R"), outputs.count("F"), outputs.count("X"), at_sink)
        self.say(f"fan out {task} into {outputs}{' at the sink' if at_sink else ''} on {name}")
        self.run_action(name, action, crash_before_barrier)

    def positional(self, data: st.DataObject, outcome: str, then_flush: bool) -> None:
        tasks = self.live_tasks(PipelineModel.MAX_DEPTH if outcome == "pass" else None)
        task, name = self.pick_task_and_writer(data, tasks)
        self.say(f"{outcome} {task} on {name}")
        self.run_action(name, self.model.positional(task, outcome))
        if then_flush:
            self.flush(name)

    @precondition(lambda self: bool(self.live_tasks(PipelineModel.MAX_DEPTH)))
    @rule(data=st.data(), then_flush=st.booleans())
    def pass_task_on(self, data: st.DataObject, then_flush: bool) -> None:
        """Positional 1→1, a real output, not the sink: ``0`` on the output's id."""
        self.positional(data, "pass", then_flush)

    @precondition(lambda self: bool(self.live_tasks()))
    @rule(data=st.data(), then_flush=st.booleans())
    def filter_task(self, data: st.DataObject, then_flush: bool) -> None:
        """Positional 1→1, a ``NoneTask``: ``-1``."""
        self.positional(data, "filter", then_flush)

    @precondition(lambda self: bool(self.live_tasks()))
    @rule(data=st.data(), then_flush=st.booleans())
    def fail_task(self, data: st.DataObject, then_flush: bool) -> None:
        """Positional 1→1, a ``FailedTask``: ``0`` (the source reruns next run)."""
        self.positional(data, "fail", then_flush)

    @precondition(lambda self: bool(self.live_tasks()))
    @rule(data=st.data(), then_flush=st.booleans())
    def sink_task(self, data: st.DataObject, then_flush: bool) -> None:
        """The sink writes the task's output: ``-1``."""
        self.positional(data, "sink", then_flush)

    @precondition(lambda self: bool(self.retryable()))
    @rule(data=st.data(), then_flush=st.booleans())
    def retry_task(self, data: st.DataObject, then_flush: bool) -> None:
        """At-least-once delivery: a processed task runs again (same keys, same deltas)."""
        task, name = self.pick_task_and_writer(data, self.retryable())
        self.say(f"retry {task} on {name}")
        self.run_action(name, self.model.retry(task))
        if then_flush:
            self.flush(name)

    @precondition(lambda self: bool(self.workable(t for t in self.model.tasks(FAILED) if len(t.records) == 1)))
    @rule(data=st.data(), then_flush=st.booleans())
    def retry_failed_task(self, data: st.DataObject, then_flush: bool) -> None:
        """A failed task is retried and succeeds at the sink: same key, delta 0 -> -1
        (a conflict if the failure was durable in another stream)."""
        tasks = self.workable(t for t in self.model.tasks(FAILED) if len(t.records) == 1)
        task, name = self.pick_task_and_writer(data, tasks)
        self.say(f"retry failed {task} on {name}: succeeds at the sink")
        self.run_action(name, self.model.retry_failed_as_sink(task))
        if then_flush:
            self.flush(name)

    # ------------------------------------------------------------------ writers' fate

    def buffering_writers(self) -> list[str]:
        return [name for name in self.live_writers() if self.writers[name].buffered]

    @precondition(lambda self: bool(self.buffering_writers()))
    @rule(data=st.data())
    def flush_writer(self, data: st.DataObject) -> None:
        self.flush(self.pick(data, self.buffering_writers(), "writer"))

    @precondition(lambda self: bool(self.buffering_writers()))
    @rule(data=st.data(), when=st.sampled_from(["before_write", "after_write"]))
    def flush_fails(self, data: st.DataObject, when: str) -> None:
        """The store fails the flush (before, or after writing: ambiguous): FlushError,
        the buffer is kept; the next flush must not lose or duplicate it."""
        name = self.pick(data, self.buffering_writers(), "writer")
        w = self.writers[name]
        if self.model.writers[name].pending_durable:
            return  # the retry would only confirm the earlier write
        self.store.fail_next_put = when
        try:
            w.flush()
        except FlushError:
            pass
        else:
            raise AssertionError(f"{name}: flush returned although the store failed ({when})")
        finally:
            self.store.fail_next_put = None
        assert w.buffered, f"{name}: a failed flush dropped its buffer"
        self.model.flush_failed(name, written=when == "after_write")
        if when == "after_write":
            self.archive_segments(w, [w.seq])
            self.unfolded = self.unseen = True
        self.say(f"{name} flush failed {when.replace('_', ' ')}")

    def can_crash(self) -> bool:
        live = len(self.live_writers())
        return live > 1 or (live == 1 and len(self.writers) < self.MAX_WRITERS)

    @precondition(lambda self: self.can_crash())
    @rule(data=st.data())
    def crash_process(self, data: st.DataObject) -> None:
        """The process dies: its unflushed records are lost."""
        self.kill(self.pick(data, self.live_writers(), "writer"))

    @precondition(lambda self: self.torn_tails_possible and self.can_crash())
    @rule(data=st.data(), fraction=st.floats(0, 1))
    def crash_leaving_torn_tail(self, data: st.DataObject, fraction: float) -> None:
        """The process dies while writing a segment: a truncated last object remains."""
        self.kill(self.pick(data, self.live_writers(), "writer"), torn=fraction)

    @precondition(lambda self: self.can_crash())
    @rule(data=st.data())
    def close_writer(self, data: st.DataObject) -> None:
        """The process ends cleanly: its writer flushes and closes its stream, whose
        segments (the last one too) GC may then collect."""
        name = self.pick(data, self.live_writers(), "writer")
        w = self.writers[name]
        first = w.seq
        w.close()
        self.model.flush(name)
        self.archive_segments(w, range(first, w.seq))
        self.model.crash(name)  # (loses nothing: all flushed) never writes again
        self.unfolded = self.unseen = True
        self.say(f"{name} closed (segments {first}..{w.seq - 1})")

    # ------------------------------------------------------------------ compaction and GC

    @precondition(lambda self: self.unfolded)
    @rule()
    def compact(self) -> None:
        with self.store.hooks_off():
            self.compacted(compactor.compact(self.store, progress=False), "compact")

    @rule()
    def compact_merging_layers(self) -> None:
        """A compaction that also merges every layer of the index into one: the same
        completed set, runs and pending state as before the merge (a merge never loses
        or resurrects a completion), then one layer without tombstones."""
        before = fold_summary(self.fresh_fold().state)
        with self.store.hooks_off():
            result = compactor.compact(self.store, progress=False, merge=True)
        self.compacted(result, "compact(merge=True)")
        loaded = self.fresh_fold()
        if result.written and not self.unfolded:
            layers = loaded.state.base.layers
            assert len(layers) <= 1 and not any(layer.tombstones for layer in layers), "a full merge left layers"
        if result.segments_folded == 0:
            assert fold_summary(loaded.state) == before, "merging the layers changed the fold"

    @precondition(lambda self: self.unfolded)
    @rule()
    def compact_deferring_merges(self) -> None:
        """A tick that leaves the merges of large layers to ``compactor.merge``."""
        with self.store.hooks_off():
            result = compactor.compact(self.store, progress=False, defer_merges=True)
        self.compacted(result, "compact(defer_merges=True)")

    @rule(
        data=st.data(),
        full=st.booleans(),
        meanwhile=st.sampled_from(["nothing", "tick", "flush+tick", "flush+tick+gc", "merge", "merge+gc"]),
    )
    def merge_in_background(self, data: st.DataObject, full: bool, meanwhile: str) -> None:
        """A background merge (``compactor.merge``) while, before it publishes, a writer
        flushes and a tick publishes (it rebases over the tick), or another merge takes
        its layers (it starts again), and GC (retain=1) collects. Alone, it changes
        nothing but the layers: the same completed set, runs and pending state."""
        flusher = None
        if "flush" in meanwhile and self.live_writers():
            flusher = self.pick(data, self.live_writers(), "flushing writer")
        before = fold_summary(self.fresh_fold().state) if meanwhile in ("nothing", "merge", "merge+gc") else None

        def other() -> None:
            if flusher is not None:
                self.flush(flusher)
            if "tick" in meanwhile:
                tick = compactor.compact(self.store, progress=False, defer_merges=True)
                self.compacted(tick, "  meanwhile a tick")
            if meanwhile.startswith("merge"):
                self.say(f"  meanwhile another merge -> {compactor.merge(self.store, full=True)}")
            if "gc" in meanwhile:
                compactor.gc(self.store, retain=1, grace=0)
                self.say("  meanwhile gc(retain=1)")

        if meanwhile != "nothing":
            self.store.before_snapshot_put = other
        try:
            result = compactor.merge(self.store, full=full)
        finally:
            self.store.disarm()
        self.say(f"merge(full={full}, {meanwhile}) -> {result}")
        self.uncollected = self.uncollected or result.written
        if before is not None and not self.unfolded:
            assert fold_summary(self.fresh_fold().state) == before, "a merge changed the fold"
        frames = self.fresh_fold().frames
        named = {ref.name for ref in frames.layers or ()} if frames is not None else set()
        stored = {o.path for o in self.store.inner.list(paths.LAYER_PREFIX)}
        assert named <= stored, f"the latest snapshot names layers not stored: {sorted(named - stored)}"

    @precondition(lambda self: self.unfolded)
    @rule()
    def compact_twice(self) -> None:
        """Idempotence: a second compaction with nothing new writes nothing, changes nothing."""
        self.compact()
        before = fold_summary(self.fresh_fold().state)
        with self.store.hooks_off():
            again = compactor.compact(self.store, progress=False)
        assert not again.written, f"recompaction with nothing new wrote snapshot {again.snapshot}"
        assert fold_summary(self.fresh_fold().state) == before, "recompaction changed the fold"

    @precondition(lambda self: self.unfolded)
    @rule(
        data=st.data(),
        meanwhile=st.sampled_from(["compact", "flush+compact", "flush+compact+gc"]),
        at=st.sampled_from(["before_publish", "while_folding"]),
    )
    def compactors_race(self, data: st.DataObject, meanwhile: str, at: str) -> None:
        """Compactor A pauses (before publishing, or while reading segments); meanwhile
        a writer flushes, compactor B publishes and GC (retain=1) collects; A resumes."""
        flusher = None
        if "flush" in meanwhile and self.live_writers():
            flusher = self.pick(data, self.live_writers(), "flushing writer")

        def other() -> None:
            if flusher is not None:
                self.flush(flusher)
            self.compacted(compactor.compact(self.store, progress=False), "  meanwhile compactor B")
            if "gc" in meanwhile:
                compactor.gc(self.store, retain=1, grace=0)
                self.say("  meanwhile gc(retain=1)")

        if at == "before_publish":
            self.store.before_snapshot_put = other
        else:
            self.store.before_segment_read = other
        try:
            a = compactor.compact(self.store, progress=False)
        finally:
            fired = self.store.before_snapshot_put is None and self.store.before_segment_read is None
            self.store.disarm()
        self.compacted(a, f"compactor A ({at}, {meanwhile}, interleaved={fired})")

    @precondition(lambda self: self.unfolded)
    @rule(data=st.data())
    def compact_with_stale_listing(self, data: st.DataObject) -> None:
        """A listing is not a point-in-time snapshot: it walked one stream before its
        newest segments appeared (a fan-out ``+k``, say) and the others after."""
        streams: dict[str, list[str]] = defaultdict(list)
        for o in self.store.inner.list(paths.JOURNAL_PREFIX):
            p = paths.parse_segment(o.path)
            if p is not None:
                streams[self.labels.get(f"{p.writer_id}/{p.incarnation}", "?")].append(o.path)
        if not streams:
            return
        stream = self.pick(data, sorted(streams), "stale stream")
        keys = sorted(streams[stream])
        hidden = data.draw(st.integers(1, len(keys)), label="segments not yet listed")
        self.store.hide_in_next_listing = set(keys[-hidden:])
        try:
            result = compactor.compact(self.store, progress=False)
        finally:
            self.store.disarm()
        self.compacted(result, f"compact with the last {hidden} segment(s) of {stream} unlisted at first")

    @precondition(lambda self: self.unfolded)
    @rule(compactions=st.integers(1, 3), retain=st.integers(1, 3))
    def reader_races_compaction_and_gc(self, compactions: int, retain: int) -> None:
        """A reader lists the snapshots and loads the latest; before it lists the
        journal, other processes flush, compact and GC (the GC may collect a closed
        stream the reader's snapshot does not cover): its answers must be safe."""

        def other() -> None:
            for i in range(compactions):
                for name in self.live_writers() if i == 0 else ():
                    self.flush(name)
                self.compacted(compactor.compact(self.store, progress=False), "  meanwhile a compactor")
            r = compactor.gc(self.store, retain=retain, grace=0)
            self.uncollected = False
            self.say(f"  meanwhile gc(retain={retain}) deleted {r.segments} segment(s), {r.snapshots} snapshot(s)")

        self.store.before_journal_list = other
        try:
            loaded = compactor.load(self.store, progress=False)
        finally:
            self.store.disarm()
        self.say(f"a reader loaded snapshot {loaded.snapshot} racing compaction and GC")
        self.check_safe(loaded.state, "a reader racing compaction and GC")

    def identifiable_unfolded_segments(self) -> list[str]:
        """Journal segments after their stream's mark in the latest snapshot (the ones a
        load reads) whose run
        a load can tell without reading them: the stream has a mark, or a later
        segment. (A stream's only segments, all deleted before any snapshot folded
        them, leave no trace: a documented limit, tests/reliability/test_disk_faults.py.)"""
        marks: dict[tuple[str, str], int] = {}
        snaps = compactor.list_snapshots(self.store.inner)
        if snaps:
            body = decode_snapshot_frames(self.store.inner.read(snaps[-1][1].path)).body
            marks = {(m.writer_id, m.incarnation): m.seq for m in body.streams}
        streams: dict[tuple[str, str], list[int]] = defaultdict(list)
        for o in self.store.inner.list(paths.JOURNAL_PREFIX):
            p = paths.parse_segment(o.path)
            if p is not None:
                streams[(p.writer_id, p.incarnation)].append(p.seq)
        out = []
        for (wid, inc), seqs in streams.items():
            mark = marks.get((wid, inc), -1)
            last = max(seqs)
            out += [paths.segment_name(wid, inc, q) for q in seqs if q > mark and (mark >= 0 or q < last)]
        return sorted(out)

    @precondition(lambda self: self.unfolded)
    @rule(data=st.data())
    def segment_lost_between_listing_and_read(self, data: st.DataObject) -> None:
        """A segment a load listed is gone when it is read (deleted underneath): the
        load must quarantine its run, never complete what that segment may have
        held a fan-out of, also with completions of earlier rounds of the same fold.
        The segment is put back afterwards (the store is as before)."""
        candidates = self.identifiable_unfolded_segments()
        if not candidates:
            return
        key = self.pick(data, candidates, "segment lost")
        inner = self.store.inner
        raw = inner.read(key)
        self.store.before_segment_read = lambda: inner.delete([key])
        try:
            loaded = compactor.load(self.store, progress=False)
        finally:
            self.store.disarm()
            inner.put_if_absent(key, raw)
        self.say(f"a load lost {key} between listing and read")
        self.check_safe(loaded.state, f"a load that lost {key} between listing and read")

    @precondition(lambda self: self.uncollected or bool(compactor.list_snapshots(self.store.inner)))
    @rule(data=st.data())
    def snapshot_bit_flip(self, data: st.DataObject) -> None:
        """One flipped bit in any frame (or the preamble) of the latest snapshot: a load
        falls back to an older snapshot (or raises CorruptSnapshot when none is left)
        and stays safe; the bytes are restored afterwards."""
        snaps = compactor.list_snapshots(self.store.inner)
        if not snaps:
            return
        key = snaps[-1][1].path
        inner = self.store.inner
        raw = inner.read(key)
        spans = [(0, PREAMBLE_SIZE)]
        pos = PREAMBLE_SIZE
        while pos < len(raw):
            length = int.from_bytes(raw[pos : pos + 4], "big")
            spans.append((pos, FRAME_HEADER_SIZE + length))
            pos += FRAME_HEADER_SIZE + length
        frame = data.draw(st.integers(0, len(spans) - 1), label="frame (0: preamble)")
        start, size = spans[frame]
        at = start + data.draw(st.integers(0, size - 1), label="byte in frame")
        bit = data.draw(st.integers(0, 7), label="bit")
        flipped = bytearray(raw)
        flipped[at] ^= 1 << bit
        with replaced_object(inner, key, bytes(flipped)):
            try:
                with self.store.hooks_off():
                    loaded = compactor.load(self.store, progress=False)
            except CorruptSnapshot:
                assert len(snaps) == 1, f"a flip in {key} frame {frame} failed the load with older snapshots left"
                self.say(f"bit flip in {key} frame {frame}: the only snapshot, the load refuses it")
                return
        assert loaded.snapshot != snaps[-1][0] or bytes(flipped) == raw, f"a flip in {key} frame {frame} went unnoticed"
        self.say(f"bit flip in {key} frame {frame}: the load fell back to snapshot {loaded.snapshot}")
        self.check_safe(loaded.state, f"a load after a bit flip in {key} frame {frame}")

    @precondition(lambda self: len(self.model.runs) > 1 and len(self.model.retired) < len(self.model.runs) - 1)
    @rule()
    def compact_retiring_other_runs(self) -> None:
        """``compact(keep_runs=1)`` from the current run: every other run is retired
        (its pending states dropped, its later records ignored) while its writers may
        live on and keep writing; what it had completed stays complete."""
        with self.store.hooks_off():
            result = compactor.compact(self.store, keep_runs=1, protect_runs=frozenset({self.run}))
        self.compacted(result, f"compact(keep_runs=1) retiring {result.retired_runs}")
        done = fold_summary(self.fresh_fold().state)[0]
        for r in result.retired_runs:
            self.model.retire(r, {s for s, run in done.items() if run == r})

    @precondition(lambda self: self.uncollected)
    @rule(retain=st.integers(1, 3))
    def gc(self, retain: int) -> None:
        with self.store.hooks_off():
            result = compactor.gc(self.store, retain=retain, grace=0)
        self.uncollected = False
        self.say(f"gc(retain={retain}) deleted {result.segments} segment(s), {result.snapshots} snapshot(s)")

    def check_salvaged(self, key: str, run: str | None, what: str) -> None:
        """A load over the damaged segment ``key`` (of run ``run``, ``None`` if its
        header is damaged too): either it raises :class:`CorruptSegment` naming ``key``
        because no run can be told, or it salvages: ``key`` is reported corrupt, its run
        is quarantined (anomaly ``corrupt_segment``), and nothing completes that the
        durable records do not complete (the damaged run completes nothing new)."""
        try:
            loaded = self.fresh_fold()
        except CorruptSegment as exc:
            assert exc.path == key, f"the corruption of {key} was reported as {exc.path}"
            assert "cannot be told" in str(exc), f"{what} of {key} refused although its run is known: {exc}"
            self.say(f"{what} of {key}: refused (its run cannot be told)")
            return
        assert key in loaded.corrupt, f"{what} of {key} was silently accepted"
        if run is not None:
            info = loaded.state.runs.get(run)
            assert info is not None and (info.damaged or info.retired), f"{what} of {key}: run {run} not quarantined"
        self.check_safe(loaded.state, f"a fold over the {what} of {key}")
        self.say(f"{what} of {key}: salvaged, run {run} quarantined")

    @precondition(lambda self: self.unfolded)
    @rule(data=st.data())
    def segment_bit_flip_is_salvaged(self, data: st.DataObject) -> None:
        """One flipped bit in any frame (preamble, header, a batch, the footer) of a
        segment a load must fold: the load never folds it nor skips it silently; it
        salvages the checkpoint by quarantining the segment's run (:meth:`check_salvaged`).
        The bytes are restored afterwards."""
        inner = self.store.inner
        candidates = []
        for key in self.identifiable_unfolded_segments():
            try:
                decode_segment(inner.read(key), key)
            except CorruptSegment:
                continue  # a torn tail already (tolerated as it is)
            candidates.append(key)
        if not candidates:
            return
        key = self.pick(data, candidates, "segment to damage")
        raw = inner.read(key)
        run = decode_segment(raw, key).header.run_id
        at = data.draw(st.integers(0, len(raw) - 1), label="byte")
        flipped = bytearray(raw)
        flipped[at] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        with replaced_object(inner, key, bytes(flipped)):
            self.check_salvaged(key, run, f"a bit flip at byte {at}")

    @precondition(lambda self: self.torn_tails_possible)
    @rule(data=st.data(), fraction=st.floats(0, 1))
    def torn_middle_segment_is_salvaged(self, data: st.DataObject, fraction: float) -> None:
        """A truncated segment that is not its stream's last is corruption, not a torn
        tail: salvaged like a bit flip, never skipped (the bytes are restored after)."""
        loaded = self.fresh_fold()
        streams: dict[tuple[str, str], list[int]] = defaultdict(list)
        for o in self.store.inner.list(paths.JOURNAL_PREFIX):
            p = paths.parse_segment(o.path)
            if p is not None:
                streams[(p.writer_id, p.incarnation)].append(p.seq)
        candidates = []
        for (wid, inc), seqs in sorted(streams.items()):
            mark = loaded.state.stream_mark(wid, inc)
            seqs.sort()
            candidates += [paths.segment_name(wid, inc, s) for s in seqs[:-1] if s > mark]
        if not candidates:
            return
        key = self.pick(data, candidates, "segment to tear")
        original = self.store.inner.read(key)
        try:
            run: str | None = decode_segment(original, key).header.run_id
        except CorruptSegment:
            run = None
        with replaced_object(self.store.inner, key, original[: min(len(original) - 1, int(len(original) * fraction))]):
            self.check_salvaged(key, run, "a truncation")

    # ------------------------------------------------------------------ operators

    @precondition(lambda self: bool(self.model.may_complete()))
    @rule(data=st.data())
    def reset_source(self, data: st.DataObject) -> None:
        """``ckpt.reset``: the tombstone names the run the operator's view saw complete it."""
        view = self.views[self.run]
        view.refresh()
        done = sorted(view.completed)
        if not done:
            return
        source = self.pick(data, done, "source")
        run = view.completed_run(source)
        assert run is not None
        assert view.reset([source]) == [source]
        voided = sorted({r for t in self.archive_new_journal() if t.source == source for r in t.runs})
        assert run in voided, f"the tombstone for {source!r} does not name {run}, which completed it"
        for r in voided:
            self.model.reset(source, r)
        self.say(f"reset {source!r} (voids its completion by {run}; the tombstone names {voided})")

    @rule()
    def flush_everything_and_compact(self) -> None:
        """Quiescence: every live writer flushed, then a compaction; the fold must be
        exactly the model's expectation. (Always enabled, so a run never gets stuck.)"""
        for name in self.live_writers():
            self.flush(name)
        self.compact()
        completed = set(fold_summary(self.fresh_fold().state)[0])
        if not self.model.at_risk():
            assert completed == self.model.must_complete(), (
                f"after quiescence the fold reports {sorted(completed)}, "
                f"the durable records complete {sorted(self.model.must_complete())}\n  {self.explain()}"
            )

    # ------------------------------------------------------------------ redelivery

    def archived_segments(self) -> list[tuple[str, Any]]:
        """``(stream name, decoded segment)`` of every segment ever flushed, in creation order."""
        out = []
        for key, raw in self.archive.items():
            seg = decode_segment(raw, key)
            out.append((self.labels.get(f"{seg.header.writer_id}/{seg.header.incarnation}", "?"), seg))
        return out

    @staticmethod
    def fold_segments(delivery: Iterable[Any], cuts: Iterable[int] = (), roundtrip: bool = False) -> FoldState:
        """Fold segments in the given order, evaluating (and optionally cutting a
        snapshot and reloading it) after the deliveries in ``cuts``."""
        cuts = set(cuts)
        state = FoldState()
        for i, seg in enumerate(delivery):
            state.apply_segment(seg.header, seg.batches, seg.footer.closed)
            if i in cuts:
                state.finish()
                if roundtrip:
                    _, state = load_snapshot(encode_snapshot(state, None))
        state.finish()
        return state

    @precondition(lambda self: len(self.archive) > self.refolded and not self.model.retired)
    @rule(data=st.data())
    def refold_in_any_order(self, data: st.DataObject) -> None:
        """One fold of every segment ever flushed, the streams interleaved in any order
        and some segments delivered twice: the same completed set and pending state as
        in creation order (duplicates are no-ops), and a snapshot of the same size."""
        self.refolded = len(self.archive)
        segs = self.archived_segments()
        order = data.draw(st.permutations([label for label, _ in segs]), label="stream of each delivery")
        queues: dict[str, list[Any]] = defaultdict(list)
        for label, seg in segs:
            queues[label].append(seg)
        delivery = [queues[label].pop(0) for label in order]
        redeliver = data.draw(st.lists(st.integers(0, len(delivery) - 1), max_size=4), label="delivered twice")
        for i in sorted(redeliver, reverse=True):
            delivery.insert(i + 1, delivery[i])
        ref = self.fold_segments(seg for _, seg in segs)
        state = self.fold_segments(delivery)
        assert fold_summary(state)[1] == fold_summary(ref)[1], "the order of delivery changed pending state"
        assert set(fold_summary(state)[0]) == set(fold_summary(ref)[0]), "the order of delivery changed completions"
        self.check_safe(state, "a fold of every segment in another order")
        self.check_band(set(fold_summary(state)[0]), "a fold of every segment in another order")
        a, b = encode_snapshot(ref, None).size, encode_snapshot(state, None).size
        assert a == b, f"another delivery order changed the snapshot size ({a} -> {b} bytes)"

    @precondition(lambda self: len(self.archive) > self.refolded and not self.model.retired)
    @rule(data=st.data())
    def refold_with_splits(self, data: st.DataObject) -> None:
        """Every segment ever flushed, in creation order, evaluated at arbitrary points
        (compactions split anywhere), each evaluation optionally round-tripped through
        a snapshot, old segments delivered again later: safe and in the band."""
        self.refolded = len(self.archive)
        delivery = [seg for _, seg in self.archived_segments()]
        again = data.draw(
            st.lists(st.tuples(st.integers(0, len(delivery) - 1), st.integers(0, len(delivery))), max_size=3),
            label="(segment, delivered again at)",
        )
        original = list(delivery)
        for i, at in again:
            first = next(j for j, seg in enumerate(delivery) if seg is original[i])
            delivery.insert(min(len(delivery), max(at, first + 1)), original[i])
        cuts = data.draw(st.sets(st.integers(0, len(delivery) - 1), max_size=4), label="evaluate after deliveries")
        roundtrip = data.draw(st.booleans(), label="snapshot round trip at each evaluation")
        state = self.fold_segments(delivery, cuts, roundtrip)
        self.check_safe(state, "a fold of every segment split into compactions")
        self.check_band(set(fold_summary(state)[0]), "a fold of every segment split into compactions")

    # ------------------------------------------------------------------ invariants

    @invariant()
    def model_accounting_holds(self) -> None:
        self.model.check()

    @invariant()
    def fold_is_safe_and_converges(self) -> None:
        """Safety, convergence and no loss on a fresh fold of the store."""
        loaded = self.fresh_fold()
        self.check_safe(loaded.state, "a fresh fold of the store")
        self.check_band(set(fold_summary(loaded.state)[0]), "a fresh fold of the store")

    @invariant()
    def views_are_safe(self) -> None:
        for view in [*self.views.values(), *self.readers]:
            self.check_view(view)

    def check_view(self, view: Checkpoint) -> None:
        for s in view.completed:
            run = view.completed_run(s)
            assert run is not None and self.model.drained(run, s), (
                f"the checkpoint view of {view.run_id} reports {s!r} complete (by {run}) "
                f"but it did not drain in that run\n  {self.explain()}"
            )

    def check_safe(self, state: FoldState, what: str) -> None:
        for s, run in fold_summary(state)[0].items():
            assert self.model.drained(run, s), (
                f"{what} reports {s!r} complete by {run}, but it did not drain in {run}: "
                f"{self.model.pairs.get((run, s))}\n  {self.explain()}"
            )

    def check_band(self, completed: set[str], what: str) -> None:
        must, may = self.model.must_complete(), self.model.may_complete()
        assert must <= completed, (
            f"{what} lost completions {sorted(must - completed)} (reports {sorted(completed)})\n  {self.explain()}"
        )
        assert completed <= may, (
            f"{what} reports {sorted(completed - may)} complete, which the durable records do not complete"
            f"\n  {self.explain()}"
        )

    def check_latest_snapshot_bounded(self) -> None:
        """Bounded: the snapshot's pending entries never outnumber distinct durable
        ``(key, stream)`` pairs (no growth with redelivery or recompaction)."""
        snaps = compactor.list_snapshots(self.store.inner)
        if not snaps:
            return
        frames = decode_snapshot_frames(self.store.inner.read(snaps[-1][1].path))
        entries = sum(len(p.keys) for p in frames.body.pending)
        bound = self.model.durable_entry_count()
        assert entries <= bound, f"snapshot keeps {entries} pending entries, more than {bound} durable ones"
        refs = frames.layers or []
        assert sum(r.count - r.tombstones for r in refs) == frames.header.completed_count
        assert len(refs) <= max(1, 2 * len(frames.body.runs) + 8), f"{len(refs)} layers: merges do not keep up"
