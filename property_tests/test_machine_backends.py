"""The pipeline state machine on the local store and on a real S3 server (smaller
budgets: every step does real file or HTTP I/O).

Only the local store can leave a torn segment behind, so the torn-tail rules run here.
"""

from __future__ import annotations

import pytest
from hypothesis.stateful import run_state_machine_as_test
from pt_settings import budget

from resumelog.testing.stateful import PipelineMachine, local_store_factory, object_store_factory


def test_pipeline_machine_on_local_store(tmp_path):
    run_state_machine_as_test(
        lambda: PipelineMachine(local_store_factory(str(tmp_path))), settings=budget(0.25, steps=0.75)
    )


@pytest.mark.s3
def test_pipeline_machine_on_s3(s3_server):
    factory = object_store_factory("s3://resumelog-prop/machine", s3_server.storage_options())
    run_state_machine_as_test(lambda: PipelineMachine(factory), settings=budget(0.05, steps=0.5))
