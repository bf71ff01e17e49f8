"""The pipeline state machine on the memory store (the main search)."""

from __future__ import annotations

from hypothesis.stateful import run_state_machine_as_test
from pt_settings import budget

from resumelog.testing.stateful import PipelineMachine, memory_store_factory


def test_pipeline_machine_on_memory_store():
    run_state_machine_as_test(lambda: PipelineMachine(memory_store_factory()), settings=budget(1.0))
