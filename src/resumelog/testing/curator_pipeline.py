"""A real NeMo Curator 1.4 text pipeline with planted failures, for tests and benchmarks.

``JsonlReader`` (file partitioning → JSONL read) → ``ScoreFilter(WordCountFilter)`` →
:class:`ChaosJsonlWriter` (Curator's ``JsonlWriter`` that can fail a file once with a
``FailedTask``, SIGKILL its own worker once, or hang once). "Once" is a marker file per
file name in ``markers``, so a rerun goes through. Every file the writer sees is
appended to ``track`` (``<label>\\t<file name>``).

Run as a script (one pipeline execution per process, so a test can SIGKILL it)::

    python -m resumelog.testing.curator_pipeline --mode resumelog --ckpt DIR \\
        --input IN --output OUT [--markers M --track T --label run1 \\
        --fail-once part-005.jsonl --kill-worker part-002.jsonl --hang part-006.jsonl]

``--mode resumelog`` calls :func:`resumelog.curator_backend.enable` first; ``--mode
curator`` passes ``checkpoint_path`` to ``Pipeline.run`` (Curator's own LMDB actor;
needs ``RAY_ADDRESS``). Exit status: 0 done, 3 nothing to do (Curator's
``ValueError("... No tasks to process ...")`` or resumelog's subclass of it), 1 other
errors.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nemo_curator.pipeline import Pipeline
from nemo_curator.stages.resources import Resources
from nemo_curator.stages.text.filters import ScoreFilter
from nemo_curator.stages.text.filters.heuristic import WordCountFilter
from nemo_curator.stages.text.io.reader import JsonlReader
from nemo_curator.stages.text.io.writer import JsonlWriter
from nemo_curator.tasks import FailedTask

__all__ = ["ChaosJsonlWriter", "build_pipeline", "main", "make_inputs", "run"]

SHORT_FILE = 3
"""Index of the input file whose documents are all too short (filtered: no output)."""


def make_inputs(directory: str | Path, n_files: int = 8, docs_per_file: int = 4) -> list[Path]:
    """Write ``n_files`` JSONL files ``part-NNN.jsonl``; file :data:`SHORT_FILE` has only
    two-word documents (the filter drops them all), every other one some of each."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n_files):
        p = d / f"part-{i:03d}.jsonl"
        with p.open("w") as f:
            for j in range(docs_per_file):
                short = i == SHORT_FILE or j % 4 == 3
                text = f"doc {i}" if short else f"document {i} {j} has enough words to pass the filter"
                f.write(json.dumps({"id": f"{i}-{j}", "text": text}) + "\n")
        out.append(p)
    return out


@dataclass
class ChaosJsonlWriter(JsonlWriter):  # type: ignore[misc]  # Curator has no type information
    """Curator's ``JsonlWriter`` with planted failures, each at most once per file name."""

    markers: str = ""
    track: str = ""
    label: str = ""
    fail_once: tuple[str, ...] = ()
    kill_worker: tuple[str, ...] = ()
    hang: tuple[str, ...] = ()
    name: str = "chaos_jsonl_writer"
    resources: Resources = field(default_factory=lambda: Resources(cpus=1.0))

    def _first_time(self, what: str, fname: str) -> bool:
        marker = Path(self.markers, f"{what}-{fname}")
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        os.close(fd)
        return True

    def process(self, task: Any) -> Any:
        """Track, maybe fail/kill/hang, then write as ``JsonlWriter`` does."""
        files = [os.path.basename(str(p)) for p in task._metadata.get("source_files", [])]
        fname = files[0] if files else "?"
        if self.track:
            with open(self.track, "a") as f:
                f.write(f"{self.label}\t{fname}\n")
        if fname in self.kill_worker and self._first_time("kill", fname):
            os.kill(os.getpid(), signal.SIGKILL)
        if fname in self.hang and self._first_time("hang", fname):
            time.sleep(600)
        if fname in self.fail_once and self._first_time("fail", fname):
            return FailedTask()
        return super().process(task)


def build_pipeline(input_dir: str | Path, output_dir: str | Path, **chaos: Any) -> Any:
    """The pipeline: JSONL read (one file per source) → word-count filter → chaos writer."""
    p = Pipeline(name="resumelog_curator_e2e")
    p.add_stage(JsonlReader(file_paths=str(input_dir), files_per_partition=1))
    p.add_stage(ScoreFilter(WordCountFilter(min_words=3), text_field="text"))
    p.add_stage(ChaosJsonlWriter(path=str(output_dir), mode="ignore", **chaos))
    return p


def _executor(kind: str) -> Any:
    if kind == "ray_actor_pool":
        from nemo_curator.backends.ray_actor_pool import RayActorPoolExecutor

        return RayActorPoolExecutor()
    if kind == "ray_data":
        from nemo_curator.backends.ray_data import RayDataExecutor

        return RayDataExecutor()
    raise ValueError(f"unknown executor {kind!r}")


def run(
    mode: str,
    ckpt: str | Path,
    input_dir: str | Path,
    output_dir: str | Path,
    *,
    executor: str = "ray_actor_pool",
    **chaos: Any,
) -> list[Any]:
    """One pipeline execution with ``mode`` ``"resumelog"`` or ``"curator"`` checkpointing."""
    pipe = build_pipeline(input_dir, output_dir, **chaos)
    if mode == "resumelog":
        import resumelog.curator_backend as rcb

        with rcb.enabled(ckpt):
            return list(pipe.run(executor=_executor(executor)) or [])
    if mode == "curator":
        return list(pipe.run(executor=_executor(executor), checkpoint_path=str(ckpt)) or [])
    if mode == "none":
        return list(pipe.run(executor=_executor(executor)) or [])
    raise ValueError(f"unknown mode {mode!r}")


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m resumelog.testing.curator_pipeline")
    ap.add_argument("--mode", choices=("resumelog", "curator", "none"), required=True)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--executor", default="ray_actor_pool", choices=("ray_actor_pool", "ray_data"))
    ap.add_argument("--markers", default="")
    ap.add_argument("--track", default="")
    ap.add_argument("--label", default="")
    ap.add_argument("--fail-once", default="")
    ap.add_argument("--kill-worker", default="")
    ap.add_argument("--hang", default="")
    a = ap.parse_args(argv)

    def names(s: str) -> tuple[str, ...]:
        return tuple(x for x in s.split(",") if x)

    if a.markers:
        Path(a.markers).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        out = run(
            a.mode,
            a.ckpt,
            a.input,
            a.output,
            executor=a.executor,
            markers=a.markers,
            track=a.track,
            label=a.label,
            fail_once=names(a.fail_once),
            kill_worker=names(a.kill_worker),
            hang=names(a.hang),
        )
    except ValueError as e:
        if "No tasks to process" in str(e):
            print(f"nothing to do: {e}", file=sys.stderr)
            return 3
        raise
    print(json.dumps({"outputs": len(out), "seconds": round(time.perf_counter() - t0, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
