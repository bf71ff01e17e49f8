"""Shared fixtures: checkpoints on every backend, the S3 test server."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import resumelog
from resumelog.storage import Store


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


def _s3_kinds() -> list[str]:
    try:
        from resumelog.testing.s3server import kinds_from_env
    except ImportError:  # pragma: no cover - the S3 server module is part of the package
        return []
    return kinds_from_env()


TEST_BUCKET = "resumelog-test"
EXTERNAL_S3 = os.environ.get("RESUMELOG_TEST_S3_BUCKET")
"""Set (with AWS credentials in the usual environment variables, and optionally
``RESUMELOG_TEST_S3_ENDPOINT`` for MinIO and friends) to run every S3 test against a real
bucket too, as server kind ``external``. Unset: those tests are not generated."""

S3_KINDS = _s3_kinds() + (["external"] if EXTERNAL_S3 else [])


class ExternalS3:
    """A real S3 (AWS, MinIO, ...) bucket named by the environment."""

    kind = "external"

    def __init__(self) -> None:
        self.bucket = EXTERNAL_S3 or ""
        self.endpoint_url = os.environ.get("RESUMELOG_TEST_S3_ENDPOINT", "")
        self.access_key = os.environ.get("AWS_ACCESS_KEY_ID", "")
        self.secret_key = os.environ.get("AWS_SECRET_ACCESS_KEY", "")

    def storage_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"key": self.access_key, "secret": self.secret_key}
        if self.endpoint_url:
            opts["client_kwargs"] = {"endpoint_url": self.endpoint_url}
        return opts

    def create_bucket(self, name: str) -> None:
        """The bucket exists already."""


def bucket_of(server: Any) -> str:
    """The bucket the tests use on ``server``."""
    return getattr(server, "bucket", TEST_BUCKET)


class S3Pool:
    """Starts each kind of S3 server once per test session, on first use."""

    def __init__(self, workdir: Any) -> None:
        from contextlib import ExitStack

        self.workdir = workdir
        self.stack = ExitStack()
        self.servers: dict[str, Any] = {}

    def get(self, kind: str) -> Any:
        if kind == "external":
            return self.servers.setdefault(kind, ExternalS3())
        if kind not in self.servers:
            from resumelog.testing.s3server import run_s3_server

            server = self.stack.enter_context(run_s3_server(kind, workdir=str(self.workdir / kind)))
            server.create_bucket(TEST_BUCKET)
            self.servers[kind] = server
        return self.servers[kind]


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


@pytest.fixture
def s3_url(s3_server: Any) -> tuple[str, dict[str, Any]]:
    """A fresh checkpoint URL on the S3 server and its storage options."""
    import uuid

    return f"s3://{bucket_of(s3_server)}/{uuid.uuid4().hex}", s3_server.storage_options()
