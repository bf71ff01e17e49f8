"""NeMo Curator 1.4 on resumelog vs on Curator's own LMDB actor: checkpoint-path
throughput of a real pipeline, printed as JSON lines (never asserted in tests).

    python benchmarks/bench_curator.py [--quick | --smoke] [--files F] [--docs D] [--repeat K]

The pipeline of :mod:`resumelog.testing.curator_pipeline` (Curator's ``JsonlReader``,
one file per source → ``ScoreFilter(WordCountFilter)`` → ``JsonlWriter``) over F JSONL
files of D documents, with ``RayActorPoolExecutor`` on a local Ray cluster (a head node
with 2 CPUs started here, ``RAY_ADDRESS`` set for every driver), one driver process
per run, in three modes interleaved K times (fresh checkpoint and output each time):

* ``none``      no checkpointing (``pipeline.run(executor)``);
* ``resumelog`` :func:`resumelog.curator_backend.enable` on a local directory, then
  ``pipeline.run(executor)``;
* ``curator``   ``pipeline.run(executor, checkpoint_path=...)``: Curator's detached
  LMDB actor, created and shut down by ``run``.

Each row: ``seconds`` of ``Pipeline.run`` inside the driver (``enable`` included; Python
start-up and imports excluded), ``docs_per_s`` and ``sources_per_s``, and the overhead
over ``none``. Then a rerun with nothing to do (every source complete) per mode.
Needs ``nemo_curator`` importable (CI installs it with ``--no-deps``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Any

from resumelog.testing.ray import head_node

MODES = ("none", "resumelog", "curator")


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def drive(env: dict[str, str], mode: str, ckpt: str, inp: str, out: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "resumelog.testing.curator_pipeline", "--mode", mode]
    cmd += ["--ckpt", ckpt, "--input", inp, "--output", out]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if p.returncode not in (0, 3):
        raise RuntimeError(f"{mode} driver failed ({p.returncode}): {p.stderr[-2000:]}")
    if p.returncode == 3:
        return {"nothing_to_do": True}
    doc: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    return doc


def main() -> int:
    ap = argparse.ArgumentParser()
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true")
    size.add_argument("--smoke", action="store_true")
    ap.add_argument("--files", type=int)
    ap.add_argument("--docs", type=int)
    ap.add_argument("--repeat", type=int)
    a = ap.parse_args()
    files, docs, repeat = (8, 20, 1) if a.smoke else (64, 500, 3) if a.quick else (256, 2000, 3)
    files, docs, repeat = a.files or files, a.docs or docs, a.repeat or repeat

    from resumelog.testing.curator_pipeline import make_inputs

    work = tempfile.mkdtemp(prefix="bench-curator-")
    try:
        inp = os.path.join(work, "in")
        make_inputs(inp, n_files=files, docs_per_file=docs)
        with head_node(num_cpus=2) as renv:
            env = {**os.environ, **renv}
            times: dict[str, list[float]] = {m: [] for m in MODES}
            for k in range(repeat):
                for mode in MODES:  # interleaved: a shared machine disturbs every mode alike
                    ck, out = (os.path.join(work, f"{x}-{mode}-{k}") for x in ("ckpt", "out"))
                    r = drive(env, mode, ck, inp, out)
                    times[mode].append(r["seconds"])
                    if mode != "none":
                        again = drive(env, mode, ck, inp, out + "-again")
                        emit(bench="curator_rerun", system=mode, rep=k, nothing_to_do=again.get("nothing_to_do", False))
            base = statistics.median(times["none"])
            for mode in MODES:
                med = statistics.median(times[mode])
                emit(
                    bench="curator_pipeline",
                    system=mode,
                    files=files,
                    docs=files * docs,
                    repeat=repeat,
                    seconds_median=round(med, 3),
                    seconds_min=round(min(times[mode]), 3),
                    docs_per_s=round(files * docs / med, 1),
                    sources_per_s=round(files / med, 2),
                    overhead_vs_none=round(med / base - 1, 3),
                    executor="RayActorPoolExecutor",
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
