"""S3 servers shared by the test session (imported by conftest and tests; a unique module
name, so it never collides with property_tests' modules)."""

from __future__ import annotations

import os
from typing import Any


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
