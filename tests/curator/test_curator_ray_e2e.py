"""Real NeMo Curator 1.4 pipelines under Curator's Ray executors, interrupted and
resumed, on resumelog and on Curator's own checkpointing, in the same test.

Port and extension of Curator's ``tests/backends/test_resumability_e2e.py``: a real
local Ray cluster (``ray start --head``, torn down by its process group id), the
pipeline of :mod:`resumelog.testing.curator_pipeline` (JSONL read → word-count filter
→ JSONL writer) run with ``RayActorPoolExecutor`` or ``RayDataExecutor`` by a driver
subprocess per run:

1. the writer SIGKILLs its own Ray worker at ``part-002`` and fails ``part-005``
   once (``FailedTask``);
2. the writer hangs at ``part-005``, and the test SIGKILLs the driver;
3. a clean run finishes;
4. a rerun has nothing to do: ``ValueError`` "No tasks to process" (exit status 3)
   in both with the actor pool; with Ray Data, resumelog raises the same error type
   (not Ray Data's ``UserCodeException``), while Curator's own checkpointing runs
   an empty pipeline and returns no output (exit status 0): a difference on purpose
   (the issue asks for Curator's error type whatever the executor).

For each checkpointing (``--mode resumelog``: :func:`resumelog.curator_backend.enable`;
``--mode curator``: ``checkpoint_path``, Curator's LMDB actor) the test checks that
each run reprocesses exactly the sources its checkpoint did not have complete, and
that both end with the same outputs, byte for byte. Curator's own checkpointing runs
beside resumelog on the actor pool only: its four runs under Ray Data (its rerun
returns ``[]``, exit status 0) took about 45 s of CI's 20-minute budget, and check
Curator rather than resumelog.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nemo_curator.utils.hash_utils import get_deterministic_hash
from ray_cluster import local_cluster

import resumelog
import resumelog.curator_backend as rcb
from resumelog.testing.curator_pipeline import make_inputs

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]

EXECUTORS = ("ray_actor_pool", "ray_data")
MODES = {"ray_actor_pool": ("resumelog", "curator"), "ray_data": ("resumelog",)}


@pytest.fixture(scope="module")
def cluster_env() -> Iterator[dict[str, str]]:
    with local_cluster(num_cpus=2) as env:
        yield env


class _Job:
    def __init__(self, root: Path, mode: str, inputs: Path, env: dict[str, str], executor: str) -> None:
        self.root, self.mode, self.inputs, self.executor = root, mode, inputs, executor
        self.ckpt, self.out, self.markers, self.track = (root / n for n in ("ckpt", "out", "markers", "track"))
        self.env = {**os.environ, **env}

    def cmd(self, label: str, **chaos: str) -> list[str]:
        c = [
            sys.executable,
            "-m",
            "resumelog.testing.curator_pipeline",
            "--mode",
            self.mode,
            "--executor",
            self.executor,
        ]
        c += ["--ckpt", str(self.ckpt), "--input", str(self.inputs), "--output", str(self.out)]
        c += ["--markers", str(self.markers), "--track", str(self.track), "--label", label]
        for k, v in chaos.items():
            c += [f"--{k.replace('_', '-')}", v]
        return c

    def run(self, label: str, **chaos: str) -> int:
        p = subprocess.run(self.cmd(label, **chaos), env=self.env, capture_output=True, text=True, timeout=600)
        (self.root / f"{label}.log").write_text(p.stdout + p.stderr)
        return p.returncode

    def run_and_kill_driver(self, label: str, marker: str, **chaos: str) -> int:
        log = (self.root / f"{label}.log").open("w")
        p = subprocess.Popen(self.cmd(label, **chaos), env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not (self.markers / marker).exists():
            assert p.poll() is None, (
                f"driver exited ({p.returncode}) before the hang: {(self.root / f'{label}.log').read_text()[-3000:]}"
            )
            assert time.monotonic() < deadline, "the hang marker never appeared"
            time.sleep(0.2)
        os.kill(p.pid, signal.SIGKILL)
        rc = p.wait()
        log.close()
        return rc

    def completed(self) -> set[str]:
        if self.mode == "resumelog":
            return set(resumelog.open(self.ckpt, create=False).completed)
        # Curator's deltas go to its detached actor fire-and-forget: after a SIGKILLed
        # driver the actor may still be applying them; wait until its files settle
        done, deadline = rcb.curator_completed(self.ckpt), time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(2.0)
            again = rcb.curator_completed(self.ckpt)
            if again == done:
                break
            done = again
        return done

    def seen(self, label: str) -> set[str]:
        if not self.track.exists():
            return set()
        return {f for lab, f in (ln.split("\t") for ln in self.track.read_text().splitlines()) if lab == label}

    def outputs(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(self.out.glob("*.jsonl"))}


def _scenario(job: _Job, source_of: dict[str, str]) -> list[set[str]]:
    """Runs 1-4 of the module docstring for one checkpointing; returns the files
    complete after runs 1 and 2."""
    every = set(source_of.values())
    job.root.mkdir()

    def done_files() -> set[str]:
        return {source_of[s] for s in job.completed()}

    mode = job.mode
    # run 1: a worker is SIGKILLed mid-write, a source fails once
    rc1 = job.run("run1", kill_worker="part-002.jsonl", fail_once="part-005.jsonl")
    after1 = done_files()
    assert rc1 != 0 or "part-002.jsonl" in after1, (mode, rc1)  # aborted, or Ray retried the actor
    assert "part-005.jsonl" not in after1, mode  # FailedTask keeps its source pending
    # run 2: the driver is SIGKILLed while the writer hangs on part-005
    rc2 = job.run_and_kill_driver("run2", "hang-part-005.jsonl", hang="part-005.jsonl")
    assert rc2 == -signal.SIGKILL
    assert job.seen("run2") <= every - after1, mode  # never redoes a completed source
    after2 = done_files()
    assert after1 <= after2, mode
    assert "part-005.jsonl" not in after2, mode
    # run 3: clean; it must redo exactly what the checkpoint did not have complete
    assert job.run("run3") == 0, (job.root / "run3.log").read_text()[-3000:]
    assert job.seen("run3") == every - after2, mode
    assert done_files() == every, mode
    # run 4: nothing to do -> Curator's error type (exit status 3); Curator's own
    # checkpointing, not run under Ray Data here, would return nothing there (0)
    assert job.run("run4") == 3, (job.root / "run4.log").read_text()[-3000:]
    assert job.seen("run4") == set()
    return [after1, after2]


@pytest.mark.parametrize("executor", EXECUTORS)
def test_interrupted_and_resumed_like_curator(tmp_path: Path, cluster_env: dict[str, str], executor: str) -> None:
    inputs = tmp_path / "in"
    files = make_inputs(inputs, n_files=8)
    source_of = {get_deterministic_hash([str(p)]): p.name for p in files}
    modes = MODES[executor]
    jobs = {m: _Job(tmp_path / m, m, inputs, cluster_env, executor) for m in modes}
    history = {m: _scenario(job, source_of) for m, job in jobs.items()}  # one after the other, one cluster

    a = jobs["resumelog"]
    assert len(a.outputs()) == len(source_of)
    if "curator" in jobs:
        assert a.outputs() == jobs["curator"].outputs()  # same file names (deterministic), same bytes
    for mode in modes:
        after1, after2 = history[mode]
        assert {"part-002.jsonl", "part-005.jsonl"} - after1 >= {"part-005.jsonl"}, mode
        assert "part-005.jsonl" not in after2, mode
