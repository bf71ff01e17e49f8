"""``resumelog verify``: read every object of a checkpoint and report each problem.

Built only on the public pieces of :mod:`resumelog.format` (framing, CRCs, typed
decoders), :mod:`resumelog.paths` (names) and :class:`resumelog.storage.Store`.
It could move into the library as ``resumelog.verify(store)``; it lives here until
the core needs it.

Checks, per object:

* ``meta.msgpack`` — preamble, frame CRC, typed decode, format version;
* every snapshot — preamble, all 7 frame CRCs, typed decode of header/body/done
  chunks, header number equal to the object name, and the completed-id index:
  offsets start at 0, never decrease and span the id blob, hashes are sorted and each
  equals CRC-32C of its id's UTF-8 bytes, run indexes point into the run table,
  pending entries have equal-length columns and valid run/stream indexes;
* every segment — preamble, every frame CRC, typed decode, column lengths, footer
  counts, header equal to the object name; a truncated segment is a *warning* only
  when it is the last segment of its stream on a store where torn writes can happen
  (the loader tolerates exactly that), an *error* otherwise;
* every stream — no missing sequence numbers between its first and last segment, and
  missing leading segments only if a snapshot's high-water mark covers them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, TypeVar

import msgspec

from resumelog import format as fmt
from resumelog import paths
from resumelog._progress import Progress
from resumelog.done_shapes import ShapeTable
from resumelog.errors import CorruptObject, ObjectNotFound, UnsupportedFormat
from resumelog.idset import counted_uints, index_views
from resumelog.storage import ObjectInfo, Store

T = TypeVar("T")

__all__ = ["Problem", "VerifyReport", "check_snapshot_index", "verify_store"]

Severity = Literal["error", "warning"]

_CHUNK = 256


@dataclass
class Problem:
    """One finding: the object's path (relative to the root), a kind, a message."""

    path: str
    kind: str
    severity: Severity
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "kind": self.kind, "severity": self.severity, "message": self.message}


@dataclass
class VerifyReport:
    """What ``verify`` read and found."""

    url: str
    objects: int = 0
    bytes: int = 0
    meta: bool = False
    segments: int = 0
    snapshots: int = 0
    layers: int = 0
    records: int = 0
    streams: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(1 for p in self.problems if p.severity == "error")

    @property
    def warnings(self) -> int:
        return sum(1 for p in self.problems if p.severity == "warning")

    @property
    def ok(self) -> bool:
        """No errors (warnings allowed)."""
        return self.errors == 0

    def add(self, path: str, kind: str, message: str, severity: Severity = "error") -> None:
        self.problems.append(Problem(path, kind, severity, message))

    def to_dict(self) -> dict[str, object]:
        return {
            "url": self.url,
            "ok": self.ok,
            "objects": self.objects,
            "bytes": self.bytes,
            "meta": self.meta,
            "snapshots": self.snapshots,
            "layers": self.layers,
            "segments": self.segments,
            "streams": self.streams,
            "records": self.records,
            "errors": self.errors,
            "warnings": self.warnings,
            "problems": [p.to_dict() for p in self.problems],
        }


def check_snapshot_index(frames: fmt.SnapshotFrames, deep: bool = True) -> list[str]:
    """Structural problems of a decoded snapshot's completed-id index and body (for
    format 5 on, whose index lives in layers, the body and the done writers only: see
    :func:`check_layer`).

    ``deep`` also recomputes every id's hash (one CRC per id).
    """
    out: list[str] = []
    h, body = frames.header, frames.body
    n = h.completed_count
    nruns = len(body.runs)
    if frames.layers is None:
        out.extend(_check_index(frames.hashes, frames.offsets, frames.runs, frames.blob, n, nruns, h.ascii_ids, deep))
    nstreams = len(body.stream_ids)
    for p in body.pending:
        if not 0 <= p.run < nruns:
            out.append(f"pending entry for {p.source!r} names run index {p.run} outside the run table")
        if not len(p.keys) == len(p.streams) == len(p.ordinals) == len(p.deltas):
            out.append(f"pending entry for {p.source!r} has columns of different lengths")
        elif any(not 0 <= s < nstreams for s in p.streams):
            out.append(f"pending entry for {p.source!r} refers to an unknown stream")
    for c in frames.legacy_done or ():
        try:
            fmt.decode_done_entries(c.data)
        except CorruptObject as exc:
            out.append(f"done-entry chunk for runs {c.runs}: {exc}")
    if frames.legacy_done is None:
        try:
            fmt.verify_done(frames)
        except CorruptObject as exc:
            return [*out, f"done entries: {exc}"]
        if frames.layers is None:
            out.extend(_check_shapes(frames.shape_ids, frames.shapes, n))
        try:
            fmt.decode_done_writers(frames.writers)
        except CorruptObject as exc:
            out.append(f"done writers: {exc}")
    return out


def check_layer(layer: fmt.LayerFrames, deep: bool = True) -> list[str]:
    """Structural problems of a decoded version-5 layer: its index, shapes and run table."""
    h = layer.header
    out = _check_index(layer.hashes, layer.offsets, layer.runs, layer.blob, h.count, len(h.runs), h.ascii_ids, deep)
    out.extend(_check_shapes(layer.shape_ids, layer.shapes, h.count))
    if len(set(layer.tombstones)) != len(layer.tombstones):
        out.append("a tombstone is repeated")
    return out


class CheckedLayer(NamedTuple):
    """A layer object read by ``verify``: its header and its structural problems."""

    header: fmt.LayerHeader
    problems: list[str]


def check_layer_object(data: bytes | memoryview, key: str = "", deep: bool = True) -> CheckedLayer:
    """Decode and check a layer object of any version (every block of a version-6 one:
    its CRC, index and shapes, and with ``deep`` that its ids lie between its first id
    and the next block's). Raises what decoding its head raises."""
    if fmt.layer_version(memoryview(data)[: fmt.PREAMBLE_SIZE], key) < 6:
        lf = fmt.decode_layer(data, key)
        return CheckedLayer(lf.header, check_layer(lf, deep))
    lh = fmt.decode_layer_head(data, key)
    h = lh.header
    out = _check_shapes(memoryview(b""), lh.shapes, 0)
    if len(set(lh.tombstones)) != len(lh.tombstones):
        out.append("a tombstone is repeated")
    view = memoryview(data)
    pos = lh.head
    bi = lh.blocks
    for k, (count, size) in enumerate(zip(bi.counts, bi.sizes)):
        try:
            hashes, offsets, runs, shape_ids, blob = fmt.decode_layer_block(view[pos : pos + size], count, key)
            index_views(hashes, offsets, runs)
        except (CorruptObject, ValueError) as exc:
            out.append(f"block {k}: {_msg(exc) if isinstance(exc, CorruptObject) else exc}")
            pos += size
            continue
        pos += size
        problems = _check_index(hashes, offsets, runs, blob, count, len(h.runs), h.ascii_ids, deep)
        problems.extend(_check_shapes(shape_ids, lh.shapes, count))
        if deep and not problems:
            offs = index_views(hashes, offsets, runs)[1]
            raw = bytes(blob)
            ids = [raw[offs[i] : offs[i + 1]] for i in range(count)]
            upper = bi.firsts[k + 1] if k + 1 < len(bi.firsts) else None
            if min(ids) != bi.firsts[k] or (upper is not None and max(ids) >= upper):
                problems.append("its ids are not between its first id and the next block's (lookups would miss them)")
        out.extend(f"block {k}: {m}" for m in problems)
    return CheckedLayer(h, out)


def _check_index(
    hashes_raw: memoryview,
    offsets_raw: memoryview,
    runs_raw: memoryview,
    blob_raw: memoryview,
    n: int,
    nruns: int,
    ascii_ids: bool,
    deep: bool,
) -> list[str]:
    out: list[str] = []
    hashes, offsets, runs = index_views(hashes_raw, offsets_raw, runs_raw)  # lengths checked at decode
    blob = bytes(blob_raw)
    if offsets[0] != 0 or offsets[n] != len(blob):
        out.append(f"completed-id offsets do not span the id blob ({offsets[0]}..{offsets[n]} vs {len(blob)} bytes)")
        return out
    for i in range(n):
        if offsets[i + 1] < offsets[i]:
            out.append(f"completed-id offsets decrease at entry {i}")
            return out
        if i and hashes[i] < hashes[i - 1]:
            out.append(f"completed-id hashes are not sorted at entry {i}")
            return out
    bad_runs = sum(1 for r in runs if r >= nruns)
    if bad_runs:
        out.append(f"{bad_runs} completed ids name a run index outside the run table ({nruns} runs)")
    if ascii_ids and not blob.isascii():
        out.append("header says ids are ASCII but the id blob is not")
    if deep:
        crc = fmt.crc32c
        for i in range(n):
            raw = blob[offsets[i] : offsets[i + 1]]
            if crc(raw) != hashes[i]:
                out.append(f"completed id #{i} does not match its hash (CRC-32C of its bytes)")
                break
            try:
                raw.decode()
            except UnicodeDecodeError:
                out.append(f"completed id #{i} is not valid UTF-8")
                break
    return out


def _check_shapes(shape_ids: memoryview, shapes: memoryview, n: int) -> list[str]:
    """Problems of a shape table and the shape ids of ``n`` completed ids."""
    try:
        table = ShapeTable.decode(shapes)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return [f"shape table: {exc}"]
    if not shape_ids:
        return []
    try:
        top = max(counted_uints(shape_ids, n), default=0)
    except ValueError:
        return ["shape ids do not match the declared count"]
    if top > len(table):
        return [f"a completed id names shape {top}, outside the shape table ({len(table)} shapes)"]
    return []


def verify_store(
    store: Store,
    *,
    progress: bool | None = None,
    deep: bool = True,
    on_object: Callable[[str], None] | None = None,
) -> VerifyReport:
    """Read and check every object of the checkpoint in ``store``."""
    report = VerifyReport(store.url)
    listing = store.list("")
    report.objects = len(listing)
    report.bytes = sum(o.size for o in listing)
    segs: dict[tuple[str, str], list[tuple[int, ObjectInfo]]] = defaultdict(list)
    snaps: list[tuple[int, ObjectInfo]] = []
    layer_objs: list[ObjectInfo] = []
    meta: ObjectInfo | None = None
    for o in listing:
        if o.path == paths.META:
            meta = o
            continue
        sname = paths.parse_segment(o.path)
        if sname is not None:
            segs[(sname.writer_id, sname.incarnation)].append((sname.seq, o))
            continue
        n = paths.parse_snapshot(o.path)
        if n is not None:
            snaps.append((n, o))
            continue
        if paths.parse_layer(o.path) is not None:
            layer_objs.append(o)
            continue
        if o.path.startswith(paths.QUARANTINE_PREFIX):
            report.add(o.path, "quarantined", "moved aside by `resumelog repair` (never read)", "warning")
            continue
        report.add(o.path, "unknown_object", "not a resumelog object name (left alone by resumelog)", "warning")
    snaps.sort(key=lambda t: t[0])
    report.streams = len(segs)
    total = (1 if meta else 0) + len(snaps) + len(layer_objs) + sum(len(v) for v in segs.values())
    with Progress("verify", total, enabled=progress) as bar:
        # meta
        if meta is None:
            if listing:
                report.add(
                    paths.META,
                    "missing_meta",
                    "meta.msgpack is missing: a deleted checkpoint (objects of format 4 are ignored)",
                    "warning",
                )
        else:
            report.meta = True
            try:
                fmt.decode_meta(store.read(paths.META), paths.META)
            except ObjectNotFound:
                report.add(paths.META, "vanished", "deleted while verifying", "warning")
            except UnsupportedFormat as exc:
                report.add(paths.META, "unsupported_format", _msg(exc))
            except CorruptObject as exc:
                report.add(paths.META, "corrupt", _msg(exc))
            bar.advance()
            if on_object:
                on_object(paths.META)
        # snapshots, newest last; remember the marks of each that decodes
        marks: dict[tuple[str, str], int] = {}
        damaged: set[str] = set()  # runs the newest readable snapshot records as damaged or retired
        named: dict[str, tuple[str, fmt.LayerRef]] = {}  # layer -> (a snapshot naming it, its reference)

        def count_snapshot() -> None:
            report.snapshots += 1

        snap_keys = [o.path for _, o in snaps]
        for key, frames in _decoded(
            store, snap_keys, fmt.decode_snapshot_frames, report, bar, on_object, count_snapshot
        ):
            number = paths.parse_snapshot(key)
            if frames.header.number != number:
                report.add(key, "name_mismatch", f"header says snapshot {frames.header.number}, name says {number}")
            for message in check_snapshot_index(frames, deep=deep):
                report.add(key, "corrupt", message)
            for ref in frames.layers or ():
                named[ref.name] = (key, ref)
            for m in frames.body.streams:
                sid = (m.writer_id, m.incarnation)
                marks[sid] = max(marks.get(sid, -1), m.seq)
            damaged = {r.run_id for r in frames.body.runs if r.damaged or r.retired}
        # layers: each one read, checked, and matched against the snapshots naming it
        present = {o.path for o in layer_objs}
        for layer_key, (key, _ref) in sorted(named.items()):
            if layer_key not in present:
                report.add(key, "missing_layer", f"names layer {layer_key}, which is missing")

        def count_layer() -> None:
            report.layers += 1

        layer_keys = [o.path for o in layer_objs]

        def check(data: bytes, key: str) -> CheckedLayer:
            return check_layer_object(data, key, deep)

        for key, layer in _decoded(store, layer_keys, check, report, bar, on_object, count_layer):
            for message in layer.problems:
                report.add(key, "corrupt", message)
            if key in named and layer.header.nonce != named[key][1].nonce:
                report.add(key, "name_mismatch", f"is not the layer {named[key][0]} names (its nonce differs)")
        # segments, stream by stream
        for (writer, inc), items in sorted(segs.items()):
            items.sort(key=lambda t: t[0])
            seqs = [s for s, _ in items]
            last = seqs[-1]
            stream = f"journal/{writer}/{inc}/"
            first = seqs[0]
            if first > 0 and marks.get((writer, inc), -1) < first - 1:
                report.add(
                    stream,
                    "journal_gap",
                    f"segments 0..{first - 1} are missing and no snapshot covers them",
                )
            missing = sorted(set(range(first, last + 1)) - set(seqs))
            run: str | None = None
            for key, data in _read_all(store, [o.path for _, o in items]):
                bar.advance()
                if on_object:
                    on_object(key)
                if isinstance(data, ObjectNotFound):
                    continue
                if isinstance(data, BaseException):
                    raise data
                report.segments += 1
                name = paths.parse_segment(key)
                assert name is not None
                try:
                    seg = fmt.decode_segment(data, key)
                except fmt.TornSegment as exc:
                    if name.seq == last and store.torn_writes_possible:
                        report.add(key, "torn_tail", _msg(exc) + " (last segment of its stream: ignored)", "warning")
                    else:
                        report.add(key, "torn", _msg(exc) + _covered(marks, name))
                    continue
                except UnsupportedFormat as exc:
                    report.add(key, "unsupported_format", _msg(exc))
                    continue
                except CorruptObject as exc:
                    report.add(key, "corrupt", _msg(exc) + _covered(marks, name))
                    continue
                hd = seg.header
                if (hd.writer_id, hd.incarnation, hd.seq) != (name.writer_id, name.incarnation, name.seq):
                    report.add(
                        key,
                        "name_mismatch",
                        f"header names {hd.writer_id}/{hd.incarnation} seq {hd.seq}, not its object name",
                    )
                try:
                    paths.validate_id(hd.run_id, "run id")
                except ValueError:
                    report.add(key, "corrupt", "segment header has an invalid run id")
                run = hd.run_id
                report.records += seg.footer.record_count
            if missing and run in damaged:
                report.add(
                    stream,
                    "journal_gap",
                    f"segments missing inside the stream: {_ranges(missing)} (recorded: run {run} completes "
                    "nothing more)",
                    "warning",
                )
            elif missing:
                report.add(stream, "journal_gap", f"segments missing inside the stream: {_ranges(missing)}")
    return report


def _decoded(
    store: Store,
    keys: list[str],
    decode: Callable[[bytes, str], T],
    report: VerifyReport,
    bar: Progress,
    on_object: Callable[[str], None] | None,
    count: Callable[[], None],
) -> Iterator[tuple[str, T]]:
    """Read ``keys`` and ``decode`` each, counting it; yields what decodes, reports what
    does not (a newer format version, corruption) and skips what vanished (a concurrent
    gc collected it)."""
    for key, data in _read_all(store, keys):
        bar.advance()
        if on_object:
            on_object(key)
        if isinstance(data, ObjectNotFound):
            continue
        if isinstance(data, BaseException):
            raise data
        count()
        try:
            obj = decode(data, key)
        except UnsupportedFormat as exc:
            report.add(key, "unsupported_format", _msg(exc))
            continue
        except CorruptObject as exc:
            report.add(key, "corrupt", _msg(exc))
            continue
        yield key, obj


def _covered(marks: dict[tuple[str, str], int], name: paths.SegmentName) -> str:
    if name.seq <= marks.get((name.writer_id, name.incarnation), -1):
        return " (a snapshot already covers it: loading never reads it again, gc will collect it)"
    return ""


def _read_all(store: Store, keys: list[str]) -> Iterable[tuple[str, bytes | BaseException]]:
    for i in range(0, len(keys), _CHUNK):
        yield from store.read_many(keys[i : i + _CHUNK])


def _msg(exc: BaseException) -> str:
    """The message without the ``path: `` prefix the error types add."""
    text = str(exc)
    path = getattr(exc, "path", "")
    if path and text.startswith(f"{path}: "):
        text = text[len(path) + 2 :]
    return text


def _ranges(values: list[int]) -> str:
    parts: list[str] = []
    start = prev = values[0]
    for v in values[1:]:
        if v == prev + 1:
            prev = v
            continue
        parts.append(f"{start}" if start == prev else f"{start}..{prev}")
        start = prev = v
    parts.append(f"{start}" if start == prev else f"{start}..{prev}")
    if len(parts) > 10:
        parts = [*parts[:10], f"... ({len(parts) - 10} more ranges)"]
    return ", ".join(parts)
