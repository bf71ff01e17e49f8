"""The pipeline state machine on the local store and on a real S3 server (smaller
budgets: every step does real file or HTTP I/O).

Only the local store can leave a torn segment behind, so the torn-tail rules run here.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test
from pt_settings import budget

from resumelog import compactor, journal, paths
from resumelog.errors import CorruptSegment
from resumelog.journal import Writer
from resumelog.storage import LocalStore
from resumelog.testing.stateful import PipelineMachine, local_store_factory, object_store_factory


def test_pipeline_machine_on_local_store(tmp_path):
    run_state_machine_as_test(
        lambda: PipelineMachine(local_store_factory(str(tmp_path))), settings=budget(0.25, steps=0.75)
    )


@pytest.mark.s3
def test_pipeline_machine_on_s3(s3_server):
    factory = object_store_factory("s3://resumelog-prop/machine", s3_server.storage_options())
    run_state_machine_as_test(lambda: PipelineMachine(factory), settings=budget(0.05, steps=0.5))


# --------------------------------------------------------------------------- torn segments


@given(n=st.integers(1, 5), torn=st.data(), fraction=st.floats(0, 1))
@budget(0.5)
def test_only_a_torn_last_segment_is_tolerated(tmp_path_factory, n, torn, fraction):
    """A truncated *last* segment of a stream is a torn tail (skipped, an anomaly); a
    truncated segment anywhere else raises ``CorruptSegment`` and is never skipped."""
    store = LocalStore(str(tmp_path_factory.mktemp("torn")), fsync=False)
    w = Writer(store, "w", "r")
    for i in range(n):
        w.complete(f"s{i}")
        w.flush()
    journal._unregister(w)
    i = torn.draw(st.integers(0, n - 1), label="torn segment")
    key = paths.segment_name("w", w.incarnation, i)
    path = store._path(key)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: min(len(data) - 1, int(len(data) * fraction))])
    if i == n - 1:
        state = compactor.load(store).state
        assert sorted(state.iter_completed()) == [f"s{j}" for j in range(n - 1)]
        assert state.anomaly_counts["torn_tail"] == 1
    else:
        with pytest.raises(CorruptSegment) as info:
            compactor.load(store)
        assert key in str(info.value)
