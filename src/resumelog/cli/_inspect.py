"""``resumelog inspect``: decode one object (segment, snapshot, meta) into plain data.

Built on the public decoders of :mod:`resumelog.format`; :func:`describe` returns a
JSON-ready dict (the ``inspect --json`` schema, see ``docs/cli.md``) and could move
into the library as ``resumelog.format.to_dict``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import Any

from resumelog import format as fmt
from resumelog import paths
from resumelog.algebra import DONE_KEY, EMIT_KEY
from resumelog.errors import CorruptObject, ObjectNotFound, UnsupportedFormat
from resumelog.idset import index_views

__all__ = ["describe", "normalize_key", "render_text"]

_FRAME = struct.Struct(">II")
_KINDS = {fmt.KIND_SEGMENT: "segment", fmt.KIND_SNAPSHOT: "snapshot", fmt.KIND_META: "meta", fmt.KIND_LAYER: "layer"}


def normalize_key(obj: str, root: str) -> str:
    """An object key relative to the checkpoint root, from what a user typed.

    Accepts a key (``journal/w1/<inc>/00000000000000000000.seg``), ``./key``, or a full
    path/URL that starts with the checkpoint's root.
    """
    key = obj.strip()
    for prefix in (root.rstrip("/") + "/", root.split("://", 1)[-1].rstrip("/") + "/"):
        if prefix != "/" and key.startswith(prefix):
            key = key[len(prefix) :]
            break
    while key.startswith("./"):
        key = key[2:]
    return key


def kind_of(key: str, data: bytes) -> str | None:
    """``segment``/``snapshot``/``meta`` from the name, else from the preamble's kind byte."""
    if key == paths.META or key.endswith("/" + paths.META):
        return "meta"
    if paths.parse_segment(key) is not None or key.endswith(".seg"):
        return "segment"
    if paths.parse_snapshot(key) is not None or key.endswith(".snap"):
        return "snapshot"
    if paths.parse_layer(key) is not None or key.endswith(".layer"):
        return "layer"
    if len(data) >= 5 and data[:4] == fmt.MAGIC:
        return _KINDS.get(data[4])
    return None


def walk_frames(data: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The preamble and the frame table, tolerating damage (for showing corrupt objects)."""
    pre: dict[str, Any] = {}
    frames: list[dict[str, Any]] = []
    size = fmt.PREAMBLE_SIZE
    if len(data) < size:
        return {"error": f"{len(data)} bytes: shorter than the {size}-byte preamble"}, frames
    magic, kind, flags, version, total, reserved = struct.unpack_from(">4sBBHQI", data, 0)
    crc = int.from_bytes(data[20:24], "big")
    pre = {
        "magic": magic.decode("latin-1"),
        "kind": _KINDS.get(kind, f"unknown ({kind})"),
        "flags": flags,
        "version": version,
        "total_len": total,
        "reserved": reserved,
        "crc32c": f"{crc:08x}",
        "crc_ok": fmt.crc32c(data[:20]) == crc,
    }
    pos = size
    end = min(total, len(data))
    while pos < end:
        if pos + fmt.FRAME_HEADER_SIZE > end:
            frames.append({"offset": pos, "error": "frame header runs past the end"})
            break
        length, fcrc = _FRAME.unpack_from(data, pos)
        start = pos + fmt.FRAME_HEADER_SIZE
        if start + length > end:
            frames.append({"offset": pos, "length": length, "error": "frame runs past the end"})
            break
        frames.append(
            {
                "offset": pos,
                "length": length,
                "crc32c": f"{fcrc:08x}",
                "crc_ok": fmt.crc32c(data[start : start + length]) == fcrc,
            }
        )
        pos = start + length
    return pre, frames


def _limit(items: list[Any], limit: int | None) -> tuple[list[Any], bool]:
    if limit is None or len(items) <= limit:
        return items, False
    return items[:limit], True


def describe(
    key: str, data: bytes, *, limit: int | None = 100, read: Callable[[str], bytes] | None = None
) -> dict[str, Any]:
    """Decode ``data`` (the object ``key``) into a JSON-ready dict.

    ``read`` reads another object of the checkpoint: the layers a format-5 snapshot
    names (their completed ids are listed with the snapshot's).

    Lists (records, completed ids, pending entries) are cut at ``limit`` items
    (``None``: everything); ``*_total`` and ``*_truncated`` say so. A corrupt object
    gives ``ok: false`` and ``error``, with whatever could still be shown.
    """
    kind = kind_of(key, data)
    pre, frames = walk_frames(data)
    doc: dict[str, Any] = {"path": key, "kind": kind or "unknown", "size": len(data), "ok": True}
    doc["preamble"] = pre
    doc["frames"] = frames
    try:
        if kind == "segment":
            doc.update(_segment(key, data, limit))
        elif kind == "snapshot":
            doc.update(_snapshot(key, data, limit, read))
        elif kind == "layer":
            doc.update(_layer(key, data, limit))
        elif kind == "meta":
            doc.update(_meta(key, data))
        else:
            raise CorruptObject("not a resumelog object (no known name and no RSLG preamble)", key)
    except (CorruptObject, UnsupportedFormat) as exc:
        doc["ok"] = False
        doc["error"] = str(exc)
    return doc


def _segment(key: str, data: bytes, limit: int | None) -> dict[str, Any]:
    seg = fmt.decode_segment(data, key)
    h, f = seg.header, seg.footer
    records: list[dict[str, Any]] = []
    resets: list[dict[str, Any]] = []
    for bi, b in enumerate(seg.batches):
        for i, k in enumerate(b.keys):
            records.append(
                {
                    "batch": bi,
                    "key": k,
                    "source": b.sources[b.source_index[i]],
                    "delta": b.deltas[i],
                    "emission": bool(b.flags[i] & fmt.EMISSION),
                }
            )
        resets.extend({"batch": bi, "source": r.source, "runs": list(r.runs)} for r in b.resets)
    shown, cut = _limit(records, limit)
    return {
        "format_version": _version(data),
        "header": {
            "writer_id": h.writer_id,
            "incarnation": h.incarnation,
            "seq": h.seq,
            "run_id": h.run_id,
            "nonce": h.nonce.hex(),
            "created_ms": h.created_ms,
        },
        "footer": {"record_count": f.record_count, "batch_count": f.batch_count, "closed": f.closed},
        "records": shown,
        "records_total": len(records),
        "records_truncated": cut,
        "resets": resets,
    }


def _entries(
    hashes_raw: memoryview,
    offsets_raw: memoryview,
    runs_raw: memoryview,
    blob_raw: memoryview,
    n: int,
    run_ids: list[str],
    take: int,
) -> list[dict[str, Any]]:
    hashes, offsets, runs = index_views(hashes_raw, offsets_raw, runs_raw)  # lengths checked at decode
    blob = bytes(blob_raw[: offsets[take]]) if take else b""
    out = []
    for i in range(take):
        r = runs[i]
        out.append(
            {
                "source": blob[offsets[i] : offsets[i + 1]].decode(errors="replace"),
                "run": run_ids[r] if r < len(run_ids) else None,
                "hash": f"{hashes[i]:08x}",
            }
        )
    return out


def _layer(key: str, data: bytes, limit: int | None) -> dict[str, Any]:
    from resumelog.layers import open_layer

    layer = open_layer(data, key, defer=False)
    h = layer.header
    assert h is not None
    take = h.count if limit is None else min(h.count, limit)
    tombs, cut = _limit(sorted(layer.tombstones), limit)
    completed: list[dict[str, Any]] = []
    shape_id_bytes = 0
    for block in layer.index.blocks():
        hashes, offsets, runs, blob = block.index.raw()
        if len(completed) < take:
            n = block.index.count
            completed += _entries(hashes, offsets, runs, blob, n, list(h.runs), min(n, take - len(completed)))
        if block.tags is not None:
            shape_id_bytes += len(block.tags) * getattr(block.tags, "itemsize", 4)
    return {
        "format_version": h.format_version,
        "header": {
            "format_version": h.format_version,
            "nonce": h.nonce.hex(),
            "created_ms": h.created_ms,
            "count": h.count,
            "ascii_ids": h.ascii_ids,
            "runs": list(h.runs),
            "tombstones": h.tombstones,
        },
        "blocks": layer.index.nblocks,
        "completed": completed,
        "completed_total": h.count,
        "completed_truncated": take < h.count,
        "tombstones": tombs,
        "tombstones_truncated": cut,
        "shape_id_bytes": shape_id_bytes,
        "shape_table_bytes": len(layer.table().encode()) if layer.has_shapes else 1,
    }


def _snapshot(key: str, data: bytes, limit: int | None, read: Callable[[str], bytes] | None = None) -> dict[str, Any]:
    sf = fmt.decode_snapshot_frames(data, key)
    h, body = sf.header, sf.body
    run_ids = [r.run_id for r in body.runs]
    n = h.completed_count
    take = n if limit is None else min(n, limit)
    done: set[str] | None = None
    if sf.layers is None:
        completed = _entries(sf.hashes, sf.offsets, sf.runs, sf.blob, n, run_ids, n)
    else:
        completed = []
        if read is not None:
            from resumelog.snapshot import load_snapshot

            try:
                state = load_snapshot(data, key, read_layer=lambda ref: read(ref.name))[1]
            except ObjectNotFound as exc:
                raise CorruptObject(f"a layer it names is missing ({exc})", key) from None
            ids = state.base.ids()
            done = set(ids)
            completed = [
                {"source": s, "run": state.completed_run(s), "hash": f"{fmt.crc32c(s.encode()):08x}"} for s in ids
            ]
    if done is None:
        done = {c["source"] for c in completed}
    completed = completed[:take]
    pending = []
    for p in body.pending:
        finals: dict[str, set[int]] = {}
        for k, d in zip(p.keys, p.deltas):
            finals.setdefault(k, set()).add(d)
        total = sum(next(iter(v)) for v in finals.values() if len(v) == 1)
        pending.append(
            {
                "run": run_ids[p.run] if 0 <= p.run < len(run_ids) else None,
                "source": p.source,
                "emitted": p.emitted,
                "tainted": p.tainted,
                "sum": total,
                "conflicts": sum(1 for v in finals.values() if len(v) > 1),
                "entries": [
                    {"key": k, "stream": s, "ordinal": o, "delta": d}
                    for k, s, o, d in zip(p.keys, p.streams, p.ordinals, p.deltas)
                ],
            }
        )
    pend_shown, pend_cut = _limit(pending, limit)
    # "pending" as `status` counts it: sources with partial state that are not complete
    # (a run's partial state for a source another run completed does not count)
    partial = {p["source"] for p in pending} - done
    return {
        "format_version": h.format_version,
        "header": {
            "format_version": h.format_version,
            "number": h.number,
            "nonce": h.nonce.hex(),
            "created_ms": h.created_ms,
            "completed_count": h.completed_count,
            "ascii_ids": h.ascii_ids,
        },
        "runs": [
            {
                "run_id": r.run_id,
                "first_snapshot": r.first_snapshot,
                "last_snapshot": r.last_snapshot,
                "retired": r.retired,
            }
            for r in body.runs
        ],
        "streams": [
            {
                "writer_id": m.writer_id,
                "incarnation": m.incarnation,
                "run_id": m.run_id,
                "seq": m.seq,
                "closed": m.closed,
                "records": m.records,
                "last_ms": m.last_ms,
            }
            for m in body.streams
        ],
        "stream_ids": list(body.stream_ids),
        "layers": [
            {"name": r.name, "count": r.count, "tombstones": r.tombstones, "size": r.size} for r in sf.layers or ()
        ],
        "completed": completed,
        "completed_total": n,
        "completed_truncated": len(completed) < n,
        "pending": pend_shown,
        "pending_total": len(pending),
        "pending_truncated": pend_cut,
        "pending_sources": len(partial),
        "resets": [{"source": r.source, "runs": list(r.runs)} for r in body.resets],
        "anomalies": [
            {"kind": a.kind, "source": a.source, "run_id": a.run_id, "detail": a.detail} for a in body.anomalies
        ],
        "anomaly_counts": dict(body.anomaly_counts),
        "records_folded": body.records_folded,
        "done_entries": _done_summary(sf),
    }


def _meta(key: str, data: bytes) -> dict[str, Any]:
    m = fmt.decode_meta(data, key)
    return {
        "format_version": m.format_version,
        "fingerprint": dict(m.fingerprint),
        "nonce": m.nonce.hex(),
        "created_ms": m.created_ms,
    }


def _version(data: bytes) -> int:
    return int.from_bytes(data[6:8], "big") if len(data) >= 8 else 0


# --------------------------------------------------------------------------- text


def show(s: str) -> str:
    """A key or id made printable: reserved keys by name, control characters escaped."""
    if s == EMIT_KEY:
        return "<emit>"
    if s == DONE_KEY:
        return "<done>"
    if s.isprintable():
        return s
    return repr(s)[1:-1]


def _when(ms: int) -> str:
    if not ms:
        return "-"
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def render_text(doc: dict[str, Any]) -> Iterator[str]:
    """Human-readable lines for a :func:`describe` result."""
    yield f"{doc['path']}: {doc['kind']}, {doc['size']} bytes" + ("" if doc["ok"] else "  ** CORRUPT **")
    pre = doc.get("preamble") or {}
    if "error" in pre:
        yield f"  preamble: {pre['error']}"
    elif pre:
        yield (
            f"  preamble: magic {pre['magic']!r} kind {pre['kind']} version {pre['version']} "
            f"total_len {pre['total_len']} crc {pre['crc32c']} {'ok' if pre['crc_ok'] else 'MISMATCH'}"
        )
    for i, f in enumerate(doc.get("frames", [])):
        if "error" in f:
            yield f"  frame {i} @{f['offset']}: {f['error']}"
        else:
            yield f"  frame {i} @{f['offset']}: {f['length']} bytes, crc {f['crc32c']} {'ok' if f['crc_ok'] else 'MISMATCH'}"
    if not doc["ok"]:
        yield f"  error: {doc.get('error')}"
    kind = doc["kind"]
    if kind == "segment" and "header" in doc:
        h, f = doc["header"], doc["footer"]
        yield f"  writer {h['writer_id']}  incarnation {h['incarnation']}  seq {h['seq']}  run {h['run_id']}"
        yield f"  created {_when(h['created_ms'])}  nonce {h['nonce']}"
        yield f"  {f['record_count']} records in {f['batch_count']} batches; closed: {f['closed']}"
        if doc["records"]:
            yield "  records (key  source  delta  flags):"
            for r in doc["records"]:
                yield f"    {show(r['key'])}  {show(r['source'])}  {r['delta']:+d}{'  emission' if r['emission'] else ''}"
            if doc["records_truncated"]:
                yield f"    ... {doc['records_total'] - len(doc['records'])} more (use --limit or --all)"
        for r in doc["resets"]:
            yield f"  reset {show(r['source'])} (voids completion by runs {', '.join(r['runs']) or '-'})"
    elif kind == "snapshot" and "header" in doc:
        h = doc["header"]
        yield f"  snapshot #{h['number']}  created {_when(h['created_ms'])}  format v{h['format_version']}"
        yield (
            f"  completed {h['completed_count']}  pending {doc['pending_sources']} (sources started, not complete; "
            f"{doc['pending_total']} partial states by run)  records folded {doc['records_folded']}"
        )
        for layer in doc["layers"]:
            yield f"  layer {layer['name']}: {layer['count']} ids, {layer['tombstones']} tombstones, {layer['size']} bytes"
        yield f"  runs ({len(doc['runs'])}):"
        for r in doc["runs"]:
            yield (
                f"    {r['run_id']}  snapshots {r['first_snapshot']}..{r['last_snapshot']}"
                f"{'  retired' if r['retired'] else ''}"
            )
        yield f"  streams ({len(doc['streams'])}):"
        for m in doc["streams"]:
            yield (
                f"    {m['writer_id']}/{m['incarnation']}  run {m['run_id']}  seq {m['seq']}  "
                f"records {m['records']}{'  closed' if m['closed'] else ''}"
            )
        if doc["completed"]:
            yield "  completed (source  run):"
            for c in doc["completed"]:
                yield f"    {show(c['source'])}  {c['run']}"
            if doc["completed_truncated"]:
                yield f"    ... {doc['completed_total'] - len(doc['completed'])} more (use --limit or --all)"
        if doc["pending"]:
            yield "  partial states (run  source  sum  flags):"
            for p in doc["pending"]:
                flags = [x for x in ("emitted", "tainted") if p[x]] + (
                    [f"{p['conflicts']} conflicts"] if p["conflicts"] else []
                )
                yield f"    {p['run']}  {show(p['source'])}  {p['sum']:+d}  {' '.join(flags)}"
                for e in p["entries"]:
                    yield f"      {show(e['key'])}  stream {e['stream']}  {e['delta']:+d}"
            if doc["pending_truncated"]:
                yield f"    ... {doc['pending_total'] - len(doc['pending'])} more"
        for r in doc["resets"]:
            yield f"  reset {show(r['source'])} (runs {', '.join(r['runs'])})"
        if doc["anomaly_counts"]:
            yield "  anomalies: " + ", ".join(f"{k} {v}" for k, v in sorted(doc["anomaly_counts"].items()))
    elif kind == "layer" and "header" in doc:
        h = doc["header"]
        yield f"  layer  created {_when(h['created_ms'])}  format v{h['format_version']}  runs {', '.join(h['runs'])}"
        yield f"  {h['count']} completed ids, {h['tombstones']} tombstones (ids of the layers below it, masked)"
        for c in doc["completed"]:
            yield f"    {show(c['source'])}  {c['run']}"
        if doc["completed_truncated"]:
            yield f"    ... {doc['completed_total'] - len(doc['completed'])} more (use --limit or --all)"
        for t in doc["tombstones"]:
            yield f"    masks {show(t)}"
    elif kind == "meta" and "fingerprint" in doc:
        yield f"  format v{doc['format_version']}  created {_when(doc['created_ms'])}  nonce {doc['nonce']}"
        fp = doc["fingerprint"]
        yield "  fingerprint: " + (", ".join(f"{k}={v!r}" for k, v in sorted(fp.items())) if fp else "(none)")


def _done_summary(sf: fmt.SnapshotFrames) -> dict[str, Any]:
    """Sizes of the stored final entries (shape table and ids; version 1: chunks)."""
    if sf.legacy_done is not None:
        return {"format": 1, "chunks": [{"runs": list(c.runs), "bytes": len(c.data)} for c in sf.legacy_done]}
    version = sf.header.format_version
    out: dict[str, Any] = {"format": version}
    if sf.layers is None:
        out.update(shape_id_bytes=len(sf.shape_ids), shape_table_bytes=len(sf.shapes))
    if version >= 3:
        dw = fmt.decode_done_writers(sf.writers)
        out["writer_bytes"] = len(sf.writers)
        out["with_open_writers"] = len(dw.sources)
        out["open_streams"] = len(dw.streams)
    return out
