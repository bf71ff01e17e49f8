"""Ray tests and examples start their own local cluster, also when another Ray cluster
runs on the host (issue 21).

The fixture starts a *foreign* head with ``ray start --head`` on 127.0.0.1 and its own
GCS port, in a private ``RAY_TMPDIR``: a process with that ``RAY_TMPDIR`` sees the
foreign cluster exactly as every process on a host sees one started in ``/tmp/ray``
(through ``ray_current_cluster``), without disturbing other Ray users of this machine.
The checks run in subprocesses with that environment.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("ray")

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 180.0


@dataclass
class ForeignCluster:
    gcs_address: str
    env: dict[str, str]  # an environment in which the foreign cluster is the host's current one


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def foreign() -> Iterator[ForeignCluster]:
    tmp = tempfile.mkdtemp(prefix="rlf", dir="/tmp")  # short: Ray's unix sockets live below it
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = tmp
    ray_cli = str(Path(sys.executable).with_name("ray"))
    cmd = [
        *([ray_cli] if os.path.exists(ray_cli) else [sys.executable, "-m", "ray.scripts.scripts"]),
        "start",
        "--head",
        "--block",
        f"--port={_free_port()}",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=1",
        "--disable-usage-stats",
        "--include-dashboard=false",
    ]
    log = open(Path(tmp, "head.log"), "wb")  # closed below
    # no graceful drain on SIGTERM: Ray 2.60 waits up to 30 s for a node nobody else
    # uses (as in resumelog.testing.ray.head_node); only the head's environment
    head_env = {**env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    proc = subprocess.Popen(cmd, env=head_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address_file = Path(tmp, "ray", "ray_current_cluster")
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (address_file.exists() and address_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("foreign Ray head did not start:\n" + Path(tmp, "head.log").read_text()[-3000:])
            time.sleep(0.5)
        yield ForeignCluster(address_file.read_text().strip(), env)
    finally:
        # the head and everything it started (GCS, raylet, workers) are in its process group
        for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def run_py(code: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)


def test_plain_ray_init_would_join_the_foreign_cluster(foreign: ForeignCluster) -> None:
    """The control: the environment really has a current cluster that ``ray.init`` joins."""
    out = run_py("import ray; ray.init(num_cpus=1, include_dashboard=False)", foreign.env)
    assert out.returncode != 0
    assert "When connecting to an existing cluster, num_cpus and num_gpus must not be provided" in out.stderr


_OWN_CLUSTER = """
import os, ray
from resumelog.testing.ray import init_local_ray
gcs = init_local_ray(num_cpus=1, log_to_driver=False)
assert gcs == ray.get_runtime_context().gcs_address
pids = ray.get([ray.remote(lambda: os.getpid()).remote() for _ in range(2)])
print("gcs", gcs, "cpus", int(ray.cluster_resources()["CPU"]), "ran", len(pids))
ray.shutdown()
"""


@pytest.mark.parametrize("via", ["address-file", "RAY_ADDRESS"])
def test_init_local_ray_starts_its_own_cluster(foreign: ForeignCluster, via: str) -> None:
    env = dict(foreign.env)
    if via == "RAY_ADDRESS":
        env["RAY_ADDRESS"] = foreign.gcs_address
    out = run_py(_OWN_CLUSTER, env)
    assert out.returncode == 0, out.stdout + out.stderr
    words = out.stdout.split()
    gcs = words[words.index("gcs") + 1]
    assert gcs != foreign.gcs_address
    assert words[words.index("cpus") + 1] == "1" and words[words.index("ran") + 1] == "2"


def test_ray_tasks_example_beside_a_foreign_cluster(foreign: ForeignCluster, tmp_path: Path) -> None:
    env = {k: v for k, v in foreign.env.items() if k not in ("RESUMELOG_RUN_ID", "SLURM_ARRAY_JOB_ID")}
    env["RAY_ADDRESS"] = foreign.gcs_address
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "ray_tasks.py"), "--workdir", str(tmp_path), "--sources", "6"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "complete 6/6, outputs 6/6" in out
