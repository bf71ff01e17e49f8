"""The commands: each opens the checkpoint, calls the library, prints text or JSON."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import msgspec

from resumelog.cli._common import (
    DEFAULT_STALE_AFTER,
    EXIT_OK,
    EXIT_PROBLEMS,
    Scrubber,
    classify_error,
    dump_json,
    fail,
    human_age,
    human_bytes,
    plural,
    read_sources,
    redact_url,
    table,
    writer_state,
)

if TYPE_CHECKING:
    from resumelog.checkpoint import Checkpoint, Status
    from resumelog.compactor import CompactResult, MergeResult
    from resumelog.storage import Store

__all__ = [
    "Ctx",
    "cmd_clear",
    "cmd_compact",
    "cmd_completed",
    "cmd_demo",
    "cmd_export",
    "cmd_gc",
    "cmd_inspect",
    "cmd_log",
    "cmd_merge",
    "cmd_pending",
    "cmd_reset",
    "cmd_status",
    "cmd_verify",
    "cmd_watch",
]


@dataclass
class Ctx:
    """What every command gets: parsed arguments, storage options, output mode."""

    args: argparse.Namespace
    storage_options: dict[str, Any]
    json: bool
    debug: bool
    scrub: Scrubber

    @property
    def url(self) -> str:
        url: str = self.args.url
        return url

    @property
    def shown_url(self) -> str:
        return redact_url(self.url)


# --------------------------------------------------------------------------- opening


def open_store(ctx: Ctx) -> Store:
    """The store at ``ctx.url`` (opening writes nothing)."""
    from resumelog.errors import ResumelogError
    from resumelog.storage import open_store as _open
    from resumelog.storage import split_url

    proto, path = split_url(ctx.url)
    if proto in ("file", "local") and os.path.exists(path) and not os.path.isdir(path):
        fail(f"{ctx.shown_url} is a file, not a checkpoint directory")
    if proto in ("file", "local", "memory"):
        _check_local_options(ctx, proto)
    try:
        return _open(ctx.url, ctx.storage_options)
    except TypeError as exc:
        fail(f"invalid storage options for {ctx.shown_url}: {exc}")
    except ValueError as exc:
        if isinstance(exc, ResumelogError):
            raise
        fail(f"cannot open {ctx.shown_url}: {exc}")


def _check_local_options(ctx: Ctx, proto: str) -> None:
    """Name the storage options a local path or ``memory://`` does not take (they are
    for fsspec backends), instead of a Python ``TypeError``."""
    import inspect

    from resumelog.storage import LocalStore

    accepted = (
        sorted(n for n, p in inspect.signature(LocalStore.__init__).parameters.items() if p.kind is p.KEYWORD_ONLY)
        if proto != "memory"
        else []
    )
    unknown = sorted(k for k in ctx.storage_options if k not in accepted)
    if unknown:
        where = "memory://" if proto == "memory" else "a local path"
        takes = f"it takes only: {', '.join(accepted)}" if accepted else "it takes none"
        fail(
            f"storage option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"{'do' if len(unknown) > 1 else 'does'} not apply to {where} ({takes}; -o options are for s3://, gs://...)"
        )


def has_checkpoint(store: Store) -> bool:
    """Whether resumelog objects exist under the root.

    Looks only at ``meta.msgpack``, ``snapshots/`` and ``journal/`` (never a recursive
    listing of the whole root, which could be a home directory or a bucket).
    """
    from resumelog import paths

    return store.exists(paths.META) or bool(store.list(paths.SNAPSHOT_PREFIX)) or bool(store.list(paths.JOURNAL_PREFIX))


def require_checkpoint(ctx: Ctx, store: Store) -> None:
    """Exit 2 with "no checkpoint at URL" unless resumelog objects exist there (or with
    what is wrong with the location itself, such as a missing bucket)."""
    if not has_checkpoint(store):
        no_checkpoint(ctx, store)


def no_checkpoint(ctx: Ctx, store: Store) -> NoReturn:
    """Exit 2: "no checkpoint at URL", or why the location cannot hold one at all."""
    why = store.missing_root()
    if why:
        fail(f"no checkpoint at {ctx.shown_url}: {why}")
    fail(f"no checkpoint at {ctx.shown_url}")


def open_checkpoint(ctx: Ctx) -> Checkpoint:
    """Open an existing checkpoint without creating anything; a missing one is a usage
    error, "no checkpoint at URL"."""
    import resumelog
    from resumelog.checkpoint import Checkpoint
    from resumelog.errors import ObjectNotFound

    store = open_store(ctx)
    require_checkpoint(ctx, store)
    Checkpoint.load_progress = _PROGRESS  # a long journal tail shows a bar on a terminal
    try:
        return resumelog.open(store, create=False)
    except ObjectNotFound:  # cleared between the check and the open
        fail(f"no checkpoint at {ctx.shown_url}")
    finally:
        Checkpoint.load_progress = False


#: progress bars: ``None`` lets the library draw them on a terminal (stderr) only
_PROGRESS: bool | None = None


def confirm(ctx: Ctx, question: str, what: str) -> None:
    """Ask on a terminal unless ``--yes``; refuse (exit 2) without a terminal."""
    if ctx.args.yes:
        return
    if not sys.stdin.isatty():
        fail(f"refusing to {what} without --yes (no terminal to confirm on)")
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        fail(f"not confirmed; nothing was changed ({what})")


# --------------------------------------------------------------------------- status


def writer_rows(st: Status, now_ms: float, stale_after: float) -> list[dict[str, Any]]:
    """Each stream of ``st`` with its age and state (``active``/``stale``/``closed``),
    most recent flush first."""
    out = []
    for w in sorted(st.writers, key=lambda w: -w.last_flush_ms):
        age = max((now_ms - w.last_flush_ms) / 1000, 0.0) if w.last_flush_ms else None
        doc: dict[str, Any] = msgspec.to_builtins(w)
        doc["last_flush_age_s"] = None if age is None else round(age, 3)
        doc["state"] = writer_state(w.closed, age, stale_after)
        out.append(doc)
    return out


def status_to_dict(st: Status, stale_after: float = DEFAULT_STALE_AFTER, now_ms: float | None = None) -> dict[str, Any]:
    """The ``status --json`` document: :class:`resumelog.Status` as a JSON object, with
    resets counted apart from anomalies (as :class:`resumelog.Status` does) and each
    writer's ``state`` and age."""
    result: dict[str, Any] = msgspec.to_builtins(st)
    result["writers"] = writer_rows(st, time.time() * 1000 if now_ms is None else now_ms, stale_after)
    return result


def cmd_status(ctx: Ctx) -> int:
    ckpt = open_checkpoint(ctx)
    st = ckpt.status(gc_grace=ctx.args.grace, outputs=ctx.args.outputs)
    doc = status_to_dict(st, ctx.args.stale_after)
    if ctx.json:
        dump_json(doc)
        return EXIT_OK
    out = [f"checkpoint   {redact_url(st.url)}  (format v{st.format_version})"]
    if st.fingerprint:
        out.append("fingerprint  " + ", ".join(f"{k}={v!r}" for k, v in sorted(st.fingerprint.items())))
    snap = f"#{st.snapshot}" if st.snapshot else "none yet"
    out.append(f"snapshot     {snap}  ({plural(st.snapshot_objects, 'object')}, {human_bytes(st.snapshot_bytes)})")
    if st.layers:
        out.append(f"index        {plural(st.layers, 'layer')}, {human_bytes(st.layer_bytes)}")
    out.append(f"completed    {st.completed}")
    out.append(f"pending      {st.pending}  (started, not complete)")
    if doc["anomalies"]:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(doc["anomaly_counts"].items()))
        out.append(f"anomalies    {doc['anomalies']}  ({kinds})")
    else:
        out.append("anomalies    0")
    if doc["resets"]:
        out.append(f"resets       {doc['resets']}  (completions voided by an operator: those sources rerun)")
    out.append(
        f"journal      {plural(st.journal_objects, 'segment')}, {human_bytes(st.journal_bytes)}; "
        f"{st.unfolded_segments} not yet compacted ({plural(st.records_folded, 'record')} folded in all)"
    )
    out.append(
        f"gc           would free {plural(st.gc_reclaimable_objects, 'object')}, "
        f"{human_bytes(st.gc_reclaimable_bytes)} (grace {human_age(ctx.args.grace)})"
    )
    if st.foreign_objects:
        out.append(
            f"foreign      {plural(st.foreign_objects, 'object')} of a deleted checkpoint "
            "(written after it was deleted or cleared): ignored; gc deletes them"
        )
    for o in st.outputs:
        out.append(
            f"outputs      {redact_url(o.root)}: {o.committed} committed ({human_bytes(o.committed_bytes)}), "
            f"{o.in_flight} in flight, {o.orphaned} orphaned ({human_bytes(o.orphaned_bytes)}), {o.staging} staging; "
            f"gc would free {plural(o.gc_objects, 'object')}, {human_bytes(o.gc_bytes)}"
        )
    if st.runs:
        out.append("")
        out.append(f"runs ({len(st.runs)})")
        rows = [
            [
                r.run_id,
                str(r.completed_sources),
                str(r.pending_sources),
                f"{r.first_snapshot}..{r.last_snapshot}",
                run_state(r),
            ]
            for r in st.runs
        ]
        out.extend(table(rows, ["RUN", "COMPLETED", "PENDING", "SNAPSHOTS", "STATE"]))
    if doc["writers"]:
        out.append("")
        states = Counter(w["state"] for w in doc["writers"])
        out.append(f"writers ({', '.join(f'{states[k]} {k}' for k in ('active', 'stale', 'closed') if states[k])})")
        rows = []
        for w in doc["writers"]:
            age = w["last_flush_age_s"]
            rows.append(
                [
                    w["writer_id"],
                    w["incarnation"],
                    w["run_id"],
                    str(w["last_seq"]),
                    str(w["records"]),
                    "-" if age is None else human_age(age) + " ago",
                    w["state"],
                ]
            )
        out.extend(table(rows, ["WRITER", "INCARNATION", "RUN", "SEQ", "RECORDS", "LAST FLUSH", "STATE"]))
        if states["stale"]:
            out.append(
                f"  stale: open, but no flush for over {human_age(ctx.args.stale_after)} "
                "(killed, hung, or idle; --stale-after sets the threshold)"
            )
    recent = st.recent_anomalies
    if recent:
        out.append("")
        out.append("recent anomalies")
        for a in recent[-10:]:
            out.append(f"  {a['kind']}  {a['source'] or '-'}  run {a['run_id'] or '-'}  {a['detail']}".rstrip())
    print("\n".join(out))
    return EXIT_OK


def run_state(r: Any) -> str:
    """``live``, ``retired`` (its records are ignored) or ``damaged`` (records lost)."""
    return "retired" if r.retired else "damaged" if getattr(r, "damaged", False) else "live"


# --------------------------------------------------------------------------- queries


def cmd_pending(ctx: Ctx) -> int:
    sources = read_sources(ctx.args.sources_file, ctx.args.sources)
    if ctx.args.sources_file is None and not ctx.args.sources:
        fail("give source ids as arguments or with --sources FILE|-")
    ckpt = open_checkpoint(ctx)
    left = ckpt.pending(sources)
    if ctx.json:
        dump_json({"url": ckpt.store.url, "requested": len(sources), "pending_count": len(left), "pending": left})
    else:
        w = sys.stdout.write
        for s in left:
            w(s + "\n")
    return EXIT_PROBLEMS if ctx.args.exit_code and left else EXIT_OK


def _require_run(ckpt: Checkpoint, run: str) -> Status:
    """The status; exit 2 unless ``run`` is a run this checkpoint knows."""
    st = ckpt.status()
    runs = [r.run_id for r in st.runs]
    if run not in runs:
        shown = ", ".join(runs[-10:]) if runs else "none"
        fail(f"no run {run!r} in {redact_url(ckpt.store.url)} (runs: {shown}; 'resumelog log URL' lists them)")
    return st


def completed_of(ckpt: Checkpoint, run: str | None, sort: bool = False) -> Iterator[tuple[str, str]]:
    """``(source, run)`` of every completed source (only ``run``'s if given)."""
    ids: Iterable[str] = sorted(ckpt.completed) if sort else iter(ckpt.completed)
    for s in ids:
        r = ckpt.completed_run(s)
        if r is not None and (run is None or r == run):
            yield s, r


def cmd_completed(ctx: Ctx) -> int:
    ckpt = open_checkpoint(ctx)
    run = ctx.args.run
    if run is not None:
        _require_run(ckpt, run)
        ids: Iterable[str] = (s for s, _ in completed_of(ckpt, run, ctx.args.sort))
        count: int | None = None
    else:
        view = ckpt.completed
        ids = sorted(view) if ctx.args.sort else iter(view)
        count = len(view)
    out = sys.stdout
    if ctx.json:
        import json

        chosen = list(ids) if count is None else ids
        n = len(chosen) if isinstance(chosen, list) else count
        head = f'{{"url": {json.dumps(ckpt.store.url)}, "count": {n}, '
        if run is not None:
            head += f'"run": {json.dumps(run)}, '
        out.write(head + '"completed": [')
        first = True
        for s in chosen:
            out.write(("" if first else ", ") + json.dumps(s, ensure_ascii=False))
            first = False
        out.write("]}\n")
        return EXIT_OK
    buf: list[str] = []
    for s in ids:
        buf.append(s)
        if len(buf) >= 4096:
            out.write("\n".join(buf) + "\n")
            buf.clear()
    if buf:
        out.write("\n".join(buf) + "\n")
    return EXIT_OK


def cmd_log(ctx: Ctx) -> int:
    a = ctx.args
    sources = read_sources(a.sources_file, a.sources)
    ckpt = open_checkpoint(ctx)
    if sources:
        given = list(dict.fromkeys(sources))
        found = [{"source": s, "completed": (r := ckpt.completed_run(s)) is not None, "run": r} for s in given]
        if ctx.json:
            dump_json({"url": ckpt.store.url, "sources": found})
        else:
            for row in found:
                print(f"{row['source']}\t{row['run'] if row['completed'] else '-  (not complete)'}")
        return EXIT_OK
    st = ckpt.status(gc_grace=0.0)
    last_flush: dict[str, int] = {}
    streams: Counter[str] = Counter()
    for w in st.writers:
        streams[w.run_id] += 1
        last_flush[w.run_id] = max(last_flush.get(w.run_id, 0), w.last_flush_ms)
    runs: list[dict[str, Any]] = [
        {
            "run_id": r.run_id,
            "completed": r.completed_sources,
            "pending": r.pending_sources,
            "first_snapshot": r.first_snapshot,
            "last_snapshot": r.last_snapshot,
            "state": run_state(r),
            "writers": streams.get(r.run_id, 0),
            "last_flush_ms": last_flush.get(r.run_id) or None,
        }
        for r in st.runs
    ]
    if ctx.json:
        dump_json({"url": st.url, "completed": st.completed, "runs": runs})
        return EXIT_OK
    now_ms = time.time() * 1000
    print(f"{plural(len(runs), 'run')} at {redact_url(st.url)}, oldest first; {st.completed} sources complete")
    rows = [
        [
            r["run_id"],
            str(r["completed"]),
            str(r["pending"]),
            f"{r['first_snapshot']}..{r['last_snapshot']}",
            str(r["writers"]),
            "-" if not r["last_flush_ms"] else human_age((now_ms - r["last_flush_ms"]) / 1000) + " ago",
            r["state"],
        ]
        for r in runs
    ]
    for line in table(rows, ["RUN", "COMPLETED", "PENDING", "SNAPSHOTS", "WRITERS", "LAST FLUSH", "STATE"]):
        print(line)
    return EXIT_OK


_ARROW_EXTS = (".arrow", ".feather", ".ipc", ".arrows")


def cmd_export(ctx: Ctx) -> int:
    a = ctx.args
    out: str = a.out
    fmt_name: str = a.format or ("arrow" if out == "-" or out.lower().endswith(_ARROW_EXTS) else "parquet")
    if out == "-" and fmt_name != "arrow":
        fail("only Arrow IPC can go to stdout (OUT '-'); give a file name for Parquet")
    if out != "-" and os.path.exists(out) and not a.overwrite:
        fail(f"{out} exists; pass --overwrite to replace it")
    try:
        import pyarrow as pa
    except ImportError:
        fail("export needs pyarrow: pip install pyarrow (or resumelog[ray])")
    ckpt = open_checkpoint(ctx)
    st = _require_run(ckpt, a.run) if a.run is not None else ckpt.status()
    schema = pa.schema(
        [("source", pa.string()), ("run", pa.string())],
        metadata={"resumelog.url": redact_url(st.url), "resumelog.snapshot": str(st.snapshot)},
    )
    rows = 0
    tmp = out if out == "-" else f"{out}.{os.getpid()}.partial"
    try:
        writer: Any
        if fmt_name == "parquet":
            import pyarrow.parquet as pq

            writer = pq.ParquetWriter(tmp, schema)
        else:
            import pyarrow.ipc

            sink: Any = sys.stdout.buffer if out == "-" else tmp
            writer = pyarrow.ipc.new_stream(sink, schema) if out == "-" else pyarrow.ipc.new_file(sink, schema)
        with writer:
            src: list[str] = []
            run: list[str] = []
            for s, r in completed_of(ckpt, a.run):
                src.append(s)
                run.append(r)
                if len(src) >= 65536:
                    writer.write_table(pa.table([src, run], schema=schema))
                    rows += len(src)
                    src, run = [], []
            if src or not rows:
                writer.write_table(pa.table([src, run], schema=schema))
                rows += len(src)
        if out != "-":
            os.replace(tmp, out)
    except BaseException:
        if out != "-" and os.path.exists(tmp):
            os.unlink(tmp)
        raise
    doc = {"url": ckpt.store.url, "out": out, "format": fmt_name, "rows": rows, "run": a.run}
    if out != "-":
        doc["bytes"] = os.path.getsize(out)
    if ctx.json and out != "-":
        dump_json(doc)
    elif out != "-":
        print(f"wrote {plural(rows, 'completed source')} to {out} ({fmt_name}, {human_bytes(doc['bytes'])})")
    return EXIT_OK


# --------------------------------------------------------------------------- maintenance


def cmd_import_curator(ctx: Ctx) -> int:
    """Carry the completed ids of a Curator 1.4 LMDB checkpoint into a resumelog one."""
    import resumelog
    from resumelog.curator_backend import curator_completed

    src = ctx.args.path
    meta = (
        src
        if os.path.basename(os.path.normpath(src)) == ".nemo_curator_metadata"
        else os.path.join(src, ".nemo_curator_metadata")
    )
    if not os.path.isdir(meta) or not any(n.endswith(".mdb") for n in os.listdir(meta)):
        fail(f"no NeMo Curator checkpoint at {src} (no {meta}/*.mdb)")
    try:
        ids = curator_completed(meta)
    except ImportError:
        fail("reading a Curator checkpoint needs the lmdb package: pip install lmdb")
    ckpt = resumelog.open(open_store(ctx))
    new = sorted(s for s in ids if not ckpt.is_completed(s))
    if new:
        with ckpt.writer("import-curator") as w:
            w.complete_many(new)
        ckpt.compact(progress=_PROGRESS)
    doc = {
        "url": ckpt.store.url,
        "path": src,
        "curator_completed": len(ids),
        "imported": len(new),
        "already_complete": len(ids) - len(new),
        "run_id": ckpt.run_id if new else None,
    }
    if ctx.json:
        dump_json(doc)
    else:
        print(
            f"imported {plural(len(new), 'completed source')} from {src} into {ctx.shown_url}"
            + (f" (run {ckpt.run_id})" if new else "")
            + (f"; {len(ids) - len(new)} already complete" if len(ids) > len(new) else "")
        )
    return EXIT_OK


def cmd_compact(ctx: Ctx) -> int:
    from resumelog import compactor

    a = ctx.args
    every = a.every
    if every is None:
        ckpt = open_checkpoint(ctx)
        r = ckpt.compact(keep_runs=a.keep_runs, progress=_PROGRESS, merge=a.merge, defer_merges=a.defer_merges)
        _report_compaction(ctx, ckpt.store.url, r)
        return EXIT_OK

    def tick(store: Store, t0: float) -> None:
        r = compactor.compact(store, keep_runs=a.keep_runs, progress=False, merge=a.merge, defer_merges=a.defer_merges)
        _report_compaction(ctx, store.url, r, seconds=time.perf_counter() - t0)

    return _every(ctx, every, tick)


def cmd_merge(ctx: Ctx) -> int:
    from resumelog import compactor

    every = ctx.args.every
    if every is None:
        ckpt = open_checkpoint(ctx)
        t0 = time.perf_counter()
        r = ckpt.merge(full=ctx.args.all)
        _report_merge(ctx, ckpt.store.url, r, time.perf_counter() - t0)
        return EXIT_OK

    def tick(store: Store, t0: float) -> None:
        r = compactor.merge(store, full=ctx.args.all)
        _report_merge(ctx, store.url, r, time.perf_counter() - t0)

    return _every(ctx, every, tick)


def _every(ctx: Ctx, every: float, step: Callable[[Store, float], None]) -> int:
    """The sidecar loop: the store alone (no view is loaded, so a checkpoint that cannot
    be read yet only fails its ticks), ``step(store, start)`` now and every ``every``
    seconds (``start``: when the step began, by ``time.perf_counter``)."""
    if not every > 0:
        fail("--every must be a positive duration")
    store = open_store(ctx)
    require_checkpoint(ctx, store)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())  # finish the step under way, exit 0
    try:
        while True:
            t0 = time.perf_counter()
            try:
                step(store, t0)
            except Exception as exc:  # noqa: BLE001 - reported; the next tick retries
                message = ctx.scrub(" ".join(classify_error(exc)[1].split()))
                if ctx.json:
                    dump_json({"url": store.url, "error": message, "seconds": round(time.perf_counter() - t0, 3)})
                else:
                    print(f"resumelog: error: {message} (retrying in {every:g} s)", file=sys.stderr)
            sys.stdout.flush()
            if stop.wait(every):
                return EXIT_OK
    finally:
        signal.signal(signal.SIGTERM, previous)


def _report_merge(ctx: Ctx, url: str, r: MergeResult, seconds: float) -> None:
    doc = {
        "url": url,
        "snapshot": r.snapshot,
        "written": r.written,
        "layers_before": r.layers_before,
        "layers_after": r.layers_after,
        "entries": r.entries,
        "attempts": r.attempts,
        "seconds": round(seconds, 3),
    }
    if ctx.json:
        dump_json(doc)
    elif r.written:
        print(
            f"wrote snapshot #{r.snapshot}: {plural(r.layers_before, 'layer')} -> {r.layers_after} "
            f"({plural(r.entries, 'entry', 'entries')} rewritten)"
        )
    else:
        print(f"nothing to merge; snapshot #{r.snapshot} is current ({plural(r.layers_before, 'layer')})")


def _report_compaction(ctx: Ctx, url: str, r: CompactResult, seconds: float | None = None) -> None:
    doc = {
        "url": url,
        "snapshot": r.snapshot,
        "written": r.written,
        "segments_folded": r.segments_folded,
        "records_folded": r.records_folded,
        "completed": r.completed,
        "attempts": r.attempts,
        "retired_runs": list(r.retired_runs),
    }
    if seconds is not None:
        doc["seconds"] = round(seconds, 3)
    if ctx.json:
        dump_json(doc)
    elif r.written:
        print(
            f"wrote snapshot #{r.snapshot}: folded {plural(r.segments_folded, 'segment')} "
            f"({plural(r.records_folded, 'record')}); {plural(r.completed, 'source')} complete"
            + (f"; retired {plural(len(r.retired_runs), 'run')} {', '.join(r.retired_runs)}" if r.retired_runs else "")
        )
    else:
        print(f"nothing new to fold; snapshot #{r.snapshot} is current ({plural(r.completed, 'source')} complete)")


def cmd_gc(ctx: Ctx) -> int:
    ckpt = open_checkpoint(ctx)
    a = ctx.args
    r = ckpt.gc(retain=a.retain, grace=a.grace, dry_run=a.dry_run, progress=_PROGRESS, outputs=a.outputs)
    outs = [
        {
            "root": o.root,
            "orphaned": o.orphaned,
            "staging": o.staging,
            "bytes": o.bytes,
            "kept_recent": o.kept_recent,
            "keys": o.keys,
        }
        for o in r.outputs
    ]
    doc = {
        "url": ckpt.store.url,
        "dry_run": r.dry_run,
        "grace_seconds": a.grace,
        "retain": a.retain,
        "segments": r.segments,
        "segment_bytes": r.segment_bytes,
        "snapshots": r.snapshots,
        "snapshot_bytes": r.snapshot_bytes,
        "layers": r.layers,
        "layer_bytes": r.layer_bytes,
        "keys": list(r.keys),
    }
    if a.outputs:
        doc["outputs"] = outs
    if ctx.json:
        dump_json(doc)
        return EXIT_OK
    verb = "would delete" if r.dry_run else "deleted"
    kept = "the newest snapshot" if a.retain == 1 else f"the {a.retain} newest snapshots"
    print(
        f"{verb} {plural(r.segments, 'segment')} ({human_bytes(r.segment_bytes)}), "
        f"{plural(r.snapshots, 'snapshot')} ({human_bytes(r.snapshot_bytes)}) and "
        f"{plural(r.layers, 'layer')} ({human_bytes(r.layer_bytes)}); kept {kept}, grace {human_age(a.grace)}"
    )
    if a.verbose:
        for k in r.keys:
            print(f"  {k}")
    for o in r.outputs:
        print(
            f"outputs {redact_url(o.root)}: {verb} {plural(o.orphaned, 'orphaned output')} and "
            f"{plural(o.staging, 'staging file')} ({human_bytes(o.bytes)}); {o.kept_recent} younger than the grace kept"
        )
        if a.verbose:
            for k in o.keys:
                print(f"  {k}")
    return EXIT_OK


def cmd_verify(ctx: Ctx) -> int:
    from resumelog.cli._verify import verify_store

    store = open_store(ctx)
    require_checkpoint(ctx, store)
    report = verify_store(store, progress=_PROGRESS, deep=not ctx.args.shallow)
    if ctx.args.repair and not report.ok:
        result = open_checkpoint(ctx).repair(progress=_PROGRESS)
        after = verify_store(store, progress=_PROGRESS, deep=not ctx.args.shallow)
        if ctx.json:
            dump_json({**after.to_dict(), "before": report.to_dict(), "repair": _repair_doc(result)})
        else:
            _print_repair(result)
            _print_verify(after)
        return EXIT_OK if after.ok else EXIT_PROBLEMS
    outs = []
    if ctx.args.outputs:
        from resumelog.outputs import summarize

        ckpt = open_checkpoint(ctx)
        outs = [summarize(ckpt, root) for root in ctx.args.outputs]
    if ctx.json:
        doc = report.to_dict()
        if ctx.args.outputs:
            doc["outputs"] = msgspec.to_builtins(outs)
        dump_json(doc)
    else:
        _print_verify(report)
        for o in outs:
            if o.orphaned or o.staging:
                print(
                    f"WARNING  {redact_url(o.root)}: {o.orphaned} orphaned outputs (voided attempts) and "
                    f"{o.staging} staging files, invisible to readers; `resumelog gc --outputs` deletes them"
                )
            print(f"outputs  {redact_url(o.root)}: {o.committed} committed, {o.in_flight} in flight")
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def _print_verify(report: Any) -> None:
    from resumelog import paths

    for p in report.problems:
        print(f"{p.severity.upper()}  {p.path}: {p.kind}: {p.message}")
    state = "OK" if report.ok else "CORRUPT"
    print(
        f"{state}: {report.url}: checked {'meta, ' if report.meta else 'no ' + paths.META + ', '}"
        f"{plural(report.snapshots, 'snapshot')}, {plural(report.layers, 'layer')}, {plural(report.segments, 'segment')} in "
        f"{plural(report.streams, 'stream')} ({plural(report.records, 'record')}, {human_bytes(report.bytes)}); "
        f"{plural(report.errors, 'error')}, {plural(report.warnings, 'warning')}"
    )


def _repair_doc(result: Any) -> dict[str, Any]:
    return {
        "dry_run": result.dry_run,
        "corrupt_segments": result.corrupt_segments,
        "corrupt_snapshots": result.corrupt_snapshots,
        "damaged_runs": result.damaged_runs,
        "snapshot": result.snapshot,
        "moved": result.moved,
    }


def _print_repair(result: Any) -> None:
    if result.clean:
        print("nothing to repair: no corrupt segment or snapshot")
        return
    verb = "would move" if result.dry_run else "moved"
    for key in result.corrupt_segments + result.corrupt_snapshots:
        print(f"corrupt      {key}  ({verb} to quarantine/)")
    if result.damaged_runs:
        print(
            f"damaged runs {', '.join(result.damaged_runs)}: they complete nothing more; "
            "their pending sources rerun in the next run"
        )
    if not result.dry_run:
        if result.snapshot:
            print(f"snapshot     #{result.snapshot} records the damage")
        print(f"repaired: {plural(len(result.moved), 'object')} moved to quarantine/ (inspect or delete them later)")


def cmd_repair(ctx: Ctx) -> int:
    result = open_checkpoint(ctx).repair(dry_run=ctx.args.dry_run, progress=_PROGRESS)
    if ctx.json:
        dump_json(_repair_doc(result))
    else:
        _print_repair(result)
    return EXIT_OK


def cmd_reset(ctx: Ctx) -> int:
    a = ctx.args
    if a.runs:
        if a.sources_file is not None or a.sources:
            fail("give either source ids or --run, not both")
        return _reset_runs(ctx, list(dict.fromkeys(a.runs)))
    sources = read_sources(a.sources_file, a.sources)
    if a.sources_file is None and not a.sources:
        fail("give source ids as arguments or with --sources FILE|-, or --run RUN")
    ckpt = open_checkpoint(ctx)
    given = list(dict.fromkeys(sources))
    completed = [s for s in given if ckpt.is_completed(s)]
    not_completed = [s for s in given if not ckpt.is_completed(s)]
    done: list[str] = []
    if completed:
        shown = ", ".join(completed[:5]) + (f" and {len(completed) - 5} more" if len(completed) > 5 else "")
        confirm(
            ctx,
            f"Reset the completion of {plural(len(completed), 'source')} ({shown}) at {ctx.shown_url}? "
            f"{'It' if len(completed) == 1 else 'They'} will rerun.",
            "reset",
        )
        done = ckpt.reset(completed)
    if ctx.json:
        dump_json(
            {
                "url": ckpt.store.url,
                "requested": len(given),
                "reset": done,
                "not_completed": not_completed + [s for s in completed if s not in set(done)],
            }
        )
    else:
        if done:
            print(f"reset {plural(len(done), 'source')}: {'it' if len(done) == 1 else 'they'} will rerun")
        if not_completed:
            n = len(not_completed)
            print(f"{plural(n, 'given source')} {'was' if n == 1 else 'were'} not complete (left alone)")
        if not done and not not_completed:
            print("nothing to reset")
    return EXIT_OK


def _reset_runs(ctx: Ctx, runs: list[str]) -> int:
    """``reset --run``: void whole runs with the same tombstones as a per-source reset."""
    ckpt = open_checkpoint(ctx)
    st = ckpt.status()
    known = {r.run_id: r for r in st.runs}
    for run in runs:
        _require_run(ckpt, run)
    completed = sum(known[r].completed_sources for r in runs)
    pending = sum(known[r].pending_sources for r in runs)
    confirm(
        ctx,
        f"Void {plural(len(runs), 'run')} ({', '.join(runs)}) at {ctx.shown_url}? "
        f"{plural(completed, 'completed source')} will rerun and {plural(pending, 'pending source')} "
        "will not complete in "
        f"{'it' if len(runs) == 1 else 'them'}.",
        "void a run",
    )
    results = {run: ckpt.reset_run(run) for run in runs}
    if ctx.json:
        dump_json(
            {
                "url": ckpt.store.url,
                "runs": [
                    {"run_id": run, "reset": r.completed, "voided_pending": r.pending} for run, r in results.items()
                ],
            }
        )
    else:
        for run, r in results.items():
            print(
                f"voided run {run}: reset {plural(len(r.completed), 'completed source')} "
                f"(they rerun), {plural(len(r.pending), 'pending source')} will not complete in it"
            )
    return EXIT_OK


def cmd_clear(ctx: Ctx) -> int:
    from resumelog import paths
    from resumelog.checkpoint import _clear_layout

    # the store only, never loaded: a checkpoint that does not open (a segment no
    # repair can salvage, whose error says "restore it, or clear") is cleared too
    store = open_store(ctx)
    require_checkpoint(ctx, store)
    objs = [
        o
        for o in store.list("")
        if o.path == paths.META
        or o.path.startswith((paths.JOURNAL_PREFIX, paths.SNAPSHOT_PREFIX, paths.LAYER_PREFIX, paths.QUARANTINE_PREFIX))
    ]
    size = sum(o.size for o in objs)
    confirm(
        ctx,
        f"Delete the checkpoint at {ctx.shown_url} ({plural(len(objs), 'object')}, {human_bytes(size)})? "
        "Every source will rerun. This cannot be undone.",
        "clear the checkpoint",
    )
    _clear_layout(store)
    if ctx.json:
        dump_json({"url": store.url, "cleared": True, "objects": len(objs), "bytes": size})
    else:
        print(f"deleted the checkpoint at {ctx.shown_url} ({plural(len(objs), 'object')}, {human_bytes(size)})")
    return EXIT_OK


# --------------------------------------------------------------------------- inspect, watch


def cmd_inspect(ctx: Ctx) -> int:
    from resumelog.cli._inspect import describe, normalize_key, render_text
    from resumelog.errors import InvalidId, ObjectNotFound
    from resumelog.storage import check_key

    store = open_store(ctx)
    key = normalize_key(ctx.args.object, store.url)
    try:
        check_key(key)
    except InvalidId as exc:
        fail(str(exc))
    try:
        data = store.read(key)
    except ObjectNotFound:
        require_checkpoint(ctx, store)
        fail(f"no object {key!r} in {ctx.shown_url} (keys are relative to the root, e.g. snapshots/...)")
    doc = describe(key, data, limit=None if ctx.args.all else ctx.args.limit, read=store.read)
    if ctx.json:
        dump_json(doc)
    else:
        print("\n".join(render_text(doc)))
    if not doc["ok"]:
        print(f"resumelog: error: {ctx.scrub(str(doc.get('error')))}", file=sys.stderr)
        return EXIT_PROBLEMS
    return EXIT_OK


def cmd_watch(ctx: Ctx) -> int:
    import resumelog
    from resumelog.cli._watch import run_watch
    from resumelog.errors import ObjectNotFound

    a = ctx.args
    holder: list[Checkpoint] = []

    def load() -> Any:
        if not holder:
            store = open_store(ctx)
            if not has_checkpoint(store):
                if a.once:
                    no_checkpoint(ctx, store)
                raise ObjectNotFound(f"no checkpoint at {ctx.shown_url} yet; waiting")
            holder.append(resumelog.open(store, create=False))
        return holder[0].status()

    def describe_error(exc: BaseException) -> str:
        from resumelog.cli._common import CliError

        if isinstance(exc, CliError):
            raise exc
        return ctx.scrub(" ".join(classify_error(exc)[1].split()))

    try:
        return run_watch(
            load,
            interval=a.interval,
            once=a.once,
            as_json=ctx.json,
            total=a.total,
            describe_error=describe_error,
            url=ctx.shown_url,
            stale_after=a.stale_after,
        )
    except KeyboardInterrupt:
        return EXIT_OK


# --------------------------------------------------------------------------- demo


def cmd_demo(ctx: Ctx) -> int:
    from resumelog import demo

    a = ctx.args
    path = os.path.abspath(a.path)
    found = demo.existing_checkpoint(path)
    if found == "other":
        fail(f"{path} exists and is not a resumelog checkpoint; pick another --path")
    if found == "checkpoint":
        confirm(
            ctx,
            f"{path} holds a checkpoint; the demo deletes it and starts over. Replace it?",
            f"replace the existing checkpoint at {path}",
        )
    figures = demo.run_demo(path, a.sources, a.workers, out=(lambda *_: None) if ctx.json else print)
    ok = figures["missing"] == 0 and figures["completed"] == figures["sources"]
    if ctx.json:
        dump_json({**figures, "ok": ok, "path": path})
    else:
        print(
            f"OK: all {plural(figures['sources'], 'source')} complete; run 2 redid only the {figures['redone']} "
            "that run 1 had not finished"
            if ok
            else f"FAILED: {figures['missing']} of {figures['sources']} sources missing after run 2"
        )
    return EXIT_OK if ok else EXIT_PROBLEMS
