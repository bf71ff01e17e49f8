"""The pipeline state machine on the memory store (the main search)."""

from __future__ import annotations

from hypothesis.stateful import run_state_machine_as_test
from pt_settings import budget

from resumelog.testing.stateful import PipelineMachine, memory_store_factory


def test_pipeline_machine_on_memory_store():
    run_state_machine_as_test(lambda: PipelineMachine(memory_store_factory()), settings=budget(1.0))


def test_pipeline_machine_folding_in_rounds(monkeypatch):
    """The same machine with every fold evaluated every 3 records (as long journal tails
    are, to bound memory): provisional completions that a later record of the same fold
    reopens must leave safety and convergence intact."""
    from resumelog import compactor

    monkeypatch.setattr(compactor, "ROUND_RECORDS", 3)
    run_state_machine_as_test(lambda: PipelineMachine(memory_store_factory()), settings=budget(0.5))
