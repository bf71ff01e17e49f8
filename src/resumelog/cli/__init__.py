"""The ``resumelog`` command line (thin: parse, call the library, print)."""

from __future__ import annotations

from resumelog.cli._main import main

__all__ = ["main"]
