"""A real local Ray cluster for the Curator end-to-end tests: ``ray start --head
--block`` on 127.0.0.1 in its own process group, torn down by that group's id."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def local_cluster(num_cpus: int = 2, timeout: float = 120.0) -> Iterator[dict[str, str]]:
    """Start a head node (every port chosen free, a private temp dir so that no
    other cluster's address file is touched); yield the environment a driver needs
    to join it (``RAY_ADDRESS``; Ray 2.60's token authentication turned off, as the
    cluster is private to the test).

    ``ray start`` replaces ``--node-ip-address=127.0.0.1`` by the host's address
    (``services.resolve_ip_for_localhost``), so the node listens there.
    """
    temp = tempfile.mkdtemp(prefix="rlray-", dir="/tmp")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    cmd = [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
        "--node-ip-address=127.0.0.1", f"--port={port}", f"--num-cpus={num_cpus}",
        "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats",
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--dashboard-agent-grpc-port={_free_port()}", f"--metrics-export-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}", f"--node-manager-port={_free_port()}",
        f"--object-manager-port={_free_port()}",
    ]  # fmt: skip
    log = open(os.path.join(temp, "ray-start.log"), "wb")
    env = {"RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": address}
    proc = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    try:
        probe = [sys.executable, "-c", f"import ray; ray.init(address={address!r}); ray.shutdown()"]
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {proc.returncode}: {open(log.name).read()[-2000:]}")
            with suppress(subprocess.TimeoutExpired):
                if subprocess.run(probe, capture_output=True, timeout=30, env={**os.environ, **env}).returncode == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the local Ray cluster did not come up")
            time.sleep(1.0)
        yield env
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # ray start --block stops its cluster
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
