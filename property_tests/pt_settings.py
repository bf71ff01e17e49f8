"""Hypothesis profiles for the property suite, and its fixtures.

Profiles (``HYPOTHESIS_PROFILE`` selects one; with ``CI`` set the default is ``ci``):

``default``
    local development: random seeds, moderate example counts.
``ci``
    deterministic (``derandomize=True``, no example database), bounded so that the
    whole suite runs in under 4 minutes on 2 cores.
``ci-paths``
    ``ci`` with half the examples: ``.ci/run``'s extra runs of the fold tests on the
    fold's other paths (the suite runs them with ``ci`` on the default path).
``deep``
    a local soak: many more examples and longer state machine runs.

Deadlines are off in every profile: CI machines are slow and a state machine step
does real I/O. Tests scale their own budgets from the active profile with
:func:`budget`.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    print_blob=True,
)

settings.register_profile("default", max_examples=100, stateful_step_count=40, **_COMMON)
settings.register_profile(
    "ci",
    max_examples=60,
    stateful_step_count=40,
    derandomize=True,
    database=None,
    print_blob=False,
    **{k: v for k, v in _COMMON.items() if k != "print_blob"},
)
# the fold's other paths in .ci/run (the same tests again with every batch through the
# NumPy path, with and without the kernels, and the pure-Python reference): the ci
# profile's first examples (derandomized alike), half as many
settings.register_profile("ci-paths", settings.get_profile("ci"), max_examples=30)
settings.register_profile("deep", max_examples=2000, stateful_step_count=100, **_COMMON)

PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "default")
settings.load_profile(PROFILE)


def budget(scale: float = 1.0, *, steps: float = 1.0) -> settings:
    """Settings of the active profile with ``max_examples`` (and the state machine
    step count) scaled, at least 1 example / 5 steps."""
    current = settings()
    return settings(
        current,
        max_examples=max(1, int(current.max_examples * scale)),
        stateful_step_count=max(5, int(current.stateful_step_count * steps)),
    )
