"""Progress bars for long operations: drawn on a terminal, silent otherwise.

With Rich installed (the ``resumelog[cli]`` extra) and a terminal, the bar is a
:class:`rich.progress.Progress` with the count, percentage, rate, elapsed time and ETA.
Without Rich (or with ``RESUMELOG_CLI_PLAIN=1``) a plain one-line bar shows the same
figures. When the stream is not a terminal (scripts, CI, logs) nothing is drawn.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

__all__ = ["Progress", "format_eta", "plain_line"]


def _clock(seconds: float) -> str:
    s = max(int(seconds), 0)
    return f"{s // 3600}:{(s % 3600) // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def format_eta(done: int, total: int, elapsed: float) -> str:
    """``"0:42"`` left at the average rate so far; ``"-:--"`` while it cannot be told."""
    if done <= 0 or elapsed <= 0:
        return "-:--"
    return _clock((total - done) * elapsed / done)


def plain_line(label: str, done: int, total: int, elapsed: float, width: int = 30) -> str:
    """One plain-text frame: ``label [####------] 40/100  40%  12.3/s  0:03 elapsed  ETA 0:05``."""
    frac = min(done / total, 1.0) if total else 1.0
    n = int(frac * width)
    rate = done / elapsed if elapsed > 0 else 0.0
    return (
        f"{label} [{'#' * n}{'-' * (width - n)}] {done}/{total}  {frac * 100:3.0f}%  {rate:,.1f}/s  "
        f"{_clock(elapsed)} elapsed  ETA {format_eta(done, total, elapsed)}"
    )


def _rich_available() -> bool:
    if os.environ.get("RESUMELOG_CLI_PLAIN"):
        return False
    try:
        import rich.progress  # noqa: F401
    except ImportError:
        return False
    return True


class Progress:
    """``with Progress("compact", total) as p: p.advance(n)``.

    Draws on ``stream`` (default stderr) only if it is a TTY and ``enabled`` is not
    ``False`` (``enabled=True`` draws the plain bar on any stream); a Rich bar when Rich
    is installed and the stream is a terminal, else a plain bar redrawn at most 10
    times a second.
    """

    def __init__(self, label: str, total: int, *, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.label = label
        self.total = max(total, 0)
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        tty = _isatty(self.stream)
        self.enabled = (tty if enabled is None else enabled) and total > 0
        self._last = 0.0
        self._start = time.monotonic()
        self._rich: Any = None
        self._task: Any = None
        if self.enabled and tty and _rich_available():
            self._rich = _rich_progress(self.stream)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.update(self._task, completed=self.done)
            return
        now = time.monotonic()
        if now - self._last >= 0.1 or self.done >= self.total:
            self._last = now
            self._draw()

    def _draw(self) -> None:
        self.stream.write("\r" + plain_line(self.label, self.done, self.total, time.monotonic() - self._start))
        self.stream.flush()

    def __enter__(self) -> Progress:
        self._start = time.monotonic()
        if self._rich is not None:
            self._rich.start()
            self._task = self._rich.add_task(self.label, total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.update(self._task, completed=self.done)
            self._rich.stop()
            return
        self._draw()
        self.stream.write("\n")
        self.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _rich_progress(stream: TextIO) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        ProgressColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as RichProgress
    from rich.text import Text

    class RateColumn(ProgressColumn):  # type: ignore[misc]
        """Items per second (Rich's own speed column is for bytes)."""

        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("-/s" if speed is None else f"{speed:,.1f}/s", style="progress.data.speed")

    return RichProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(file=stream),
        transient=False,
    )
