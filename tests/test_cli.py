"""The ``resumelog`` console script, run as a subprocess on local and S3 checkpoints.

Assertions are on ``--json`` documents (the schemas in ``docs/cli.md``) and exit codes:
0 ok, 1 problems found, 2 usage/bad input, 3 operation failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import resumelog
from resumelog import format as fmt
from resumelog import paths
from resumelog.cli._common import Scrubber, parse_duration, parse_storage_options, read_sources
from resumelog.storage import LocalStore


def _script() -> list[str]:
    here = Path(sys.executable).parent / "resumelog"
    if here.exists():
        return [str(here)]
    exe = shutil.which("resumelog")
    return [exe] if exe else [sys.executable, "-m", "resumelog.cli"]


CLI = _script()


def run(
    *args: str,
    input: str | None = None,  # noqa: A002 - subprocess.run's name
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the console script; stdin is never a terminal here."""
    base = {k: v for k, v in os.environ.items() if k != "RESUMELOG_STORAGE_OPTIONS"}
    full_env = {**base, "RESUMELOG_NO_SIGTERM": "1", **(env or {})}
    return subprocess.run(
        [*CLI, *args],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        env=full_env,
    )


def run_json(*args: str, code: int = 0, **kw: Any) -> Any:
    out = run(*args, "--json", **kw)
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    return json.loads(out.stdout)


def one_error_line(out: subprocess.CompletedProcess[str]) -> str:
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("resumelog: error: ")
    assert "Traceback" not in out.stderr
    return lines[0]


def populate(url: str, opts: dict[str, Any] | None = None) -> None:
    """10 sources completed and compacted into snapshot 1, then a journal tail: 5 more
    completed and 2 emitted but not drained (pending)."""
    ck = resumelog.open(url, storage_options=opts or {}, run_id="r1", fingerprint={"n": 17})
    with ck.writer("w1") as w:
        for i in range(10):
            w.complete(f"s{i}")
            w.flush()
    ck.compact()
    with ck.writer("w2") as w:
        for i in range(10, 15):
            w.complete(f"s{i}")
            w.flush()
        w.emit("p0")
        w.emit("p1")
        w.record("p1/fan", "p1", 2)
        w.flush()


@pytest.fixture
def ckpt(tmp_path: Path) -> str:
    url = str(tmp_path / "ckpt")
    populate(url)
    return url


def segments(root: str) -> list[str]:
    return [o.path for o in LocalStore(root).list(paths.JOURNAL_PREFIX)]


def flip_byte(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if at is None else at
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------- status


def test_status_counts(ckpt: str) -> None:
    st = run_json("status", ckpt)
    assert st["url"] == ckpt
    assert st["format_version"] == fmt.FORMAT_VERSION == 6
    assert st["layers"] == 1 and st["layer_bytes"] > 0
    assert st["fingerprint"] == {"n": 17}
    assert st["completed"] == 15
    assert st["pending"] == 2
    assert st["snapshot"] == 1
    assert st["anomalies"] == 0
    assert [r["run_id"] for r in st["runs"]] == ["r1"]
    assert st["runs"][0]["completed_sources"] == 15 and st["runs"][0]["pending_sources"] == 2
    assert sorted(w["writer_id"] for w in st["writers"]) == ["w1", "w2"]
    assert all(w["closed"] for w in st["writers"])
    assert st["journal_objects"] == len(segments(ckpt))
    assert st["unfolded_segments"] > 0
    assert st["snapshot_objects"] == 1
    for key in ("journal_bytes", "snapshot_bytes", "gc_reclaimable_objects", "gc_reclaimable_bytes", "records_folded"):
        assert isinstance(st[key], int)


def test_status_text(ckpt: str) -> None:
    out = run("status", ckpt)
    assert out.returncode == 0, out.stderr
    assert "completed    15" in out.stdout
    assert "pending      2" in out.stdout
    assert "w2" in out.stdout and "r1" in out.stdout


@pytest.mark.parametrize("cmd", ["status", "completed", "compact", "gc", "verify", "watch --once", "clear --yes"])
def test_missing_checkpoint_is_one_clear_line(tmp_path: Path, cmd: str) -> None:
    missing = str(tmp_path / "nothing-here")
    out = run(*cmd.split()[:1], missing, *cmd.split()[1:])
    assert out.returncode == 2
    assert one_error_line(out) == f"resumelog: error: no checkpoint at {missing}"
    assert not os.path.exists(missing)  # read commands never create anything


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    out = run("status", str(tmp_path / "nothing"), "--debug")
    assert out.returncode == 2
    assert "Traceback" in out.stderr and "no checkpoint at" in out.stderr.splitlines()[-1]


def test_usage_errors_exit_2(ckpt: str) -> None:
    assert run("frobnicate", ckpt).returncode == 2
    assert run("status").returncode == 2
    assert run("gc", ckpt, "--grace", "soon").returncode == 2
    out = run("pending", ckpt)  # no sources given
    assert out.returncode == 2 and "--sources" in one_error_line(out)
    assert run("--version").returncode == 0


def test_global_options_before_the_command(ckpt: str) -> None:
    out = run("--json", "status", ckpt)
    assert out.returncode == 0 and json.loads(out.stdout)["completed"] == 15


# --------------------------------------------------------------------------- pending / completed


def test_pending_from_file(ckpt: str, tmp_path: Path) -> None:
    f = tmp_path / "sources.txt"
    f.write_text("s0\n  s3 \n\np0\nnew-1\ns14\n")
    doc = run_json("pending", ckpt, "--sources", str(f))
    assert doc == {"url": ckpt, "requested": 5, "pending_count": 2, "pending": ["p0", "new-1"]}
    out = run("pending", ckpt, "--sources", str(f))
    assert out.returncode == 0 and out.stdout.splitlines() == ["p0", "new-1"]


def test_pending_from_stdin(ckpt: str) -> None:
    ids = [f"s{i}" for i in range(20)]
    doc = run_json("pending", ckpt, "--sources", "-", input="\n".join(ids) + "\n")
    assert doc["pending"] == [f"s{i}" for i in range(15, 20)]  # order kept
    doc = run_json("pending", ckpt, "--sources", "-", input=json.dumps(["s1", "zz", "s2"]))
    assert doc["pending"] == ["zz"]


def test_pending_exit_code(ckpt: str) -> None:
    assert run("pending", ckpt, "s1", "s2", "--exit-code").returncode == 0
    out = run("pending", ckpt, "s1", "zz", "--exit-code")
    assert out.returncode == 1 and out.stdout == "zz\n"
    assert run("pending", ckpt, "--sources", "/does/not/exist").returncode == 2


def test_completed(ckpt: str) -> None:
    doc = run_json("completed", ckpt)
    assert doc["count"] == 15 and sorted(doc["completed"]) == sorted(f"s{i}" for i in range(15))
    out = run("completed", ckpt, "--sort")
    assert out.returncode == 0 and out.stdout.splitlines() == sorted(f"s{i}" for i in range(15))


# --------------------------------------------------------------------------- compact / gc


def test_compact(ckpt: str) -> None:
    doc = run_json("compact", ckpt)
    assert doc["written"] is True and doc["snapshot"] == 2
    assert doc["completed"] == 15 and doc["segments_folded"] > 0 and doc["records_folded"] > 0
    again = run_json("compact", ckpt)
    assert again["written"] is False and again["snapshot"] == 2 and again["segments_folded"] == 0
    assert run_json("status", ckpt)["unfolded_segments"] == 0


def test_gc_dry_run_then_real(ckpt: str) -> None:
    run_json("compact", ckpt)
    before = segments(ckpt)
    default = run_json("gc", ckpt, "--dry-run")
    assert default["dry_run"] is True and default["segments"] == 0  # all younger than the 1 h grace
    dry = run_json("gc", ckpt, "--dry-run", "--grace", "0s")
    assert dry["dry_run"] is True and dry["grace_seconds"] == 0
    # the oldest of the (up to 3) retained snapshots decides: snapshot 1 covers w1 only
    assert set(dry["keys"]) == {s for s in before if s.startswith("journal/w1/")}
    assert dry["segments"] == len(dry["keys"]) and dry["snapshots"] == 0
    assert segments(ckpt) == before  # a dry run deletes nothing
    real = run_json("gc", ckpt, "--grace", "0", "--retain", "1")
    assert real["dry_run"] is False and real["segments"] == len(before) and real["snapshots"] == 1
    assert segments(ckpt) == []
    assert run_json("status", ckpt)["completed"] == 15
    assert run_json("verify", ckpt)["ok"] is True


# --------------------------------------------------------------------------- verify


def test_verify_clean(ckpt: str) -> None:
    doc = run_json("verify", ckpt)
    assert doc["ok"] is True and doc["problems"] == [] and doc["errors"] == 0
    assert doc["meta"] is True and doc["snapshots"] == 1 and doc["segments"] == len(segments(ckpt))
    assert doc["streams"] == 2
    out = run("verify", ckpt)
    assert out.returncode == 0 and out.stdout.startswith("OK: ")


def test_verify_finds_a_flipped_byte_in_a_middle_segment(ckpt: str) -> None:
    w1 = [s for s in segments(ckpt) if s.startswith("journal/w1/")]
    middle = w1[len(w1) // 2]
    flip_byte(Path(ckpt) / middle)
    doc = run_json("verify", ckpt, code=1)
    assert doc["ok"] is False and doc["errors"] == 1
    (problem,) = doc["problems"]
    assert problem["path"] == middle and problem["severity"] == "error" and problem["kind"] == "corrupt"
    assert "CRC" in problem["message"]
    out = run("verify", ckpt)
    assert out.returncode == 1 and middle in out.stdout and "CORRUPT" in out.stdout


def test_verify_finds_a_corrupt_snapshot_and_a_gap(ckpt: str) -> None:
    snap = Path(ckpt) / paths.snapshot_name(1)
    flip_byte(snap, at=snap.stat().st_size - 3)
    w2 = [s for s in segments(ckpt) if s.startswith("journal/w2/")]
    (Path(ckpt) / w2[2]).unlink()
    doc = run_json("verify", ckpt, code=1)
    kinds = {(p["kind"], p["path"].rstrip("/")) for p in doc["problems"]}
    assert ("corrupt", paths.snapshot_name(1)) in kinds
    assert ("journal_gap", w2[0].rsplit("/", 1)[0]) in kinds


def test_verify_tolerates_a_torn_last_segment_as_a_warning(ckpt: str) -> None:
    last = Path(ckpt) / [s for s in segments(ckpt) if s.startswith("journal/w2/")][-1]
    last.write_bytes(last.read_bytes()[:40])
    doc = run_json("verify", ckpt)
    assert doc["ok"] is True and doc["warnings"] == 1 and doc["problems"][0]["kind"] == "torn_tail"


def test_a_command_meeting_corruption_exits_1(ckpt: str) -> None:
    """Corruption a load cannot salvage (``meta.msgpack``; a corrupt segment is salvaged,
    ``tests/test_repair.py``) exits 1 naming the object."""
    flip_byte(Path(ckpt) / "meta.msgpack")
    out = run("status", ckpt)
    assert out.returncode == 1
    assert "meta.msgpack" in one_error_line(out) and "resumelog verify" in out.stderr


# --------------------------------------------------------------------------- reset / clear


def test_reset_yes(ckpt: str) -> None:
    doc = run_json("reset", ckpt, "s1", "s12", "nope", "--yes")
    assert doc == {"url": ckpt, "requested": 3, "reset": ["s1", "s12"], "not_completed": ["nope"]}
    assert run_json("pending", ckpt, "s0", "s1", "s12")["pending"] == ["s1", "s12"]
    assert run_json("status", ckpt)["completed"] == 13


def test_reset_from_stdin_needs_yes(ckpt: str) -> None:
    out = run("reset", ckpt, "--sources", "-", input="s1\ns2\n")
    assert out.returncode == 2 and "--yes" in one_error_line(out)
    doc = run_json("reset", ckpt, "--sources", "-", "--yes", input="s1\ns2\n")
    assert doc["reset"] == ["s1", "s2"]


def test_clear_yes(ckpt: str) -> None:
    n = len(LocalStore(ckpt).list(""))
    doc = run_json("clear", ckpt, "--yes")
    assert doc == {"url": ckpt, "cleared": True, "objects": n, "bytes": doc["bytes"]}
    assert LocalStore(ckpt).list("") == []
    out = run("status", ckpt)
    assert out.returncode == 2 and "no checkpoint at" in out.stderr


def test_clear_clears_a_checkpoint_that_does_not_open(tmp_path: Path) -> None:
    # the only segment of a stream with its header damaged: no run to quarantine, so the
    # checkpoint does not open, and the error says "restore the object, or clear the
    # checkpoint". Was: clear loaded the checkpoint first and failed the same way.
    url = str(tmp_path / "ck")
    w = resumelog.open(url, run_id="r1").writer("w1")
    w.complete("a")
    w.flush()
    w.closed = True  # killed: no closing segment
    (seg,) = LocalStore(url).list("journal/")
    path = Path(url) / seg.path
    data = bytearray(path.read_bytes())
    data[40] ^= 0xFF  # inside frame 0, the segment header
    path.write_bytes(bytes(data))
    out = run("status", url)
    assert out.returncode == 1 and "or clear the checkpoint" in one_error_line(out)
    doc = run_json("clear", url, "--yes")
    assert doc["cleared"] is True and doc["objects"] == 2
    assert LocalStore(url).list("") == []


@pytest.mark.parametrize("cmd", [["reset", "s1", "s2"], ["clear"]])
def test_refuses_without_yes_and_without_a_terminal(ckpt: str, cmd: list[str]) -> None:
    before = {o.path for o in LocalStore(ckpt).list("")}
    out = run(cmd[0], ckpt, *cmd[1:])
    assert out.returncode == 2
    assert "refusing" in one_error_line(out) and "--yes" in out.stderr
    assert {o.path for o in LocalStore(ckpt).list("")} == before
    assert run_json("status", ckpt)["completed"] == 15


# --------------------------------------------------------------------------- inspect


def test_inspect_segment_json(ckpt: str) -> None:
    w1 = [s for s in segments(ckpt) if s.startswith("journal/w1/")]
    doc = run_json("inspect", ckpt, w1[3])
    assert doc["ok"] is True and doc["kind"] == "segment" and doc["path"] == w1[3]
    name = paths.parse_segment(w1[3])
    assert name is not None
    assert doc["header"]["writer_id"] == "w1" and doc["header"]["seq"] == 3 == name.seq
    assert doc["header"]["incarnation"] == name.incarnation and doc["header"]["run_id"] == "r1"
    assert doc["footer"] == {"record_count": 2, "batch_count": 1, "closed": False}
    assert [(r["source"], r["delta"], r["emission"]) for r in doc["records"]] == [("s3", 1, True), ("s3", -1, False)]
    assert doc["preamble"]["magic"] == "RSLG" and all(f["crc_ok"] for f in doc["frames"])
    assert len(doc["frames"]) == 3  # header, one batch, footer
    # a full path under the root is accepted too, and text output is readable
    out = run("inspect", ckpt, os.path.join(ckpt, w1[3]))
    assert out.returncode == 0 and "<emit>  s3  +1  emission" in out.stdout


def test_inspect_snapshot_json(ckpt: str) -> None:
    doc = run_json("inspect", ckpt, paths.snapshot_name(1))
    assert doc["ok"] is True and doc["kind"] == "snapshot"
    assert doc["header"]["number"] == 1 and doc["header"]["completed_count"] == 10
    assert sorted(c["source"] for c in doc["completed"]) == sorted(f"s{i}" for i in range(10))
    assert {c["run"] for c in doc["completed"]} == {"r1"}
    assert [r["run_id"] for r in doc["runs"]] == ["r1"]
    assert [s["writer_id"] for s in doc["streams"]] == ["w1"] and doc["streams"][0]["seq"] == 10
    assert len(doc["frames"]) == 4  # header, body, layer references, done writers
    (layer,) = doc["layers"]
    assert layer["count"] == 10 and layer["tombstones"] == 0
    ldoc = run_json("inspect", ckpt, layer["name"])
    assert ldoc["kind"] == "layer" and ldoc["header"]["count"] == 10 and ldoc["header"]["runs"] == ["r1"]
    assert sorted(c["source"] for c in ldoc["completed"]) == sorted(f"s{i}" for i in range(10))
    limited = run_json("inspect", ckpt, paths.snapshot_name(1), "--limit", "3")
    assert len(limited["completed"]) == 3 and limited["completed_truncated"] is True
    meta = run_json("inspect", ckpt, paths.META)
    assert meta["kind"] == "meta" and meta["fingerprint"] == {"n": 17}


def test_inspect_pending_state_in_a_snapshot(ckpt: str) -> None:
    run_json("compact", ckpt)
    doc = run_json("inspect", ckpt, paths.snapshot_name(2))
    pend = {p["source"]: p for p in doc["pending"]}
    assert set(pend) == {"p0", "p1"}
    assert pend["p1"]["sum"] == 3 and pend["p1"]["emitted"] is True and pend["p0"]["sum"] == 1


def test_inspect_errors(ckpt: str) -> None:
    out = run("inspect", ckpt, "journal/none.seg")
    assert out.returncode == 2 and "no object" in one_error_line(out)
    assert run("inspect", ckpt, "../../etc/passwd").returncode == 2
    seg = [s for s in segments(ckpt) if s.startswith("journal/w1/")][2]
    flip_byte(Path(ckpt) / seg)
    doc = run_json("inspect", ckpt, seg, code=1)
    assert doc["ok"] is False and "CRC" in doc["error"]
    assert any(not f.get("crc_ok", True) for f in doc["frames"])


# --------------------------------------------------------------------------- storage options, secrets


def test_bad_storage_options_are_usage_errors_and_never_echoed(ckpt: str) -> None:
    secret = "hunter2-very-secret"
    out = run("status", ckpt, "-o", f"secret={secret}")
    assert out.returncode == 2
    assert secret not in out.stderr and secret not in out.stdout
    out = run("status", ckpt, "-o", secret)  # no '=': the value is not repeated
    assert out.returncode == 2 and secret not in out.stderr
    out = run("status", ckpt, "--debug", "-o", f"secret={secret}")
    assert out.returncode == 2 and "Traceback" in out.stderr and secret not in out.stderr


def test_storage_option_parsing() -> None:
    opts = parse_storage_options(
        [
            "anon=false",
            'client_kwargs={"endpoint_url": "http://127.0.0.1:9000"}',
            "client_kwargs.region_name=eu",
            "x=plain",
        ],
        env={"RESUMELOG_STORAGE_OPTIONS": '{"key": "K", "anon": true}'},
    )
    assert opts == {
        "key": "K",
        "anon": False,
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "eu"},
        "x": "plain",
    }
    scrub = Scrubber({"key": "AKIAEXAMPLE", "client_kwargs": {"endpoint_url": "http://h:1"}}, "ftp://bob:pw1234@h/x")
    assert scrub("AKIAEXAMPLE at http://h:1 by bob:pw1234") == "*** at http://h:1 by ***"


def test_duration_parsing() -> None:
    assert parse_duration("90") == 90
    assert parse_duration("15m") == 900
    assert parse_duration("1h30m") == 5400
    assert parse_duration("2d") == 172800
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_read_sources(tmp_path: Path) -> None:
    f = tmp_path / "s.json"
    f.write_text('["a", "b"]')
    assert read_sources(str(f), ["z"]) == ["z", "a", "b"]
    f.write_text("[not json\nb\n")
    assert read_sources(str(f)) == ["[not json", "b"]


# --------------------------------------------------------------------------- watch (no terminal)


def test_watch_once(ckpt: str) -> None:
    doc = run_json("watch", ckpt, "--once", "--total", "20")
    assert doc["completed"] == 15 and doc["pending"] == 2 and doc["remaining"] == 5
    assert {w["writer_id"] for w in doc["writers"]} == {"w1", "w2"}
    out = run("watch", ckpt, "--once")
    assert out.returncode == 0 and "completed 15  pending 2" in out.stdout
    before = {o.path for o in LocalStore(ckpt).list("")}
    assert {o.path for o in LocalStore(ckpt).list("")} == before  # read only


def test_demo_is_still_there() -> None:
    out = run("demo", "--help")
    assert out.returncode == 0 and "--sources" in out.stdout


# --------------------------------------------------------------------------- watch under a pseudo-terminal

WRITER = textwrap.dedent(
    """
    import sys, time, resumelog
    ck = resumelog.open(sys.argv[1], run_id="live")
    w = ck.writer("bg")
    end = time.time() + float(sys.argv[2])
    i = 0
    while time.time() < end:
        for _ in range(5):
            w.complete(f"live-{i}")
            i += 1
        w.flush()
        time.sleep(0.05)
    w.close()
    """
)


@pytest.mark.parametrize("renderer", ["rich", "plain"])
def test_watch_numbers_advance_on_a_terminal(tmp_path: Path, renderer: str) -> None:
    pexpect = pytest.importorskip("pexpect")
    if renderer == "rich":
        pytest.importorskip("rich")
    url = str(tmp_path / "live")
    resumelog.open(url, run_id="live")  # create it, so watch starts on an existing checkpoint
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, url, "120"], env={**os.environ, "RESUMELOG_NO_SIGTERM": "1"}
    )
    env = {**os.environ, "RESUMELOG_NO_SIGTERM": "1", "PYTHONFAULTHANDLER": "1"}  # (SIGABRT: its threads' stacks)
    if renderer == "plain":
        env["RESUMELOG_CLI_PLAIN"] = "1"
    child = pexpect.spawn(
        CLI[0],
        [*CLI[1:], "watch", url, "--interval", "0.5"],
        env=env,
        encoding="utf-8",
        dimensions=(30, 120),
        preexec_fn=_default_sigint,  # (not a mask or disposition another test left in this worker)
    )
    try:
        seen: list[int] = []
        deadline = time.monotonic() + 90  # generous for a loaded machine; done as soon as two values differ
        while time.monotonic() < deadline and (len(seen) < 2 or seen[-1] <= seen[0]):
            child.expect(r"completed (\d+)", timeout=max(deadline - time.monotonic(), 0.1))
            seen.append(int(child.match.group(1)))
        assert len(seen) >= 2 and seen[-1] > seen[0], seen
        assert child.isalive()
        child.sendintr()  # Ctrl-C ends the view cleanly
        try:
            child.expect(pexpect.EOF, timeout=120)  # (generous for a loaded machine)
        except pexpect.TIMEOUT:
            child.kill(signal.SIGABRT)
            child.expect(pexpect.EOF, timeout=30)
            pytest.fail(f"watch did not stop on Ctrl-C; where its threads were:\n{child.before[-6000:]}")
        child.close()
        assert child.exitstatus == 0
    finally:
        if child.isalive():
            child.terminate(force=True)
        writer.terminate()
        writer.wait(timeout=10)
    # watch never wrote: every object is the writer's (journal) or the initial meta
    assert {o.path.split("/")[0] for o in LocalStore(url).list("")} <= {"journal", paths.META}


def _default_sigint() -> None:
    """In a child before it runs the CLI: SIGINT delivered and handled by Python."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn(*args: str, env: dict[str, str] | None = None, **kw: Any) -> Any:
    pexpect = pytest.importorskip("pexpect")
    env = dict(env or {**os.environ, "RESUMELOG_NO_SIGTERM": "1"})
    env.pop("RESUMELOG_STORAGE_OPTIONS", None)
    return pexpect.spawn(CLI[0], [*CLI[1:], *args], env=env, encoding="utf-8", dimensions=(30, 120), **kw)


def test_confirmation_on_a_terminal(ckpt: str) -> None:
    pexpect = pytest.importorskip("pexpect")
    child = spawn("clear", ckpt)
    child.expect(r"Delete the checkpoint at .*\[y/N\] ", timeout=20)
    child.sendline("n")
    child.expect(pexpect.EOF, timeout=20)
    child.close()
    assert child.exitstatus == 2 and "not confirmed" in child.before
    assert run_json("status", ckpt)["completed"] == 15
    child = spawn("reset", ckpt, "s1", "s2")
    child.expect(r"Reset the completion of 2 sources .*\[y/N\] ", timeout=20)
    child.sendline("y")
    child.expect(pexpect.EOF, timeout=20)
    child.close()
    assert child.exitstatus == 0
    assert run_json("pending", ckpt, "s1", "s2", "s3")["pending"] == ["s1", "s2"]


def test_progress_bar_only_on_a_terminal(ckpt: str) -> None:
    pexpect = pytest.importorskip("pexpect")
    child = spawn("verify", ckpt)
    child.expect(pexpect.EOF, timeout=30)
    child.close()
    assert child.exitstatus == 0
    assert "OK: " in child.before
    if importlib.util.find_spec("rich") is not None:  # a rich.progress bar: count, rate, elapsed, ETA
        assert "━" in child.before and "21/21" in child.before and "/s" in child.before and "ETA" in child.before
    out = run("verify", ckpt)
    assert out.returncode == 0 and out.stderr == "" and "verify" not in out.stdout.split("OK: ")[0]


def test_plain_progress_bar_without_rich_has_rate_and_eta(ckpt: str) -> None:
    pexpect = pytest.importorskip("pexpect")
    child = spawn("verify", ckpt, env={**os.environ, "RESUMELOG_NO_SIGTERM": "1", "RESUMELOG_CLI_PLAIN": "1"})
    child.expect(pexpect.EOF, timeout=30)
    child.close()
    assert child.exitstatus == 0
    assert re.search(r"verify \[#+\] 21/21  100%  [\d,.]+/s  \d+:\d\d elapsed  ETA \d+:\d\d", child.before), (
        child.before
    )


def test_status_shows_progress_while_folding_a_long_tail(ckpt: str) -> None:
    pexpect = pytest.importorskip("pexpect")
    child = spawn("status", ckpt)
    child.expect(pexpect.EOF, timeout=30)
    child.close()
    assert child.exitstatus == 0
    assert "folding journal" in child.before and "completed    15" in child.before


# --------------------------------------------------------------------------- S3


def s3_args(opts: dict[str, Any]) -> list[str]:
    return [arg for k, v in opts.items() for arg in ("-o", f"{k}={json.dumps(v) if not isinstance(v, str) else v}")]


@pytest.mark.s3
def test_s3_status_pending_completed(s3_url: tuple[str, dict[str, Any]]) -> None:
    url, opts = s3_url
    populate(url, opts)
    st = run_json("status", url, *s3_args(opts))
    assert st["completed"] == 15 and st["pending"] == 2 and st["snapshot"] == 1
    assert run_json("pending", url, "s1", "zz", *s3_args(opts))["pending"] == ["zz"]
    # options may also come from the environment (keeps secrets out of `ps`)
    env = {"RESUMELOG_STORAGE_OPTIONS": json.dumps(opts)}
    assert run_json("completed", url, env=env)["count"] == 15
    out = run("status", url.rsplit("/", 1)[0] + "/missing-prefix", *s3_args(opts))
    assert out.returncode == 2 and "no checkpoint at" in one_error_line(out)


@pytest.mark.s3
def test_s3_verify_finds_corruption(s3_server: Any, s3_url: tuple[str, dict[str, Any]]) -> None:
    url, opts = s3_url
    populate(url, opts)
    assert run_json("verify", url, *s3_args(opts))["ok"] is True
    fs = s3_server.filesystem()
    root = url.removeprefix("s3://")
    keys = sorted(k for k in fs.find(f"{root}/journal/w1/"))
    middle = keys[len(keys) // 2]
    data = bytearray(fs.cat_file(middle))
    data[len(data) // 2] ^= 0xFF
    fs.pipe_file(middle, bytes(data))
    doc = run_json("verify", url, *s3_args(opts), code=1)
    assert [p["path"] for p in doc["problems"]] == [middle[len(root) + 1 :]]


@pytest.mark.s3
def test_s3_compact_gc_inspect_and_secrets(s3_server: Any, s3_url: tuple[str, dict[str, Any]]) -> None:
    url, opts = s3_url
    populate(url, opts)
    assert run_json("compact", url, *s3_args(opts))["snapshot"] == 2
    dry = run_json("gc", url, "--dry-run", "--grace", "0", *s3_args(opts))
    assert dry["segments"] > 0
    snap = run_json("inspect", url, paths.snapshot_name(2), *s3_args(opts))
    assert snap["header"]["completed_count"] == 15
    if s3_server.kind != "moto":  # moto accepts any credentials
        bad = {**opts, "secret": "wrong-secret-0123456789"}
        out = run("status", url, *s3_args(bad))
        assert out.returncode in (2, 3)
        assert "wrong-secret-0123456789" not in out.stderr + out.stdout
        assert str(opts["secret"]) not in out.stderr + out.stdout
        one_error_line(out)


def test_a_directory_without_resumelog_objects_is_no_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    out = run("status", str(tmp_path))
    assert out.returncode == 2 and one_error_line(out) == f"resumelog: error: no checkpoint at {tmp_path}"
    out = run("status", str(tmp_path / "notes.txt"))
    assert out.returncode == 2 and "is a file" in one_error_line(out)


# --------------------------------------------------------------------------- issue 21: demo safety


def test_demo_refuses_to_replace_an_existing_checkpoint(ckpt: str) -> None:
    before = {o.path for o in LocalStore(ckpt).list("")}
    out = run("demo", "--path", ckpt, "--sources", "4", "--workers", "1")
    assert out.returncode == 2
    assert "refusing to replace the existing checkpoint" in one_error_line(out) and "--yes" in out.stderr
    assert {o.path for o in LocalStore(ckpt).list("")} == before
    assert run_json("status", ckpt)["completed"] == 15  # untouched
    doc = run_json("demo", "--path", ckpt, "--sources", "4", "--workers", "2", "--yes")
    assert doc["ok"] is True and doc["sources"] == doc["completed"] == 4 and doc["missing"] == 0
    assert run_json("status", ckpt)["completed"] == 4


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--workers", "0", "--workers: expected at least 1, got 0"), ("--sources", "0", "--sources: expected at least 1")],
)
def test_demo_rejects_no_workers_or_no_sources(tmp_path: Path, flag: str, value: str, message: str) -> None:
    out = run("demo", "--path", str(tmp_path / "d"), flag, value)
    assert out.returncode == 2 and message in one_error_line(out) and "OK" not in out.stdout
    assert not (tmp_path / "d").exists()


def test_demo_still_refuses_a_directory_of_something_else(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    out = run("demo", "--path", str(tmp_path), "--yes")
    assert out.returncode == 2 and "is not a resumelog checkpoint" in one_error_line(out)
    assert (tmp_path / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------- issue 21: error messages


def test_an_unknown_protocol_is_named(tmp_path: Path) -> None:
    out = run("status", "htp://foo/bar")
    assert out.returncode == 2
    line = one_error_line(out)
    assert "unknown protocol htp://" in line and "single_writer" not in line
    assert "did you mean s3://" in one_error_line(run("status", "s4://bucket/x"))


def test_fsspec_options_on_a_local_path_are_named(ckpt: str) -> None:
    out = run("status", ckpt, "-o", "foo=bar")
    assert out.returncode == 2
    line = one_error_line(out)
    assert "storage option 'foo' does not apply to a local path (it takes only: fsync" in line
    assert "LocalStore" not in line and "__init__" not in line
    assert run_json("status", ckpt, "-o", "fsync=false")["completed"] == 15  # a real local option still works


@pytest.mark.parametrize(
    ("args", "code", "kind", "message"),
    [
        (["status", "{missing}"], 2, "usage", "no checkpoint at {missing}"),
        (["gc", "{missing}", "--retain", "0"], 2, "usage", "gc: argument --retain: expected at least 1, got 0"),
        (["frobnicate"], 2, "usage", "argument COMMAND: invalid choice: 'frobnicate'"),
        (["status", "htp://x/y"], 2, "usage", "unknown protocol htp://"),
    ],
)
def test_json_errors_are_json_on_stdout(tmp_path: Path, args: list[str], code: int, kind: str, message: str) -> None:
    missing = str(tmp_path / "missing")
    out = run(*(a.format(missing=missing) for a in args), "--json")
    assert out.returncode == code
    doc = json.loads(out.stdout)
    assert doc["exit_code"] == code and doc["kind"] == kind
    assert doc["error"].startswith(message.format(missing=missing))
    assert one_error_line(out) == f"resumelog: error: {doc['error']}"  # the same line for humans
    assert "usage:" not in out.stderr


def test_a_corrupt_object_error_is_json_with_exit_1(ckpt: str) -> None:
    flip_byte(Path(ckpt) / "meta.msgpack")
    doc = run_json("completed", ckpt, code=1)
    assert doc["kind"] == "problems" and doc["exit_code"] == 1 and "meta.msgpack" in doc["error"] and doc["url"] == ckpt


@pytest.mark.s3
def test_s3_missing_bucket_is_not_no_checkpoint(s3_url: tuple[str, dict[str, Any]]) -> None:
    _, opts = s3_url
    out = run("status", "s3://no-such-bucket-resumelog/x", *s3_args(opts))
    assert out.returncode == 2
    assert one_error_line(out) == (
        "resumelog: error: no checkpoint at s3://no-such-bucket-resumelog/x: bucket 'no-such-bucket-resumelog' "
        "does not exist at s3:// (or these credentials cannot see it)"
    )
    url, opts = s3_url  # an existing bucket with nothing under the prefix is just "no checkpoint"
    assert one_error_line(run("status", url, *s3_args(opts))) == f"resumelog: error: no checkpoint at {url}"


# --------------------------------------------------------------------------- issue 21: consistency


def test_bare_resumelog_prints_help() -> None:
    out = run()
    assert out.returncode == 0 and out.stderr == ""
    assert out.stdout.startswith("usage: resumelog") and "status" in out.stdout and "examples:" in out.stdout


def test_every_command_help_has_examples() -> None:
    from resumelog.cli._main import EXAMPLES, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(EXAMPLES)
    out = run("watch", "--help")
    assert out.returncode == 0 and "examples:\n  resumelog watch /data/ckpt --total 120000" in out.stdout
    for name, p in sub.choices.items():
        text = p.format_help()
        assert "examples:" in text and all(cmd in text for cmd, _ in EXAMPLES[name]), name
        assert all(cmd.startswith(f"resumelog {name}") for cmd, _ in EXAMPLES[name]), name


def test_watch_interval_takes_a_duration_like_grace_and_every(ckpt: str) -> None:
    doc = run_json("watch", ckpt, "--interval", "5m", "--once")
    assert doc["completed"] == 15
    out = run("watch", ckpt, "--interval", "0s", "--once")
    assert out.returncode == 2 and "--interval: expected a positive duration" in one_error_line(out)


def test_gc_retain_0_is_refused_while_parsing(tmp_path: Path) -> None:
    out = run("gc", str(tmp_path / "missing"), "--retain", "0")  # before opening anything
    assert out.returncode == 2 and "--retain: expected at least 1, got 0" in one_error_line(out)


def test_counts_of_one_are_singular(ckpt: str) -> None:
    text = run("verify", ckpt).stdout
    assert "checked meta, 1 snapshot, " in text and "in 2 streams" in text and "0 errors, 0 warnings" in text
    status = run("status", ckpt).stdout
    assert re.search(r"snapshot     #1  \(1 object, ", status), status
    reset = run("reset", ckpt, "s1", "nope", "--yes").stdout
    assert reset.splitlines() == ["reset 1 source: it will rerun", "1 given source was not complete (left alone)"]
    gc = run("gc", ckpt, "--dry-run", "--retain", "1").stdout
    assert "0 segments" in gc and "0 snapshots" in gc and "kept the newest snapshot," in gc


SIGKILLED = textwrap.dedent(
    """
    import os, signal, sys, resumelog
    ck = resumelog.open(sys.argv[1], run_id="r9")
    w = ck.writer("doomed")
    w.complete("k0")
    w.flush()
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_sigkilled_writer_is_stale_in_status_and_watch(ckpt: str) -> None:
    proc = subprocess.run([sys.executable, "-c", SIGKILLED, ckpt], env={**os.environ, "RESUMELOG_NO_SIGTERM": "1"})
    assert proc.returncode == -signal.SIGKILL
    time.sleep(1.2)
    st = run_json("status", ckpt, "--stale-after", "1s")
    states = {w["writer_id"]: w["state"] for w in st["writers"]}
    assert states == {"doomed": "stale", "w1": "closed", "w2": "closed"}
    frame = run_json("watch", ckpt, "--once", "--stale-after", "1s")
    assert {w["writer_id"]: w["state"] for w in frame["writers"]} == states
    text = run("status", ckpt, "--stale-after", "1s").stdout
    assert "writers (1 stale, 2 closed)" in text and re.search(r"doomed .* stale\n", text)
    assert "writers: 0 active, 1 stale, 2 closed" in run("watch", ckpt, "--once", "--stale-after", "1s").stdout
    fresh = run_json("status", ckpt)  # default threshold 5m: just flushed, so still active
    assert {w["writer_id"]: w["state"] for w in fresh["writers"]}["doomed"] == "active"


def test_an_operator_reset_is_not_an_anomaly(ckpt: str) -> None:
    run_json("reset", ckpt, "s1", "--yes")
    st = run_json("status", ckpt)
    assert st["anomalies"] == 0 and st["anomaly_counts"] == {} and st["resets"] == 1
    assert st["recent_anomalies"] == []
    text = run("status", ckpt).stdout
    assert "anomalies    0" in text and "resets       1" in text
    frame = run_json("watch", ckpt, "--once")
    assert frame["anomalies"] == 0 and frame["resets"] == 1


def test_pending_means_the_same_in_status_and_inspect(tmp_path: Path) -> None:
    url = str(tmp_path / "c")
    ck = resumelog.open(url, run_id="r1")
    with ck.writer("a") as w:
        w.emit("x")  # started in r1, never drained
        w.emit("y")
    ck2 = resumelog.open(url, run_id="r2")
    with ck2.writer("b") as w:
        w.complete("x")  # r2 completed x: r1's partial state for x is no longer pending
    ck2.compact()
    st = run_json("status", url)
    snap = run_json("inspect", url, paths.snapshot_name(1))
    assert st["pending"] == snap["pending_sources"] == 1  # y
    assert snap["pending_total"] == 2  # two partial states (r1/x, r1/y)
    text = run("inspect", url, paths.snapshot_name(1)).stdout
    assert "pending 1 (sources started, not complete; 2 partial states by run)" in text


def test_watch_total_draws_a_progress_bar(ckpt: str) -> None:
    out = run("watch", ckpt, "--once", "--total", "20")
    assert out.returncode == 0
    assert "progress  [######################--------]  75.0%  15/20" in out.stdout


# --------------------------------------------------------------------------- issue 21: history and export


def two_runs(url: str) -> None:
    """Run r1 completes a0..a2 and starts a3; run r2 completes b0, b1 and a3."""
    ck = resumelog.open(url, run_id="r1")
    with ck.writer("w1") as w:
        for i in range(3):
            w.complete(f"a{i}")
        w.emit("a3")
    ck2 = resumelog.open(url, run_id="r2")
    with ck2.writer("w2") as w:
        w.complete("b0")
        w.complete("b1")
        w.complete("a3")


def test_log_lists_runs_and_which_run_completed_a_source(tmp_path: Path) -> None:
    url = str(tmp_path / "c")
    two_runs(url)
    doc = run_json("log", url)
    assert [(r["run_id"], r["completed"], r["writers"], r["state"]) for r in doc["runs"]] == [
        ("r1", 3, 1, "live"),
        ("r2", 3, 1, "live"),
    ]
    assert doc["completed"] == 6
    who = run_json("log", url, "a0", "a3", "nope")
    assert who["sources"] == [
        {"source": "a0", "completed": True, "run": "r1"},
        {"source": "a3", "completed": True, "run": "r2"},
        {"source": "nope", "completed": False, "run": None},
    ]
    text = run("log", url, "a0", "nope").stdout
    assert text.splitlines() == ["a0\tr1", "nope\t-  (not complete)"]
    assert run("log", url).stdout.startswith("2 runs at ")


def test_completed_by_run(tmp_path: Path) -> None:
    url = str(tmp_path / "c")
    two_runs(url)
    doc = run_json("completed", url, "--run", "r2", "--sort")
    assert doc == {"url": url, "count": 3, "run": "r2", "completed": ["a3", "b0", "b1"]}
    assert run("completed", url, "--run", "r1", "--sort").stdout.splitlines() == ["a0", "a1", "a2"]
    out = run("completed", url, "--run", "r7")
    assert out.returncode == 2 and "no run 'r7'" in one_error_line(out) and "r1, r2" in out.stderr


def test_reset_run_voids_a_whole_run(tmp_path: Path) -> None:
    url = str(tmp_path / "c")
    two_runs(url)
    refused = run("reset", url, "--run", "r2")
    assert refused.returncode == 2 and "refusing" in one_error_line(refused)
    doc = run_json("reset", url, "--run", "r2", "--yes")
    assert doc == {"url": url, "runs": [{"run_id": "r2", "reset": ["b0", "b1", "a3"], "voided_pending": []}]}
    assert sorted(run_json("completed", url)["completed"]) == ["a0", "a1", "a2"]
    assert run_json("pending", url, "a3", "b0", "a0")["pending"] == ["a3", "b0"]
    # r2's records are void for good: a late completion by r2 of a source it had done is ignored
    late = resumelog.open(url, run_id="r2")
    with late.writer("w3") as w:
        w.complete("b0")
    assert run_json("pending", url, "b0")["pending"] == ["b0"]
    # a new run completes them again
    ck = resumelog.open(url, run_id="r3")
    with ck.writer("w4") as w:
        w.complete("b0")
    assert run_json("pending", url, "b0")["pending"] == []
    assert run("reset", url, "--run", "nope", "--yes").returncode == 2
    assert "not both" in one_error_line(run("reset", url, "s1", "--run", "r1", "--yes"))


@pytest.mark.parametrize(("name", "fmt_name"), [("done.parquet", "parquet"), ("done.arrow", "arrow")])
def test_export_reads_back_with_pyarrow(tmp_path: Path, name: str, fmt_name: str) -> None:
    pa = pytest.importorskip("pyarrow")
    url = str(tmp_path / "c")
    two_runs(url)
    out = tmp_path / name
    doc = run_json("export", url, str(out))
    assert doc["rows"] == 6 and doc["format"] == fmt_name and doc["bytes"] == out.stat().st_size
    if fmt_name == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(out)
    else:
        table = pa.ipc.open_file(pa.memory_map(str(out))).read_all()
    assert table.schema.names == ["source", "run"]
    assert sorted(zip(table["source"].to_pylist(), table["run"].to_pylist())) == [
        ("a0", "r1"),
        ("a1", "r1"),
        ("a2", "r1"),
        ("a3", "r2"),
        ("b0", "r2"),
        ("b1", "r2"),
    ]
    assert table.schema.metadata[b"resumelog.url"] == url.encode()
    again = run("export", url, str(out))
    assert again.returncode == 2 and "--overwrite" in one_error_line(again)
    only = run_json("export", url, str(out), "--run", "r1", "--overwrite")
    assert only["rows"] == 3 and only["run"] == "r1"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_export_to_stdout_is_an_arrow_stream(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    url = str(tmp_path / "c")
    two_runs(url)
    proc = subprocess.run([*CLI, "export", url, "-"], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    table = pa.ipc.open_stream(proc.stdout).read_all()
    assert table.num_rows == 6


def test_export_without_pyarrow_is_a_clear_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from resumelog.cli import main

    url = str(tmp_path / "c")
    two_runs(url)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
    assert main(["export", url, str(tmp_path / "x.parquet"), "--json"]) == 2
    out = capsys.readouterr()
    assert json.loads(out.out)["error"] == "export needs pyarrow: pip install pyarrow (or resumelog[ray])"
    assert not (tmp_path / "x.parquet").exists()


def test_main_in_process_leaves_the_logger_as_it_was(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from resumelog.cli import main

    log = logging.getLogger("resumelog")
    before = (list(log.handlers), log.propagate, log.level)
    assert main(["status", str(tmp_path / "missing")]) == 2
    assert (list(log.handlers), log.propagate, log.level) == before
    assert capsys.readouterr().err == f"resumelog: error: no checkpoint at {tmp_path / 'missing'}\n"
