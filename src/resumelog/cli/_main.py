"""Argument parsing, dispatch and error policy of the ``resumelog`` console script.

Exit codes (``docs/cli.md``): 0 ok; 1 problems found (``verify`` found corruption,
a command met a corrupt object, ``pending --exit-code`` found sources left);
2 usage or bad input (including "no checkpoint at URL" and refused confirmations);
3 the operation failed (storage unreachable, permission denied, unexpected error);
130 interrupted. Errors are one line on stderr (with ``--json`` also a JSON document
on stdout, see :func:`report_error`); ``--debug`` adds the traceback.
Storage option values are never printed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

from resumelog.cli import _commands as _c
from resumelog.cli._commands import Ctx
from resumelog.cli._common import (
    EXIT_OK,
    EXIT_USAGE,
    Scrubber,
    classify_error,
    dump_json,
    duration_arg,
    error_kind,
    parse_storage_options,
    redact_url,
)

__all__ = ["EXAMPLES", "UsageError", "build_parser", "main", "report_error"]

_EPILOG = """\
exit codes: 0 ok; 1 problems found (verify, corrupt objects, pending --exit-code);
2 usage or bad input (incl. no checkpoint at URL); 3 operation failed (storage); 130 interrupted.
Storage options: -o KEY=VALUE (repeatable; values parsed as JSON when they parse, a.b=1 nests),
on top of $RESUMELOG_STORAGE_OPTIONS (a JSON object). With --json, errors are also printed as
{"error": ..., "exit_code": N, "kind": ...} on stdout. Full reference: docs/cli.md.

examples:
  resumelog status /data/ckpt           where are we
  resumelog watch /data/ckpt --total N  live progress, rate and ETA
  resumelog pending /data/ckpt --sources ids.txt
  resumelog COMMAND --help              options and examples of one command"""


class UsageError(Exception):
    """A command line argparse rejected (raised by :class:`_Parser` instead of exiting)."""

    def __init__(self, message: str, usage: str, prog: str) -> None:
        super().__init__(message)
        self.usage = usage
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are raised (so that ``--json`` can report
    them as JSON) instead of printed and exited on."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.format_usage(), self.prog)


def _non_negative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {v}")
    return v


def _at_least_one(text: str) -> int:
    v = _non_negative_int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {v}")
    return v


def _positive_duration(text: str) -> float:
    v = duration_arg(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive duration (2, 30s, 5m...), got {text!r}")
    return v


def _every_option(p: argparse.ArgumentParser, doing: str, beside: str, step: str) -> None:
    """``--every DURATION``: the command as a sidecar loop."""
    p.add_argument(
        "--every",
        metavar="DURATION",
        type=_positive_duration,
        help=f"keep {doing}, every DURATION (30s, 5m...), until SIGTERM or Ctrl-C (a sidecar beside "
        f"{beside}); a failed {step} is reported and retried at the next tick",
    )


#: per command: (command line, what it does); shown in ``resumelog COMMAND --help`` and in docs/cli.md
EXAMPLES: dict[str, list[tuple[str, str]]] = {
    "status": [
        ("resumelog status /data/ckpt", "where are we: counts, runs, writers, what gc would free"),
        ("resumelog status s3://bucket/jobs/ckpt --json | jq .completed", "the completed count, for a script"),
    ],
    "pending": [
        ("resumelog pending /data/ckpt --sources all-ids.txt > todo.txt", "what is left of a known list"),
        ("resumelog pending /data/ckpt shard-007 shard-012 --exit-code", "exit 1 if either is not done"),
    ],
    "completed": [
        ("resumelog completed /data/ckpt --sort > done.txt", "every completed id"),
        ("resumelog completed /data/ckpt --run 2024-06-01-r2", "only what run 2024-06-01-r2 completed"),
    ],
    "log": [
        ("resumelog log /data/ckpt", "the runs, oldest first, and what each completed"),
        ("resumelog log /data/ckpt shard-007", "which run completed shard-007"),
    ],
    "export": [
        ("resumelog export /data/ckpt done.parquet", "the completed set as Parquet (source, run)"),
        ("resumelog export s3://bucket/ckpt done.arrow --run r2", "what run r2 completed, as Arrow IPC"),
    ],
    "compact": [
        ("resumelog compact /data/ckpt", "fold the journal tail into a new snapshot"),
        ("resumelog compact s3://bucket/ckpt --every 5m --json >> compactions.jsonl &", "a sidecar"),
        ("resumelog compact /data/ckpt --merge", "and merge the index's layers into one"),
        ("resumelog compact s3://bucket/ckpt --every 30s --defer-merges &", "ticks that cost what is new"),
    ],
    "merge": [
        ("resumelog merge s3://bucket/ckpt --every 5m --json >> merges.jsonl &", "the merges those ticks defer"),
        ("resumelog merge /data/ckpt --all", "merge every layer of the index into one, now"),
    ],
    "gc": [
        ("resumelog gc /data/ckpt --dry-run -v", "what would be deleted, key by key"),
        ("resumelog gc /data/ckpt --grace 2h --retain 2", "delete, keeping 2 snapshots and 2 h of journal"),
    ],
    "verify": [
        ("resumelog verify /data/ckpt", "read and check every object; exit 1 on corruption"),
        ("resumelog verify s3://bucket/ckpt --shallow --json", "faster: skip re-hashing every id"),
        ("resumelog verify /data/ckpt --repair", "check, then salvage what is corrupt"),
    ],
    "reset": [
        ("resumelog reset /data/ckpt shard-007 shard-012", "rerun two sources (asks first)"),
        ("resumelog reset /data/ckpt --run r2 --yes", "void everything run r2 completed (a bad run)"),
    ],
    "repair": [
        ("resumelog repair /data/ckpt --dry-run", "which objects are corrupt, which runs lose their completions"),
        ("resumelog repair s3://bucket/ckpt --json", "publish the damage, move the corrupt objects to quarantine/"),
    ],
    "clear": [
        ("resumelog clear /data/ckpt --yes", "delete the whole checkpoint: every source reruns"),
    ],
    "inspect": [
        ("resumelog inspect /data/ckpt snapshots/00000000000000000003.snap", "decode a snapshot"),
        ("resumelog inspect /data/ckpt journal/w1/01J9ZK.../00000000000000000005.seg --all --json", "a segment"),
    ],
    "watch": [
        ("resumelog watch /data/ckpt --total 120000", "live view with a progress bar and an ETA"),
        ("resumelog watch s3://bucket/ckpt --interval 1m --json >> progress.jsonl", "a log of frames"),
    ],
    "import-curator": [
        (
            "resumelog import-curator /data/run1 s3://bucket/jobs/run1/ckpt",
            "carry the sources Curator's LMDB checkpoint completed over to resumelog",
        ),
        ("resumelog import-curator /data/run1/.nemo_curator_metadata /data/ckpt --json", "the same, as JSON"),
    ],
    "demo": [
        ("resumelog demo", "run the demo in ./resumelog-demo"),
        ("resumelog demo --path /tmp/demo --sources 1000 --workers 8 --yes", "bigger, replacing an old demo"),
    ],
}


def _examples_epilog(name: str) -> str:
    lines = ["examples:"]
    for command, what in EXAMPLES.get(name, []):
        lines.append(f"  {command}")
        lines.append(f"      {what}")
    return "\n".join(lines)


_URL_HELP = "checkpoint root: a path, file://, memory://, s3://, gs://"
_SOURCES_FILE_HELP = "one id per line, or a JSON array; - = stdin"


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to generate the CLI reference)."""
    from resumelog import __version__
    from resumelog.cli._common import DEFAULT_STALE_AFTER
    from resumelog.demo import add_demo_arguments

    common = _Parser(add_help=False)
    g = common.add_argument_group("common options")
    g.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help='print JSON (schema in the docs); errors too, as {"error": ...} on stdout',
    )
    g.add_argument(
        "-o",
        "--storage-option",
        action="append",
        metavar="KEY=VALUE",
        dest="storage_option",
        default=argparse.SUPPRESS,
        help="fsspec storage option (repeatable); VALUE is parsed as JSON when it parses",
    )
    g.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks and debug logs")

    parser = _Parser(
        prog="resumelog",
        description="Operate resumelog checkpoints: where are we, what is left, what is wrong.",
        epilog=_EPILOG,
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"resumelog {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def cmd(name: str, help: str, *, url: bool = True) -> argparse.ArgumentParser:  # noqa: A002
        p = sub.add_parser(
            name,
            help=help,
            description=help,
            parents=[common],
            epilog=_examples_epilog(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if url:
            p.add_argument("url", metavar="URL", help=_URL_HELP)
        return p

    def stale_after(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--stale-after",
            metavar="DURATION",
            type=_positive_duration,
            default=DEFAULT_STALE_AFTER,
            help="show an open writer silent for longer than this as 'stale' (default 5m)",
        )

    def outputs_arg(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument(
            "--outputs",
            metavar="ROOT",
            action="append",
            default=[],
            help=f"an outputs root written with Writer.output (repeatable): {what}",
        )

    p = cmd("status", "summary: completed/pending/anomalies, runs, writers, bytes, what gc would free")
    p.add_argument(
        "--grace",
        metavar="DURATION",
        type=duration_arg,
        default=3600.0,
        help="grace period for the gc estimate (default 1h)",
    )
    stale_after(p)
    outputs_arg(p, "count its committed, in-flight and orphaned outputs and staging debris")

    p = cmd("pending", "which of the given sources are not complete")
    p.add_argument("sources", nargs="*", metavar="SOURCE", help="source ids (in addition to --sources)")
    p.add_argument("--sources", dest="sources_file", metavar="FILE|-", help=_SOURCES_FILE_HELP)
    p.add_argument("--exit-code", action="store_true", help="exit 1 if any given source is not complete")

    p = cmd("completed", "print every completed source id")
    p.add_argument("--sort", action="store_true", help="sort the ids (default: storage order)")
    p.add_argument("--run", metavar="RUN", help="only the sources that run RUN completed")

    p = cmd("log", "the runs and what each completed; with SOURCEs, which run completed each")
    p.add_argument("sources", nargs="*", metavar="SOURCE", help="source ids (in addition to --sources)")
    p.add_argument("--sources", dest="sources_file", metavar="FILE|-", help=_SOURCES_FILE_HELP)

    p = cmd("export", "write the completed set (source, run) as Parquet or Arrow IPC (needs pyarrow)")
    p.add_argument("out", metavar="OUT", help="output file: .parquet, .arrow/.feather/.ipc, or - (Arrow IPC on stdout)")
    p.add_argument(
        "--format",
        choices=["parquet", "arrow"],
        help="file format (default: from OUT's extension; parquet if it has none)",
    )
    p.add_argument("--run", metavar="RUN", help="only the sources that run RUN completed")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")

    p = cmd("compact", "fold the journals into a new snapshot")
    p.add_argument(
        "--keep-runs", metavar="N", type=_non_negative_int, help="retire every run but the N most recently active"
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="also merge the layers of the completed-id index into one (smallest at rest; they are otherwise "
        "merged as they grow)",
    )
    _every_option(p, "compacting", "a long job", "compaction")

    p.add_argument(
        "--defer-merges",
        action="store_true",
        help="merge only small layers of the index, leaving the merges that rewrite large ones to "
        "`resumelog merge` (a tick then costs what it folds, not the size of the index)",
    )

    p = cmd("merge", "merge layers of the completed-id index into one (the merges --defer-merges ticks leave)")
    p.add_argument("--all", action="store_true", help="every layer into one (default: as the layers' sizes ask)")
    _every_option(p, "merging", "`compact --every ... --defer-merges`", "merge")

    p = cmd("gc", "delete old snapshots and the segments they cover")
    p.add_argument("--dry-run", action="store_true", help="only report what would be deleted")
    p.add_argument(
        "--grace",
        metavar="DURATION",
        type=duration_arg,
        default=3600.0,
        help="keep segments younger than this (default 1h)",
    )
    p.add_argument("--retain", metavar="N", type=_at_least_one, default=3, help="snapshots to keep, >= 1 (default 3)")
    p.add_argument("-v", "--verbose", action="store_true", help="list the object keys")
    outputs_arg(p, "also delete its orphaned outputs and staging debris older than the grace")

    p = cmd("verify", "read every object, check CRCs and structure, report each problem")
    p.add_argument("--shallow", action="store_true", help="skip recomputing every completed id's hash")
    p.add_argument("--repair", action="store_true", help="then repair what it found (as `resumelog repair`)")
    outputs_arg(p, "report its orphaned outputs and staging debris (as warnings)")

    p = cmd("repair", "salvage corrupt objects: record their runs as damaged, move them to quarantine/")
    p.add_argument("--dry-run", action="store_true", help="only report what would be done")

    p = cmd("reset", "forget the completion of sources (they rerun next time), or void a whole run")
    p.add_argument("sources", nargs="*", metavar="SOURCE", help="source ids (in addition to --sources)")
    p.add_argument("--sources", dest="sources_file", metavar="FILE|-", help=_SOURCES_FILE_HELP)
    p.add_argument(
        "--run",
        metavar="RUN",
        action="append",
        dest="runs",
        help="void run RUN (repeatable): everything it completed reruns, and it completes nothing more",
    )
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")

    p = cmd("clear", "delete the whole checkpoint")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")

    p = cmd("inspect", "decode one segment, snapshot or meta object")
    p.add_argument(
        "object", metavar="OBJECT", help="object key relative to URL, e.g. snapshots/00000000000000000001.snap"
    )
    p.add_argument(
        "--limit",
        metavar="N",
        type=_non_negative_int,
        default=100,
        help="show at most N records/ids/entries (default 100)",
    )
    p.add_argument("--all", action="store_true", help="show everything (no --limit)")

    p = cmd("watch", "live view: completions/min, pending, writers, progress and ETA (read only)")
    p.add_argument(
        "--interval",
        metavar="DURATION",
        type=_positive_duration,
        default=2.0,
        help="time between refreshes: 2, 0.5, 30s, 5m... (default 2s)",
    )
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.add_argument("--total", metavar="N", type=_at_least_one, help="expected number of sources (progress bar and ETA)")
    stale_after(p)

    p = cmd(
        "import-curator",
        "record the sources a NeMo Curator LMDB checkpoint (.nemo_curator_metadata) completed as complete",
        url=False,
    )
    p.add_argument(
        "path",
        metavar="PATH",
        help="the checkpoint_path given to Curator's Pipeline.run, or its .nemo_curator_metadata directory",
    )
    p.add_argument("url", metavar="URL", help=_URL_HELP + " (created if missing)")

    p = cmd("demo", "the README demo: a pipeline killed midway and resumed", url=False)
    add_demo_arguments(p)
    return parser


# --------------------------------------------------------------------------- logging


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _LineFormatter(logging.Formatter):
    def __init__(self, scrub: Scrubber) -> None:
        super().__init__()
        self.scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        msg = self.scrub(record.getMessage())
        if msg.startswith("resumelog: "):
            msg = msg[len("resumelog: ") :]
        return f"resumelog: {record.levelname.lower()}: {_one_line(msg)}"


def _setup_logging(scrub: Scrubber, debug: bool, quiet: bool) -> Callable[[], None]:
    """Send the ``resumelog`` logger's records to stderr as one-line messages; returns
    what puts the logger back as it was (``main`` called in-process, e.g. by tests)."""
    log = logging.getLogger("resumelog")
    saved = (list(log.handlers), log.propagate, log.level)

    def restore() -> None:
        log.handlers[:] = saved[0]
        log.propagate = saved[1]
        log.setLevel(saved[2])

    for h in list(log.handlers):
        if getattr(h, "_resumelog_cli", False):
            log.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._resumelog_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(_LineFormatter(scrub))
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.DEBUG if debug else logging.ERROR if quiet else logging.WARNING)
    return restore


# --------------------------------------------------------------------------- main


def _json_requested(args_list: Sequence[str]) -> bool:
    """``--json`` anywhere before a ``--`` (known before parsing, for usage errors)."""
    for a in args_list:
        if a == "--":
            return False
        if a == "--json":
            return True
    return False


def report_error(code: int, message: str, *, as_json: bool, url: str | None = None) -> int:
    """Print an error the one way every command does and return ``code``.

    Always one line ``resumelog: error: MESSAGE`` on stderr; with ``--json`` also one
    JSON document on stdout: ``{"error": MESSAGE, "exit_code": CODE, "kind": KIND}``
    (``"url"`` too when the command names one), so that a script reading stdout
    never has to parse text.
    """
    message = _one_line(message)
    if as_json:
        doc: dict[str, object] = {"error": message, "exit_code": code, "kind": error_kind(code)}
        if url is not None:
            doc["url"] = url
        try:
            dump_json(doc)
            sys.stdout.flush()
        except BrokenPipeError:
            pass
    print(f"resumelog: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not args_list:  # bare `resumelog`: what can I do here?
        parser.print_help()
        return EXIT_OK
    as_json = _json_requested(args_list)
    try:
        args = parser.parse_args(args_list)
    except UsageError as exc:  # one line, like every other error, with where to look
        command = exc.prog.removeprefix("resumelog").strip()
        see = f"resumelog {command} --help" if command else "resumelog --help"
        message = f"{command}: {exc}" if command else str(exc)
        return report_error(EXIT_USAGE, f"{message} (see '{see}')", as_json=as_json)
    except SystemExit as exc:  # argparse: --help / --version
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    debug = bool(getattr(args, "debug", False))
    as_json = bool(getattr(args, "json", False))
    url: str | None = getattr(args, "url", None)
    scrub = Scrubber(url=url)
    restore_logging: Callable[[], None] = lambda: None  # noqa: E731
    try:
        opts = parse_storage_options(getattr(args, "storage_option", None))
        scrub = Scrubber(opts, url)
        restore_logging = _setup_logging(scrub, debug, quiet=args.command == "watch")
        ctx = Ctx(args, opts, as_json, debug, scrub)
        handler: Callable[[Ctx], int] = _COMMANDS[args.command]
        code = handler(ctx)
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:
        return report_error(130, "interrupted", as_json=as_json)
    except BrokenPipeError:
        # the reader went away (| head): stop quietly
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass
        return EXIT_OK
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        code, message = classify_error(exc)
        if debug:
            tb = "".join(traceback.format_exception(exc))
            sys.stderr.write(scrub(tb))
        return report_error(code, scrub(message), as_json=as_json, url=None if url is None else redact_url(url))
    finally:
        restore_logging()


_COMMANDS: dict[str, Callable[[Ctx], int]] = {
    "status": _c.cmd_status,
    "pending": _c.cmd_pending,
    "completed": _c.cmd_completed,
    "compact": _c.cmd_compact,
    "merge": _c.cmd_merge,
    "gc": _c.cmd_gc,
    "verify": _c.cmd_verify,
    "reset": _c.cmd_reset,
    "repair": _c.cmd_repair,
    "clear": _c.cmd_clear,
    "inspect": _c.cmd_inspect,
    "watch": _c.cmd_watch,
    "log": _c.cmd_log,
    "export": _c.cmd_export,
    "demo": _c.cmd_demo,
    "import-curator": _c.cmd_import_curator,
}
