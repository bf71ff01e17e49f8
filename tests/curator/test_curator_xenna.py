"""The executor scenarios of ``test_curator_executors.py`` under Curator's
``XennaExecutor`` (cosmos-xenna 0.2.0) with the resumelog drop-in.

Xenna needs more than Curator's ``--no-deps`` install gives: cosmos-xenna's own
dependencies (``cattrs``, ``obstore``, ``portpicker``, ``pulp``, ``tabulate``) and
``ray[default]``, because its pipeline monitor lists actors through Ray's state API,
which is served by the Ray dashboard. Installing ``ray[default]`` in the test
environment would start the full dashboard agent in every Ray cluster of the suite,
so these live in a separate virtualenv that sees the main one
(``--system-site-packages``): ``.ci/xenna-venv`` (made by ``.ci/run``) or the
interpreter named by ``$RESUMELOG_XENNA_PYTHON``. Without it the tests are skipped
with the import error. The cluster runs that interpreter, with its dashboard on a
free loopback port and ``RAY_MAX_LIMIT_FROM_API_SERVER=40000`` (the limit Curator
asks the state API for; Ray's default maximum is 10000).

Xenna runs a pipeline only if the stages' CPUs fit its budget (95 % of the cluster's
CPUs less one): the driver's stages ask for 0.25 CPU each.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from curator_support import check_empty_output_parity, check_single_stage

from resumelog.testing.ray import head_node

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]

_VENV = Path(__file__).resolve().parents[2] / ".ci" / "xenna-venv" / "bin" / "python"
XENNA_PYTHON = os.environ.get("RESUMELOG_XENNA_PYTHON") or (str(_VENV) if _VENV.exists() else sys.executable)
_PROBE = (
    "import cosmos_xenna.pipelines.v1, aiohttp_cors, opencensus; from nemo_curator.backends.xenna import XennaExecutor"
)


def _missing() -> str | None:
    p = subprocess.run([XENNA_PYTHON, "-c", _PROBE], capture_output=True, text=True, timeout=300)
    if p.returncode == 0:
        return None
    last = (p.stderr.strip().splitlines() or ["?"])[-1]
    return f"XennaExecutor cannot run with {XENNA_PYTHON}: {last} (see this module's docstring)"


_why = _missing()
if _why:
    pytestmark.append(pytest.mark.skip(reason=_why))


@pytest.fixture(scope="module")
def xenna_env() -> Iterator[dict[str, str]]:
    with head_node(
        num_cpus=2, python=XENNA_PYTHON, dashboard=True, env={"RAY_MAX_LIMIT_FROM_API_SERVER": "40000"}
    ) as env:
        yield env


def test_empty_output_parity_xenna(tmp_path: Path, xenna_env: dict[str, str]) -> None:
    # resumelog's runs only: Curator's own (no checkpointing) give PR #1931's outcomes,
    # asserted as recorded; test_curator_executors.py runs them live on Ray Data (CI time)
    check_empty_output_parity(xenna_env, tmp_path, "xenna", XENNA_PYTHON, reference=False)


def test_single_stage_pipeline_xenna(tmp_path: Path, xenna_env: dict[str, str]) -> None:
    check_single_stage(xenna_env, tmp_path, "xenna", XENNA_PYTHON)
