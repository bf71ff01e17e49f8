"""Helpers shared by the NeMo Curator ports: read back what a backend recorded; run
the executor scenarios of ``curator_driver.py`` and check their outcomes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from resumelog.format import decode_segment


class Rec(NamedTuple):
    """One journal record as written: ``(key, source, delta)`` plus the emission flag."""

    key: str
    source: str
    delta: int
    emission: bool


def journal_records(root: str | Path, run_id: str | None = None) -> list[Rec]:
    """Every record of every segment under ``<root>/journal`` (of run ``run_id`` if
    given), in stream and segment order."""
    out: list[Rec] = []
    for seg in sorted(Path(root, "journal").rglob("*.seg")):
        decoded = decode_segment(seg.read_bytes(), str(seg))
        if run_id is not None and decoded.header.run_id != run_id:
            continue
        for b in decoded.batches:
            for i, key in enumerate(b.keys):
                out.append(Rec(key, b.sources[b.source_index[i]], b.deltas[i], bool(b.flags[i] & 1)))
    return out


def triples(root: str | Path, run_id: str | None = None) -> list[tuple[str, str, int]]:
    """:func:`journal_records` as Curator's ``(task_id, source_id, delta)`` tuples."""
    return [(r.key, r.source, r.delta) for r in journal_records(root, run_id)]


# ---------------------------------------------------------------------- executor scenarios

DRIVER = str(Path(__file__).with_name("curator_driver.py"))
ALL_PARTS = [f"part{i}" for i in range(4)]


def drive(
    env: dict[str, str], specs: list[dict[str, Any]], log: Path, python: str = sys.executable
) -> list[dict[str, Any]]:
    """Run ``curator_driver.py`` with ``specs`` (one ``Pipeline.run`` each, in order)
    in a driver subprocess joined to the cluster of ``env``; its JSON rows."""
    p = subprocess.run(
        [python, DRIVER, json.dumps(specs)], env={**os.environ, **env}, capture_output=True, text=True, timeout=800
    )
    log.write_text(p.stdout + p.stderr)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert len(rows) == len(specs), p.stderr[-3000:]
    return rows


def outcome(r: dict[str, Any]) -> tuple[Any, ...]:
    """What a user sees of a run: its outputs, or Curator's error type and words."""
    if r["error"] is None:
        return ("ok", r["srcs"])
    return ("error", r["value_error"], "No tasks to process" in r["message"])


def check_empty_output_parity(
    env: dict[str, str], root: Path, executor: str, python: str = sys.executable, *, reference: bool = True
) -> None:
    """Curator's ``test_empty_output_parity`` scenarios with and without the drop-in
    (see ``test_curator_executors.py``). ``reference=False``: without Curator's own
    runs (no checkpointing), whose outcomes are then those asserted below (PR #1931's,
    which the Ray Data test measures live)."""
    scenarios = ("drop_all", "drop_all_batched", "drop_some")
    specs: list[dict[str, Any]] = []
    for sc in scenarios:
        base = {"executor": executor, "scenario": sc}
        if reference:
            specs.append({**base, "mode": "none", "label": f"{sc}-curator"})
        specs.append({**base, "mode": "resumelog", "ckpt": str(root / f"ckpt-{sc}"), "label": sc})
    rerun = {"executor": executor, "scenario": "drop_some", "mode": "resumelog", "label": "rerun"}
    specs.append({**rerun, "ckpt": str(root / "ckpt-drop_some")})
    rows = {r["label"]: r for r in drive(env, specs, root / "driver.log", python)}
    if not reference:  # Curator's outcomes on this executor, as recorded
        rows |= {f"{sc}-curator": rows[sc] for sc in scenarios}

    # Curator's own outcomes on this executor (no checkpointing)
    if executor == "ray_actor_pool":  # 1.4's actor pool refuses a stage with no input
        assert outcome(rows["drop_all-curator"]) == ("error", True, True)
        assert outcome(rows["drop_all_batched-curator"]) == ("error", True, True)
    else:  # PR #1931's expectation (Xenna, Ray Data): an empty result, no error
        assert outcome(rows["drop_all-curator"]) == ("ok", [])
        assert outcome(rows["drop_all_batched-curator"]) == ("ok", [])
    assert outcome(rows["drop_some-curator"]) == ("ok", ["part1", "part3"])
    # the drop-in changes none of them
    for sc in scenarios:
        assert outcome(rows[sc]) == outcome(rows[f"{sc}-curator"]), (sc, rows[sc])
    # filtered partitions are done (NoneTask: -1)...
    assert rows["drop_all"]["completed"] == ALL_PARTS
    assert rows["drop_some"]["completed"] == ALL_PARTS
    # ...but a batch of 2 turned into [] cannot be attributed (Curator's counters skip
    # an empty output): those partitions stay pending and rerun, with Curator's
    # actor as with resumelog
    assert rows["drop_all_batched"]["completed"] == []
    # everything complete: Curator's error type on every executor (Ray Data's
    # UserCodeException does not hide it), resumelog's subclass of it
    r = rows["rerun"]
    assert r["nothing_to_do"] and r["value_error"] and "No tasks to process" in r["message"], r


class SingleStageFiles:
    """Inputs, outputs and the read log of the ``single`` scenario of the driver."""

    def __init__(self, root: Path, n: int = 6) -> None:
        self.root, self.input, self.out = root, root / "in", root / "out"
        self.track, self.markers = root / "track", root / "markers"
        self.input.mkdir(parents=True)
        self.names = [f"f-{i:03d}.txt" for i in range(n)]
        self.stems = [n.removesuffix(".txt") for n in self.names]
        for i, name in enumerate(self.names):
            (self.input / name).write_text(f"file {i}\n")

    def spec(self, executor: str, mode: str, label: str, **kw: str) -> dict[str, Any]:
        return {
            "executor": executor, "scenario": "single", "mode": mode, "ckpt": str(self.root / f"ckpt-{mode}"),
            "label": label, "input": str(self.input), "out": str(self.out), "track": str(self.track),
            "markers": str(self.markers), **kw,
        }  # fmt: skip

    def seen(self, label: str) -> list[str]:
        if not self.track.exists():
            return []
        return sorted(f for lab, f in (ln.split("\t") for ln in self.track.read_text().splitlines()) if lab == label)


def check_single_stage(
    env: dict[str, str], root: Path, executor: str, python: str = sys.executable, *, compare_curator: bool = False
) -> None:
    """A one-stage pipeline interrupted, resumed, rerun (see ``test_curator_executors.py``)."""
    import resumelog

    files = SingleStageFiles(root)
    # run 1: the driver is SIGKILLed while the stage hangs on the fourth file
    hang = files.names[3]
    spec = files.spec(executor, "resumelog", "run1", hang=hang)
    with (root / "run1.log").open("w") as log:
        p = subprocess.Popen([python, DRIVER, json.dumps([spec])], env={**os.environ, **env}, stdout=log, stderr=log)
        deadline = time.monotonic() + 300
        while not (files.markers / f"hang-{hang}").exists():
            assert p.poll() is None, (root / "run1.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the stage never reached the hang"
            time.sleep(0.2)
        os.kill(p.pid, signal.SIGKILL)
        assert p.wait() == -signal.SIGKILL
    assert set(resumelog.open(root / "ckpt-resumelog", create=False).completed) == set()
    assert files.seen("run1") == files.names[:4]

    # run 2 resumes and completes (Curator never completes a stage that is both source
    # and sink; resumelog records its identity sink); run 3 has nothing to do
    r2, r3 = drive(
        env,
        [files.spec(executor, "resumelog", "run2"), files.spec(executor, "resumelog", "run3")],
        root / "driver.log",
        python,
    )
    assert r2["error"] is None, r2
    assert r2["srcs"] == files.stems
    assert r2["completed"] == files.stems
    assert {p.name: p.read_text() for p in files.out.iterdir()} == {
        n: (files.input / n).read_text().upper() for n in files.names
    }
    assert r3["nothing_to_do"] and r3["value_error"] and "No tasks to process" in r3["message"], r3
    # Curator 1.4 learns the sources from the source stage's outputs: a single stage
    # has done its work before they are skipped (the rerun records nothing)
    assert files.seen("run3") == files.names
    assert r3["completed"] == files.stems

    if compare_curator:  # Curator's own checkpointing never completes it: all reruns
        c1, c2 = drive(
            env,
            [files.spec(executor, "curator", "cur1"), files.spec(executor, "curator", "cur2")],
            root / "curator.log",
            python,
        )
        assert (c1["srcs"], c1["completed"]) == (files.stems, [])
        assert (c2["srcs"], c2["completed"]) == (files.stems, [])
