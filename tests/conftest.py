"""Shared fixtures: checkpoints on every backend, the S3 test server."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import resumelog
from resumelog.storage import Store

# snapshots read from the test S3 servers are cached here, not in ~/.cache (each xdist
# worker has its own; subprocesses inherit it)
os.environ.setdefault("RESUMELOG_CACHE_DIR", tempfile.mkdtemp(prefix="resumelog-test-cache-"))


@pytest.fixture
def checkpoint_factory() -> Callable[..., resumelog.Checkpoint]:
    def make(store: Store, **kw: Any) -> resumelog.Checkpoint:
        kw.setdefault("run_id", "r1")
        return resumelog.open(store, **kw)

    return make


@pytest.fixture
def memory_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh ``memory://`` checkpoint URL, cleared afterwards."""
    name = f"test-{os.getpid()}-{abs(hash(request.node.nodeid))}"
    url = f"memory://{name}"
    resumelog.storage.MemoryStore(name).clear()
    yield url
    resumelog.storage.MemoryStore(name).clear()


# ---------------------------------------------------------------------- S3 test servers


from s3_support import S3_KINDS, S3Pool, bucket_of  # noqa: E402


@pytest.fixture(scope="session")
def s3_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Pool]:
    pool = S3Pool(tmp_path_factory.mktemp("s3-servers"))
    with pool.stack:
        yield pool


@pytest.fixture(scope="session", params=S3_KINDS)
def s3_server(request: pytest.FixtureRequest, s3_pool: S3Pool) -> Any:
    """A real S3-compatible HTTP server on 127.0.0.1 (moto and SeaweedFS, see
    ``RESUMELOG_S3_SERVERS``) with a bucket ``resumelog-test``."""
    return s3_pool.get(request.param)


@pytest.fixture(params=["local", *[f"s3-{k}" for k in S3_KINDS]])
def local_or_s3(request: pytest.FixtureRequest, tmp_path: Any) -> tuple[str, dict[str, Any]]:
    """``(url, storage_options)`` of a fresh checkpoint on local disk, then on each S3 server."""
    import uuid

    if request.param == "local":
        return str(tmp_path / "ck"), {}
    server = request.getfixturevalue("s3_pool").get(request.param.removeprefix("s3-"))
    return f"s3://{bucket_of(server)}/{uuid.uuid4().hex}", server.storage_options()


@pytest.fixture
def s3_url(s3_server: Any) -> tuple[str, dict[str, Any]]:
    """A fresh checkpoint URL on the S3 server and its storage options."""
    import uuid

    return f"s3://{bucket_of(s3_server)}/{uuid.uuid4().hex}", s3_server.storage_options()
