"""Checkpoints written by older format versions open, fold and compact with the current
reader, which writes the current version from then on (docs/format.md §9).

One committed fixture per version, each holding the same history: version 1
(``tests/data/format_v1``, made by ``tests/data/make_format_v1.py`` at commit 3c839ee),
version 2 (``tests/data/format_v2``, ``make_format_v2.py`` at commit 0f3a1b4),
version 3 (``tests/data/format_v3``, ``make_format_v3.py`` at commit 35e4762),
version 4 (``tests/data/format_v4``, ``make_format_v4.py`` at commit 3fa4afd) and
version 5 (``tests/data/format_v5``, ``make_format_v5.py`` at commit 89aef73)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import resumelog
from resumelog import paths
from resumelog.algebra import SIMPLE_COMPLETION
from resumelog.format import (
    FORMAT_VERSION,
    SNAPSHOT_FRAMES,
    decode_snapshot_frames,
    split_frames,
)
from resumelog.layers import Layer, open_layer

DATA = Path(__file__).parent / "data" / "format_v1"
FIXTURES = {
    1: DATA,
    2: Path(__file__).parent / "data" / "format_v2",
    3: Path(__file__).parent / "data" / "format_v3",
    4: Path(__file__).parent / "data" / "format_v4",
    5: Path(__file__).parent / "data" / "format_v5",
}
COMPLETED = sorted(
    ["c0", "c1", "c2", "c3", "c4", "old0", "old1", "old2", "oldsimple", "s20", "ü-unicode"]
    + [f"s{i}" for i in range(10)]
)


@pytest.fixture
def v1(tmp_path: Path) -> Path:
    dst = tmp_path / "v1"
    shutil.copytree(DATA, dst)
    return dst


@pytest.fixture(params=sorted(FIXTURES), ids=lambda v: f"v{v}")
def old(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[int, Path]:
    """A copy of each older version's fixture: ``(version, path)``."""
    dst = tmp_path / f"v{request.param}"
    shutil.copytree(FIXTURES[request.param], dst)
    return request.param, dst


@pytest.mark.parametrize("version", sorted(FIXTURES))
def test_each_fixture_is_really_its_version(version: int):
    for n in (1, 2):
        data = (FIXTURES[version] / paths.snapshot_name(n)).read_bytes()
        assert int.from_bytes(data[6:8], "big") == version
    for seg in (FIXTURES[version] / "journal").rglob("*.seg"):
        assert int.from_bytes(seg.read_bytes()[6:8], "big") == version


def test_the_fixture_is_really_version_1():
    data = (DATA / paths.snapshot_name(2)).read_bytes()
    assert int.from_bytes(data[6:8], "big") == 1
    assert len(split_frames(data, ord("N"))) == 7
    assert decode_snapshot_frames(data).legacy_done  # entries by source, the old layout


def test_an_older_checkpoint_opens_with_the_same_answers(old: tuple[int, Path]):
    ck = resumelog.open(old[1], create=False, run_id="check")
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


def test_late_records_use_the_older_entries(old: tuple[int, Path]):
    late_records(old[1])
    check_after_late(old[1])


def test_compaction_rewrites_an_older_version_as_the_current_keeping_every_entry(old: tuple[int, Path]):
    v1 = old[1]
    res = resumelog.open(v1, run_id="c").compact()
    data = (v1 / paths.snapshot_name(res.snapshot)).read_bytes()
    assert int.from_bytes(data[6:8], "big") == FORMAT_VERSION
    frames = decode_snapshot_frames(data)
    assert len(split_frames(data, ord("N"))) == SNAPSHOT_FRAMES and frames.legacy_done is None
    (layer,) = only_layer(v1, res.snapshot)  # the old index became the first layer
    assert layer.header.count == len(COMPLETED) and not layer.tombstones
    assert shape_ids(layer) == len(COMPLETED)  # u8 per id; the lineage sources share shapes
    ck = resumelog.open(v1, create=False, run_id="check")
    assert sorted(ck.completed) == COMPLETED and ck.pending(["p0"]) == ["p0"]
    late_records(v1)  # the entries survived the conversion
    check_after_late(v1)
    resumelog.open(v1, run_id="c2").compact()
    check_after_late(v1)


def only_layer(root: Path, number: int) -> list[Layer]:
    frames = decode_snapshot_frames((root / paths.snapshot_name(number)).read_bytes())
    assert frames.layers is not None
    return [open_layer((root / ref.name).read_bytes(), ref.name, defer=False) for ref in frames.layers]


def shape_ids(layer: Layer) -> int:
    """How many entries of ``layer`` have a stored shape id (an array element each)."""
    return sum(len(b.tags) for b in layer.index.blocks() if b.tags is not None)


def test_retiring_every_run_drops_the_converted_entries(v1: Path):
    ck = resumelog.open(v1, run_id="c")
    ck.compact()  # fold the tail first: keep_runs retires runs before folding
    res = ck.compact(keep_runs=0)
    # the layer is not rewritten for a retirement: its entries are ignored when read ...
    state = resumelog.compactor.load(ck.store).state
    assert state.done_entries_of("old0") == state.done_entries_of("s0") == SIMPLE_COMPLETION
    (layer,) = only_layer(v1, res.snapshot)
    assert shape_ids(layer) == len(COMPLETED)
    # ... and dropped by the next merge
    res = ck.compact(merge=True)
    (layer,) = only_layer(v1, res.snapshot)
    assert shape_ids(layer) == 0 and not layer.has_shapes
    assert sorted(resumelog.open(v1, create=False, run_id="x").completed) == COMPLETED


def test_the_cli_reads_version_1(v1: Path):
    from tests.test_cli import run_json

    doc = run_json("verify", str(v1))
    assert doc["ok"] and doc["errors"] == 0 and doc["snapshots"] == 2 and doc["segments"] == 3
    snap = run_json("inspect", str(v1), paths.snapshot_name(2))
    assert snap["completed_total"] == len(COMPLETED) - 1  # s20 is only in the journal
    assert snap["done_entries"]["format"] == 1 and snap["done_entries"]["chunks"]
