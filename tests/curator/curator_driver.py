"""Driver of the executor tests (``test_curator_executors.py``): real NeMo Curator 1.4
pipelines run with ``Pipeline.run`` and a real executor on the test's Ray cluster
(``RAY_ADDRESS``), one run after the other in this process.

Run as a script, so that Ray pickles the stages below by value for its workers::

    python tests/curator/curator_driver.py '[{"executor": "ray_data", "scenario":
        "drop_all", "mode": "resumelog", "ckpt": "/tmp/c", "label": "r1"}, ...]'

Prints one JSON line per run: the outputs (count and their source ids) or the error
(its type's names, whether it is a ``CuratorNothingToDo`` / ``ValueError``), and the
sources complete in the checkpoint afterwards.

Scenarios
    ``drop_all``, ``drop_all_batched``, ``drop_some``: the pipelines of Curator's
    ``tests/backends/test_empty_output_parity.py`` (PR #1931): a source of 4
    partitions, a middle stage that drops every partition (per task ``None``, or a
    vectorised ``process_batch`` returning ``[]``) or the even ones, a pass-through
    sink. ``single``: a single-stage pipeline (the source stage is the sink) that
    converts every file of ``input`` to ``out`` (upper case), tracking each file it
    reads in ``track`` and hanging on ``hang`` once (marker in ``markers``).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from nemo_curator.pipeline import Pipeline
from nemo_curator.stages.base import ProcessingStage
from nemo_curator.stages.resources import Resources
from nemo_curator.tasks import EmptyTask, Task

NUM_TASKS, ROWS_PER_TASK = 4, 8
CPUS = 0.25  # Xenna needs the stages' CPUs to fit in 95 % of the cluster's 2 minus one


def _resources() -> Resources:
    return Resources(cpus=CPUS)


@dataclass
class RowTask(Task[pd.DataFrame]):
    data: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def num_items(self) -> int:
        return len(self.data)

    def validate(self) -> bool:
        return True

    def get_deterministic_id(self) -> str | None:
        return self._metadata.get("part")


class _Stage(ProcessingStage[RowTask, RowTask]):
    def inputs(self) -> tuple[list[str], list[str]]:
        return [], []

    def outputs(self) -> tuple[list[str], list[str]]:
        return [], []


@dataclass
class SourceStage(ProcessingStage[EmptyTask, RowTask]):
    """``NUM_TASKS`` partitions ``part0``... of ``ROWS_PER_TASK`` rows."""

    name: str = "source"
    resources: Resources = field(default_factory=_resources)

    def inputs(self) -> tuple[list[str], list[str]]:
        return [], []

    def outputs(self) -> tuple[list[str], list[str]]:
        return [], []

    def process(self, _: EmptyTask) -> list[RowTask]:
        return [
            RowTask(
                dataset_name="empty_parity",
                data=pd.DataFrame({"row_idx": range(ROWS_PER_TASK), "src": [i] * ROWS_PER_TASK}),
                _metadata={"part": f"part{i}"},
            )
            for i in range(NUM_TASKS)
        ]


@dataclass
class DropAllStage(_Stage):
    name: str = "drop_all"
    resources: Resources = field(default_factory=_resources)

    def process(self, task: RowTask) -> RowTask | None:
        return None


@dataclass
class DropAllBatchedStage(_Stage):
    name: str = "drop_all_batched"
    resources: Resources = field(default_factory=_resources)
    batch_size: int = 2

    def process(self, task: RowTask) -> RowTask:
        return task

    def process_batch(self, tasks: list[RowTask]) -> list[RowTask]:
        return []


@dataclass
class DropEvenStage(_Stage):
    name: str = "drop_even"
    resources: Resources = field(default_factory=_resources)

    def process(self, task: RowTask) -> RowTask | None:
        return None if int(task.data["src"].iloc[0]) % 2 == 0 else task


@dataclass
class SinkStage(_Stage):
    name: str = "sink"
    resources: Resources = field(default_factory=_resources)

    def process(self, task: RowTask) -> RowTask:
        return task


@dataclass
class ConvertStage(ProcessingStage[EmptyTask, RowTask]):
    """The only stage of a pipeline: lists ``input``, converts each file to ``out``."""

    input: str = ""
    out: str = ""
    track: str = ""
    label: str = ""
    markers: str = ""
    hang: str = ""
    name: str = "convert"
    resources: Resources = field(default_factory=_resources)

    def inputs(self) -> tuple[list[str], list[str]]:
        return [], []

    def outputs(self) -> tuple[list[str], list[str]]:
        return [], []

    def process(self, _: EmptyTask) -> list[RowTask]:
        out = []
        Path(self.out).mkdir(parents=True, exist_ok=True)
        for p in sorted(Path(self.input).glob("*.txt")):
            with open(self.track, "a") as f:
                f.write(f"{self.label}\t{p.name}\n")
            if p.name == self.hang:
                marker = Path(self.markers, f"hang-{p.name}")
                if not marker.exists():
                    marker.parent.mkdir(parents=True, exist_ok=True)
                    marker.touch()
                    time.sleep(600)
            (Path(self.out) / p.name).write_text(p.read_text().upper())
            out.append(RowTask(dataset_name="convert", data=pd.DataFrame({"f": [p.name]}), _metadata={"part": p.stem}))
        return out


def _pipeline(spec: dict[str, Any]) -> Pipeline:
    sc = spec["scenario"]
    p = Pipeline(name=f"driver_{sc}")
    if sc == "single":
        keys = ("input", "out", "track", "label", "markers", "hang")
        p.add_stage(ConvertStage(**{k: spec.get(k, "") for k in keys}))
        return p
    middle = {"drop_all": DropAllStage, "drop_all_batched": DropAllBatchedStage, "drop_some": DropEvenStage}[sc]
    for s in (SourceStage(), middle(), SinkStage()):
        p.add_stage(s)
    return p


def _executor(kind: str) -> Any:
    if kind == "ray_actor_pool":
        from nemo_curator.backends.ray_actor_pool import RayActorPoolExecutor

        return RayActorPoolExecutor()
    if kind == "ray_data":
        from nemo_curator.backends.ray_data import RayDataExecutor

        return RayDataExecutor()
    if kind == "xenna":
        from nemo_curator.backends.xenna import XennaExecutor

        return XennaExecutor(config={"logging_interval": 5, "autoscale_interval_s": 5})
    raise ValueError(kind)


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """One ``Pipeline.run``; its outcome as plain data."""
    import resumelog
    import resumelog.curator_backend as rcb

    mode, ckpt = spec["mode"], spec.get("ckpt", "")
    res: dict[str, Any] = {"label": spec.get("label", ""), "outputs": None, "srcs": None, "error": None}
    backend = rcb.enable(ckpt) if mode == "resumelog" else None
    try:
        kw = {"checkpoint_path": ckpt} if mode == "curator" else {}
        out = _pipeline(spec).run(_executor(spec["executor"]), **kw)
        res["outputs"] = len(out or [])
        res["srcs"] = sorted(t._metadata.get("part", "") for t in out or [])
    except Exception as e:  # reported to the test
        res["error"] = [c.__name__ for c in type(e).__mro__]
        res["nothing_to_do"] = isinstance(e, rcb.CuratorNothingToDo)
        res["value_error"] = isinstance(e, ValueError)
        res["message"] = str(e)
        res["traceback"] = traceback.format_exc()[-2000:]
    finally:
        if backend is not None:
            backend.disable()
    if mode == "resumelog":
        res["completed"] = sorted(resumelog.open(ckpt, create=False).completed)
    elif mode == "curator":
        res["completed"] = sorted(rcb.curator_completed(ckpt))
    return res


def main() -> int:
    for spec in json.loads(sys.argv[1]):
        print(json.dumps(run(spec)), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    sys.exit(main())
