"""Argument parsing, dispatch and error policy of the ``resumelog`` console script.

Exit codes (``docs/cli.md``): 0 ok; 1 problems found (``verify`` found corruption,
a command met a corrupt object, ``pending --exit-code`` found sources left);
2 usage or bad input (including "no checkpoint at URL" and refused confirmations);
3 the operation failed (storage unreachable, permission denied, unexpected error);
130 interrupted. Errors are one line on stderr; ``--debug`` adds the traceback.
Storage option values are never printed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from resumelog.cli import _commands as _c
from resumelog.cli._commands import Ctx
from resumelog.cli._common import (
    EXIT_OK,
    EXIT_USAGE,
    Scrubber,
    classify_error,
    duration_arg,
    parse_storage_options,
)

__all__ = ["build_parser", "main"]

_EPILOG = """\
exit codes: 0 ok; 1 problems found (verify, corrupt objects, pending --exit-code);
2 usage or bad input (incl. no checkpoint at URL); 3 operation failed (storage); 130 interrupted.
Storage options: -o KEY=VALUE (repeatable; values parsed as JSON when they parse, a.b=1 nests),
on top of $RESUMELOG_STORAGE_OPTIONS (a JSON object). Full reference: docs/cli.md."""


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {v}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to generate the CLI reference)."""
    from resumelog import __version__

    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("common options")
    g.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON (schema in the docs)")
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

    parser = argparse.ArgumentParser(
        prog="resumelog",
        description="Operate resumelog checkpoints: where are we, what is left, what is wrong.",
        epilog=_EPILOG,
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"resumelog {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def cmd(name: str, help: str, *, url: bool = True) -> argparse.ArgumentParser:  # noqa: A002
        p = sub.add_parser(name, help=help, description=help, parents=[common])
        if url:
            p.add_argument("url", metavar="URL", help="checkpoint root: a path, file://, memory://, s3://, gs://")
        return p

    p = cmd("status", "summary: completed/pending/anomalies, runs, writers, bytes, what gc would free")
    p.add_argument(
        "--grace",
        metavar="DURATION",
        type=duration_arg,
        default=3600.0,
        help="grace period for the gc estimate (default 1h)",
    )

    p = cmd("pending", "which of the given sources are not complete")
    p.add_argument("sources", nargs="*", metavar="SOURCE", help="source ids (in addition to --sources)")
    p.add_argument(
        "--sources", dest="sources_file", metavar="FILE|-", help="one id per line, or a JSON array; - = stdin"
    )
    p.add_argument("--exit-code", action="store_true", help="exit 1 if any given source is not complete")

    p = cmd("completed", "print every completed source id")
    p.add_argument("--sort", action="store_true", help="sort the ids (default: storage order)")

    p = cmd("compact", "fold the journals into a new snapshot")
    p.add_argument(
        "--keep-runs", metavar="N", type=_positive_int, help="retire every run but the N most recently active"
    )
    p.add_argument(
        "--every",
        metavar="DURATION",
        type=duration_arg,
        help="keep compacting, every DURATION (30s, 5m...), until SIGTERM or Ctrl-C (a sidecar beside a "
        "long job); a failed compaction is reported and retried at the next tick",
    )

    p = cmd("gc", "delete old snapshots and the segments they cover")
    p.add_argument("--dry-run", action="store_true", help="only report what would be deleted")
    p.add_argument(
        "--grace",
        metavar="DURATION",
        type=duration_arg,
        default=3600.0,
        help="keep segments younger than this (default 1h)",
    )
    p.add_argument("--retain", metavar="N", type=_positive_int, default=3, help="snapshots to keep (default 3)")
    p.add_argument("-v", "--verbose", action="store_true", help="list the object keys")

    p = cmd("verify", "read every object, check CRCs and structure, report each problem")
    p.add_argument("--shallow", action="store_true", help="skip recomputing every completed id's hash")

    p = cmd("reset", "forget the completion of sources (they rerun next time)")
    p.add_argument("sources", nargs="*", metavar="SOURCE", help="source ids (in addition to --sources)")
    p.add_argument(
        "--sources", dest="sources_file", metavar="FILE|-", help="one id per line, or a JSON array; - = stdin"
    )
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")

    p = cmd("clear", "delete the whole checkpoint")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")

    p = cmd("inspect", "decode one segment, snapshot or meta object")
    p.add_argument(
        "object", metavar="OBJECT", help="object key relative to URL, e.g. snapshots/00000000000000000001.snap"
    )
    p.add_argument(
        "--limit", metavar="N", type=_positive_int, default=100, help="show at most N records/ids/entries (default 100)"
    )
    p.add_argument("--all", action="store_true", help="show everything (no --limit)")

    p = cmd("watch", "live view: completions/min, pending, writers, ETA (read only)")
    p.add_argument(
        "--interval", metavar="SECONDS", type=_positive_float, default=2.0, help="seconds between refreshes (default 2)"
    )
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.add_argument("--total", metavar="N", type=_positive_int, help="expected number of sources (for the ETA)")

    p = cmd("demo", "the README demo: a pipeline killed midway and resumed", url=False)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="demo options (resumelog demo --help)")
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


def _setup_logging(scrub: Scrubber, debug: bool, quiet: bool) -> None:
    log = logging.getLogger("resumelog")
    for h in list(log.handlers):
        if getattr(h, "_resumelog_cli", False):
            log.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._resumelog_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(_LineFormatter(scrub))
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.DEBUG if debug else logging.ERROR if quiet else logging.WARNING)


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "demo":
        from resumelog.demo import main as demo_main

        return demo_main(args_list[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # argparse: --help/--version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    debug = bool(getattr(args, "debug", False))
    as_json = bool(getattr(args, "json", False))
    if args.command == "demo":
        from resumelog.demo import main as demo_main

        rest = list(args.rest) + (["--json"] if as_json else [])
        return demo_main(rest)
    scrub = Scrubber(url=getattr(args, "url", None))
    try:
        opts = parse_storage_options(getattr(args, "storage_option", None))
        scrub = Scrubber(opts, getattr(args, "url", None))
        _setup_logging(scrub, debug, quiet=args.command == "watch")
        ctx = Ctx(args, opts, as_json, debug, scrub)
        handler: Callable[[Ctx], int] = _COMMANDS[args.command]
        code = handler(ctx)
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:
        print("resumelog: interrupted", file=sys.stderr)
        return 130
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
        print(f"resumelog: error: {_one_line(scrub(message))}", file=sys.stderr)
        return code


_COMMANDS: dict[str, Callable[[Ctx], int]] = {
    "status": _c.cmd_status,
    "pending": _c.cmd_pending,
    "completed": _c.cmd_completed,
    "compact": _c.cmd_compact,
    "gc": _c.cmd_gc,
    "verify": _c.cmd_verify,
    "reset": _c.cmd_reset,
    "clear": _c.cmd_clear,
    "inspect": _c.cmd_inspect,
    "watch": _c.cmd_watch,
}
