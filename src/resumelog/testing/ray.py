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
import time
from typing import Any

__all__ = ["STARTUP_ERRORS", "SYSTEM_CONFIG", "init_local_ray"]

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
