"""The commands: each opens the checkpoint, calls the library, prints text or JSON."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from resumelog.cli._common import (
    EXIT_OK,
    EXIT_PROBLEMS,
    Scrubber,
    classify_error,
    dump_json,
    fail,
    human_age,
    human_bytes,
    read_sources,
    redact_url,
    table,
)

if TYPE_CHECKING:
    from resumelog.checkpoint import Checkpoint
    from resumelog.compactor import CompactResult
    from resumelog.storage import Store

__all__ = [
    "Ctx",
    "cmd_clear",
    "cmd_compact",
    "cmd_completed",
    "cmd_gc",
    "cmd_inspect",
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
    try:
        return _open(ctx.url, ctx.storage_options)
    except TypeError as exc:
        fail(f"invalid storage options for {ctx.shown_url}: {exc}")
    except ValueError as exc:
        if isinstance(exc, ResumelogError):
            raise
        fail(f"cannot open {ctx.shown_url}: {exc}")


def has_checkpoint(store: Store) -> bool:
    """Whether resumelog objects exist under the root.

    Looks only at ``meta.msgpack``, ``snapshots/`` and ``journal/`` (never a recursive
    listing of the whole root, which could be a home directory or a bucket).
    """
    from resumelog import paths

    return store.exists(paths.META) or bool(store.list(paths.SNAPSHOT_PREFIX)) or bool(store.list(paths.JOURNAL_PREFIX))


def require_checkpoint(ctx: Ctx, store: Store) -> None:
    """Exit 2 with "no checkpoint at URL" unless resumelog objects exist there."""
    if not has_checkpoint(store):
        fail(f"no checkpoint at {ctx.shown_url}")


def open_checkpoint(ctx: Ctx) -> Checkpoint:
    """Open an existing checkpoint without creating anything; a missing one is a usage
    error, "no checkpoint at URL"."""
    import resumelog
    from resumelog.errors import ObjectNotFound

    store = open_store(ctx)
    require_checkpoint(ctx, store)
    try:
        return resumelog.open(store, create=False)
    except ObjectNotFound:  # cleared between the check and the open
        fail(f"no checkpoint at {ctx.shown_url}")


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


def status_to_dict(st: Any) -> dict[str, Any]:
    """The ``status --json`` document: :class:`resumelog.Status` as a JSON object."""
    result: dict[str, Any] = msgspec.to_builtins(st)
    return result


def cmd_status(ctx: Ctx) -> int:
    ckpt = open_checkpoint(ctx)
    st = ckpt.status(gc_grace=ctx.args.grace)
    if ctx.json:
        dump_json(status_to_dict(st))
        return EXIT_OK
    now_ms = time.time() * 1000
    out = [f"checkpoint   {redact_url(st.url)}  (format v{st.format_version})"]
    if st.fingerprint:
        out.append("fingerprint  " + ", ".join(f"{k}={v!r}" for k, v in sorted(st.fingerprint.items())))
    snap = f"#{st.snapshot}" if st.snapshot else "none yet"
    out.append(f"snapshot     {snap}  ({st.snapshot_objects} objects, {human_bytes(st.snapshot_bytes)})")
    out.append(f"completed    {st.completed}")
    out.append(f"pending      {st.pending}  (emitted, not drained)")
    if st.anomalies:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(st.anomaly_counts.items()))
        out.append(f"anomalies    {st.anomalies}  ({kinds})")
    else:
        out.append("anomalies    0")
    out.append(
        f"journal      {st.journal_objects} segments, {human_bytes(st.journal_bytes)}; "
        f"{st.unfolded_segments} not yet compacted ({st.records_folded} records folded in all)"
    )
    out.append(
        f"gc           would free {st.gc_reclaimable_objects} objects, {human_bytes(st.gc_reclaimable_bytes)}"
        f" (grace {human_age(ctx.args.grace)})"
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
                "retired" if r.retired else "live",
            ]
            for r in st.runs
        ]
        out.extend(table(rows, ["RUN", "COMPLETED", "PENDING", "SNAPSHOTS", "STATE"]))
    if st.writers:
        out.append("")
        out.append(f"writers ({len(st.writers)})")
        rows = []
        for w in sorted(st.writers, key=lambda w: -w.last_flush_ms):
            age = (now_ms - w.last_flush_ms) / 1000 if w.last_flush_ms else None
            rows.append(
                [
                    w.writer_id,
                    w.incarnation,
                    w.run_id,
                    str(w.last_seq),
                    str(w.records),
                    "-" if age is None else human_age(age) + " ago",
                    "closed" if w.closed else "open",
                ]
            )
        out.extend(table(rows, ["WRITER", "INCARNATION", "RUN", "SEQ", "RECORDS", "LAST FLUSH", "STATE"]))
    if st.recent_anomalies:
        out.append("")
        out.append("recent anomalies")
        for a in st.recent_anomalies[-10:]:
            out.append(f"  {a['kind']}  {a['source'] or '-'}  run {a['run_id'] or '-'}  {a['detail']}".rstrip())
    print("\n".join(out))
    return EXIT_OK


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


def cmd_completed(ctx: Ctx) -> int:
    ckpt = open_checkpoint(ctx)
    view = ckpt.completed
    ids = sorted(view) if ctx.args.sort else iter(view)
    out = sys.stdout
    if ctx.json:
        import json

        out.write(f'{{"url": {json.dumps(ckpt.store.url)}, "count": {len(view)}, "completed": [')
        first = True
        for s in ids:
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


# --------------------------------------------------------------------------- maintenance


def cmd_compact(ctx: Ctx) -> int:
    every = ctx.args.every
    if every is None:
        ckpt = open_checkpoint(ctx)
        r = ckpt.compact(keep_runs=ctx.args.keep_runs, progress=_PROGRESS)
        _report_compaction(ctx, ckpt.store.url, r)
        return EXIT_OK
    if not every > 0:
        fail("--every must be a positive duration")
    return _compact_every(ctx, every)


def _compact_every(ctx: Ctx, every: float) -> int:
    """The sidecar loop: the store alone (no view is loaded, so a checkpoint that cannot
    be read yet only fails its ticks), a compaction now and every ``every`` seconds."""
    from resumelog import compactor

    store = open_store(ctx)
    require_checkpoint(ctx, store)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())  # finish the compaction under way, exit 0
    try:
        while True:
            t0 = time.perf_counter()
            try:
                r = compactor.compact(store, keep_runs=ctx.args.keep_runs, progress=False)
            except Exception as exc:  # noqa: BLE001 - reported; the next tick retries
                message = ctx.scrub(" ".join(classify_error(exc)[1].split()))
                if ctx.json:
                    dump_json({"url": store.url, "error": message, "seconds": round(time.perf_counter() - t0, 3)})
                else:
                    print(f"resumelog: error: {message} (retrying in {every:g} s)", file=sys.stderr)
            else:
                _report_compaction(ctx, store.url, r, seconds=time.perf_counter() - t0)
            sys.stdout.flush()
            if stop.wait(every):
                return EXIT_OK
    finally:
        signal.signal(signal.SIGTERM, previous)


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
            f"wrote snapshot #{r.snapshot}: folded {r.segments_folded} segments ({r.records_folded} records); "
            f"{r.completed} sources complete"
            + (f"; retired runs {', '.join(r.retired_runs)}" if r.retired_runs else "")
        )
    else:
        print(f"nothing new to fold; snapshot #{r.snapshot} is current ({r.completed} sources complete)")


def cmd_gc(ctx: Ctx) -> int:
    ckpt = open_checkpoint(ctx)
    a = ctx.args
    if a.retain < 1:
        fail("--retain must be at least 1")
    r = ckpt.gc(retain=a.retain, grace=a.grace, dry_run=a.dry_run, progress=_PROGRESS)
    doc = {
        "url": ckpt.store.url,
        "dry_run": r.dry_run,
        "grace_seconds": a.grace,
        "retain": a.retain,
        "segments": r.segments,
        "segment_bytes": r.segment_bytes,
        "snapshots": r.snapshots,
        "snapshot_bytes": r.snapshot_bytes,
        "keys": list(r.keys),
    }
    if ctx.json:
        dump_json(doc)
        return EXIT_OK
    verb = "would delete" if r.dry_run else "deleted"
    print(
        f"{verb} {r.segments} segments ({human_bytes(r.segment_bytes)}) and {r.snapshots} snapshots "
        f"({human_bytes(r.snapshot_bytes)}); kept the {a.retain} newest snapshots, grace {human_age(a.grace)}"
    )
    if a.verbose:
        for k in r.keys:
            print(f"  {k}")
    return EXIT_OK


def cmd_verify(ctx: Ctx) -> int:
    from resumelog import paths
    from resumelog.cli._verify import verify_store

    store = open_store(ctx)
    require_checkpoint(ctx, store)
    report = verify_store(store, progress=_PROGRESS, deep=not ctx.args.shallow)
    if ctx.json:
        dump_json(report.to_dict())
    else:
        for p in report.problems:
            print(f"{p.severity.upper()}  {p.path}: {p.kind}: {p.message}")
        state = "OK" if report.ok else "CORRUPT"
        print(
            f"{state}: {report.url}: checked {'meta, ' if report.meta else 'no ' + paths.META + ', '}"
            f"{report.snapshots} snapshots, {report.segments} segments in {report.streams} streams "
            f"({report.records} records, {human_bytes(report.bytes)}); "
            f"{report.errors} errors, {report.warnings} warnings"
        )
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def cmd_reset(ctx: Ctx) -> int:
    a = ctx.args
    sources = read_sources(a.sources_file, a.sources)
    if a.sources_file is None and not a.sources:
        fail("give source ids as arguments or with --sources FILE|-")
    ckpt = open_checkpoint(ctx)
    given = list(dict.fromkeys(sources))
    completed = [s for s in given if ckpt.is_completed(s)]
    not_completed = [s for s in given if not ckpt.is_completed(s)]
    done: list[str] = []
    if completed:
        shown = ", ".join(completed[:5]) + (f" and {len(completed) - 5} more" if len(completed) > 5 else "")
        confirm(
            ctx,
            f"Reset the completion of {len(completed)} sources ({shown}) at {ctx.shown_url}? They will rerun.",
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
            print(f"reset {len(done)} sources: they will rerun")
        if not_completed:
            print(f"{len(not_completed)} given sources were not complete (left alone)")
        if not done and not not_completed:
            print("nothing to reset")
    return EXIT_OK


def cmd_clear(ctx: Ctx) -> int:
    from resumelog import paths

    ckpt = open_checkpoint(ctx)
    objs = [
        o
        for o in ckpt.store.list("")
        if o.path == paths.META or o.path.startswith((paths.JOURNAL_PREFIX, paths.SNAPSHOT_PREFIX))
    ]
    size = sum(o.size for o in objs)
    confirm(
        ctx,
        f"Delete the checkpoint at {ctx.shown_url} ({len(objs)} objects, {human_bytes(size)})? "
        "Every source will rerun. This cannot be undone.",
        "clear the checkpoint",
    )
    ckpt.clear()
    if ctx.json:
        dump_json({"url": ckpt.store.url, "cleared": True, "objects": len(objs), "bytes": size})
    else:
        print(f"deleted the checkpoint at {ctx.shown_url} ({len(objs)} objects, {human_bytes(size)})")
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
    doc = describe(key, data, limit=None if ctx.args.all else ctx.args.limit)
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
                    fail(f"no checkpoint at {ctx.shown_url}")
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
        )
    except KeyboardInterrupt:
        return EXIT_OK
