"""Checkpoints written in format version 1 (``tests/data/format_v1``, made by
``tests/data/make_format_v1.py`` at commit 3c839ee) open, fold and compact with the
current reader, which writes version 2 from then on (docs/format.md §9)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import resumelog
from resumelog import paths
from resumelog.format import FORMAT_VERSION, SNAPSHOT_FRAMES, decode_snapshot_frames, split_frames

DATA = Path(__file__).parent / "data" / "format_v1"
COMPLETED = sorted(
    ["c0", "c1", "c2", "c3", "c4", "old0", "old1", "old2", "oldsimple", "s20", "ü-unicode"]
    + [f"s{i}" for i in range(10)]
)


@pytest.fixture
def v1(tmp_path: Path) -> Path:
    dst = tmp_path / "v1"
    shutil.copytree(DATA, dst)
    return dst


def test_the_fixture_is_really_version_1():
    data = (DATA / paths.snapshot_name(2)).read_bytes()
    assert int.from_bytes(data[6:8], "big") == 1
    assert len(split_frames(data, ord("N"))) == 7
    assert decode_snapshot_frames(data).legacy_done  # entries by source, the old layout


def test_a_version_1_checkpoint_opens_with_the_same_answers(v1: Path):
    ck = resumelog.open(v1, create=False, run_id="check")
    assert sorted(ck.completed) == COMPLETED
    assert ck.pending(["p0", "s0", "new"]) == ["p0", "new"]
    assert ck.completed_run("old1") == "run0" and ck.completed_run("s3") == "run1"


def late_records(url: Path) -> None:
    with resumelog.open(url, run_id="run1").handle().writer("late") as w:
        w.record("0_s3_1_0", "s3", -1)  # duplicate of a folded sink record: no change
        w.record("0_s4_x", "s4", 0)  # a pass-through key: stays complete
        w.record("0_s5_7_0", "s5", +1)  # new work: s5 reopens
    with resumelog.open(url, run_id="run0").handle().writer("late0") as w:
        w.record("0_old2_2_0", "old2", -1)  # duplicate, in the older run


def check_after_late(url: Path) -> None:
    ck = resumelog.open(url, create=False, run_id="check")
    assert ck.is_completed("s3") and ck.is_completed("s4") and ck.is_completed("old2")
    assert not ck.is_completed("s5")
    assert sorted(ck.completed) == [s for s in COMPLETED if s != "s5"]


def test_late_records_use_the_version_1_entries(v1: Path):
    late_records(v1)
    check_after_late(v1)


def test_compaction_rewrites_version_1_as_version_2_keeping_every_entry(v1: Path):
    res = resumelog.open(v1, run_id="c").compact()
    data = (v1 / paths.snapshot_name(res.snapshot)).read_bytes()
    assert int.from_bytes(data[6:8], "big") == FORMAT_VERSION == 2
    frames = decode_snapshot_frames(data)
    assert len(split_frames(data, ord("N"))) == SNAPSHOT_FRAMES and frames.legacy_done is None
    assert len(frames.shape_ids) == len(COMPLETED)  # u8 per id; the lineage sources share shapes
    ck = resumelog.open(v1, create=False, run_id="check")
    assert sorted(ck.completed) == COMPLETED and ck.pending(["p0"]) == ["p0"]
    late_records(v1)  # the entries survived the conversion
    check_after_late(v1)
    resumelog.open(v1, run_id="c2").compact()
    check_after_late(v1)


def test_retiring_every_run_drops_the_converted_entries(v1: Path):
    ck = resumelog.open(v1, run_id="c")
    ck.compact()  # fold the tail first: keep_runs retires runs before folding
    res = ck.compact(keep_runs=0)
    frames = decode_snapshot_frames((v1 / paths.snapshot_name(res.snapshot)).read_bytes())
    assert len(frames.shape_ids) == 0 and bytes(frames.shapes) == b"\x90"
    assert sorted(resumelog.open(v1, create=False, run_id="x").completed) == COMPLETED


def test_the_cli_reads_version_1(v1: Path):
    from tests.test_cli import run_json

    doc = run_json("verify", str(v1))
    assert doc["ok"] and doc["errors"] == 0 and doc["snapshots"] == 2 and doc["segments"] == 3
    snap = run_json("inspect", str(v1), paths.snapshot_name(2))
    assert snap["completed_total"] == len(COMPLETED) - 1  # s20 is only in the journal
    assert snap["done_entries"]["format"] == 1 and snap["done_entries"]["chunks"]
