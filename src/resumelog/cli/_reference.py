"""Regenerate the per-command blocks of ``docs/cli.md`` from the argument parser.

Each command's section holds a block between ``<!-- generated: NAME -->`` and
``<!-- end generated: NAME -->``: its usage line, its options (from their ``help=``)
and its examples (:data:`resumelog.cli._main.EXAMPLES`). The prose around the blocks
is written by hand. Run ``python -m resumelog.cli._reference docs/cli.md`` after
changing an option; ``--check`` exits 1 if the page is out of date (``tests/test_docs.py``
runs it).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence

__all__ = ["render_command", "update_page"]

_WIDTH = "100"
_COMMON = {"--json", "--storage-option", "--debug", "--help"}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _invocation(action: argparse.Action) -> str:
    if not action.option_strings:
        return action.metavar if isinstance(action.metavar, str) else action.dest.upper()
    if action.nargs == 0:
        return ", ".join(f"`{o}`" for o in action.option_strings)
    metavar = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
    if action.choices is not None:
        metavar = "{" + ",".join(str(c) for c in action.choices) + "}"
    return ", ".join(f"`{o} {metavar}`" for o in action.option_strings)


def render_command(name: str, p: argparse.ArgumentParser) -> str:
    """The generated block of one command: usage, arguments and options, examples."""
    from resumelog.cli._main import EXAMPLES

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = _WIDTH  # argparse wraps usage at the terminal width
    try:
        usage = p.format_usage().strip()
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    lines = ["```text", usage, "```", ""]
    for action in p._actions:
        if set(action.option_strings) & _COMMON or action.help == argparse.SUPPRESS:
            continue
        shown = _invocation(action)
        if not action.option_strings:
            shown = f"`{shown}`"
        lines.append(f"- {shown}: {action.help or ''}")
    examples = EXAMPLES.get(name, [])
    if examples:
        lines += ["", "Examples:", "", "```bash"]
        for command, what in examples:
            lines.append(f"# {what}")
            lines.append(command)
        lines.append("```")
    return "\n".join(lines)


def update_page(text: str) -> str:
    """``text`` (docs/cli.md) with every generated block rewritten from the parser."""
    from resumelog.cli._main import build_parser

    for name, p in _subparsers(build_parser()).items():
        begin, end = f"<!-- generated: {name} -->", f"<!-- end generated: {name} -->"
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        block = f"{begin}\n{render_command(name, p)}\n{end}"
        m = pattern.search(text)
        if m is None:
            raise ValueError(f"docs/cli.md has no {begin} ... {end} block for command {name}")
        text = text[: m.start()] + block + text[m.end() :]
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m resumelog.cli._reference [--check] docs/cli.md``."""
    ap = argparse.ArgumentParser(prog="python -m resumelog.cli._reference", description=__doc__.splitlines()[0])
    ap.add_argument("page", help="path of docs/cli.md")
    ap.add_argument("--check", action="store_true", help="exit 1 if the page is not current (write nothing)")
    a = ap.parse_args(argv)
    with open(a.page, encoding="utf-8") as f:
        text = f.read()
    new = update_page(text)
    if a.check:
        if new != text:
            print(f"{a.page} is out of date: run python -m resumelog.cli._reference {a.page}", file=sys.stderr)
            return 1
        return 0
    if new != text:
        with open(a.page, "w", encoding="utf-8") as f:
            f.write(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
