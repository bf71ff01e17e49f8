"""The documentation site: Getting started runs, the site builds strictly, and the
reference pages (format spec, CLI reference) match the code they describe."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from resumelog import format as fmt

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# Runs every block in one interpreter, in order, naming the block that failed.
_DRIVER = """
import json, sys, traceback
blocks = json.loads(sys.stdin.read())
ns = {"__name__": "__main__"}
for i, src in enumerate(blocks, 1):
    try:
        exec(compile(src, f"<getting-started.md python block {i}>", "exec"), ns)
    except BaseException:
        traceback.print_exc()
        print(f"getting-started.md: python block {i} failed", file=sys.stderr)
        sys.exit(1)
print(f"ran {len(blocks)} blocks")
"""


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), re.S | re.M)


def test_getting_started_blocks_run_in_order(tmp_path: Path) -> None:
    blocks = python_blocks(DOCS / "getting-started.md")
    assert len(blocks) >= 5
    out = subprocess.run(
        [sys.executable, "-c", _DRIVER],
        input=json.dumps(blocks),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().endswith(f"ran {len(blocks)} blocks")


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip("mkdocs/mkdocstrings are not installed (pip install -e '.[dev]' installs them)")
    site = tmp_path / "site"
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    for page in ("getting-started", "concepts", "guarantees", "storage", "integrations", "cli", "format", "faq"):
        assert (site / page / "index.html").exists(), page
    api = (site / "api" / "resumelog" / "index.html").read_text()
    assert 'id="resumelog.open"' in api and 'id="resumelog.Checkpoint.status"' in api
    # the facade's page opens with resumelog.open, then the classes in __all__'s order
    top = re.findall(r'id="resumelog\.(\w+)"', api)
    assert top[:3] == ["open", "Checkpoint", "WriterHandle"], top[:3]
    curator = (site / "api" / "curator" / "index.html").read_text()
    assert 'id="resumelog.curator.StageCheckpointer"' in curator and 'id="resumelog.curator.Pipeline"' in curator
    deltas = (site / "api" / "curator_deltas" / "index.html").read_text()
    assert 'id="resumelog.curator_deltas.stage_deltas"' in deltas
    assert 'id="resumelog.format.decode_segment"' in (site / "api" / "format" / "index.html").read_text()
    assert 'id="resumelog.storage.Store"' in (site / "api" / "storage" / "index.html").read_text()
    assert 'id="resumelog.algebra.FoldState"' in (site / "api" / "algebra" / "index.html").read_text()


# --------------------------------------------------------------------------- format.md


def _hex_dump(heading: str) -> bytes:
    """The bytes of the first annotated hex dump after ``heading`` in format.md."""
    text = (DOCS / "format.md").read_text()
    section = text[text.index(heading) :]
    dump = re.search(r"```text\n(.*?)```", section, re.S)
    assert dump is not None
    data = bytearray()
    for line in dump.group(1).splitlines():
        offset, _, rest = line.partition("  ")
        assert int(offset, 16) == len(data), line
        data += bytes.fromhex(rest.split("  ")[0])
    return bytes(data)


def test_format_example_bytes_are_what_the_encoder_writes() -> None:
    from resumelog.algebra import DONE_KEY, EMIT_KEY

    data = _hex_dump("### Example")
    header = fmt.SegmentHeader("w1", "01J00000000000000000000000", 0, "r1", bytes(16), 1700000000000, b"\x11" * 16)
    batch = fmt.Batch(["s"], [0, 0], [EMIT_KEY, DONE_KEY], [1, -1], b"\x01\x00", [])
    assert bytes(data) == fmt.encode_segment(header, [batch])
    assert len(data) == 160
    seg = fmt.decode_segment(bytes(data))
    assert seg.header == header and seg.footer.record_count == 2


def _hex_dumps(heading: str) -> list[bytes]:
    """Every annotated hex dump of the section that starts at ``heading``."""
    text = (DOCS / "format.md").read_text()
    start = text.index(heading)
    end = text.find("\n#", start + len(heading))
    out = []
    for dump in re.findall(r"```text\n(.*?)```", text[start : end if end > 0 else None], re.S):
        data = bytearray()
        for line in dump.splitlines():
            offset, _, rest = line.partition("  ")
            assert int(offset, 16) == len(data), line
            data += bytes.fromhex(rest.split("  ")[0])
        out.append(bytes(data))
    return out


def test_format_snapshot_test_vector_decodes_to_its_stated_values() -> None:
    data, layer = _hex_dumps("### Test vector")
    assert (len(data), len(layer)) == (246, 147)
    frames = fmt.decode_snapshot_frames(data)
    h = frames.header
    assert (h.format_version, h.number, h.nonce, h.created_ms, h.completed_count, h.ascii_ids, h.epoch) == (
        6,
        1,
        bytes(16),
        1700000000000,
        1,
        True,
        b"\x11" * 16,
    )
    assert [r.run_id for r in frames.body.runs] == ["r1"] and frames.body.records_folded == 2
    name = "layers/00000000000000000001-0000000000000000.layer"
    assert frames.layers == [fmt.LayerRef(name, bytes(16), 1, 0, 147, 121)]
    assert fmt.encode_snapshot_frames(frames) == data
    lh = fmt.decode_layer_head(layer, name)
    assert lh.header == fmt.LayerHeader(6, bytes(16), b"\x11" * 16, 1700000000000, 1, True, ["r1"], 0)
    assert lh.blocks == fmt.BlockIndex([1], [26], [b"a"]) and lh.head == 121 and lh.tombstones == []
    hashes, offsets, runs, shape_ids, blob = fmt.decode_layer_block(memoryview(layer)[121:], 1, name)
    assert bytes(blob) == b"a" and int.from_bytes(hashes, "little") == fmt.crc32c(b"a")
    assert bytes(offsets) == bytes([0, 0, 0, 0, 1, 0, 0, 0]) and bytes(runs) == b"\x00" and not shape_ids
    block = fmt.encode_layer_block(bytes(hashes), bytes(offsets), bytes(runs), b"", b"a", 1)
    assert fmt.encode_layer_v6(lh.header, lh.blocks, bytes(lh.shapes), [], [block]) == (layer, 121)
    from resumelog.snapshot import load_snapshot

    _, state = load_snapshot(data, read_layer=lambda ref: {name: layer}[ref.name])
    assert sorted(state.iter_completed()) == ["a"] and state.completed_run("a") == "r1"


def test_format_version_5_test_vector_still_decodes() -> None:
    data, layer = _hex_dumps("### Version 5 test vector")
    assert (len(data), len(layer)) == (245, 158)
    frames = fmt.decode_snapshot_frames(data)
    assert frames.header.format_version == 5
    name = "layers/00000000000000000001-0000000000000000.layer"
    assert frames.layers == [fmt.LayerRef(name, bytes(16), 1, 0, 158)]  # no head: a version-5 layer
    lf = fmt.decode_layer(layer, name)
    assert lf.header == fmt.LayerHeader(5, bytes(16), b"\x11" * 16, 1700000000000, 1, True, ["r1"], 0)
    assert bytes(lf.blob) == b"a" and int.from_bytes(lf.hashes, "little") == fmt.crc32c(b"a")
    assert bytes(lf.runs) == b"\x00" and lf.tombstones == [] and not lf.shape_ids
    from resumelog.snapshot import load_snapshot

    _, state = load_snapshot(data, read_layer=lambda ref: {name: layer}[ref.name])
    assert sorted(state.iter_completed()) == ["a"] and state.completed_run("a") == "r1"


def test_format_version_4_test_vector_still_decodes() -> None:
    data = _hex_dump("### Version 4 test vector")
    assert len(data) == 224
    frames = fmt.decode_snapshot_frames(bytes(data))
    h = frames.header
    assert (h.format_version, h.number, h.nonce, h.created_ms, h.completed_count, h.ascii_ids, h.epoch) == (
        4,
        1,
        bytes(16),
        1700000000000,
        1,
        True,
        b"\x11" * 16,
    )
    (mark,) = frames.body.streams
    assert (mark.writer_id, mark.incarnation, mark.run_id, mark.seq, mark.closed, mark.records, mark.last_ms) == (
        "w1",
        "01J00000000000000000000000",
        "r1",
        0,
        True,
        2,
        1700000000000,
    )
    assert [r.run_id for r in frames.body.runs] == ["r1"] and frames.body.records_folded == 2
    assert bytes(frames.blob) == b"a" and int.from_bytes(frames.hashes, "little") == fmt.crc32c(b"a")
    assert frames.layers is None
    from resumelog.snapshot import load_snapshot

    _, state = load_snapshot(bytes(data))
    assert sorted(state.iter_completed()) == ["a"] and state.completed_run("a") == "r1"


STRUCTS = [
    fmt.SegmentHeader,
    fmt.Batch,
    fmt.Reset,
    fmt.SegmentFooter,
    fmt.Meta,
    fmt.SnapshotHeader,
    fmt.SnapshotBody,
    fmt.LayerRef,
    fmt.LayerHeader,
    fmt.BlockIndex,
    fmt.StreamMark,
    fmt.RunInfo,
    fmt.PendingEntry,
    fmt.Anomaly,
    fmt.DoneChunk,
    fmt.DoneWriters,
]


@pytest.mark.parametrize("struct", STRUCTS, ids=lambda s: s.__name__)
def test_format_spec_lists_every_field_in_wire_order(struct: type[msgspec.Struct]) -> None:
    """A field added to format.py without updating the spec fails here."""
    text = (DOCS / "format.md").read_text()
    start = text.index(f"**{struct.__name__}** = array")
    section = text[start : start + 3000]
    pos = 0
    for name in struct.__struct_fields__:
        m = re.compile(rf"`{name}`|\b{name}:").search(section, pos)
        assert m is not None, f"{struct.__name__}.{name} missing from docs/format.md (or out of order)"
        pos = m.end()
    assert struct.__struct_config__.array_like


def test_format_spec_constants() -> None:
    text = (DOCS / "format.md").read_text()
    assert fmt.FORMAT_VERSION == 6 and "# Format specification (version 6)" in text
    assert fmt.MAGIC == b"RSLG" and fmt.PREAMBLE_SIZE == 24 and fmt.FRAME_HEADER_SIZE == 8
    assert fmt.SNAPSHOT_FRAMES == 4 and "Exactly **4 frames**" in text
    assert fmt.LAYER_FRAMES == 8 and "has exactly **8 frames**" in text
    assert fmt.LAYER_HEAD_FRAMES == 4 and "**4 + B frames**" in text
    assert fmt.SNAPSHOT_FRAMES_V3 == 9 and "has **9 frames**" in text
    assert fmt.SNAPSHOT_FRAMES_V2 == 8 and "has **8 frames**" in text
    assert fmt.SNAPSHOT_FRAMES_V1 == 7 and "has **7 frames**" in text
    for kind in (fmt.KIND_SEGMENT, fmt.KIND_SNAPSHOT, fmt.KIND_LAYER, fmt.KIND_META):
        assert f"`0x{kind:02X}` `'{chr(kind)}'`" in text


# --------------------------------------------------------------------------- cli.md


def test_cli_reference_covers_every_command_and_option() -> None:
    import argparse

    from resumelog.cli._main import build_parser

    text = (DOCS / "cli.md").read_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        assert f"## `{name}`" in text, f"command {name} is not documented in docs/cli.md"
        for action in p._actions:
            for opt in action.option_strings:
                if opt.startswith("--") and opt != "--help":
                    assert opt in text, f"{name} {opt} is not documented in docs/cli.md"


def test_every_test_the_reliability_page_cites_exists():
    """``docs/reliability.md`` proves each row with named tests: each must exist."""
    import ast

    text = (DOCS / "reliability.md").read_text()
    refs = set(re.findall(r"`((?:tests|property_tests)/[\w/]+\.py)::(\w+)", text))
    assert len(refs) >= 60
    missing = []
    for path, name in sorted(refs):
        tree = ast.parse((ROOT / path).read_text())
        if name not in {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}:
            missing.append(f"{path}::{name}")
    assert missing == []


# --------------------------------------------------------------------------- storage.md


def test_storage_conditional_create_check_runs_against_the_s3_servers(s3_url: tuple[str, dict[str, Any]]) -> None:
    """The how-to's ``If-None-Match`` check, as printed, against the suite's S3 servers."""
    pytest.importorskip("s3fs")
    text = (DOCS / "storage.md").read_text()
    (block,) = [b for b in python_blocks(DOCS / "storage.md") if "def check_conditional_create" in b]
    assert "## Azure Blob Storage" in text and "single_writer=True" in text
    code = block[: block.index("\nprint(")]  # the last line names a placeholder bucket
    ns: dict[str, Any] = {}
    exec(compile(code, "<storage.md check_conditional_create>", "exec"), ns)
    url, opts = s3_url
    result = ns["check_conditional_create"](url, opts)
    assert result.startswith("honoured: the second create was refused ("), result


def test_cli_reference_is_regenerated() -> None:
    """docs/cli.md's per-command blocks (usage, options, examples) are what
    ``python -m resumelog.cli._reference docs/cli.md`` writes from the parser."""
    from resumelog.cli._main import EXAMPLES
    from resumelog.cli._reference import update_page

    text = (DOCS / "cli.md").read_text()
    assert update_page(text) == text, "run: python -m resumelog.cli._reference docs/cli.md"
    for name, examples in EXAMPLES.items():
        section = text[text.index(f"## `{name}`") :]
        assert examples and examples[0][0] in section.split("\n## ")[0], name
