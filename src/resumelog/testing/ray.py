"""Start a private local Ray cluster that ignores any other cluster on the host and
survives a busy machine: used by every Ray test, example and benchmark of resumelog.

::

    from resumelog.testing.ray import init_local_ray

    gcs_address = init_local_ray(num_cpus=2, log_to_driver=False)
    ...
    ray.shutdown()

A plain ``ray.init(num_cpus=2)`` *joins* an existing cluster when there is one: the one
named by ``$RAY_ADDRESS``, or the one that ``ray start --head`` recorded in
``/tmp/ray/ray_current_cluster``. It then fails with ``When connecting to an existing
cluster, num_cpus and num_gpus must not be provided`` (or, without ``num_cpus``, runs on
somebody else's cluster). :func:`init_local_ray` always passes ``address="local"``,
which starts a new cluster whatever ``$RAY_ADDRESS`` and the address file say (its
raylet and workers on 127.0.0.1).

On a loaded host a local start can fail where an idle one succeeds:

* the driver waits a fixed 30 s (not configurable in Ray 2.60) for its raylet to
  register with the GCS, then raises ``The current node timed out during startup``;
  :func:`init_local_ray` shuts down and starts again, up to ``attempts`` times;
* workers that take more than 60 s to register are killed, the GCS health check marks a
  raylet dead after 5 missed 10 s probes, and GCS clients give up reconnecting after
  60 s; :data:`SYSTEM_CONFIG` raises these limits for the clusters it starts.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

__all__ = ["STARTUP_ERRORS", "SYSTEM_CONFIG", "head_node", "init_local_ray"]

log = logging.getLogger(__name__)

#: Ray system settings for the clusters :func:`init_local_ray` starts (Ray's defaults in
#: comments): generous limits so that a cluster starting on a busy machine comes up.
SYSTEM_CONFIG: dict[str, Any] = {
    "worker_register_timeout_seconds": 300,  # 60
    "gcs_rpc_server_reconnect_timeout_s": 300,  # 60
    "gcs_server_request_timeout_seconds": 300,  # 60
    "health_check_timeout_ms": 60_000,  # 10 000
    "health_check_failure_threshold": 20,  # 5
}

#: Substrings of the errors of a local start that a second attempt can cure.
STARTUP_ERRORS = (
    "timed out during startup",
    "Timed out after",
    "Failed to connect to GCS",
    "failed to start",
)


def init_local_ray(*, num_cpus: int = 2, attempts: int = 3, **init_kwargs: Any) -> str:
    """Start a new local Ray cluster for this process; return its GCS address.

    Parameters
    ----------
    num_cpus
        CPUs of the new cluster.
    attempts
        How many times to try the start when it fails with one of :data:`STARTUP_ERRORS`
        (other errors are raised at once).
    **init_kwargs
        More ``ray.init`` arguments (``log_to_driver``, ``logging_level``,
        ``object_store_memory``, ...). ``address`` is not accepted: the point is
        ``address="local"``. ``_system_config`` entries override :data:`SYSTEM_CONFIG`.

    Raises
    ------
    RuntimeError
        Ray is already initialised in this process (call ``ray.shutdown()`` first).
    """
    import ray

    if "address" in init_kwargs:
        raise TypeError("init_local_ray always starts a new cluster (address='local'); do not pass address")
    if ray.is_initialized():
        raise RuntimeError("Ray is already initialised in this process")
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "_node_ip_address": "127.0.0.1",
        **init_kwargs,
        "address": "local",
        "num_cpus": num_cpus,
        "_system_config": {**SYSTEM_CONFIG, **init_kwargs.get("_system_config", {})},
    }
    for attempt in range(1, attempts + 1):
        try:
            ray.init(**kwargs)
        except Exception as e:
            if attempt == attempts or not any(s in str(e) for s in STARTUP_ERRORS):
                raise
            log.warning("local Ray start failed (attempt %d/%d), retrying: %s", attempt, attempts, e)
            ray.shutdown()
            time.sleep(2.0 * attempt)
        else:
            break
    return str(ray.get_runtime_context().gcs_address)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def head_node(
    num_cpus: int = 2,
    timeout: float = 120.0,
    *,
    python: str | None = None,
    dashboard: bool = False,
    env: dict[str, str] | None = None,
) -> Iterator[dict[str, str]]:
    """Start a Ray head node in its own process group (``ray start --head --block``),
    for drivers in other processes; stop it on exit by that group's id.

    Every port is chosen free and the node has a private temp dir (removed on exit),
    so no other cluster's address file is touched. Yields the environment a driver needs to join
    it (``RAY_ADDRESS``; Ray 2.60's token authentication turned off, as the cluster
    is private to the caller; plus ``env``).

    ``python`` runs the node (default: this interpreter), e.g. a virtualenv's with
    more packages; ``dashboard`` starts Ray's dashboard on a free loopback port (its
    state API needs ``ray[default]``); ``env`` is added to the node's environment
    and to the one yielded.

    The node and its drivers stay on loopback: ``ray start`` replaces
    ``--node-ip-address=127.0.0.1`` by the host's address unless Ray's multi-node
    switch is off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: the node IP is then the
    loopback address; only other nodes joining, which nothing here does, is refused).
    """
    temp = tempfile.mkdtemp(prefix="rlray-", dir="/tmp")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    python = python or sys.executable
    dash = (
        ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={_free_port()}"]
        if dashboard
        else ["--include-dashboard=false"]
    )
    cmd = [
        python, "-m", "ray.scripts.scripts", "start", "--head", "--block",
        "--node-ip-address=127.0.0.1", f"--port={port}", f"--num-cpus={num_cpus}",
        *dash, f"--temp-dir={temp}", "--disable-usage-stats",
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--dashboard-agent-grpc-port={_free_port()}", f"--metrics-export-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}", f"--node-manager-port={_free_port()}",
        f"--object-manager-port={_free_port()}",
    ]  # fmt: skip
    log = open(os.path.join(temp, "ray-start.log"), "wb")
    node_env = {
        "RAY_AUTH_MODE": "disabled",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        # no graceful drain on SIGTERM (Ray 2.60 waits up to 30 s for a node nobody
        # else uses: every module with a cluster paid it at teardown)
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        **(env or {}),
    }
    driver_env = {**node_env, "RAY_ADDRESS": address}
    proc = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **node_env},
    )
    try:
        probe = [python, "-c", f"import ray; ray.init(address={address!r}); ray.shutdown()"]
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {proc.returncode}: {open(log.name).read()[-2000:]}")
            with suppress(subprocess.TimeoutExpired):
                if (
                    subprocess.run(probe, capture_output=True, timeout=30, env={**os.environ, **driver_env}).returncode
                    == 0
                ):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the local Ray cluster did not come up")
            time.sleep(1.0)
        yield driver_env
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # ray start --block stops its cluster
        try:
            proc.wait(timeout=60 if dashboard else 30)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        _kill_session(proc.pid)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)  # (the node's sessions and logs: errors above quote the log)


def _kill_session(sid: int) -> None:
    """SIGKILL every process left in session ``sid`` (the head node's: ``ray start``
    was its leader). Ray's workers run in process groups of their own, so stopping the
    head's group could leave one (``ray::StageWorker``) running after the cluster; they
    all stay in the session. Linux only (``/proc``); elsewhere nothing."""
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if len(fields) > 3 and int(fields[3]) == sid:  # (state, ppid, pgrp, session, ...)
            with suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry), signal.SIGKILL)
