"""The conformance suite on a real S3 server (moto and SeaweedFS), through s3fs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from s3_support import bucket_of

import resumelog
from resumelog.storage import FsspecStore
from resumelog.testing.store import StoreTests


class TestS3Store(StoreTests):
    @pytest.fixture
    def store(self, s3_server) -> FsspecStore:
        self.kind = s3_server.kind
        return FsspecStore(f"s3://{bucket_of(s3_server)}/conf-{uuid.uuid4().hex}", s3_server.storage_options())

    def _raw(self, store):
        import s3fs

        fs = getattr(store, "_raw_fs", None)
        if fs is None:
            fs = store._raw_fs = s3fs.S3FileSystem(
                **store.storage_options, skip_instance_cache=True, use_listings_cache=False
            )
        return fs

    def raw_put_many(self, store, items):
        self._raw(store).pipe({f"{store.root}/{k}": v for k, v in items.items()})

    def raw_get(self, store, key):
        fs = self._raw(store)
        try:
            return fs.cat_file(f"{store.root}/{key}")
        except FileNotFoundError:
            return None

    def raw_put(self, store, key, data):
        self._raw(store).pipe_file(f"{store.root}/{key}", data)

    def test_concurrent_create_has_one_winner(self, store):
        if self.kind == "moto":
            pytest.skip("moto checks then writes without a lock; races are judged on SeaweedFS")
        super().test_concurrent_create_has_one_winner(store)


def test_no_heads_and_one_list_per_prefix(s3_url):
    url, opts = s3_url
    ck = resumelog.open(url, storage_options=opts, run_id="r")
    with ck.writer("w") as w:
        for i in range(10):
            w.complete(f"s{i}")
            w.flush()
    store = FsspecStore(url, opts)
    loaded = resumelog.compactor.load(store)
    assert loaded.state.completed_count() == 10
    assert store.requests["HeadObject"] == 0
    # snapshots listing + journal listing + the second (latecomer) journal listing, one GET
    # per segment (10 + the closing marker) and two of meta.msgpack (the epoch, before and
    # after the listings); a client-side retry under load may add one
    assert 3 <= store.requests["ListObjectsV2"] <= 4
    assert 13 <= store.requests["GetObject"] <= 14


def test_refuses_backend_without_atomic_create():
    with pytest.raises(resumelog.UnsupportedBackend, match="single_writer=True"):
        resumelog.open("ftp://example.invalid/ckpt")


WORKER = Path(__file__).parents[1] / "proc_worker.py"


def race(op: str, url: str, opts: dict[str, Any], n: int = 8, deadline: float = 300) -> list[Any]:
    """Run ``n`` racing processes (``proc_worker.py s3-race op``) that all start ``op``
    on one GO, and return their JSON results. A watchdog SIGKILLs every racer after
    ``deadline`` seconds, so a stuck racer fails the test with a message, never hangs it."""
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), "s3-race", op], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(n)
    ]
    watchdog = threading.Timer(deadline, lambda: [p.kill() for p in procs])
    watchdog.start()
    try:
        for i, p in enumerate(procs):
            assert p.stdin is not None
            p.stdin.write(json.dumps({"url": url, "opts": opts, "i": i}) + "\n")
            p.stdin.flush()
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "READY", f"racer {p.pid} did not start within {deadline} s"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("GO\n")
            p.stdin.close()
        results = []
        for p in procs:
            assert p.stdout is not None
            out = p.stdout.read()
            p.wait()
            assert p.returncode == 0, f"racer {p.pid} exited with {p.returncode} (killed after {deadline} s?)"
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results
    finally:
        watchdog.cancel()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_eight_processes_race_for_one_snapshot_number(s3_server, s3_url):
    if s3_server.kind == "moto":
        pytest.skip("moto checks then writes without a lock; races are judged on SeaweedFS")
    url, opts = s3_url
    results = race("race-create", url, opts)
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert FsspecStore(url, opts).read("snapshots/00000000000000000007.snap") == f"process-{winners[0]}".encode()


def test_eight_writers_with_one_writer_id_never_overwrite(s3_url):
    url, opts = s3_url
    resumelog.open(url, storage_options=opts, run_id="r")
    incarnations = race("same-writer-id", url, opts)
    assert len(set(incarnations)) == 8
    ck = resumelog.open(url, storage_options=opts)
    assert sorted(ck.completed) == sorted(f"p{i}-s{j}" for i in range(8) for j in range(20))


SIGNAL_MASKS = """
import json, os, signal, sys, threading
import resumelog
url, opts = sys.argv[1], json.loads(sys.stdin.readline())
ck = resumelog.open(url, storage_options=opts, run_id="r")
with ck.writer("w") as w:
    w.complete("s0")  # a flush: the event loop has run a request (and its executor, if any)
def blocked(tid):
    with open(f"/proc/self/task/{tid}/status") as f:
        mask = int(next(ln for ln in f if ln.startswith("SigBlk:")).split()[1], 16)
    return [s for s in ("SIGTERM", "SIGINT") if mask >> (getattr(signal, s) - 1) & 1]
out = {}
for t in threading.enumerate():
    out.setdefault(t.name.split("_")[0], []).append(blocked(t.native_id))
print(json.dumps({"threads": out, "main": blocked(threading.main_thread().native_id)}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads thread signal masks from /proc")
def test_fsspec_threads_leave_sigterm_and_sigint_to_the_main_thread(s3_url):
    """fsspec's event-loop thread is started with SIGTERM and SIGINT blocked, so a
    process-directed signal reaches the main thread, where Python handlers run."""
    url, opts = s3_url
    out = subprocess.run(
        [sys.executable, "-c", SIGNAL_MASKS, url],
        input=json.dumps(opts) + "\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["main"] == []
    assert got["threads"]["fsspecIO"] == [["SIGTERM", "SIGINT"]]
    for name, masks in got["threads"].items():  # the loop's executor threads inherit its mask
        if name.startswith("asyncio"):
            assert masks == [["SIGTERM", "SIGINT"]] * len(masks)


def test_resume_from_another_cluster(s3_server, s3_url):
    """Written with one client configuration, resumed by a fresh process with another."""
    url, opts = s3_url
    ck = resumelog.open(url, storage_options=opts, run_id="cluster-a")
    with ck.writer("a") as w:
        for i in range(50):
            w.complete(f"s{i}")
    ck.compact()
    expected = sorted(ck.completed)
    other = dict(opts)
    other["client_kwargs"] = dict(opts["client_kwargs"])
    other["config_kwargs"] = {"retries": {"max_attempts": 2}}
    import subprocess
    import sys

    code = (
        "import json, sys, resumelog; url, opts = sys.argv[1], json.loads(sys.argv[2]); "
        "ck = resumelog.open(url, storage_options=opts, create=False); print(json.dumps(sorted(ck.completed)))"
    )
    import json

    out = subprocess.run(
        [sys.executable, "-c", code, url, json.dumps(other)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == expected


# ---------------------------------------------------------------------- streamed publish of large files

MiB = 1 << 20


def _multipart_store(url: str, opts: dict[str, Any]) -> FsspecStore:
    return FsspecStore(url, opts, multipart_threshold=5 * MiB, multipart_part_size=5 * MiB, multipart_concurrency=2)


def _uploads_in_progress(store: FsspecStore) -> list[str]:
    bucket, _, prefix = store.root.partition("/")
    got = store.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix + "/")
    return [u["Key"] for u in got.get("Uploads", [])]


def test_a_large_file_is_published_as_a_create_only_multipart_upload(s3_url, tmp_path):
    url, opts = s3_url
    store = _multipart_store(url, opts)
    first, second = tmp_path / "first", tmp_path / "second"
    body = os.urandom(12 * MiB + 12345)  # three parts: 5 + 5 + 2 MiB
    first.write_bytes(body)
    second.write_bytes(body[::-1])
    store.put_if_absent_file("out/big", str(first))
    assert store.requests["CreateMultipartUpload"] == 1 and store.requests["UploadPart"] == 3
    assert store.requests["CompleteMultipartUpload"] == 1 and store.requests["PutObject"] == 0
    assert store.read("out/big") == body
    assert [(o.path, o.size) for o in store.list("out/")] == [("out/big", len(body))]
    # a second publisher of the name: AlreadyExists, the first bytes stay, its upload is aborted
    other = _multipart_store(url, opts)
    for path in (second, first):  # other bytes, and the same bytes from another publisher
        with pytest.raises(resumelog.AlreadyExists) as info:
            other.put_if_absent_file("out/big", str(path))
        assert isinstance(info.value, FileExistsError)
    assert other.requests["AbortMultipartUpload"] == 2
    assert store.read("out/big") == body
    assert _uploads_in_progress(store) == []
    # at or below the threshold: one conditional PUT, as before
    small = tmp_path / "small"
    small.write_bytes(body[: 5 * MiB])
    store.put_if_absent_file("out/small", str(small))
    assert store.requests["PutObject"] == 1 and store.requests["CreateMultipartUpload"] == 1
    with pytest.raises(resumelog.AlreadyExists):
        store.put_if_absent_file("out/small", str(second))
    assert store.read("out/small") == body[: 5 * MiB]


def test_large_data_is_put_as_a_create_only_multipart_upload_read_from_its_map(s3_url, tmp_path):
    """``put_if_absent`` of more than ``multipart_threshold`` bytes (a large layer: a
    read-only view of a memory-mapped temporary file, or bytes) is a create-only
    multipart upload whose parts are read from the buffer as they are sent (botocore
    takes no memoryview, and one ``PUT`` is limited to 5 GB on S3); a second publisher
    of the name gets ``AlreadyExists`` and its upload is aborted."""
    import mmap

    url, opts = s3_url
    store = _multipart_store(url, opts)
    body = os.urandom(12 * MiB + 12345)  # three parts: 5 + 5 + 2 MiB
    path = tmp_path / "layer"
    path.write_bytes(b"x" * 100 + body)
    with open(path, "rb") as f:
        view = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))[100:]
    store.put_if_absent("layers/big", view)
    assert store.requests["CreateMultipartUpload"] == 1 and store.requests["UploadPart"] == 3
    assert store.requests["CompleteMultipartUpload"] == 1 and store.requests["PutObject"] == 0
    assert store.read("layers/big") == body
    other = _multipart_store(url, opts)
    for data in (view, body[::-1]):  # the same bytes from another publisher, other bytes
        with pytest.raises(resumelog.AlreadyExists):
            other.put_if_absent("layers/big", data)
    assert other.requests["AbortMultipartUpload"] == 2 and other.requests["PutObject"] == 0
    assert store.read("layers/big") == body
    assert _uploads_in_progress(store) == []
    store.put_if_absent("layers/small", view[: 5 * MiB])  # at the threshold: one conditional PUT
    assert store.requests["PutObject"] == 1 and store.read("layers/small") == body[: 5 * MiB]
    del view


def test_a_large_output_goes_through_writer_output_on_s3(s3_url):
    url, opts = s3_url
    root = _multipart_store(url + "-out", opts)
    ck = resumelog.open(url, storage_options=opts, run_id="r1")
    chunk = os.urandom(MiB)
    with ck.writer("w") as w:
        with w.output("big", root) as f:
            for _ in range(11):  # 11 MiB: three parts
                f.write(chunk)
    assert root.requests["UploadPart"] == 3
    outs = ck.outputs(root)
    assert [(o.source, o.size) for o in outs] == [("big", 11 * MiB)]
    assert root.read(outs[0].path) == chunk * 11


def test_read_many_reads_a_window_at_a_time(s3_url, monkeypatch):
    """``read_many`` of a long key list (a compaction's journal) reads a window of
    objects at a time and yields each in order, missing ones as ``ObjectNotFound``: it
    never holds the whole list's bytes at once."""
    from resumelog.errors import ObjectNotFound
    from resumelog.storage import _fsspec

    url, opts = s3_url
    store = FsspecStore(url, opts, concurrency=2)
    monkeypatch.setattr(_fsspec, "READ_WINDOW", 2)  # 4 objects per window
    keys = [f"journal/w/{i:03d}" for i in range(11)]
    for i, k in enumerate(keys):
        if i != 6:
            store.put_if_absent(k, f"object {i}".encode() * (i + 1))
    gets = store.requests["GetObject"]
    got = store.read_many(keys)
    first = next(got)
    assert first == (keys[0], b"object 0")
    assert store.requests["GetObject"] - gets == 4  # one window read (the store's own count), not the list
    rest = list(got)
    assert store.requests["GetObject"] - gets == 11  # (the missing key's GET too)
    for i, (k, v) in enumerate(rest, start=1):
        assert k == keys[i]
        if i == 6:
            assert isinstance(v, ObjectNotFound)
        else:
            assert v == f"object {i}".encode() * (i + 1)


def test_read_to_file_is_one_streamed_get(s3_url, tmp_path):
    """A large object read to a file is one GET copied in chunks: s3fs would otherwise
    fetch parts of ``default_block_size`` concurrently, ten at a time, each whole in
    memory (set to 1 MiB here, so that a 3 MiB object has three parts)."""
    url, opts = s3_url
    store = FsspecStore(url, {**opts, "default_block_size": 1 << 20})
    data = bytes(range(256)) * 4096 * 3 + b"tail"
    store.put_if_absent("layers/big", data)
    gets = store.requests["GetObject"]
    assert store.read_to_file("layers/big", str(tmp_path / "copy")) == len(data)
    assert store.requests["GetObject"] - gets == 1
    assert (tmp_path / "copy").read_bytes() == data
