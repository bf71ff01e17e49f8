"""The exactly-once output protocol against a model, with a crash at any step.

A state machine processes sources in runs. Each source has one output of the whole
source (``complete``) or several outputs of sink tasks (``-1`` records after a
flushed emission and fan-out). An attempt runs the protocol step by step
(spool -> publish -> record -> flush) and may crash after any step: the writer's
buffer is lost and the spool file stays behind; the attempt may be retried in the
same run (a new writer) or in a new run. A *straggler* of an older run that is still
alive (two jobs on one checkpoint) may go on with a source after a newer run completed
it: if it drains it, the smaller run id holds the completion, and its outputs must all
be there. Operators reset sources, retire runs and collect garbage: with a grace its
runs are alive for (the outputs aged past it), or with ``grace=0`` once every older
run is dead. The writers of every other run (run000, run002, ...) run on clocks two
hours behind: whether a run is alive must be judged by the storage's times, not by
what its writers' clocks say. After every step the reader helper must show, for exactly the sources the
model says are complete, exactly their outputs, once each, from the run that holds
them, whole.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from pt_settings import budget

import resumelog
from resumelog.outputs import PendingOutput, committed, output_store, scan

SOURCES = ["s0", "s/1", "s 2", "s3"]
PARTS = {"s0": 0, "s/1": 1, "s 2": 3, "s3": 2}
"""0: one output of the whole source (``complete``); n: n sink outputs, one ``-1`` each."""

STEPS = ("spool", "publish", "record", "flush")
CLOCK_LAG = 2 * 3600.0
"""How far behind the clocks of the writers of run000, run002, ... are."""


def names(s: str) -> list[str]:
    return ["output"] if PARTS[s] == 0 else [f"part-{j}.txt" for j in range(PARTS[s])]


class OutputMachine(RuleBasedStateMachine):
    def __init__(self, workdir: str) -> None:
        super().__init__()
        base = f"{workdir}/{uuid.uuid4().hex}"
        self.url = f"{base}/ck"
        self.root = f"{base}/out"
        self.runs = itertools.count()
        self.attempts = itertools.count()
        self.ckpt: resumelog.Checkpoint | None = None
        self.w: resumelog.Writer | None = None
        self.run = ""
        # model
        self.done: dict[str, str] = {}  # source -> completing run
        self.durable: dict[tuple[str, str], set[str]] = {}  # (run, source) -> durable record keys
        self.voided: dict[str, set[str]] = {}  # source -> runs that can never complete it
        self.retired: set[str] = set()
        self.older: dict[str, resumelog.Checkpoint] = {}  # older runs still alive (stragglers)
        self.new_run()

    # ------------------------------------------------------------------ helpers

    def crash(self) -> None:
        """The worker dies: unflushed records are lost (the spool files stay)."""
        if self.w is not None:
            self.w.closed = True  # never flushed again, not even at exit
        self.w = None

    def writer(self) -> resumelog.Writer:
        if self.w is None:
            assert self.ckpt is not None
            self.w = self.new_writer(self.ckpt, self.run)
        return self.w

    def new_writer(self, ckpt: resumelog.Checkpoint, run: str) -> resumelog.Writer:
        """A writer of ``run``, on a clock :data:`CLOCK_LAG` behind if the run's number is even."""
        w = ckpt.writer(f"w{next(self.attempts)}")
        if int(run.removeprefix("run")) % 2 == 0:
            w._clock = lambda: time.time() - CLOCK_LAG
        return w

    def flushed(self, buffered: list[str], s: str, run: str) -> None:
        self.durable.setdefault((run, s), set()).update(buffered)
        buffered.clear()
        keys = self.durable[(run, s)]
        need = {"complete"} if PARTS[s] == 0 else {"emit", *(f"{s}/{j}" for j in range(PARTS[s]))}
        if need <= keys and run not in self.voided.get(s, set()) and run not in self.retired:
            if s not in self.done or run < self.done[s]:  # of two runs that drained it, the smaller holds it
                self.done[s] = run

    # ------------------------------------------------------------------ rules

    @rule()
    def new_run(self) -> None:
        self.crash()
        if self.ckpt is not None and self.run not in self.retired:
            self.older[self.run] = self.ckpt  # its job may go on: a straggler
        self.run = f"run{next(self.runs):03d}"
        self.ckpt = resumelog.open(self.url, run_id=self.run)

    @rule(
        s=st.sampled_from(SOURCES),
        crash_part=st.integers(0, 3),
        crash_step=st.sampled_from((*STEPS, None)),
        flush_each=st.booleans(),
    )
    def attempt(self, s: str, crash_part: int, crash_step: str | None, flush_each: bool) -> None:
        assert self.ckpt is not None
        self.ckpt.refresh()
        if self.ckpt.is_completed(s):
            return  # a pipeline skips completed sources
        self.process(self.run, self.writer(), s, crash_part, crash_step, flush_each)

    @precondition(lambda self: bool(self.older))
    @rule(data=st.data(), crash_part=st.integers(0, 3), crash_step=st.sampled_from((*STEPS, None)))
    def straggler(self, data: st.DataObject, crash_part: int, crash_step: str | None) -> None:
        """A task of an older run still alive goes on with a source it started (it does
        not look again whether a newer run completed it meanwhile), in a writer of its
        own; or starts one, if it has none."""
        run = data.draw(st.sampled_from(sorted(self.older)), label="run")
        started = sorted({src for (r, src), keys in self.durable.items() if r == run and keys})
        s = data.draw(st.sampled_from(started or SOURCES), label="source")
        self.process_straggler(run, s, crash_part, crash_step)

    def contested(self) -> list[tuple[str, str]]:
        """``(run, source)`` of the older live runs' sources another run completed."""
        return sorted((r, s) for r, s in self.durable if r in self.older and self.done.get(s) not in (None, r))

    @precondition(lambda self: bool(self.contested()))
    @rule(data=st.data(), crash_part=st.integers(0, 3), crash_step=st.sampled_from((*STEPS, None)))
    def straggler_after_another_run_completed(
        self, data: st.DataObject, crash_part: int, crash_step: str | None
    ) -> None:
        """The interesting straggler: one whose source another run completed meanwhile
        (it takes it over if it is the smaller run and drains it)."""
        run, s = data.draw(st.sampled_from(self.contested()), label="straggler")
        self.process_straggler(run, s, crash_part, crash_step)

    def process_straggler(self, run: str, s: str, crash_part: int, crash_step: str | None) -> None:
        w = self.new_writer(self.older[run], run)
        if not self.process(run, w, s, crash_part, crash_step, True, resume=True):
            w.close()

    def process(
        self,
        run: str,
        w: resumelog.Writer,
        s: str,
        crash_part: int,
        crash_step: str | None,
        flush_each: bool,
        *,
        resume: bool = False,
    ) -> bool:
        """One attempt of ``s`` in ``run`` through ``w``; whether it crashed. ``resume``:
        only the steps whose records are not durable yet (a task going on, not a retry:
        what it published before is not published again)."""
        done = self.durable.get((run, s), set()) if resume else set()
        store = output_store(self.root)
        buffered: list[str] = []
        n = PARTS[s]
        if n and "emit" not in done:
            w.emit(s)
            w.record(f"{s}/fan", s, n - 1)
            w.flush()  # the durability barrier
            self.flushed(["emit"], s, run)
        attempt = next(self.attempts)
        for j, name in enumerate(names(s)):
            key = None if n == 0 else f"{s}/{j}"
            if ("complete" if key is None else key) in done:
                continue
            p = PendingOutput(w, store, s, key, name)
            p.file.write(f"{run}|{s}|{name}|{attempt}".encode())
            crash = crash_step is not None and j == crash_part % len(names(s))
            if crash and crash_step == "spool":
                p.file.close()  # killed while writing: the spool file stays
                return self.kill(w)
            p.publish()
            if crash and crash_step == "publish":
                return self.kill(w)
            p.record(flush=False)
            buffered.append("complete" if key is None else key)
            if crash and crash_step == "record":
                return self.kill(w)
            if flush_each or j == len(names(s)) - 1:
                w.flush()
                self.flushed(buffered, s, run)
            p.discard()
            if crash and crash_step == "flush":
                return self.kill(w)
        return False

    def kill(self, w: resumelog.Writer) -> bool:
        """The worker holding ``w`` dies (:meth:`crash` if it is the current run's)."""
        if w is self.w:
            self.crash()
        w.closed = True  # never flushed again, not even at exit
        return True

    @rule(s=st.sampled_from(SOURCES))
    def reset(self, s: str) -> None:
        assert self.ckpt is not None
        if self.ckpt.reset([s]):
            # the tombstone names the completing run and every run with folded state
            voided = self.voided.setdefault(s, set())
            voided.update(r for (r, src), keys in self.durable.items() if src == s and keys)
            del self.done[s]

    @rule()
    def retire_old_runs(self) -> None:
        assert self.ckpt is not None
        self.ckpt.compact()  # fold everything first: completions of old runs are kept
        self.ckpt.compact(keep_runs=1)
        self.retired |= {r.run_id for r in self.ckpt.status().runs if r.retired}
        self.older = {r: ck for r, ck in self.older.items() if r not in self.retired}

    @precondition(lambda self: self.ckpt is not None)
    @rule()
    def gc_while_runs_live(self) -> None:
        """gc with the default grace, every object under the root aged past it: every run
        wrote within the grace, so a straggler's outputs may not go."""
        assert self.ckpt is not None
        past = time.time() - 2 * 3600
        for d, _, files in os.walk(self.root):
            for f in files:
                os.utime(os.path.join(d, f), (past, past))
        self.collect(3600.0)

    @precondition(lambda self: self.ckpt is not None)
    @rule()
    def gc(self) -> None:
        """gc with ``grace=0``: every run is taken as quiet, so every older run's job is
        over from now on (no more stragglers)."""
        self.older.clear()
        self.collect(0.0)

    def collect(self, grace: float) -> None:
        assert self.ckpt is not None
        before = committed(self.ckpt, self.root)
        res = self.ckpt.gc(grace=grace, outputs=[self.root])
        assert res.outputs[0].root == output_store(self.root).url
        assert committed(self.ckpt, self.root) == before
        sc = scan(self.ckpt, self.root, grace=grace)
        assert not sc.orphaned and not sc.staging  # everything collectable was collected

    # ------------------------------------------------------------------ invariants

    @invariant()
    def the_reader_sees_exactly_the_outputs_of_completed_sources(self) -> None:
        reader = resumelog.open(self.url, create=False)
        outs = committed(reader, self.root)
        by_source: dict[str, list[str]] = {}
        for o in outs:
            assert o.run == self.done.get(o.source), (o, self.done)  # never a voided attempt's
            by_source.setdefault(o.source, []).append(o.name)
            data = open(o.url, "rb").read().decode()
            run, src, name, _attempt = data.split("|")
            assert (run, src, name) == (o.run, o.source, o.name)  # whole, and its own
        assert set(by_source) == set(self.done)  # nothing lost, nothing extra
        for s, got in by_source.items():
            assert sorted(got) == sorted(names(s))  # each output exactly once
        for s, r in self.done.items():
            assert reader.completed_run(s) == r

    def teardown(self) -> None:
        self.crash()


def test_a_straggler_of_an_older_run_takes_a_source_over_with_every_output(tmp_path):
    """The sequence that found gc deleting outputs of a live run (2026-12-07): run000
    publishes and records part 0 of ``s 2`` and dies on part 1; run001 completes it;
    gc runs (every object past the grace, both runs alive); a task of run000 goes on
    with parts 1 and 2, so run000, the smaller run id, holds ``s 2``: its part 0 must
    still be there. (run000's writers' clocks lag: by them, run000 looks quiet.)"""
    m = OutputMachine(str(tmp_path))
    steps = [
        lambda: m.attempt(s="s 2", crash_part=1, crash_step="spool", flush_each=True),
        m.new_run,
        lambda: m.attempt(s="s 2", crash_part=0, crash_step=None, flush_each=False),
        m.gc_while_runs_live,
        lambda: m.process_straggler("run000", "s 2", crash_part=0, crash_step=None),
    ]
    for step in steps:
        step()
        m.the_reader_sees_exactly_the_outputs_of_completed_sources()
    assert m.done == {"s 2": "run000"}
    m.teardown()


def test_exactly_once_protocol_against_a_model(tmp_path):
    run_state_machine_as_test(lambda: OutputMachine(str(tmp_path)), settings=budget(0.5, steps=0.75))
