"""What every system in the comparison shares: the workload, child processes, sizes on disk.

Workload (the same records for every system): ``N`` sources, each going through a
Curator-style pipeline ``source stage -> fan-out 1->3 -> sink`` with Curator's default
``batch_size = 1``. Task ids are derived the way Curator derives them (``<parent>_<i>``),
so the records and the stage calls that carry them are exactly what Curator's adapter
sends to its resumability actor:

* source stage, one call per ``EMIT_BATCH`` sources: ``("0_<src>", src, +1)`` each
  (an emission);
* fan-out stage, one call per source: ``("0_<src>_0", src, +2)`` (``3 - 1``, keyed on
  the first output's id);
* sink stage, one call per fan-out output: ``("0_<src>_<j>_0", src, -1)``, ``j = 0..2``.

Five records and four stage calls (plus a share of a source call) per source; every
source completes. Source ids are 16 characters (``shard-0000000007``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

BENCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SOURCE, FANOUT, SINK = 0, 1, 2
STAGE_NAMES = ("source", "fanout", "sink")
RECORDS_PER_SOURCE = 5
EMIT_BATCH = 1000

Call = tuple[int, list[tuple[str, str, int]]]


def source_id(i: int) -> str:
    return f"shard-{i:010d}"


def calls(lo: int, hi: int, emit_batch: int = EMIT_BATCH) -> list[Call]:
    """The stage calls (stage, records) for sources ``lo..hi-1``, in pipeline order."""
    out: list[Call] = []
    for start in range(lo, hi, emit_batch):
        ids = [source_id(i) for i in range(start, min(start + emit_batch, hi))]
        out.append((SOURCE, [(f"0_{s}", s, 1) for s in ids]))
        for s in ids:
            t = f"0_{s}"
            out.append((FANOUT, [(f"{t}_0", s, 2)]))
            out.append((SINK, [(f"{t}_0_0", s, -1)]))
            out.append((SINK, [(f"{t}_1_0", s, -1)]))
            out.append((SINK, [(f"{t}_2_0", s, -1)]))
    return out


def call_chunks(lo: int, hi: int, chunk: int = 50_000) -> Iterator[list[Call]]:
    """``calls`` in chunks of ``chunk`` sources, so that a benchmark can time only the
    system under test (generation happens between timed sections)."""
    for a in range(lo, hi, chunk):
        yield calls(a, min(a + chunk, hi))


def writer_slices(n: int, writers: int) -> list[tuple[int, int]]:
    """Split sources ``0..n-1`` into ``writers`` contiguous ranges."""
    per, extra = divmod(n, writers)
    out, lo = [], 0
    for w in range(writers):
        hi = lo + per + (1 if w < extra else 0)
        out.append((lo, hi))
        lo = hi
    return out


# ---------------------------------------------------------------------- process facts


def proc_status(field: str) -> float:
    """A ``/proc/self/status`` memory field in MiB (``VmHWM``: peak RSS, reset by exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def dir_bytes(path: str) -> tuple[int, int]:
    """``(apparent bytes, allocated bytes)`` of every file under ``path`` (or of one file)."""
    if os.path.isfile(path):
        st = os.stat(path)
        return st.st_size, st.st_blocks * 512
    size = alloc = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(dirpath, f))
            except FileNotFoundError:
                continue
            size += st.st_size
            alloc += st.st_blocks * 512
    return size, alloc


# ---------------------------------------------------------------------- child processes

_CHILD_BOOT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from baselines.common import proc_status
import importlib
mod = importlib.import_module(sys.argv[2])
out = getattr(mod, sys.argv[3])(**json.loads(sys.argv[4]))
out["peak_rss_mb"] = round(proc_status("VmHWM"), 1)
print("@@RESULT " + json.dumps(out), flush=True)
"""


class ChildError(RuntimeError):
    pass


def run_child(
    module: str,
    func: str,
    kwargs: dict[str, Any],
    *,
    python: str | None = None,
    timeout: float = 600,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``baselines.<module>.<func>(**kwargs)`` in a fresh interpreter; its dict result
    plus ``peak_rss_mb`` (``VmHWM`` of that process: exec resets it, so it is the child's
    own peak, unlike ``ru_maxrss``) and ``child_wall_s``."""
    t0 = time.perf_counter()
    full_env = {**os.environ, **(env or {})}
    try:
        p = subprocess.run(
            [python or sys.executable, "-c", _CHILD_BOOT, BENCH_DIR, f"baselines.{module}", func, json.dumps(kwargs)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
        )
    except subprocess.TimeoutExpired as exc:
        raise ChildError(f"{module}.{func} timed out after {timeout:.0f} s") from exc
    for line in p.stdout.splitlines():
        if line.startswith("@@RESULT "):
            out: dict[str, Any] = json.loads(line[9:])
            out["child_wall_s"] = round(time.perf_counter() - t0, 2)
            return out
    tail = (p.stderr or p.stdout)[-2000:]
    raise ChildError(f"{module}.{func} failed (exit {p.returncode}): {tail}")


def median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else float("nan")


def pct(xs: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``xs``."""
    s = sorted(xs)
    if not s:
        return float("nan")
    return s[min(len(s) - 1, max(0, round(q * len(s) + 0.5) - 1))]


def best_of(reps: int, fn: Any, key: str) -> dict[str, Any]:
    """Call ``fn()`` ``reps`` times; the result with the lowest ``key`` (others' values kept
    as ``<key>_all``)."""
    runs = [fn() for _ in range(reps)]
    best = min(runs, key=lambda r: r[key])
    best = dict(best)
    best[f"{key}_all"] = [r[key] for r in runs]
    return best
