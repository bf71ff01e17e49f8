"""``resumelog import-curator PATH URL`` on a checkpoint written by NeMo Curator 1.4's
own LMDB actor class (undecorated, as Curator's own tests instantiate it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nemo_curator.utils.resumability_actor import ResumabilityActor

import resumelog
from resumelog.cli import main
from resumelog.curator_backend import curator_completed


def _curator_checkpoint(path: Path) -> None:
    """Two writers (a SLURM array, say), as Curator's actor writes them: A completes
    s0 and s1, B completes s2 and leaves s3 pending."""
    cls = ResumabilityActor.__ray_metadata__.modified_class
    a = cls(str(path), writer_id="hostA-1")
    a.apply_deltas([("0_s0", "s0", 1), ("0_s1", "s1", 1), ("0_s0_0", "s0", -1), ("0_s1_0", "s1", -1)])
    a.close()
    b = cls(str(path), writer_id="hostB-2")
    b.apply_deltas([("0_s2", "s2", 1), ("0_s3", "s3", 1), ("0_s2_0", "s2", -1), ("0_s3_0", "s3", 0)])
    b.close()


def test_import_curator(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _curator_checkpoint(tmp_path / "cur")
    assert curator_completed(tmp_path / "cur") == {"s0", "s1", "s2"}
    url = str(tmp_path / "rl")
    assert main(["import-curator", str(tmp_path / "cur"), url, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["curator_completed"], doc["imported"], doc["already_complete"]) == (3, 3, 0)
    ckpt = resumelog.open(url, create=False)
    assert set(ckpt.completed) == {"s0", "s1", "s2"}
    assert ckpt.pending(["s0", "s1", "s2", "s3"]) == ["s3"]
    # again, from the metadata directory itself: nothing new
    assert main(["import-curator", str(tmp_path / "cur" / ".nemo_curator_metadata"), url]) == 0
    assert "imported 0 completed sources" in capsys.readouterr().out
    assert set(resumelog.open(url, create=False).completed) == {"s0", "s1", "s2"}


def test_import_curator_needs_a_curator_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import-curator", str(tmp_path), str(tmp_path / "rl")]) == 2
    assert "no NeMo Curator checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "rl").exists()
