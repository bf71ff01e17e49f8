"""``resumelog watch``: a read-only live view of a checkpoint.

Every ``interval`` seconds it reloads the view (:meth:`Checkpoint.status`: the latest
snapshot plus the journal tail, read only; nothing is ever written) and shows
completions per minute, pending count, per-writer activity and an ETA. With Rich
installed and a terminal on stdout it draws a refreshing table; otherwise it redraws
plain text (ANSI clear on a terminal, frames separated by blank lines elsewhere).
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from resumelog.checkpoint import Status
from resumelog.cli._common import DEFAULT_STALE_AFTER, human_age, human_bytes, plural, table, writer_state

__all__ = ["Frame", "RateTracker", "run_watch"]


@dataclass
class Frame:
    """One refresh of the view (``watch --json`` prints one of these per line)."""

    url: str
    time_ms: int
    completed: int
    pending: int
    anomalies: int
    snapshot: int
    journal_objects: int
    journal_bytes: int
    unfolded_segments: int
    rate_per_min: float | None
    remaining: int | None
    eta_seconds: float | None
    writers: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    resets: int = 0
    total: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class RateTracker:
    """Completions per minute and per-writer records per minute over a sliding window."""

    def __init__(
        self, window: float = 60.0, total: int | None = None, stale_after: float = DEFAULT_STALE_AFTER
    ) -> None:
        self.window = window
        self.total = total
        self.stale_after = stale_after
        self.samples: deque[tuple[float, int, dict[str, int]]] = deque()

    def frame(self, st: Status, now: float | None = None, wall_ms: int | None = None) -> Frame:
        now = time.monotonic() if now is None else now
        wall_ms = int(time.time() * 1000) if wall_ms is None else wall_ms
        records = {f"{w.writer_id}/{w.incarnation}": w.records for w in st.writers}
        self.samples.append((now, st.completed, records))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window:
            self.samples.popleft()
        t0, c0, r0 = self.samples[0]
        dt = now - t0
        rate = (st.completed - c0) / dt * 60 if dt > 0 else None
        if self.total is not None:
            remaining: int | None = max(self.total - st.completed, 0)
        else:
            remaining = st.pending
        eta = remaining / rate * 60 if rate and remaining is not None and rate > 0 else None
        if remaining == 0:
            eta = 0.0
        writers = []
        for w in st.writers:
            sid = f"{w.writer_id}/{w.incarnation}"
            prev = r0.get(sid)
            wrate = (w.records - prev) / dt * 60 if dt > 0 and prev is not None else None
            age = (wall_ms - w.last_flush_ms) / 1000 if w.last_flush_ms else None
            writers.append(
                {
                    "writer_id": w.writer_id,
                    "incarnation": w.incarnation,
                    "run_id": w.run_id,
                    "last_seq": w.last_seq,
                    "records": w.records,
                    "records_per_min": wrate,
                    "last_flush_age_s": age,
                    "closed": w.closed,
                    "state": writer_state(w.closed, age, self.stale_after),
                }
            )
        writers.sort(key=lambda w: (w["closed"], w["last_flush_age_s"] if w["last_flush_age_s"] is not None else 1e18))
        return Frame(
            url=st.url,
            time_ms=wall_ms,
            completed=st.completed,
            pending=st.pending,
            anomalies=st.anomalies,
            snapshot=st.snapshot,
            journal_objects=st.journal_objects,
            journal_bytes=st.journal_bytes,
            unfolded_segments=st.unfolded_segments,
            rate_per_min=rate,
            remaining=remaining,
            eta_seconds=eta,
            writers=writers,
            resets=st.resets,
            total=self.total,
        )


def _rate(r: float | None) -> str:
    return "-" if r is None else f"{r:,.1f}/min"


def _eta(f: Frame, total: int | None) -> str:
    if f.eta_seconds is None:
        return "ETA -"
    what = f"{f.remaining} left of {total}" if total is not None else f"{f.remaining} in flight"
    return f"ETA {human_age(f.eta_seconds)} ({what})"


def summary_lines(f: Frame, total: int | None, interval: float) -> list[str]:
    clock = time.strftime("%H:%M:%S", time.localtime(f.time_ms / 1000))
    states = Counter(w["state"] for w in f.writers)
    lines = [
        f"resumelog watch {f.url}  every {human_age(interval) if interval >= 60 else f'{interval:g}s'}  {clock}",
        f"completed {f.completed}  pending {f.pending}  rate {_rate(f.rate_per_min)}  {_eta(f, total)}",
    ]
    if total:
        lines.append(f"progress  {progress_bar(f.completed, total)}")
    lines += [
        f"snapshot #{f.snapshot}  anomalies {f.anomalies}"
        + (f"  resets {f.resets}" if f.resets else "")
        + f"  journal {plural(f.journal_objects, 'segment')} / "
        f"{human_bytes(f.journal_bytes)}  not compacted {f.unfolded_segments}",
        f"writers: {states['active']} active, {states['stale']} stale, {states['closed']} closed",
    ]
    if f.error:
        lines.append(f"last error: {f.error}")
    return lines


_HEADER = ["WRITER", "INCARNATION", "RUN", "SEQ", "RECORDS", "REC/MIN", "LAST FLUSH", "STATE"]


def progress_bar(done: int, total: int, width: int = 30) -> str:
    """``[#########---------------------]  30.0%  300/1000`` (plain text, for ``--total``)."""
    frac = min(done / total, 1.0) if total > 0 else 1.0
    n = int(frac * width)
    return f"[{'#' * n}{'-' * (width - n)}] {frac * 100:5.1f}%  {done}/{total}"


def _writer_rows(f: Frame, max_rows: int) -> tuple[list[list[str]], int]:
    rows = []
    for w in f.writers[:max_rows]:
        age = w["last_flush_age_s"]
        state = w["state"]
        rows.append(
            [
                w["writer_id"],
                w["incarnation"][-8:],
                w["run_id"][-12:],
                str(w["last_seq"]),
                str(w["records"]),
                "-" if w["records_per_min"] is None else f"{w['records_per_min']:,.0f}",
                "-" if age is None else human_age(age) + " ago",
                state,
            ]
        )
    return rows, max(len(f.writers) - max_rows, 0)


def render_plain(f: Frame, total: int | None, interval: float, max_rows: int = 20) -> str:
    lines = summary_lines(f, total, interval)
    rows, more = _writer_rows(f, max_rows)
    if rows:
        lines.extend(table(rows, _HEADER))
    if more:
        lines.append(f"  ... {more} more writers")
    return "\n".join(lines)


def render_rich(f: Frame, total: int | None, interval: float, max_rows: int = 20) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head: list[Any] = []
    for line in summary_lines(f, total, interval):
        if total and line.startswith("progress  "):
            from rich.progress_bar import ProgressBar
            from rich.table import Table as Grid

            grid = Grid.grid(padding=(0, 1))
            grid.add_row(
                Text("progress"),
                ProgressBar(total=total, completed=min(f.completed, total), width=40),
                Text(f"{min(f.completed / total, 1.0) * 100:5.1f}%  {f.completed}/{total}"),
            )
            head.append(grid)
        else:
            head.append(Text(line))
    t = Table(*_HEADER, box=None, padding=(0, 1), header_style="bold")
    rows, more = _writer_rows(f, max_rows)
    for r in rows:
        t.add_row(*r)
    parts: list[Any] = [*head, t]
    if more:
        parts.append(Text(f"... {more} more writers"))
    return Group(*parts)


def _use_rich(out: TextIO) -> bool:
    if os.environ.get("RESUMELOG_CLI_PLAIN") or not out.isatty():
        return False
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def run_watch(
    load: Callable[[], Status],
    *,
    interval: float,
    once: bool,
    as_json: bool,
    total: int | None,
    describe_error: Callable[[BaseException], str],
    url: str = "",
    out: TextIO | None = None,
    max_frames: int | None = None,
    stale_after: float = DEFAULT_STALE_AFTER,
) -> int:
    """Loop: load a status, render a frame, sleep. Returns the exit code.

    ``load`` raises what the library raises; with ``once`` the first error propagates,
    otherwise it is shown in the frame and the loop goes on (a transient storage error
    should not kill an operator's view).
    """
    from resumelog.cli._common import dump_json

    out = out or sys.stdout
    tracker = RateTracker(total=total, stale_after=stale_after)
    frames = _frames(load, tracker, interval, once, describe_error, max_frames, url)
    if as_json:
        for f in frames:
            dump_json(f.to_dict(), out)
            out.flush()
        return 0
    if once or not _use_rich(out):
        tty = out.isatty() and not once
        for i, f in enumerate(frames):
            text = render_plain(f, total, interval)
            if tty:
                out.write("\x1b[H\x1b[2J" + text + "\n")
            else:
                out.write(("\n" if i else "") + text + "\n")
            out.flush()
        return 0
    from rich.console import Console
    from rich.live import Live

    console = Console(file=out)
    with Live(console=console, auto_refresh=False, transient=False) as live:
        for f in frames:
            live.update(render_rich(f, total, interval), refresh=True)
    return 0


def _frames(
    load: Callable[[], Status],
    tracker: RateTracker,
    interval: float,
    once: bool,
    describe_error: Callable[[BaseException], str],
    max_frames: int | None,
    url: str,
) -> Iterator[Frame]:
    last: Frame | None = None
    n = 0
    while True:
        started = time.monotonic()
        try:
            frame = tracker.frame(load())
        except Exception as exc:
            if once:
                raise
            msg = describe_error(exc)
            if last is None:
                frame = Frame(url, int(time.time() * 1000), 0, 0, 0, 0, 0, 0, 0, None, None, None, error=msg)
            else:
                frame = Frame(**{**last.to_dict(), "time_ms": int(time.time() * 1000), "error": msg})
        else:
            last = frame
        yield frame
        n += 1
        if once or (max_frames is not None and n >= max_frames):
            return
        time.sleep(max(interval - (time.monotonic() - started), 0.05))
