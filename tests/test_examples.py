"""Every script in ``examples/`` runs at small size and does what its docstring says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import resumelog

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(script: str, *args: object, rc: int = 0) -> str:
    """Run an example; check its exit code; return stdout + stderr."""
    env = {k: v for k, v in os.environ.items() if k not in ("RESUMELOG_RUN_ID", "SLURM_ARRAY_JOB_ID")}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == rc, out
    return out


def number(pattern: str, text: str) -> int:
    m = re.search(pattern, text)
    assert m is not None, f"{pattern!r} not in:\n{text}"
    return int(m.group(1))


def test_every_example_has_a_docstring_and_a_readme_line() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    for p in sorted(EXAMPLES.glob("*.py")):
        assert p.read_text().startswith('"""'), p.name
        assert p.name in readme, p.name


# ----------------------------------------------------------------- quickstart


def test_quickstart_interrupted_then_resumed_then_skips_all(tmp_path: Path) -> None:
    out = run("quickstart.py", "--workdir", tmp_path, "--stop-after", 2)
    assert "skipped 0 already complete" in out and "processed 2:" in out and "complete 2/5" in out
    out = run("quickstart.py", "--workdir", tmp_path)
    assert "skipped 2 already complete: doc-000.txt doc-001.txt" in out
    assert "processed 3: doc-002.txt doc-003.txt doc-004.txt" in out and "complete 5/5" in out
    out = run("quickstart.py", "--workdir", tmp_path)
    assert "skipped 5 already complete" in out and "processed 0" in out and "nothing to do" in out
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == [f"doc-{i:03d}.txt.count" for i in range(5)]


# ----------------------------------------------------------------- multiprocess


def test_multiprocess_sigkilled_task_then_rerun_completes_the_rest(tmp_path: Path) -> None:
    n = 18  # 6 per task; task 0 is killed after 3, while it sleeps 0.1 s before each of the others
    out = run("multiprocess.py", "--workdir", tmp_path, "--workers", 3, "--sources", n, "--delay", 0.1)
    assert "SIGKILLed task 0" in out
    done1 = number(r"phase 1: completed (\d+)/", out)
    lost = number(r"lost with the kill\): (\d+)", out)
    skipped2 = number(r"phase 2: skipped (\d+)", out)
    processed2 = number(r"processed (\d+), redone", out)
    redone = number(r"redone (\d+)", out)
    assert done1 < n  # the killed task left work behind
    assert skipped2 == done1 and done1 + processed2 == n
    assert redone == lost  # exactly the processed-but-unflushed sources are redone
    assert f"complete {n}/{n}, outputs {n}/{n}" in out
    # the phase-2 tasks say what they skipped
    assert re.search(r"\[job \d+ task 1\] skipped 6 already complete, 0 to do", out)
    ck = resumelog.open(str(tmp_path / "checkpoint"))
    assert len(ck.completed) == n


# ----------------------------------------------------------------- curator pipeline


def test_curator_pipeline_reruns_until_every_source_completes_once(tmp_path: Path) -> None:
    out = run("curator_pipeline.py", "--workdir", tmp_path, "--sources", 12, "--fail-rate", 0.4, "--seed", 1)
    attempts = re.findall(r"attempt (\d+) \(run", out)
    assert len(attempts) >= 2 and "failed, will rerun" in out
    assert "duplicates 0, missing 0, extra 0" in out
    assert "every source completed exactly once; every output written exactly once" in out
    assert re.search(r"rerun \(run \w+\): requested 12, skipped 12 already complete, processed 0", out)
    assert "nothing to do" in out
    # processed over all attempts == failures retried + 12 completions, each source completed once
    processed = [int(x) for x in re.findall(r"processed (\d+), completed", out)]
    completed = [int(x) for x in re.findall(r"completed (\d+), failed", out)]
    assert sum(completed) == 12 and sum(processed) > 12
    # a later invocation does nothing
    again = run("curator_pipeline.py", "--workdir", tmp_path, "--sources", 12, "--seed", 1)
    assert "attempt 1" in again and "skipped 12 already complete, processed 0" in again


def test_curator_pipeline_one_attempt_per_invocation(tmp_path: Path) -> None:
    args = ("--workdir", tmp_path, "--sources", 8, "--fail-rate", 0.5, "--seed", 3, "--max-attempts", 1)
    for _ in range(30):
        proc = subprocess.run(
            [sys.executable, str(EXAMPLES / "curator_pipeline.py"), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode == 0:
            break
        assert proc.returncode == 1 and "run again to continue" in proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every output written exactly once" in proc.stdout


# ----------------------------------------------------------------- batch generation


def batch_files(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "batches").glob("batch_*.jsonl"))


def test_batch_generation_resume_after_crash_accepts_the_verified_batch(tmp_path: Path) -> None:
    gen = ("batch_generation.py", "--out", tmp_path, "--num-records", 100, "--buffer-size", 25)
    out = run(*gen, "--crash-after-write", 1, rc=3)
    assert "simulated crash after writing batch 1" in out
    assert batch_files(tmp_path) == ["batch_00000.jsonl", "batch_00001.jsonl"]
    ck = resumelog.open(str(tmp_path / "checkpoint"))
    assert ck.is_completed("batch-00000") and not ck.is_completed("batch-00001")  # the crash window
    before = (tmp_path / "batches" / "batch_00001.jsonl").stat().st_mtime_ns
    out = run(*gen, "--resume")
    assert "resuming: skipped 1 of 4 batches already complete, continuing at batch 1" in out
    assert "batch 1: file written before the crash verified" in out and "accepted" in out
    assert "generated 2 batches, accepted 1" in out
    assert "dataset complete: 100 records (100 distinct ids) in 4 batch files" in out
    assert (tmp_path / "batches" / "batch_00001.jsonl").stat().st_mtime_ns == before  # accepted, not rewritten
    # already complete: a warning, nothing rewritten
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "batches").iterdir()}
    out = run(*gen, "--resume")
    assert "already complete" in out and "WARNING" in out and "skipped 4 of 4 batches" in out
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "batches").iterdir()} == stamps


def test_batch_generation_resume_after_crash_redoes_a_damaged_batch(tmp_path: Path) -> None:
    gen = ("batch_generation.py", "--out", tmp_path, "--num-records", 90, "--buffer-size", 20)
    run(*gen, "--crash-after-write", 2, rc=3)
    damaged = tmp_path / "batches" / "batch_00002.jsonl"
    damaged.write_bytes(damaged.read_bytes()[:-40])  # a torn write
    out = run(*gen, "--resume")
    assert "batch 2: file written before the crash failed verification" in out and "regenerating" in out
    assert "generated 3 batches, accepted 0 written before a crash, regenerated 1" in out
    assert "dataset complete: 90 records (90 distinct ids) in 5 batch files" in out  # 4 x 20 + 10
    assert len(batch_files(tmp_path)) == 5


@pytest.mark.parametrize(
    ("flag", "value", "field"), [("--num-records", 120, "num_records"), ("--buffer-size", 10, "buffer_size")]
)
def test_batch_generation_refuses_changed_parameters(tmp_path: Path, flag: str, value: int, field: str) -> None:
    gen: list[object] = ["--out", tmp_path, "--num-records", 100, "--buffer-size", 25]
    run("batch_generation.py", *gen, "--crash-after-write", 0, rc=3)
    gen[gen.index(flag) + 1] = value
    out = run("batch_generation.py", *gen, "--resume", rc=2)
    assert "cannot resume" in out and field in out and "now" in out
    assert batch_files(tmp_path) == ["batch_00000.jsonl"]  # nothing written


def test_batch_generation_fresh_resume_and_overwrite(tmp_path: Path) -> None:
    gen = ("batch_generation.py", "--out", tmp_path, "--num-records", 30, "--buffer-size", 10)
    out = run(*gen, "--resume")  # nothing to resume: a fresh start
    assert "no checkpoint found: starting a new dataset" in out and "dataset complete: 30 records" in out
    out = run(*gen, rc=2)  # an existing dataset is never silently replaced
    assert "--resume" in out and "--overwrite" in out
    out = run("batch_generation.py", "--out", tmp_path, "--num-records", 20, "--buffer-size", 10, "--overwrite")
    assert "deleted" in out and "dataset complete: 20 records (20 distinct ids) in 2 batch files" in out
    assert batch_files(tmp_path) == ["batch_00000.jsonl", "batch_00001.jsonl"]


# ----------------------------------------------------------------- ray data


@pytest.mark.ray
def test_ray_data_parquet_with_defaults_shows_the_resume(tmp_path: Path) -> None:
    """Default reader and crash point: the interrupted phase leaves files complete that
    the resume skips, and the crash message names the poisoned id (issue 21)."""
    pytest.importorskip("ray")
    pytest.importorskip("pyarrow")
    env = {k: v for k, v in os.environ.items() if k not in ("RESUMELOG_RUN_ID", "SLURM_ARRAY_JOB_ID")}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "ray_data_parquet.py"), "--workdir", str(tmp_path), "--num-files", "30"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    poison = 18 * 50 + 25  # file int(0.6 * 30), row 50 // 2 of the default 50 rows per file
    assert f"phase 1: interrupted (simulated crash on id {poison}); complete " in out
    done1 = number(r"phase 1: interrupted .*; complete (\d+)/30", out)
    assert 0 < done1 < 30
    assert f"phase 2: skipped {done1} already complete" in out and f"phase 2: reading {30 - done1} files" in out
    assert "complete 30/30" in out and "phase 3: skipped 30 already complete" in out
    expected = sum(1 for i in range(30 * 50) if i % 7)
    assert f"output: {expected} rows, {expected} distinct ids, expected {expected}" in out


# ----------------------------------------------------------------- exactly once


def test_exactly_once_killed_workers_then_rerun_every_output_once(tmp_path: Path) -> None:
    out = run("exactly_once.py", "--workdir", tmp_path, "--sources", 12, "--workers", 3)
    assert "SIGKILLed after publishing" in out and "SIGKILLed while writing" in out
    assert number(r"phase 1: completed (\d+)/12", out) < 12
    assert "phase 2: completed 12/12 sources" in out
    assert "visible outputs: 24 of 24 expected, duplicates 0" in out
    orphans = number(r"debris of the killed attempts: (\d+) orphaned", out)
    spools = number(r"orphaned outputs, (\d+) spool files", out)
    assert orphans >= 1 and spools >= 1  # the killed attempts left debris, never visible
    assert f"gc removed {orphans} orphaned outputs and {spools} spool files" in out
    assert "exactly once: yes (24 objects left under the outputs root)" in out
    ck = resumelog.open(str(tmp_path / "checkpoint"))
    assert len(ck.outputs(str(tmp_path / "outputs"))) == 24


def test_batch_generation_exactly_once_crash_then_resume(tmp_path: Path) -> None:
    gen = ("batch_generation.py", "--out", tmp_path, "--num-records", 100, "--buffer-size", 25, "--exactly-once")
    out = run(*gen, "--crash-after-write", 2, rc=3)
    assert "simulated crash after writing batch 2" in out
    out = run(*gen, "--resume")
    assert "skipped 2 of 4 batches already complete, continuing at batch 2" in out
    assert "generated 2 batches; 1 batch files of interrupted attempts hidden" in out
    assert "dataset complete: 100 records (100 distinct ids) in 4 batch outputs" in out
    out = run("batch_generation.py", "--out", tmp_path, "--num-records", 100, "--buffer-size", 25, "--resume", rc=2)
    assert "exactly_once" in out  # the mode is part of the fingerprint
