"""``benchmarks/run.py --quick --smoke`` runs end to end at tiny sizes (no timing asserted).

The benchmark itself never runs in the test suite; this only checks that the entry point,
every system's child-process code and the report still work. No network and no
nemo-curator needed (``--no-curator``; the S3 rows use the loopback server when it can
start and are skipped with a reason otherwise).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "run.py"


def test_run_quick_smoke(tmp_path: Path) -> None:
    out = tmp_path / "results"
    env = {**os.environ, "RESUMELOG_NO_SIGTERM": "1"}
    p = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--smoke", "--no-curator", "--out", str(out), "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,  # ~15 s on a quiet machine; generous for a loaded CI host
        env=env,
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stderr[-3000:]

    lines = (out / "smoke.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert all(isinstance(r, dict) and "bench" in r and "system" in r for r in rows)
    errors = [r for r in rows if r["bench"] == "error"]
    assert not errors, errors
    benches = {r["bench"] for r in rows}
    assert {"env", "throughput", "flush_latency", "startup", "compaction", "bytes", "background_compaction"} <= benches
    eo = {r["variant"] for r in rows if r["bench"] == "outputs" and r["storage"] == "local"}
    assert eo == {"plain", "plain+fsync", "exactly-once", "exactly-once, flush every 100"}
    systems = {r["system"] for r in rows if r["bench"] in ("throughput", "startup")}
    assert {"resumelog", "sqlite-wal", "object-per-event"} <= systems
    # every resumelog startup found every completed source
    for r in rows:
        if r["bench"] == "startup":
            assert "WRONG" not in r, r
            assert r["open_s"] > 0
    assert any(r["bench"] == "skipped" and r["system"] == "curator-lmdb" for r in rows)
    # compacting during the run: each mode's next start found every source
    bg = {r["mode"]: r for r in rows if r["bench"] == "background_compaction"}
    assert set(bg) == {"none", "thread", "sidecar"}
    assert all(r["completed"] == r["sources"] for r in bg.values())
    assert all(r.get("failures", 0) == 0 for r in bg.values())

    # the scale section (bench_scale.py --smoke): every figure at two N, then the fits
    scale = [r for r in rows if str(r["bench"]).startswith("scale_")]
    kinds = {(r["bench"], r.get("storage")) for r in scale}
    assert {("scale_tick", "local"), ("scale_open", "local"), ("scale_bytes", "local")} <= kinds
    assert {("scale_compaction", "local"), ("scale_fit", "local"), ("scale_extrapolated", "local")} <= kinds
    assert {r["shape"] for r in scale if r["bench"] == "scale_open"} == {"shard", "random"}
    assert all("WRONG" not in r for r in scale), [r for r in scale if "WRONG" in r]
    assert all(r["extrapolated"] for r in scale if r["bench"] == "scale_extrapolated")
    assert (out / "scale-smoke.jsonl").exists()

    # the memory section (bench_memory.py --smoke): one compaction per setting, the last spilling
    mem = {r["setting"]: r for r in rows if r["bench"] == "memory_compaction"}
    assert set(mem) == {"before", "rounds", "after"}
    assert mem["after"]["spills"] > 0 and mem["before"]["spills"] == 0
    assert len({r["completed"] for r in mem.values()}) == 1

    md = (out / "smoke.md").read_text()
    assert md.startswith("# resumelog benchmarks")
    for heading in (
        "## Record throughput",
        "## Startup",
        "## Compaction",
        "## Bytes on storage",
        "## Compacting during",
        "## Scale",
    ):
        assert heading in md
    # the table printed to stdout is the one written
    assert "## Record throughput" in p.stdout
    table = [ln for ln in md.splitlines() if ln.startswith("| resumelog | local | buffered")]
    assert table and all(ln.count("|") == table[0].count("|") for ln in table)


def _bench(*argv: str) -> list[dict[str, object]]:
    p = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ}
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]


def test_bench_merge_smoke() -> None:
    """``bench_merge.py`` at tiny sizes, every layout: the merged layer holds what the
    layouts say (the upper ids new, none masked, but for ``interleaved``)."""
    rows = _bench(
        str(ROOT / "benchmarks" / "bench_merge.py"),
        "--sizes",
        "3000:640",
        "--layout",
        "interleaved",
        "ordered",
        "shards",
    )
    merged = {r["layout"]: r["merged"] for r in rows}
    assert merged["ordered"] == merged["shards"] == 3640
    assert 3000 < int(merged["interleaved"]) < 3640  # (a tenth of the lower ids masked, half the upper new)


def test_bench_layer_build_smoke() -> None:
    """``bench_layer_build.py`` at a tiny size, every order: with and without the kernels
    the same layer, byte for byte."""
    from resumelog import _compiled

    rows = _bench(str(ROOT / "benchmarks" / "bench_layer_build.py"), "--n", "3000", "--repeat", "1")
    assert [r["order"] for r in rows] == ["ordered", "shards", "random", "uuid"]
    assert all(r["same_bytes"] and r["kernels_built"] == (_compiled.native is not None) for r in rows), rows


def test_bench_open_layers_smoke() -> None:
    """``bench_open_layers.py`` on a loopback SeaweedFS: both modes open the same layers
    with the same GETs."""
    from resumelog.testing.s3server import available_kinds

    if "seaweedfs" not in available_kinds():
        import pytest

        pytest.skip("SeaweedFS is not installed")
    rows = _bench(str(ROOT / "benchmarks" / "bench_open_layers.py"), "--small", "2", "--reps", "1")
    assert [r["mode"] for r in rows] == ["at_once", "one_by_one"]
    assert rows[0]["layers"] == rows[1]["layers"] == 3 and rows[0]["gets"] == rows[1]["gets"]


def test_a_scale_run_without_out_never_overwrites_earlier_results(tmp_path: Path) -> None:
    """``bench_scale.py`` without ``--out`` names its files after the commit, and after an
    earlier run's of the same commit: committed results are never rewritten in place."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import bench_scale
    finally:
        sys.path.pop(0)
    rev = bench_scale.revision()
    assert rev and " " not in rev
    first = bench_scale.fresh_base(str(tmp_path), "quick")
    assert first == str(tmp_path / f"scale-quick-{rev}")
    Path(first + ".jsonl").write_text("{}\n")
    second = bench_scale.fresh_base(str(tmp_path), "quick")
    assert second == first + "-2"
    Path(second + ".jsonl").write_text("{}\n")
    assert bench_scale.fresh_base(str(tmp_path), "quick") == first + "-3"
    assert Path(first + ".jsonl").read_text() == "{}\n"
