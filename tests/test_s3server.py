"""The loopback S3 test servers of :mod:`resumelog.testing.s3server` (moto, SeaweedFS)."""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest

from resumelog.testing import s3server
from resumelog.testing.s3server import S3Server, S3ServerError, available_kinds, kinds_from_env, run_s3_server

KINDS = available_kinds()
needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc")


# ---------------------------------------------------------------------- /proc helpers


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.append(int(entry))
    return kids


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    return inodes


def _listening_addresses(pid: int) -> list[tuple[str, int]]:
    """(hex local address, port) of the TCP sockets ``pid`` listens on."""
    inodes = _socket_inodes(pid)
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                addr, port = cols[1].split(":")
                found.append((addr, int(port, 16)))
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


def _answers(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def _is_create_conflict(exc: BaseException) -> bool:
    return isinstance(exc, FileExistsError) or (
        type(exc) is OSError and exc.errno == errno.EINVAL and "pre-condition" in str(exc)
    )


# ---------------------------------------------------------------------- servers


@needs_proc
@pytest.mark.s3
@pytest.mark.parametrize("kind", KINDS)
def test_server_roundtrip_and_clean_stop(kind: str, tmp_path: Path) -> None:
    import s3fs

    before = set(_children(os.getpid()))
    with run_s3_server(kind, workdir=str(tmp_path)) as server:
        assert server.kind == kind
        assert server.endpoint_url.startswith("http://127.0.0.1:")
        [pid] = set(_children(os.getpid())) - before
        listening = _listening_addresses(pid)
        assert listening, "the server listens on nothing?"
        # 127.0.0.1 only (little-endian hex in /proc/net/tcp); never 0.0.0.0 or IPv6
        assert {addr for addr, _ in listening} == {"0100007F"}, listening
        sockets = s3server._unix_sockets(pid)
        if kind == "seaweedfs":
            assert sockets, "SeaweedFS should have its unix sockets open"

        server.create_bucket("roundtrip")
        server.create_bucket("roundtrip")  # existing: fine
        fs = s3fs.S3FileSystem(**server.storage_options(), skip_instance_cache=True, use_listings_cache=False)
        fs.pipe_file("roundtrip/a/b", b"hello", mode="create")
        assert fs.cat_file("roundtrip/a/b") == b"hello"
        with pytest.raises(OSError) as info:
            fs.pipe_file("roundtrip/a/b", b"other", mode="create")
        assert _is_create_conflict(info.value), repr(info.value)
        assert fs.cat_file("roundtrip/a/b") == b"hello"
        assert fs.find("roundtrip/a") == ["roundtrip/a/b"]
        with pytest.raises(FileNotFoundError):
            fs.cat_file("roundtrip/missing")
        with pytest.raises(FileNotFoundError):
            fs.pipe_file("no-such-bucket/k", b"x")
        # the options survive a JSON round trip (they are passed to other processes)
        assert json.loads(json.dumps(server.storage_options())) == server.storage_options()
        if kind == "seaweedfs":
            bad = s3fs.S3FileSystem(
                key=server.access_key,
                secret="wrong-" + server.secret_key,
                client_kwargs={"endpoint_url": server.endpoint_url, "region_name": server.region},
                skip_instance_cache=True,
            )
            with pytest.raises(PermissionError):
                bad.cat_file("roundtrip/a/b")

    assert not os.path.exists(f"/proc/{pid}")  # stopped and reaped
    assert not _answers(server.endpoint_url)
    for path in sockets:
        assert not os.path.exists(path), path
    ports = [p for _, p in listening]
    leftovers = [f for f in os.listdir("/tmp") if f.startswith("seaweedfs-") and any(f"-{p}." in f for p in ports)]
    assert not leftovers
    assert (tmp_path / f"{kind}.log").exists()


@needs_proc
@pytest.mark.s3
@pytest.mark.parametrize("kind", KINDS)
def test_exception_in_block_stops_server(kind: str) -> None:
    before = set(_children(os.getpid()))
    with pytest.raises(KeyError), run_s3_server(kind) as server:  # temporary workdir
        [pid] = set(_children(os.getpid())) - before
        raise KeyError("boom")
    assert pid not in _children(os.getpid())
    assert not os.path.exists(f"/proc/{pid}")
    assert not _answers(server.endpoint_url)


# ---------------------------------------------------------------------- failures (fake servers, fast)


def _fake_weed(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-weed"
    script.write_text(f"#!{sys.executable}\nimport os, sys, time\n{body}\n")
    script.chmod(0o755)
    return str(script)


def test_startup_failure_reports_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESUMELOG_WEED", _fake_weed(tmp_path, "print('weed says boom', flush=True); sys.exit(3)"))
    with pytest.raises(S3ServerError, match=r"(?s)status 3.*weed says boom"):
        with run_s3_server("seaweedfs", workdir=str(tmp_path / "w")):
            pass


@needs_proc
def test_startup_timeout_kills_process_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pids = tmp_path / "pids"
    body = (
        "import subprocess\n"
        "kid = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{kid.pid}}')\n"
        "print('hanging', flush=True); time.sleep(60)"
    )
    monkeypatch.setenv("RESUMELOG_WEED", _fake_weed(tmp_path, body))
    t0 = time.monotonic()
    with pytest.raises(S3ServerError, match=r"(?s)did not answer.*hanging"):
        with run_s3_server("seaweedfs", workdir=str(tmp_path / "w"), startup_timeout=1.5):
            pass
    assert time.monotonic() - t0 < 15
    for pid in map(int, pids.read_text().split()):
        deadline = time.monotonic() + 5
        while _alive(pid):
            assert time.monotonic() < deadline, f"process {pid} of the group survived"
            time.sleep(0.05)


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown S3 server kind"):
        with run_s3_server("minio"):
            pass


# ---------------------------------------------------------------------- selection and options


def test_kinds_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RESUMELOG_S3_SERVERS", raising=False)
    assert kinds_from_env() == [k for k in ("moto", "seaweedfs") if k in KINDS]
    monkeypatch.setenv("RESUMELOG_S3_SERVERS", " seaweedfs , moto,seaweedfs")
    assert kinds_from_env() == [k for k in ("seaweedfs", "moto") if k in KINDS]
    monkeypatch.setenv("RESUMELOG_S3_SERVERS", "")
    assert kinds_from_env() == []
    monkeypatch.setenv("RESUMELOG_S3_SERVERS", "moto,minio")
    with pytest.raises(ValueError, match="minio"):
        kinds_from_env()


def test_available_kinds_follows_weed_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESUMELOG_WEED", str(tmp_path / "absent"))
    assert "seaweedfs" not in available_kinds()
    monkeypatch.setenv("RESUMELOG_WEED", _fake_weed(tmp_path, "pass"))
    assert "seaweedfs" in available_kinds()


def test_storage_options_shape() -> None:
    server = S3Server("moto", "http://127.0.0.1:1234", "ak", "sk")
    opts = server.storage_options()
    assert opts == {
        "key": "ak",
        "secret": "sk",
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:1234", "region_name": "us-east-1"},
    }
    opts["client_kwargs"]["region_name"] = "changed"  # type: ignore[index]
    assert server.storage_options()["client_kwargs"] == {  # a fresh dict each time
        "endpoint_url": "http://127.0.0.1:1234",
        "region_name": "us-east-1",
    }
    with pytest.raises(AttributeError):
        server.kind = "seaweedfs"  # type: ignore[misc]
