"""Background merges: ticks that stack layers (``compact(defer_merges=True)``) and the
merges they leave to ``compactor.merge`` / ``Checkpoint.merge`` / ``resumelog merge``.

Real files, a real S3-compatible server on 127.0.0.1, the real console script, and a
merge process killed with SIGKILL between writing its layer and publishing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from s3_support import S3_KINDS, bucket_of
from test_cli import run_json

import resumelog
from resumelog import compactor, layers, paths
from resumelog.format import decode_snapshot_frames
from resumelog.storage import LocalStore, Store
from resumelog.testing.stateful import HookedStore


@pytest.fixture(autouse=True)
def small_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layers, "MIN_LAYER", 1)  # every tick a layer of its own
    monkeypatch.setattr(layers, "BLOCK_BYTES", 256)  # several blocks per layer


def _ticks(ck: resumelog.Checkpoint, rounds: int, start: int = 0) -> list[str]:
    ids = []
    for r in range(start, start + rounds):
        mine = [f"shard-{r:03d}/doc-{i:04d}" for i in range(40)]
        with ck.writer(f"w{r}") as w:
            w.complete_many(mine)
            w.emit(f"open-{r}")  # never drains: pending
        ck.compact(defer_merges=True)
        ids += mine
    return ids


def _layers(store: Store) -> list[str]:
    latest = compactor.list_snapshots(store)[-1][1].path
    return [r.name for r in decode_snapshot_frames(store.read(latest), latest).layers or []]


def _answers(url: str | Store, **kw: object) -> tuple[dict[str, str | None], list[str]]:
    view = resumelog.open(url, create=False, **kw)  # type: ignore[arg-type]
    probe = [f"open-{r}" for r in range(10)] + ["shard-000/doc-0000", "never"]
    return {s: view._state.completed_run(s) for s in view.completed}, view.pending(probe)


def test_deferred_ticks_stack_layers_and_a_merge_changes_nothing_else(tmp_path: Path) -> None:
    url = str(tmp_path / "ck")
    ck = resumelog.open(url, run_id="r1")
    ids = _ticks(ck, 6)
    store = LocalStore(url)
    assert len(_layers(store)) == 6  # a tick merged nothing
    before = _answers(url)
    assert len(before[0]) == len(ids) == 240 and before[1] == [f"open-{r}" for r in range(10)] + ["never"]
    r = ck.merge()  # six equal layers: the binary counter merges them all
    assert r.written and r.layers_before == 6 and r.layers_after == 1 and r.entries == 240
    assert _answers(url) == before
    assert not ck.merge(full=True).written  # one layer: nothing to do
    # the merged snapshot compacts on as any other
    more = _ticks(ck, 1, start=6)
    assert set(resumelog.open(url, create=False).completed) == set(ids + more)


def test_a_merge_rebases_over_a_tick_without_merging_again(tmp_path: Path) -> None:
    url = str(tmp_path / "ck")
    ck = resumelog.open(url, run_id="r1")
    ids = _ticks(ck, 4)
    inner = LocalStore(url)
    hooked = HookedStore(inner)
    merged: list[str] = []
    real = compactor._build_merge

    def build(*a: object, **kw: object) -> compactor._Built:
        built = real(*a, **kw)  # type: ignore[arg-type]
        merged.append(built.name)
        return built

    def tick() -> None:
        ids.extend(_ticks(ck, 1, start=4))  # publishes the number the merge meant to take

    hooked.before_snapshot_put = tick
    compactor._build_merge = build  # type: ignore[assignment]
    try:
        r = compactor.merge(hooked, full=True)
    finally:
        compactor._build_merge = real  # type: ignore[assignment]
    assert r.written and r.attempts == 2 and len(merged) == 1  # rebased, merged once
    names = _layers(inner)
    assert names[0] == merged[0] and len(names) == 2  # the merged layer under the tick's
    assert set(resumelog.open(url, create=False).completed) == set(ids)


def test_a_merge_that_loses_its_layers_to_another_deletes_its_own(tmp_path: Path) -> None:
    url = str(tmp_path / "ck")
    ck = resumelog.open(url, run_id="r1")
    ids = _ticks(ck, 4)
    inner = LocalStore(url)
    hooked = HookedStore(inner)
    hooked.before_snapshot_put = lambda: compactor.merge(inner, full=True)
    r = compactor.merge(hooked, full=True)
    assert not r.written and r.attempts == 2  # the other merge published the same merge
    names = _layers(inner)
    stored = {o.path for o in inner.list(paths.LAYER_PREFIX)}
    latest = compactor.list_snapshots(inner)[-1][0]
    mine = [s for s in stored if (paths.parse_layer(s) or 0) > latest]
    assert mine == names  # only the other merge's layer is above the latest snapshot
    assert set(resumelog.open(url, create=False).completed) == set(ids)


def test_a_superseded_merged_layer_is_collected_once_snapshots_pass_its_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compactor, "MERGE_HEADROOM", 5)
    url = str(tmp_path / "ck")
    ck = resumelog.open(url, run_id="r1")
    _ticks(ck, 3)  # snapshots 1-3
    assert ck.merge(full=True).snapshot == 4
    (merged,) = _layers(LocalStore(url))
    assert paths.parse_layer(merged) == 3 + 1 + 5  # above the latest snapshot when written
    _ticks(ck, 1, start=3)  # 5
    assert ck.merge(full=True).snapshot == 6  # supersedes `merged`
    ck.gc(retain=1, grace=0)
    store = LocalStore(url)
    assert store.exists(merged)  # numbered above the latest snapshot: kept (a merge may be under way)
    _ticks(ck, 3, start=4)  # 7-9
    ck.gc(retain=1, grace=0)
    assert not store.exists(merged)  # the snapshots reached its number: collected


def test_a_superseded_merged_layer_is_collected_once_an_hour_old(tmp_path: Path) -> None:
    url = str(tmp_path / "ck")
    ck = resumelog.open(url, run_id="r1")
    _ticks(ck, 3)
    ck.merge(full=True)
    (merged,) = _layers(LocalStore(url))
    _ticks(ck, 1, start=3)
    ck.merge(full=True)  # supersedes `merged`, numbered 100 snapshots ahead
    store = LocalStore(url)
    compactor.gc(store, retain=1, grace=0, now=time.time() + compactor.ORPHAN_AGE - 60)
    assert store.exists(merged)  # a merge could still be publishing it
    r = compactor.gc(store, retain=1, grace=0, now=time.time() + compactor.ORPHAN_AGE + 1)
    assert not store.exists(merged) and merged in r.keys
    assert all(store.exists(name) for name in _layers(store))


CHILD = textwrap.dedent(
    """
    import os, sys, time
    import resumelog.layers as layers
    from resumelog import compactor
    from resumelog.storage import LocalStore

    layers.MIN_LAYER = 1
    layers.BLOCK_BYTES = 256
    compactor.MERGE_HEADROOM = 2


    class Stalling(LocalStore):
        def put_if_absent(self, key, data):
            if key.startswith("snapshots/"):
                open(sys.argv[2], "w").close()  # the merged layer is written: kill me now
                time.sleep(600)
            return super().put_if_absent(key, data)


    compactor.merge(Stalling(sys.argv[1]), full=True)
    """
)


def test_a_merge_killed_before_publishing_loses_nothing(tmp_path: Path) -> None:
    url = str(tmp_path / "ck")
    ck = resumelog.open(url, run_id="r1")
    ids = _ticks(ck, 4)
    before = _answers(url)
    marker = tmp_path / "layer-written"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, url, str(marker)])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the merge ended before publishing"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    store = LocalStore(url)
    latest = compactor.list_snapshots(store)[-1][0]
    orphans = [o.path for o in store.list(paths.LAYER_PREFIX) if (paths.parse_layer(o.path) or 0) > latest]
    assert len(orphans) == 1  # the dead merge's layer, named by no snapshot
    assert _answers(url) == before
    assert ck.merge(full=True).written  # another merge does the work
    assert _answers(url) == before
    ids += _ticks(ck, 3, start=4)  # the snapshots pass the dead merge's layer number
    ck.gc(retain=1, grace=0)
    assert not store.exists(orphans[0])  # collected
    assert set(resumelog.open(url, create=False).completed) == set(ids)


@pytest.fixture(params=S3_KINDS)
def s3_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> tuple[str, dict]:
    server = request.getfixturevalue("s3_pool").get(request.param)
    monkeypatch.setenv("RESUMELOG_CACHE_DIR", "off")
    return f"s3://{bucket_of(server)}/{uuid.uuid4().hex}", server.storage_options()


def test_deferred_ticks_and_a_merge_on_s3(s3_url: tuple[str, dict]) -> None:
    url, opts = s3_url
    ck = resumelog.open(url, storage_options=opts, run_id="r1")
    ids = _ticks(ck, 4)
    before = _answers(url, storage_options=opts)
    r = ck.merge(full=True)
    assert r.written and r.layers_before == 4 and r.layers_after == 1
    assert _answers(url, storage_options=opts) == before
    assert set(before[0]) == set(ids)


def test_cli_compact_defer_merges_then_merge(tmp_path: Path) -> None:
    url = str(tmp_path / "ck")
    ck = resumelog.open(url, run_id="r1")
    for r in range(3):
        with ck.writer(f"w{r}") as w:
            w.complete_many([f"s{r}-{i}" for i in range(20)])
        doc = run_json("compact", url, "--defer-merges")
        assert doc["written"] is True and doc["snapshot"] == r + 1
    # the console script's layers.MIN_LAYER is the real one: a tick deferring its merges
    # still merges layers that small
    assert len(_layers(LocalStore(url))) == 1
    assert len(resumelog.open(url, create=False).completed) == 60


def test_cli_merge_json(tmp_path: Path) -> None:
    url = str(tmp_path / "ck")
    ck = resumelog.open(url, run_id="r1")
    _ticks(ck, 3)
    doc = run_json("merge", url, "--all")
    assert doc["written"] is True and doc["layers_before"] == 3 and doc["layers_after"] == 1
    assert doc["entries"] == 120 and doc["snapshot"] == 4 and doc["seconds"] >= 0
    again = run_json("merge", url)
    assert again["written"] is False and again["layers_before"] == 1
    assert json.dumps(again)  # plain JSON


@pytest.mark.parametrize("version", [4, 5])
def test_a_merge_of_an_older_format_rewrites_it_as_a_compaction_would(tmp_path: Path, version: int) -> None:
    import shutil

    src = Path(__file__).parent / "data" / f"format_v{version}"
    url = tmp_path / "ck"
    shutil.copytree(src, url)
    before = sorted(resumelog.open(str(url), create=False).completed)
    assert before  # the fixture completes something
    r = compactor.merge(LocalStore(str(url)), full=True)
    assert r.written and r.layers_after == 1 and r.entries == len(before)
    store = LocalStore(str(url))
    latest = compactor.list_snapshots(store)[-1][1].path
    frames = decode_snapshot_frames(store.read(latest), latest)
    assert len(frames.layers or []) == 1 and all(ref.head > 0 for ref in frames.layers or [])  # version 6 now
    assert sorted(resumelog.open(str(url), create=False).completed) == before
