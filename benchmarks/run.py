"""Every benchmark in one run: resumelog against the systems users would pick instead.

    python benchmarks/run.py [--quick | --smoke] [--only SECTION ...] [--out DIR]

Sections (``--only``): ``throughput``, ``latency``, ``startup`` (with the scaling table and
bytes on disk), ``background`` (``bench_background.py``: compacting during a run, then a
crash and the next start), ``s3`` (``bench_s3.py``), ``raydata`` (``bench_ray_data.py``
if present), ``raymem`` (``bench_ray_data.py --only memory``: the native filter's memory
per 1M string ids, resumelog vs Ray), ``outputs`` (``bench_outputs.py``: an exactly-once
output against a plain write, local and S3), ``curator`` (``bench_curator.py``: a real
NeMo Curator 1.4 pipeline under its Ray executor on resumelog vs on Curator's own LMDB
actor; needs ``nemo_curator`` importable in this environment, skipped otherwise and in
``--smoke``), ``scale`` (``bench_scale.py``: compaction tick, compaction rate, a fresh
client's open + 10k lookups, peak RSS and bytes per id vs the completed ids N, on local
disk and SeaweedFS, fitted and extrapolated to 10^9; ``--quick``: N up to 10^7),
``memory`` (``bench_memory.py``: peak RSS of one compaction of M records, before and
after spilling, issue 17 part 4; ``--quick``: M = 4M, 16M; full: also 64M).
Systems: resumelog (local, memory, S3), NeMo Curator 1.4.0's LMDB resumability actor
(through Ray and in-process), one object per event (local, S3), SQLite in WAL mode, Ray
Data's native checkpointing (via ``bench_ray_data.py``). Every figure comes from a child
process (``baselines/common.py: run_child``) so peak RSS (``VmHWM``) is that process's own.

Writes ``<out>/<mode>.jsonl`` (one JSON object per figure), ``<out>/<mode>.md`` (the
tables, also printed) and ``<out>/<mode>.png`` when matplotlib is importable; ``<out>``
defaults to ``benchmarks/results`` (a temporary directory for ``--smoke``).

Curator runs in its own virtualenv, ``benchmarks/.venv-baselines`` (git-ignored by a
``.gitignore`` inside it), created on first use with ``--system-site-packages`` (it sees
this environment's ``ray``) and ``pip install --no-deps nemo-curator==1.4.0 lmdb loguru``;
nemo-curator never enters resumelog's own environment. ``--no-curator`` skips it;
``--smoke`` uses the venv only if it already exists. When it cannot be set up, the
Curator rows are skipped with the reason printed; the run goes on.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)

from baselines.common import ChildError, best_of, run_child, source_id  # noqa: E402

VENV = os.path.join(BENCH_DIR, ".venv-baselines")
CURATOR_REQ = "nemo-curator==1.4.0"
PROBE = source_id(7)
SECTIONS = (
    "throughput",
    "latency",
    "startup",
    "background",
    "s3",
    "raydata",
    "raymem",
    "outputs",
    "curator",
    "scale",
    "memory",
)

SIZES: dict[str, dict[str, Any]] = {
    "smoke": {
        "N": [2_000],
        "W": [1, 4],
        "reps": 1,
        "thr_n": 5_000,
        "thr_barrier_n": 100,
        "via_ckpt_n": 0,
        "cur_inproc_n": 200,
        "cur_actor_n": 0,
        "cur_client_n": 0,
        "sqlite_n": 500,
        "sqlite_full_n": 0,
        "ope_local_n": 100,
        "ope_local_startup_n": 1_000,
        "lat_flushes": 5,
        "lat_bytes": 1 << 18,
        "round": 0,
    },
    "quick": {
        "N": [100_000, 1_000_000],
        "W": [1, 16, 64],
        "reps": 3,
        "thr_n": 1_000_000,
        "thr_barrier_n": 2_000,
        "via_ckpt_n": 200_000,
        "cur_inproc_n": 10_000,
        "cur_actor_n": 10_000,
        "cur_client_n": 1_000,
        "sqlite_n": 20_000,
        "sqlite_full_n": 500,
        "ope_local_n": 5_000,
        "ope_local_startup_n": 20_000,
        "lat_flushes": 200,
        "lat_bytes": 1 << 20,
        "round": 0,
    },
    "full": {
        "N": [100_000, 1_000_000, 10_000_000],
        "W": [1, 16, 64],
        "reps": 3,
        "thr_n": 10_000_000,
        "thr_barrier_n": 10_000,
        "via_ckpt_n": 1_000_000,
        "cur_inproc_n": 50_000,
        "cur_actor_n": 50_000,
        "cur_client_n": 5_000,
        "sqlite_n": 100_000,
        "sqlite_full_n": 2_000,
        "ope_local_n": 20_000,
        "ope_local_startup_n": 200_000,
        "lat_flushes": 300,
        "lat_bytes": 1 << 20,
        # above this N, resumelog's journals are written and compacted in rounds of
        # `round` sources (as a long pipeline compacts periodically), W=64 only
        "round": 1_000_000,
    },
}


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.mode = "smoke" if args.smoke else "quick" if args.quick else "full"
        self.sz = SIZES[self.mode]
        self.rows: list[dict[str, Any]] = []
        self.work = tempfile.mkdtemp(prefix="resumelog-bench-", dir=args.workdir)
        self.curator_py: str | None = None
        self.t_start = time.perf_counter()

    # ------------------------------------------------------------------ output

    def emit(self, **row: Any) -> None:
        self.rows.append(row)
        print(json.dumps(row), flush=True)

    def skip(self, system: str, reason: str, bench: str = "skipped") -> None:
        print(f"# skipped {system}: {reason}", file=sys.stderr, flush=True)
        self.emit(bench=bench, system=system, reason=reason)

    def dir(self, name: str) -> str:
        d = os.path.join(self.work, name)
        shutil.rmtree(d, ignore_errors=True)
        return d

    def section(self, name: str, fn: Callable[[], None]) -> None:
        if self.args.only and name not in self.args.only:
            return
        t0 = time.perf_counter()
        print(f"# --- {name}", file=sys.stderr, flush=True)
        try:
            fn()
        except Exception as exc:  # a failing section is reported, the run goes on
            traceback.print_exc()
            self.emit(bench="error", system=name, reason=f"{type(exc).__name__}: {str(exc)[-800:]}")
        self.emit(bench="section", system=name, seconds=round(time.perf_counter() - t0, 1))

    # ------------------------------------------------------------------ curator venv

    def setup_curator(self) -> None:
        if self.args.no_curator:
            self.skip("curator-lmdb", "--no-curator given")
            return
        py = os.path.join(VENV, "bin", "python")
        reason = self._probe_curator(py) if os.path.exists(py) else "no venv"
        if reason and self.mode == "smoke":
            self.skip("curator-lmdb", f"{VENV} is not ready ({reason}) and --smoke never installs anything")
            return
        if reason:
            print(f"# setting up {VENV} ({CURATOR_REQ} --no-deps, lmdb, loguru)", file=sys.stderr, flush=True)
            try:
                if not os.path.exists(py):
                    subprocess.run(
                        [sys.executable, "-m", "venv", "--system-site-packages", VENV],
                        check=True,
                        capture_output=True,
                        timeout=300,
                    )
                    with open(os.path.join(VENV, ".gitignore"), "w") as f:
                        f.write("# created by benchmarks/run.py\n*\n")
                subprocess.run(
                    [py, "-m", "pip", "install", "-q", "--no-deps", CURATOR_REQ, "lmdb", "loguru"],
                    check=True,
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
                err = getattr(exc, "stderr", "") or ""
                self.skip("curator-lmdb", f"could not set up {VENV}: {exc} {str(err)[-300:]}")
                return
            reason = self._probe_curator(py)
        if reason:
            self.skip("curator-lmdb", reason)
            return
        self.curator_py = py

    def _probe_curator(self, py: str) -> str:
        try:
            info = run_child("curator_lmdb", "info", {}, python=py, timeout=120)
        except ChildError as exc:
            return f"nemo_curator's resumability actor does not load: {str(exc)[-300:]}"
        self.emit(bench="env", system="curator-lmdb", **info)
        return ""

    def curator(self, func: str, timeout: float = 1800, **kw: Any) -> dict[str, Any]:
        assert self.curator_py is not None
        env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_IMPORT_WARNING": "1"}
        return run_child("curator_lmdb", func, kw, python=self.curator_py, timeout=timeout, env=env)

    # ------------------------------------------------------------------ sections

    def env(self) -> None:
        import sqlite3

        import msgspec
        from bench_scale import git_state

        import resumelog

        rev, dirty = git_state()

        self.emit(
            bench="env",
            system="host",
            mode=self.mode,
            date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            python=platform.python_version(),
            platform=platform.platform(),
            cpus=os.cpu_count(),
            resumelog=resumelog.__version__ if hasattr(resumelog, "__version__") else "",
            msgspec=msgspec.__version__,
            sqlite=sqlite3.sqlite_version,
            git=rev + ("+dirty" if dirty else ""),
            workdir=self.work,
            loadavg_start=[round(x, 2) for x in os.getloadavg()],
        )

    def throughput(self) -> None:
        sz = self.sz
        # resumelog, one writer: buffered (default policy), with the durability barrier,
        # through Checkpoint.writer() (the driver's writer; its view reloads at the next read)
        for storage, url, durable in (
            ("local", self.dir("thr-local"), "each flush: fsync'd 1 MiB segment"),
            ("memory", f"memory://bench-thr-{os.getpid()}", "none (process memory)"),
        ):
            r = run_child("resumelog_sys", "throughput", {"url": url, "n": sz["thr_n"]})
            self._thr("resumelog", storage, "buffered", sz["thr_n"], r, durable)
        r = run_child(
            "resumelog_sys", "throughput", {"url": self.dir("thr-bar"), "n": sz["thr_barrier_n"], "variant": "barrier"}
        )
        self._thr("resumelog", "local", "barrier", sz["thr_barrier_n"], r, "flush after every + call (fsync)")
        if sz["via_ckpt_n"]:
            r = run_child(
                "resumelog_sys",
                "throughput",
                {"url": self.dir("thr-ck"), "n": sz["via_ckpt_n"], "via": "checkpoint"},
            )
            note = "as buffered"
            if "view_reload_s" in r:
                note += f"; then the first read reloads the view: {r['view_reload_s']} s"
            self._thr("resumelog", "local", "Checkpoint.writer()", sz["via_ckpt_n"], r, note)
        # curator
        if self.curator_py:
            r = self.curator("throughput_inproc", base_dir=self.dir("cur-inproc"), n=sz["cur_inproc_n"])
            self._thr(
                "curator-lmdb", "local", "in-process class", sz["cur_inproc_n"], r, "LMDB commit (fsync) per completion"
            )
            self.emit(
                bench="bytes",
                system="curator-lmdb",
                state="actor-written",
                n=r["completed"],
                writers=1,
                bytes=r["bytes"],
                bytes_allocated=r["bytes_allocated"],
                bytes_per_completed=r["bytes_per_completed"],
            )
            if sz["cur_actor_n"]:
                r = self.curator(
                    "throughput_ray",
                    base_dir=self.dir("cur-ray"),
                    n_actor=sz["cur_actor_n"],
                    n_client=sz["cur_client_n"],
                )
                a = r["actor"]
                self._thr(
                    "curator-lmdb", "local", "Ray actor", sz["cur_actor_n"], a, "LMDB commit (fsync) per completion"
                )
                self.rows[-1]["ray_init_s"] = r["ray_init_s"]
                self.rows[-1]["peak_rss_mb"] = r["peak_rss_mb"]
                if "client" in r:
                    self._thr(
                        "curator-lmdb",
                        "local",
                        "Ray adapter client",
                        sz["cur_client_n"],
                        r["client"],
                        "LMDB commit (fsync) per completion",
                    )
            else:
                self.skip("curator-lmdb Ray actor", f"{self.mode}: Ray start-up alone exceeds the budget")
        # sqlite
        r = run_child("sqlite_wal", "throughput", {"path": os.path.join(self.dir("sq"), "t.db"), "n": sz["sqlite_n"]})
        self._thr(
            "sqlite-wal", "local", "synchronous=NORMAL", sz["sqlite_n"], r, "commit per call, fsync at checkpoint"
        )
        if sz["sqlite_full_n"]:
            r = run_child(
                "sqlite_wal",
                "throughput",
                {"path": os.path.join(self.dir("sqf"), "t.db"), "n": sz["sqlite_full_n"], "synchronous": "FULL"},
            )
            self._thr("sqlite-wal", "local", "synchronous=FULL", sz["sqlite_full_n"], r, "fsync per call")
        # one object per event, local
        r = run_child(
            "object_per_event", "throughput", {"protocol": "file", "root": self.dir("ope-thr"), "n": sz["ope_local_n"]}
        )
        self._thr("object-per-event", "local", "sequential", sz["ope_local_n"], r, "none (page cache)")

    def _thr(self, system: str, storage: str, variant: str, n: int, r: dict[str, Any], durable: str) -> None:
        row = {
            "bench": "throughput",
            "system": system,
            "storage": storage,
            "variant": variant,
            "n": n,
            "records": r["records"],
            "seconds": r["seconds"],
            "records_per_s": r["records_per_s"],
            "durable": durable,
        }
        for k in (
            "flushes",
            "flush_p50_ms",
            "flush_p99_ms",
            "bytes_per_record",
            "submit_seconds",
            "calls",
            "peak_rss_mb",
            "view_reload_s",
        ):
            if k in r:
                row[k] = r[k]
        self.emit(**row)

    def latency(self) -> None:
        sz = self.sz
        for storage, url in (("local", self.dir("lat")), ("memory", f"memory://bench-lat-{os.getpid()}")):
            r = run_child(
                "resumelog_sys",
                "flush_latency",
                {"url": url, "segment_bytes": sz["lat_bytes"], "flushes": sz["lat_flushes"]},
            )
            self.emit(bench="flush_latency", system="resumelog", storage=storage, **r)

    def startup(self) -> None:
        sz = self.sz
        reps = sz["reps"]
        for n in sz["N"]:
            for w in sz["W"]:
                if sz["round"] and n > sz["round"] and w != max(sz["W"]):
                    continue
                self._startup_resumelog(n, w, reps)
            self._startup_curator(n, reps)
            self._startup_sqlite(n, reps)
        self._startup_ope(sz["ope_local_startup_n"], reps)

    def _startup_resumelog(self, n: int, w: int, reps: int) -> None:
        url = self.dir(f"rl-{n}-{w}")
        rnd = self.sz["round"]
        if rnd and n > rnd:
            # a long pipeline compacting every `rnd` sources: time of each round's compaction
            for off in range(0, n, rnd):
                wr = run_child("resumelog_sys", "write_journals", {"url": url, "n": rnd, "writers": w, "offset": off})
                c = run_child("resumelog_sys", "compact", {"url": url, "collect": True}, timeout=3600)
                self.emit(
                    bench="compaction",
                    system="resumelog",
                    n=off + rnd,
                    writers=w,
                    round=off // rnd,
                    records=c["records"],
                    seconds=c["seconds"],
                    records_per_s=c["records_per_s"],
                    peak_rss_mb=c["peak_rss_mb"],
                    snapshot_bytes=c["snapshot_bytes"],
                )
            self.emit(
                bench="skipped",
                system="resumelog",
                state="journal",
                n=n,
                writers=w,
                reason=f"journals were compacted every {rnd:,} sources",
            )
        else:
            wr = run_child("resumelog_sys", "write_journals", {"url": url, "n": n, "writers": w})
            self.emit(
                bench="bytes",
                system="resumelog",
                state="journal",
                n=n,
                writers=w,
                bytes=wr["journal_bytes"],
                objects=wr["journal_objects"],
                bytes_per_completed=round(wr["journal_bytes"] / n, 2),
            )
            st = best_of(1 if n >= 1_000_000 else reps, lambda: self._rl_start(url), "open_s")
            self._start_row("resumelog", "journal", n, w, st)
            c = run_child("resumelog_sys", "compact", {"url": url, "collect": True}, timeout=3600)
            self.emit(
                bench="compaction",
                system="resumelog",
                n=n,
                writers=w,
                records=c["records"],
                seconds=c["seconds"],
                records_per_s=c["records_per_s"],
                peak_rss_mb=c["peak_rss_mb"],
                snapshot_bytes=c["snapshot_bytes"],
            )
        self.emit(
            bench="bytes",
            system="resumelog",
            state="snapshot",
            n=n,
            writers=w,
            bytes=c["bytes_after_gc"],
            bytes_per_completed=round(c["bytes_after_gc"] / n, 2),
        )
        st = best_of(reps, lambda: self._rl_start(url), "open_s")
        self._start_row("resumelog", "snapshot", n, w, st)
        c = run_child("resumelog_sys", "compact", {"url": url, "collect": True, "keep_runs": 0}, timeout=3600)
        self.emit(
            bench="bytes",
            system="resumelog",
            state="snapshot-retired",
            n=n,
            writers=w,
            bytes=c["bytes_after_gc"],
            bytes_per_completed=round(c["bytes_after_gc"] / n, 2),
        )
        st = best_of(reps, lambda: self._rl_start(url), "open_s")
        self._start_row("resumelog", "snapshot-retired", n, w, st)
        shutil.rmtree(url, ignore_errors=True)

    def _rl_start(self, url: str) -> dict[str, Any]:
        return run_child("resumelog_sys", "startup", {"url": url, "probe": PROBE})

    def _start_row(self, system: str, state: str, n: int, w: int, st: dict[str, Any], **extra: Any) -> None:
        if not st.get("hit", True) or st.get("completed", n) != n:
            extra["WRONG"] = f"hit={st.get('hit')} completed={st.get('completed')}"
        self.emit(
            bench="startup",
            system=system,
            state=state,
            n=n,
            writers=w,
            open_s=st["open_s"],
            open_s_all=st.get("open_s_all"),
            peak_rss_mb=st.get("peak_rss_mb"),
            rss_before_mb=st.get("rss_before_mb"),
            **extra,
        )

    def _startup_curator(self, n: int, reps: int) -> None:
        if not self.curator_py:
            return
        for w in self.sz["W"]:
            d = self.dir(f"cur-{n}-{w}")
            b = self.curator("build_union", base_dir=d, n=n, writers=w)
            self.emit(
                bench="bytes",
                system="curator-lmdb",
                state="bulk-written",
                n=n,
                writers=w,
                bytes=b["bytes"],
                bytes_allocated=b["bytes_allocated"],
                bytes_per_completed=round(b["bytes"] / n, 2),
            )
            st = best_of(reps, lambda d=d: self.curator("startup", base_dir=d, probe=PROBE), "open_s")
            self._start_row("curator-lmdb", "union", n, w, st)
            shutil.rmtree(d, ignore_errors=True)

    def _startup_sqlite(self, n: int, reps: int) -> None:
        path = os.path.join(self.dir(f"sq-{n}"), "s.db")
        p = run_child("sqlite_wal", "populate", {"path": path, "n": n})
        self.emit(
            bench="bytes",
            system="sqlite-wal",
            state="db",
            n=n,
            writers=1,
            bytes=p["bytes"],
            bytes_per_completed=round(p["bytes"] / n, 2),
        )
        st = best_of(reps, lambda: run_child("sqlite_wal", "startup", {"path": path, "probe": PROBE}), "open_s")
        self._start_row("sqlite-wal", "select", n, 1, st)
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)

    def _startup_ope(self, n: int, reps: int) -> None:
        root = self.dir("ope-start")
        p = run_child(
            "object_per_event", "populate", {"protocol": "file", "root": root, "lo": 0, "hi": n}, timeout=3600
        )
        self.emit(
            bench="bytes",
            system="object-per-event",
            state="objects",
            n=n,
            writers=1,
            bytes=p["bytes"],
            objects=p["objects"],
            bytes_per_completed=round(p["bytes"] / n, 2),
        )
        st = best_of(
            min(reps, 2),
            lambda: run_child("object_per_event", "startup", {"protocol": "file", "root": root, "probe": PROBE}),
            "open_s",
        )
        self._start_row("object-per-event", "objects", n, 1, st, storage="local")
        shutil.rmtree(root, ignore_errors=True)

    def s3(self) -> None:
        import bench_s3

        sizes = dict(bench_s3.SIZES[self.mode])
        try:
            with bench_s3.s3_server(self.args.s3_server) as opts:
                bench_s3.run(opts, sizes, self.emit)
        except bench_s3.S3Unavailable as exc:
            self.skip("s3", str(exc))

    def raydata(self, only: tuple[str, ...] = ("pipeline", "resume", "load")) -> None:
        script = os.path.join(BENCH_DIR, "bench_ray_data.py")
        if not os.path.exists(script):
            self.skip("ray-data", "benchmarks/bench_ray_data.py does not exist (yet)")
            return
        if self.mode == "smoke":
            self.skip("ray-data", "smoke: Ray start-up alone exceeds the budget")
            return
        try:
            helptext = subprocess.run(
                [sys.executable, script, "--help"], capture_output=True, text=True, timeout=120
            ).stdout
        except subprocess.TimeoutExpired:
            helptext = ""
        cmd = [sys.executable, script]
        if self.mode == "quick" and "--quick" in helptext:
            cmd.append("--quick")
        if "memory" in helptext:  # a bench_ray_data.py that knows the memory section
            cmd += ["--only", *only]
        elif only == ("memory",):
            self.skip("ray-filter-memory", "this bench_ray_data.py has no memory section")
            return
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=self.args.raydata_timeout, env=env)
        except subprocess.TimeoutExpired as exc:
            self.skip("ray-data", f"bench_ray_data.py timed out after {self.args.raydata_timeout} s")
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        else:
            out = p.stdout
            if p.returncode:
                self.emit(bench="error", system="ray-data", reason=(p.stderr or "")[-800:])
        for line in out.splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                row.setdefault("system", "ray-data")
                self.emit(
                    **{"source": "bench_ray_data.py", **row, "bench_orig": row.get("bench")} | {"bench": "raydata"}
                )

    def curator_pipeline(self) -> None:
        """``bench_curator.py`` in a subprocess; its JSON lines land in the report."""
        if self.mode == "smoke":
            self.skip("curator-pipeline", "smoke: a Ray cluster and three pipelines exceed the budget")
            return
        probe = subprocess.run([sys.executable, "-c", "import nemo_curator"], capture_output=True, text=True)
        if probe.returncode:
            self.skip(
                "curator-pipeline", "nemo_curator is not importable here (pip install --no-deps nemo-curator==1.4.0)"
            )
            return
        cmd = [sys.executable, os.path.join(BENCH_DIR, "bench_curator.py")] + (
            ["--quick"] if self.mode == "quick" else []
        )
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=self.args.curator_timeout, env=env)
        except subprocess.TimeoutExpired:
            self.skip("curator-pipeline", f"bench_curator.py timed out after {self.args.curator_timeout} s")
            return
        if p.returncode:
            self.emit(bench="error", system="curator-pipeline", reason=(p.stderr or "")[-800:])
        for line in p.stdout.splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                self.emit(
                    **{"source": "bench_curator.py", **row, "bench_orig": row.get("bench")} | {"bench": "curator"}
                )

    def background(self) -> None:
        script = os.path.join(BENCH_DIR, "bench_background.py")
        cmd = [sys.executable, script] + (
            ["--smoke"] if self.mode == "smoke" else ["--quick"] if self.mode == "quick" else []
        )
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if p.returncode:
            self.emit(bench="error", system="background", reason=(p.stderr or "")[-800:])
        for line in p.stdout.splitlines():
            if line.startswith("{"):
                self.emit(**{"system": "resumelog", **json.loads(line)})

    def scale(self) -> None:
        """``bench_scale.py`` in a subprocess (it runs its own children); its JSON lines
        land in the report, its plot in ``<out>/scale.png`` (no ``--out``, not smoke:
        ``results/scale-<mode>-<commit>.png``, beside its own JSON lines)."""
        script = os.path.join(BENCH_DIR, "bench_scale.py")
        cmd = [sys.executable, script, "--workdir", self.work]
        if self.args.out or self.mode == "smoke":
            cmd += ["--out", self._out_dir()]
        cmd += ["--smoke"] if self.mode == "smoke" else ["--quick"] if self.mode == "quick" else []
        cmd += ["--no-s3"] if self.args.no_s3 else ["--server", self.args.scale_server]
        timeout = {"smoke": 600, "quick": 3600}.get(self.mode, 6 * 3600)
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            self.emit(bench="error", system="scale", reason=f"bench_scale.py timed out after {timeout} s")
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        else:
            out = p.stdout
            if p.returncode:
                self.emit(bench="error", system="scale", reason=(p.stderr or "")[-800:])
        for line in out.splitlines():
            if line.startswith("{"):
                self.emit(**{"system": "resumelog", **json.loads(line)})

    def memory(self) -> None:
        """``bench_memory.py`` in a subprocess (it runs its own children)."""
        script = os.path.join(BENCH_DIR, "bench_memory.py")
        cmd = [sys.executable, script, "--workdir", self.work]
        cmd += ["--smoke"] if self.mode == "smoke" else ["--quick"] if self.mode == "quick" else []
        timeout = {"smoke": 300, "quick": 3600}.get(self.mode, 6 * 3600)
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.emit(bench="error", system="memory", reason=f"bench_memory.py timed out after {timeout} s")
            return
        if p.returncode:
            self.emit(bench="error", system="memory", reason=(p.stderr or "")[-800:])
        for line in p.stdout.splitlines():
            if line.startswith("{"):
                self.emit(**{"system": "resumelog", **json.loads(line)})

    def _out_dir(self) -> str:
        if self.args.out:
            return str(self.args.out)
        if self.mode == "smoke":
            return os.path.join(self.work, "scale-out")
        return os.path.join(BENCH_DIR, "results")

    def outputs(self) -> None:
        script = os.path.join(BENCH_DIR, "bench_outputs.py")
        cmd = [sys.executable, script] + (["--smoke", "--no-s3"] if self.mode == "smoke" else [])
        if self.args.no_s3:
            cmd.append("--no-s3")
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if p.returncode:
            self.emit(bench="error", system="outputs", reason=(p.stderr or "")[-800:])
        for line in p.stdout.splitlines():
            if line.startswith("{"):
                self.emit(**json.loads(line))

    # ------------------------------------------------------------------ main

    def run(self) -> str:
        self.env()
        if not self.args.only or {"throughput", "startup"} & set(self.args.only):
            self.setup_curator()
        self.section("throughput", self.throughput)
        self.section("latency", self.latency)
        self.section("startup", self.startup)
        self.section("background", self.background)
        if not self.args.no_s3:
            self.section("s3", self.s3)
        else:
            self.skip("s3", "--no-s3 given")
        self.section("raydata", self.raydata)
        self.section("raymem", lambda: self.raydata(("memory",)))
        self.section("outputs", self.outputs)
        self.section("curator", self.curator_pipeline)
        self.section("scale", self.scale)
        self.section("memory", self.memory)
        total = time.perf_counter() - self.t_start
        self.emit(
            bench="section", system="total", seconds=round(total, 1), loadavg_end=[round(x, 2) for x in os.getloadavg()]
        )
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)
        return self.write()

    def write(self) -> str:
        from baselines.report import render

        out = self.args.out or (tempfile.mkdtemp(prefix="resumelog-smoke-") if self.mode == "smoke" else None)
        out = out or os.path.join(BENCH_DIR, "results")
        os.makedirs(out, exist_ok=True)
        base = os.path.join(out, self.mode)
        with open(base + ".jsonl", "w") as f:
            for r in self.rows:
                f.write(json.dumps(r) + "\n")
        md = render(self.rows, self.mode)
        if any(str(r.get("bench", "")).startswith("scale_") for r in self.rows):
            from bench_scale import markdown as scale_markdown

            md += "\n## Scale (`bench_scale.py`): figures vs completed ids N, extrapolated in italics\n\n"
            md += scale_markdown(self.rows)
        with open(base + ".md", "w") as f:
            f.write(md)
        chart = _chart(self.rows, base + ".png")
        print()
        print(md)
        print(f"# wrote {base}.jsonl, {base}.md" + (f", {chart}" if chart else " (no matplotlib: no chart)"))
        return base


def _chart(rows: list[dict[str, Any]], path: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from baselines.report import startup_table, throughput_rows

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.5))
    thr = throughput_rows(rows)
    a1.barh([f"{r['system']} {r['storage']} {r['variant']}" for r in thr], [r["records_per_s"] for r in thr])
    a1.set_xscale("log")
    a1.set_xlabel("records/s per writer (log)")
    st = startup_table(rows)
    labels = [f"{s} W={w}" for (s, w) in st]
    n = max((k for v in st.values() for k in v), default=0)
    a2.barh(labels, [st[k].get(n, float("nan")) for k in st])
    a2.set_xscale("log")
    a2.set_xlabel(f"startup seconds with {n:,} completed (log)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N = 100k, 1M (<= 10 min on 2 cores)")
    ap.add_argument(
        "--smoke", action="store_true", help="tiny N, wins over --quick (seconds; what the smoke test runs)"
    )
    ap.add_argument("--only", nargs="+", choices=SECTIONS, help="run these sections only")
    ap.add_argument("--out", help="output directory (default benchmarks/results; a temp dir for --smoke)")
    ap.add_argument("--workdir", help="where benchmark data is written (default: the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the benchmark data")
    ap.add_argument("--no-curator", action="store_true", help="skip the NeMo Curator baseline")
    ap.add_argument("--no-s3", action="store_true", help="skip the S3 section")
    ap.add_argument("--s3-server", default="moto", choices=["moto", "seaweedfs"])
    ap.add_argument(
        "--scale-server", default="seaweedfs", choices=["moto", "seaweedfs"], help="S3 server of the scale section"
    )
    ap.add_argument("--raydata-timeout", type=float, default=300.0, help="seconds for bench_ray_data.py")
    ap.add_argument("--curator-timeout", type=float, default=1800.0, help="seconds for bench_curator.py")
    Runner(ap.parse_args()).run()


if __name__ == "__main__":
    main()
