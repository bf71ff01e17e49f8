"""A reference model of a pipeline for property tests: what *truly* happened.

The model knows nothing of resumelog's fold. It simulates a Curator-style pipeline
(``docs/concepts.md``): sources enter a run, each as one or more root tasks; a stage processes a
task into a fan-out (real, failed and filtered children), a positional output (pass
on, filter, fail) or the sink. From that it knows

* the **truth**: which tasks of each ``(run, source)`` are live, failed or done, hence
  whether the source *truly drained* in that run (:meth:`SourceRun.drained`);
* the **accounting**: the §3 records each processing event produces, written by the
  caller to a real writer, and which of them became durable in which stream (a stream
  is one writer object; a crash drops what it had not flushed);
* the **expectation**: what a correct fold of the durable records must report,
  computed by brute force from the durable records (each stream's last value per key,
  conflict if streams disagree, complete iff emitted, no conflict, sum zero), plus the
  sticky and reset rules of ``docs/concepts.md``.

Two outcomes depend on *when* a fold evaluated a state (the deliberate sticky
completion), so the model gives a band ``must ⊆ completed ⊆ may`` rather than one set:

* a record for a ``(run, source)`` that arrives *after* it became complete and is not
  a same-key, same-delta duplicate un-completes it if a fold saw the completion first
  (``late``), but not in a fold that sees everything at once;
* a reset voids the completion its issuer saw; another run that had also drained the
  source may have been collapsed into that completion and forgotten.

Such ``(run, source)`` pairs are *at risk*: they may be reported or not, everything
else must be exact. Safety does not use the band: every reported completion must have
truly drained in the run the library names.

The model checks its own accounting (:meth:`PipelineModel.check`): for every
``(run, source)`` the canonical deltas sum to the number of live plus failed tasks,
and durable records that would complete a source imply it truly drained.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from resumelog.journal import DONE_KEY, EMIT_KEY  # wire constants of Writer.complete, not fold logic

__all__ = [
    "DONE",
    "FAILED",
    "LIVE",
    "ModelWriter",
    "PipelineModel",
    "Rec",
    "SourceRun",
    "Task",
    "oracle_complete",
]

LIVE = "live"
DONE = "done"
FAILED = "failed"


class Rec(NamedTuple):
    """One record ``(key, source, delta)``; ``emission`` marks a source-stage record."""

    key: str
    source: str
    delta: int
    emission: bool = False

    def __repr__(self) -> str:
        em = ", emission" if self.emission else ""
        return f"Rec({self.key!r}, {self.source!r}, {self.delta:+d}{em})"


def child_id(parent: str, i: int) -> str:
    """Curator-style id of output ``i`` of ``parent`` (ids change at every stage)."""
    return f"{parent}_{i}"


@dataclass(eq=False)
class Task:
    """A task of one source in one run. ``records`` are what its processing wrote."""

    run: str
    source: str
    tid: str
    depth: int
    status: str = LIVE
    records: tuple[Rec, ...] = ()

    def __repr__(self) -> str:
        return f"Task({self.run}/{self.source}/{self.tid}, {self.status})"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # Hypothesis prints draws with this
        p.text(repr(self))


@dataclass(eq=False)
class ModelWriter:
    """A writer's stream: its buffer, and a segment whose flush failed (if any)."""

    name: str
    run: str
    alive: bool = True
    buffer: list[Rec] = field(default_factory=list)
    pending: list[Rec] | None = None
    pending_durable: bool = False

    def __repr__(self) -> str:
        state = "alive" if self.alive else "crashed"
        return f"Writer({self.name}, {self.run}, {state}, buffered={len(self.buffer)})"


@dataclass(eq=False)
class SourceRun:
    """Truth, accounting and durable records of one source in one run."""

    run: str
    source: str
    tasks: dict[str, Task] = field(default_factory=dict)
    canonical: dict[str, int] = field(default_factory=dict)
    """key -> the delta the pipeline's accounting implies for it now."""
    durable: dict[str, dict[str, int]] = field(default_factory=dict)
    """key -> stream -> that stream's last durable delta for the key."""
    emitted_durable: bool = False
    sealed: dict[str, int] | None = None
    """Final deltas when the durable records first made it complete."""
    at_risk: bool = False

    def __repr__(self) -> str:
        return f"SourceRun({self.run}/{self.source}, drained={self.drained()}, expected={self.expected()})"

    # ------------------------------------------------------------------ truth

    def outstanding(self) -> int:
        """Live plus failed tasks (what the counter must still account for)."""
        return sum(1 for t in self.tasks.values() if t.status != DONE)

    def drained(self) -> bool:
        """The source entered the run and every one of its tasks finished."""
        return bool(self.tasks) and self.outstanding() == 0

    # ------------------------------------------------------------------ durable view

    def durable_sums(self) -> tuple[int, int]:
        """``(sum of agreed deltas, number of keys whose streams disagree)``."""
        total = conflicts = 0
        for per_stream in self.durable.values():
            values = set(per_stream.values())
            if len(values) > 1:
                conflicts += 1
            else:
                total += values.pop()
        return total, conflicts

    def final_deltas(self) -> dict[str, int]:
        """Agreed durable delta per key (keys in conflict left out)."""
        out = {}
        for k, per_stream in self.durable.items():
            values = set(per_stream.values())
            if len(values) == 1:
                out[k] = values.pop()
        return out

    def expected(self) -> bool:
        """Whether the durable records, folded at once, make the source complete."""
        return self.emitted_durable and self.durable_sums() == (0, 0)

    def entry_count(self) -> int:
        """Distinct durable ``(key, stream)`` pairs (the most a fold may keep)."""
        return sum(len(v) for v in self.durable.values())


def oracle_complete(records: Iterable[tuple[str, int, str, int, bool]]) -> bool:
    """Brute-force completion of one ``(run, source)`` from tagged records.

    ``records`` are ``(stream, ordinal, key, delta, emission)`` tuples in any order and
    with any duplicates; per key, each stream's record with the highest ordinal is its
    final value. Complete iff some record is an emission, every key's streams agree on
    its final value, and the agreed values sum to zero.
    """
    last: dict[tuple[str, str], tuple[int, int]] = {}
    emitted = False
    for stream, ordinal, key, delta, emission in records:
        emitted |= emission
        cur = last.get((key, stream))
        if cur is None or ordinal > cur[0]:
            last[(key, stream)] = (ordinal, delta)
    per_key: dict[str, set[int]] = {}
    for (key, _stream), (_ordinal, delta) in last.items():
        per_key.setdefault(key, set()).add(delta)
    if any(len(v) > 1 for v in per_key.values()):
        return False
    return emitted and sum(v.pop() for v in per_key.values()) == 0


class Action(NamedTuple):
    """Records a processing event writes, and what happens once they are dispatched."""

    run: str
    records: list[Rec]
    barrier: bool
    """A positive delta: flush before :meth:`PipelineModel.dispatch` (the durability barrier)."""
    effects: list[tuple[Task, str]]
    """``(task, new status)`` of processed tasks."""
    new_tasks: list[Task]


class PipelineModel:
    """Truth and expectations for every ``(run, source)``; see the module docstring."""

    MAX_DEPTH = 3

    def __init__(self, *, tolerate_sticky: bool = True) -> None:
        self.tolerate_sticky = tolerate_sticky
        """``False``: nothing is ever at risk (a fold must equal the all-at-once fold)."""
        self.runs: list[str] = []
        self.pairs: dict[tuple[str, str], SourceRun] = {}
        self.writers: dict[str, ModelWriter] = {}
        self.voided: dict[str, set[str]] = {}
        """source -> runs whose completion of it a reset voided."""
        self.retired: dict[str, set[str]] = {}
        """run -> the sources it had completed when ``compact(keep_runs=...)`` retired it
        (its later records are ignored: nothing else completes in it)."""

    def __repr__(self) -> str:
        return f"PipelineModel(runs={self.runs}, writers={list(self.writers.values())})"

    # ------------------------------------------------------------------ structure

    def add_run(self, run: str) -> None:
        self.runs.append(run)

    def add_writer(self, name: str, run: str) -> ModelWriter:
        w = self.writers[name] = ModelWriter(name, run)
        return w

    def pair(self, run: str, source: str) -> SourceRun:
        p = self.pairs.get((run, source))
        if p is None:
            p = self.pairs[(run, source)] = SourceRun(run, source)
        return p

    def live_writers(self, run: str | None = None) -> list[ModelWriter]:
        return [w for w in self.writers.values() if w.alive and (run is None or w.run == run)]

    def tasks(self, status: str | None = None) -> Iterator[Task]:
        for p in self.pairs.values():
            for t in p.tasks.values():
                if status is None or t.status == status:
                    yield t

    def emitted(self, run: str, source: str) -> bool:
        p = self.pairs.get((run, source))
        return p is not None and bool(p.tasks)

    # ------------------------------------------------------------------ pipeline events

    def emit(self, run: str, source: str, roots: int) -> Action:
        """The source stage: ``roots`` tasks, each ``+1`` keyed on its id (an emission)."""
        tasks = [Task(run, source, f"r{i}", 0) for i in range(roots)]
        for t in tasks:
            t.records = (Rec(t.tid, source, +1, True),)
        return Action(run, [r for t in tasks for r in t.records], True, [], tasks)

    def complete(self, run: str, source: str) -> Action:
        """``Writer.complete``: done in one step (``+1`` emission and ``-1``, one segment)."""
        records = [Rec(EMIT_KEY, source, +1, True), Rec(DONE_KEY, source, -1)]
        task = Task(run, source, "complete", 0, DONE, tuple(records))
        return Action(run, records, False, [], [task])

    def fan_out(self, task: Task, real: int, failed: int, filtered: int, at_sink: bool) -> Action:
        """1→N, N>1: one record keyed on the first output, ``(0 if sink else real) + failed - 1``."""
        assert real + failed + filtered > 1 and task.status == LIVE
        delta = (0 if at_sink else real) + failed - 1
        children = [
            Task(task.run, task.source, child_id(task.tid, i), task.depth + 1, DONE if at_sink else LIVE)
            for i in range(real)
        ] + [Task(task.run, task.source, child_id(task.tid, real + i), task.depth + 1, FAILED) for i in range(failed)]
        # filtered outputs are consumed branches: no task
        rec = Rec(child_id(task.tid, 0), task.source, delta)
        return Action(task.run, [rec], delta > 0, [(task, DONE)], children)

    def positional(self, task: Task, outcome: str) -> Action:
        """1→1: ``pass`` (real, not the sink) 0, ``filter`` -1, ``fail`` 0, ``sink`` -1."""
        assert task.status == LIVE
        delta = {"pass": 0, "filter": -1, "fail": 0, "sink": -1}[outcome]
        rec = Rec(child_id(task.tid, 0), task.source, delta)
        children = [Task(task.run, task.source, child_id(task.tid, 0), task.depth + 1)] if outcome == "pass" else []
        return Action(task.run, [rec], False, [(task, FAILED if outcome == "fail" else DONE)], children)

    def retry(self, task: Task) -> Action:
        """The same processing event again (another worker, same outcome): same records."""
        assert task.records
        return Action(task.run, list(task.records), any(r.delta > 0 for r in task.records), [], [])

    def retry_failed_as_sink(self, task: Task) -> Action:
        """A task that failed is retried and succeeds at the sink: same key, now ``-1``."""
        assert task.status == FAILED and len(task.records) == 1
        return Action(task.run, [task.records[0]._replace(delta=-1)], False, [(task, DONE)], [])

    def dispatch(self, action: Action) -> None:
        """The records were written (and flushed if the barrier asked): apply the effects."""
        for t, status in action.effects:
            t.status = status
            t.records = tuple(action.records)
        for t in action.new_tasks:
            p = self.pair(t.run, t.source)
            assert t.tid not in p.tasks, t
            p.tasks[t.tid] = t
        for r in action.records:
            self.pair(action.run, r.source).canonical[r.key] = r.delta

    # ------------------------------------------------------------------ writers

    def write(self, writer: str, records: Iterable[Rec]) -> None:
        w = self.writers[writer]
        assert w.alive
        w.buffer.extend(records)

    def flush(self, writer: str) -> None:
        """The writer's flush returned: its failed segment (if any) and buffer are durable."""
        w = self.writers[writer]
        if w.pending is not None:
            if not w.pending_durable:
                self._make_durable(w, w.pending)
            w.pending = None
            w.pending_durable = False
        if w.buffer:
            self._make_durable(w, w.buffer)
            w.buffer = []

    def flush_failed(self, writer: str, written: bool) -> None:
        """A flush raised: the buffer became the writer's pending segment; if the store
        wrote it before failing (an ambiguous failure) it is already durable."""
        w = self.writers[writer]
        if w.pending is None:
            w.pending, w.buffer = w.buffer, []
            w.pending_durable = False
        if written and not w.pending_durable:
            self._make_durable(w, w.pending)
            w.pending_durable = True

    def crash(self, writer: str) -> list[Rec]:
        """The process died: unflushed records are lost."""
        w = self.writers[writer]
        lost = list(w.buffer) + (list(w.pending) if w.pending is not None and not w.pending_durable else [])
        w.buffer, w.pending, w.alive = [], None, False
        return lost

    def _make_durable(self, w: ModelWriter, records: list[Rec]) -> None:
        touched: dict[tuple[str, str], SourceRun] = {}
        for r in records:
            p = self.pair(w.run, r.source)
            if p.sealed is not None and p.sealed.get(r.key) != r.delta and self.tolerate_sticky:
                p.at_risk = True  # a late record: a fold that saw the completion un-completes it
            p.durable.setdefault(r.key, {})[w.name] = r.delta
            p.emitted_durable |= r.emission
            touched[(w.run, r.source)] = p
        for (run, source), p in touched.items():
            if p.sealed is None and p.expected() and run not in self.voided.get(source, ()):
                p.sealed = p.final_deltas()

    # ------------------------------------------------------------------ resets

    def reset(self, source: str, run: str) -> None:
        """A tombstone voiding ``run``'s completion of ``source`` became durable."""
        self.voided.setdefault(source, set()).add(run)
        for (r, s), p in self.pairs.items():
            if s == source and r != run and p.sealed is not None and self.tolerate_sticky:
                p.at_risk = True  # may have been collapsed into the voided completion

    # ------------------------------------------------------------------ expectations

    def drained(self, run: str, source: str) -> bool:
        p = self.pairs.get((run, source))
        return p is not None and p.drained()

    def retire(self, run: str, completed: set[str]) -> None:
        """``run`` was retired while it held the completions ``completed``."""
        self.retired[run] = set(completed)

    def _counts(self, p: SourceRun) -> bool:
        if p.run in self.retired and p.source not in self.retired[p.run]:
            return False
        return p.run not in self.voided.get(p.source, ())

    def must_complete(self) -> set[str]:
        """Sources every fold must report complete."""
        return {p.source for p in self.pairs.values() if self._counts(p) and p.expected() and not p.at_risk}

    def may_complete(self) -> set[str]:
        """Sources a fold may report complete (``must`` plus at-risk ones)."""
        return {
            p.source for p in self.pairs.values() if self._counts(p) and (p.expected() or (p.at_risk and p.drained()))
        }

    def at_risk(self) -> list[SourceRun]:
        return [p for p in self.pairs.values() if p.at_risk]

    def durable_entry_count(self) -> int:
        return sum(p.entry_count() for p in self.pairs.values())

    def check(self) -> None:
        """The model's own accounting laws (independent of the library)."""
        for p in self.pairs.values():
            total = sum(p.canonical.values())
            assert total == p.outstanding(), (
                f"{p}: canonical deltas sum to {total} but {p.outstanding()} tasks are outstanding"
            )
            if p.expected():
                assert p.drained(), f"{p}: its durable records complete it but it did not drain"
