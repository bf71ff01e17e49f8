"""The exactly-once output protocol against a model, with a crash at any step.

A state machine processes sources in runs. Each source has one output of the whole
source (``complete``) or several outputs of sink tasks (``-1`` records after a
flushed emission and fan-out). An attempt runs the protocol step by step
(spool -> publish -> record -> flush) and may crash after any step: the writer's
buffer is lost and the spool file stays behind; the attempt may be retried in the
same run (a new writer) or in a new run. Operators reset sources, retire runs and
collect garbage. After every step the reader helper must show, for exactly the
sources the model says are complete, exactly their outputs, once each, from the run
that completed them, whole.
"""

from __future__ import annotations

import itertools
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
            self.w = self.ckpt.writer(f"w{next(self.attempts)}")
        return self.w

    def flushed(self, buffered: list[str], s: str) -> None:
        self.durable.setdefault((self.run, s), set()).update(buffered)
        buffered.clear()
        keys = self.durable[(self.run, s)]
        need = {"complete"} if PARTS[s] == 0 else {"emit", *(f"{s}/{j}" for j in range(PARTS[s]))}
        if (
            s not in self.done
            and need <= keys
            and self.run not in self.voided.get(s, set())
            and self.run not in self.retired
        ):
            self.done[s] = self.run

    # ------------------------------------------------------------------ rules

    @rule()
    def new_run(self) -> None:
        self.crash()
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
        w = self.writer()
        store = output_store(self.root)
        buffered: list[str] = []
        n = PARTS[s]
        if n:
            w.emit(s)
            w.record(f"{s}/fan", s, n - 1)
            w.flush()  # the durability barrier
            self.flushed(["emit"], s)
        attempt = next(self.attempts)
        for j, name in enumerate(names(s)):
            key = None if n == 0 else f"{s}/{j}"
            p = PendingOutput(w, store, s, key, name)
            p.file.write(f"{self.run}|{s}|{name}|{attempt}".encode())
            crash = crash_step is not None and j == crash_part % len(names(s))
            if crash and crash_step == "spool":
                p.file.close()  # killed while writing: the spool file stays
                return self.crash()
            p.publish()
            if crash and crash_step == "publish":
                return self.crash()
            p.record(flush=False)
            buffered.append("complete" if key is None else key)
            if crash and crash_step == "record":
                return self.crash()
            if flush_each or j == len(names(s)) - 1:
                w.flush()
                self.flushed(buffered, s)
            p.discard()
            if crash and crash_step == "flush":
                return self.crash()

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

    @precondition(lambda self: self.ckpt is not None)
    @rule()
    def gc(self) -> None:
        assert self.ckpt is not None
        before = committed(self.ckpt, self.root)
        res = self.ckpt.gc(grace=0, outputs=[self.root])
        assert res.outputs[0].root == output_store(self.root).url
        assert committed(self.ckpt, self.root) == before
        sc = scan(self.ckpt, self.root)
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


def test_exactly_once_protocol_against_a_model(tmp_path):
    run_state_machine_as_test(lambda: OutputMachine(str(tmp_path)), settings=budget(0.5, steps=0.75))
