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
