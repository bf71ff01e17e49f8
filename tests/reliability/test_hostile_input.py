"""Hostile ids: refused if they could name a path, carried opaquely otherwise."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import resumelog
from resumelog.errors import InvalidId

HOSTILE = ["../../etc/passwd", "/abs/path", "a\0b", "x" * 10_000, "..", ".", "a/b", "\\windows\\path", " ", ""]


def files_outside(root, parent):
    return sorted(p for p in os.listdir(parent) if os.path.join(parent, p) != root)


@pytest.mark.parametrize("wid", [*HOSTILE, "\udcff", "é"])
def test_hostile_writer_ids_are_refused_and_touch_nothing(tmp_path, wid):
    root = str(tmp_path / "ck")
    ck = resumelog.open(root)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(InvalidId):
        ck.writer(wid)
    with pytest.raises(InvalidId):
        ck.handle(wid)
    assert sorted(os.listdir(tmp_path)) == before
    assert ck.store.list("journal/") == []


@pytest.mark.parametrize("rid", HOSTILE)
def test_hostile_run_ids_are_refused(tmp_path, rid):
    with pytest.raises(InvalidId):
        resumelog.open(str(tmp_path / "ck"), run_id=rid)
    assert not (tmp_path / "ck").exists()


def test_hostile_source_ids_are_opaque_data(tmp_path):
    root = str(tmp_path / "ck")
    ck = resumelog.open(root, run_id="r")
    ids = [s for s in HOSTILE if s] + ["日本語", "emoji-🎉", "tab\tnew\nline"]
    with ck.writer("w") as w:
        for s in ids:
            w.complete(s)
    ck.compact()
    again = resumelog.open(root)
    assert sorted(again.completed) == sorted(ids)
    assert all(again.is_completed(s) for s in ids)
    # nothing was created outside the checkpoint root
    assert os.listdir(tmp_path) == ["ck"]
    assert sorted(os.listdir(root)) == ["journal", "layers", "meta.msgpack", "snapshots"]


@pytest.mark.parametrize("bad", ["\ud800", "a\udfffb", ""])
def test_unencodable_or_empty_source_ids_are_refused(bad):
    ck = resumelog.open(f"memory://hostile-{abs(hash(bad))}")
    w = ck.writer("w")
    with pytest.raises(InvalidId):
        w.complete(bad)
    with pytest.raises(InvalidId):
        w.emit(bad)
    assert w.buffered == 0


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_any_text_is_a_valid_writer_id_or_refused_cleanly(text):
    ck = resumelog.open("memory://hostile-fuzz")
    try:
        w = ck.writer(text)
    except InvalidId:
        return
    assert w.writer_id == text and all(c.isascii() for c in text) and "/" not in text
    w.closed = True


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=50), min_size=1, max_size=20))
def test_any_unicode_source_ids_round_trip(sources):
    url = "memory://hostile-roundtrip"
    resumelog.storage.MemoryStore("hostile-roundtrip").clear()
    ck = resumelog.open(url, run_id="r")
    ok = []
    with ck.writer("w") as w:
        for s in sources:
            try:
                w.complete(s)
                ok.append(s)
            except InvalidId:
                assert any(0xD800 <= ord(c) <= 0xDFFF for c in s)
    ck.compact()
    assert sorted(resumelog.open(url).completed) == sorted(set(ok))
