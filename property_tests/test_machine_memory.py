"""The pipeline state machine on the memory store (the main search)."""

from __future__ import annotations

import pytest
from hypothesis.stateful import run_state_machine_as_test
from pt_settings import budget

from resumelog.testing.stateful import PipelineMachine, memory_store_factory


def test_pipeline_machine_on_memory_store():
    run_state_machine_as_test(lambda: PipelineMachine(memory_store_factory()), settings=budget(1.0))


@pytest.mark.parametrize("round_records", [1, 2, 3])
def test_pipeline_machine_folding_in_rounds(monkeypatch, round_records):
    """The same machine with every fold evaluated every 1-3 records (as long journal
    tails are, to bound memory): provisional completions that a later record of the
    same fold reopens, or that a segment lost later in the same fold voids, must leave
    safety and convergence intact."""
    from resumelog import compactor

    monkeypatch.setattr(compactor, "ROUND_RECORDS", round_records)
    run_state_machine_as_test(lambda: PipelineMachine(memory_store_factory()), settings=budget(0.3))
