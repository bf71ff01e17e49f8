"""Argument parsing and dispatch for the ``resumelog`` console script."""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "demo":
        from resumelog.demo import main as demo_main

        return demo_main(args[1:])
    print("usage: resumelog demo [--path DIR] [--sources N] [--workers N] [--json]", file=sys.stderr)
    return 2
