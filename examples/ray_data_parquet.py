"""Ray Data: a Parquet pipeline that resumes after a crash, file by file (``resumelog.ray_data``).

It generates ``--num-files`` small Parquet files (ids ``0 .. files*rows-1``) and runs

    read_parquet -> map_batches (drops ids divisible by 7, adds a column) -> write_parquet

with resumelog checkpointing, in three phases (one process, one Ray cluster):

1. **interrupted**: the map function raises on a row of the file at ``--crash-at``
   (60 % of the files by default). Files whose outputs were all written are complete;
2. **resumed**: skips them, reads only the other files and writes the rest (the
   partial outputs the crash left stay invisible: each run publishes under its own
   name, and readers see the run that completed each file);
3. **finished**: every file is complete, so nothing is read and nothing is written.

Then it reads the outputs back with ``rd.read_committed``: every input row that passes
the filter exactly once. Listing the output directory yourself would also show the
files of the interrupted attempt (``resumelog gc --outputs`` deletes them).

Usage::

    python examples/ray_data_parquet.py --workdir /tmp/rd                  # the three phases
    python examples/ray_data_parquet.py --workdir /tmp/rd --once --crash-at 0.5
    python examples/ray_data_parquet.py --workdir /tmp/rd --once           # resume (a new process)

``--once`` runs a single phase (whatever is pending), so the resume can happen in a
fresh process and cluster. ``--checkpoint`` takes any fsspec URL (``s3://...``), with
``--storage-options`` as JSON. It prints what it skipped and what it processed.

It reads with Ray's V1 Parquet reader (one file per block here, so a file completes
as soon as its rows are written). ``--v2-read`` selects Ray 2.60's default V2 reader,
which reads many files per task: the interrupted phase then often completes no file
at all, and the resume redoes everything.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

import resumelog
import resumelog.ray_data as rd
from resumelog.outputs import scan
from resumelog.testing.ray import init_local_ray


def make_inputs(inputs: Path, files: int, rows: int) -> list[str]:
    """Create ``files`` Parquet files of ``rows`` rows each (once); return their paths."""
    inputs.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        p = inputs / f"part-{i:05d}.parquet"
        if not p.exists():
            ids = pa.array(range(i * rows, (i + 1) * rows), pa.int64())
            pq.write_table(pa.table({"id": ids, "text": pc.cast(ids, pa.string())}), p)
    return [str(inputs / f"part-{i:05d}.parquet") for i in range(files)]


def transform(poison: int | None) -> Any:
    """The per-batch work: drop ids divisible by 7, add ``score``; raise on ``poison``."""

    def fn(batch: pa.Table) -> pa.Table:
        ids = batch["id"]
        if poison is not None and pc.any(pc.equal(ids, poison)).as_py():
            raise RuntimeError(f"simulated crash on id {poison}")
        kept = batch.filter(pc.not_equal(pc.subtract(ids, pc.multiply(pc.divide(ids, 7), 7)), 0))
        return kept.append_column("score", pc.multiply(kept["id"], 2))

    return fn


def run_once(
    label: str, ckpt_url: str, opts: dict[str, Any], files: list[str], out: Path, poison: int | None
) -> tuple[int, int]:
    """One run of the pipeline; returns ``(files read, files written)``."""
    ckpt = resumelog.open(ckpt_url, storage_options=opts)
    todo = rd.pending_paths(ckpt, files)
    skipped = [os.path.basename(f) for f in files if f not in set(todo)]
    shown = " ".join(skipped[:3]) + (" ..." if len(skipped) > 3 else "")
    print(f"{label}: skipped {len(skipped)} already complete{': ' + shown if skipped else ''}")
    try:
        ds = rd.read_parquet(ckpt, files)
    except resumelog.NothingToDo as e:
        print(f"{label}: nothing to do ({e}); read 0 files, wrote 0 files")
        return 0, 0
    print(f"{label}: reading {len(todo)} files")
    ds = rd.map_batches(ds, ckpt, transform(poison), stage="filter7")
    try:
        summary = rd.write_parquet(ds, ckpt, str(out), drop_columns=("row_hash", "path"))
    except ray.exceptions.RayError as e:  # the simulated crash surfaces as a Ray task error
        ckpt.refresh()
        done = len(files) - len(ckpt.pending(files))
        # the error's text holds Ray's traceback (where the source line reads
        # "simulated crash on id {poison}") and then the message itself
        m = re.search(r"simulated crash on id \d+", str(e))
        cause = m.group(0) if m else type(e).__name__
        print(f"{label}: interrupted ({cause}); complete {done}/{len(files)}")
        return len(todo), -1
    done = len(files) - len(ckpt.pending(files))
    print(f"{label}: wrote {summary.rows} rows in {len(summary.files)} files; complete {done}/{len(files)}")
    return len(todo), len(summary.files)


def check(ckpt_url: str, opts: dict[str, Any], out: Path, files: int, rows: int) -> bool:
    """Every input row that passes the filter, exactly once, in the committed outputs."""
    ds = rd.read_committed(ckpt_url, str(out), checkpoint_storage_options=opts, columns=["id"])
    ids = [i for t in ray.get(ds.to_arrow_refs()) if t.num_rows for i in t["id"].to_pylist()]
    expected = sum(1 for i in range(files * rows) if i % 7)
    print(f"output: {len(ids)} rows, {len(set(ids))} distinct ids, expected {expected}")
    sc = scan(resumelog.open(ckpt_url, storage_options=opts, create=False), str(out))
    voided = sc.orphaned + sc.in_flight  # (in flight for the grace after the interrupted run's last write)
    print(f"output: {len(voided)} files of the interrupted attempt, invisible (resumelog gc --outputs deletes them)")
    return len(ids) == len(set(ids)) == expected


def main(argv: list[str] | None = None) -> int:
    """Run the example; returns the exit code."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=None, help="default: a new temporary directory")
    ap.add_argument("--num-files", type=int, default=200)
    ap.add_argument("--rows-per-file", type=int, default=50)
    ap.add_argument("--crash-at", type=float, default=None, help="fraction of files after which to crash")
    ap.add_argument("--once", action="store_true", help="run one phase only (crash only with --crash-at)")
    ap.add_argument("--checkpoint", default=None, help="checkpoint URL (default: WORKDIR/checkpoint)")
    ap.add_argument("--storage-options", default="{}", help="fsspec options for --checkpoint, as JSON")
    ap.add_argument("--fast-read", action="store_true", help="Ray's V1 Parquet reader (the default)")
    ap.add_argument(
        "--v2-read",
        action="store_true",
        help="Ray's V2 Parquet reader: in Ray 2.60 it costs ~80 ms per small file on 2 cores and reads many "
        "files per task, so the interrupted phase leaves few or no files complete",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    work: Path = args.workdir or Path(tempfile.mkdtemp(prefix="resumelog-raydata-"))
    files = make_inputs(work / "inputs", args.num_files, args.rows_per_file)
    out = work / "outputs"
    url = args.checkpoint or str(work / "checkpoint")
    opts = json.loads(args.storage_options)

    init_local_ray(num_cpus=2, log_to_driver=False, logging_level="ERROR")  # ray.init(address="local", ...)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.use_datasource_v2 = args.v2_read and not args.fast_read

    def poison(frac: float | None) -> int | None:
        if frac is None:
            return None
        return min(int(frac * args.num_files), args.num_files - 1) * args.rows_per_file + args.rows_per_file // 2

    try:
        if args.once:
            _, wrote = run_once("run", url, opts, files, out, poison(args.crash_at))
            if wrote < 0:
                print("run again to continue")
                return 3
        else:
            run_once("phase 1", url, opts, files, out, poison(0.6 if args.crash_at is None else args.crash_at))
            run_once("phase 2", url, opts, files, out, None)
            run_once("phase 3", url, opts, files, out, None)
        ok = check(url, opts, out, args.num_files, args.rows_per_file)
        return 0 if ok or args.once else 1
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
