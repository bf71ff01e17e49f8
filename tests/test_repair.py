"""Salvage instead of "restore or clear" (issue 21): one corrupt segment not yet
compacted no longer makes a checkpoint unusable, and ``resumelog repair`` / ``verify
--repair`` make the salvage durable and clean. Local disk and a real S3 server."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import resumelog
from resumelog import paths


def _flip(store: resumelog.storage.Store, key: str, at: int) -> None:
    data = bytearray(store.read(key))
    data[at] ^= 0x04
    store.delete([key])
    store.put_if_absent(key, bytes(data))


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """The CLI as an operator runs it: a process of its own."""
    out = subprocess.run([sys.executable, "-m", "resumelog.cli", *args], capture_output=True, text=True, timeout=120)
    return out.returncode, out.stdout


def _damaged(url: str, opts: dict) -> tuple[resumelog.Checkpoint, str]:
    """A checkpoint with a compacted source, then three flushes of run r1 whose
    middle segment has one flipped bit in a batch frame."""
    ck = resumelog.open(url, storage_options=opts, run_id="r1")
    with ck.writer("early") as w:
        w.complete("published")
    ck.compact()
    with ck.writer("w1") as w:
        for i in range(3):
            w.complete(f"s{i}")
            w.flush()
    key = sorted(o.path for o in ck.store.list(paths.JOURNAL_PREFIX) if "/w1/" in o.path)[1]
    _flip(ck.store, key, -10)  # inside the batch frame, header intact
    return ck, key


def test_every_command_works_on_a_checkpoint_with_a_corrupt_segment(local_or_s3, capsys):
    url, opts = local_or_s3
    _, key = _damaged(url, opts)
    reader = resumelog.open(url, storage_options=opts, create=False)
    assert sorted(reader.completed) == ["published"]
    assert reader.status().anomaly_counts == {"corrupt_segment": 1}
    if not opts:  # the CLI on local disk (S3 options travel in the environment in real use)
        code, out = _cli(capsys, "status", url)
        assert code == 0 and "corrupt_segment 1" in out
        code, out = _cli(capsys, "pending", url, "published", "s0", "s9")
        assert code == 0 and out.split() == ["s0", "s9"]
        code, out = _cli(capsys, "verify", url)
        assert code == 1 and key in out
        code, out = _cli(capsys, "compact", url)
        assert code == 0
        code, out = _cli(capsys, "watch", url, "--once")
        assert code == 0


def test_repair_publishes_the_damage_then_moves_the_object_aside(local_or_s3):
    url, opts = local_or_s3
    ck, key = _damaged(url, opts)
    dry = ck.repair(dry_run=True)
    assert dry.corrupt_segments == [key] and dry.damaged_runs == ["r1"] and dry.moved == []
    assert ck.store.exists(key)
    result = ck.repair()
    assert result.moved == [paths.QUARANTINE_PREFIX + key] and result.snapshot == 2
    assert not ck.store.exists(key) and ck.store.exists(paths.QUARANTINE_PREFIX + key)
    again = resumelog.open(url, storage_options=opts, run_id="r2")
    assert sorted(again.completed) == ["published"]
    assert [r.run_id for r in again.status().runs if r.damaged] == ["r1"]
    assert again.repair().clean  # nothing left to repair
    with again.writer("rerun") as w:
        w.complete_many(["s0", "s1", "s2"])
    assert sorted(resumelog.open(url, storage_options=opts).completed) == ["published", "s0", "s1", "s2"]
    again.clear()
    assert again.store.list("") == []  # quarantine/ is resumelog's: cleared too


def test_verify_repair_and_repair_json_on_the_command_line(tmp_path, capsys):
    url = str(tmp_path / "ck")
    _, key = _damaged(url, {})
    code, out = _cli(capsys, "repair", url, "--dry-run", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["corrupt_segments"] == [key] and doc["moved"] == [] and doc["dry_run"]
    code, out = _cli(capsys, "verify", url, "--repair", "--json")
    doc = json.loads(out)
    assert code == 0, out
    assert doc["before"]["errors"] >= 1 and doc["errors"] == 0
    assert doc["repair"]["moved"] == [paths.QUARANTINE_PREFIX + key] and doc["repair"]["damaged_runs"] == ["r1"]
    code, out = _cli(capsys, "repair", url)
    assert code == 0 and "nothing to repair" in out


def test_a_corrupt_segment_whose_run_cannot_be_told_is_still_refused(tmp_path):
    """Its header is damaged and its stream has no other segment and no mark: skipping
    it could complete a source early (it may hold a fan-out), so the load refuses."""
    url = str(tmp_path / "ck")
    ck = resumelog.open(url)
    w = ck.writer("w")
    w.complete("a")
    w.flush()
    w.closed = True  # killed: no closing segment
    (seg,) = [o.path for o in ck.store.list(paths.JOURNAL_PREFIX)]
    _flip(ck.store, seg, 40)  # inside the header frame
    with pytest.raises(resumelog.CorruptSegment, match="cannot be told"):
        resumelog.open(url)
