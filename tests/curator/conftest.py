"""Fixtures of the NeMo Curator ports: skip without Curator, a backend per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("nemo_curator", reason="needs NeMo Curator 1.4 (pip install --no-deps nemo-curator==1.4.0)")

import resumelog.curator_backend as rcb


@pytest.fixture
def backend_factory(tmp_path: Path) -> Iterator[Callable[..., rcb.CuratorBackend]]:
    """``make(**kw)``: enable the backend in this process (no Ray hook) on a local
    checkpoint under ``tmp_path`` (each call is a new run); disabled at teardown."""
    made: list[rcb.CuratorBackend] = []

    def make(url: str | Path | None = None, **kw: Any) -> rcb.CuratorBackend:
        kw.setdefault("ray_workers", False)
        b = rcb.enable(url if url is not None else tmp_path / "ckpt", **kw)
        made.append(b)
        return b

    yield make
    for b in made:
        b.disable()
    rcb.disable()
