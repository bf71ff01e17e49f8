"""Ray Data figures for ``resumelog.ray_data``, printed as JSON lines (never asserted in tests).

    python benchmarks/bench_ray_data.py [--quick | --smoke] [--only NAME ...] [--datasource-v2]
    python benchmarks/bench_ray_data.py --quick --only memory    # filter memory per 1M string ids

One pipeline, ``read_parquet -> map_batches (string + arithmetic work) -> write_parquet``
over F Parquet files of R rows, on a local Ray cluster (``num_cpus=2``):

* ``pipeline``  wall time (median and min of ``--repeat`` interleaved runs; the machine
  may be shared, min is the least disturbed) of the same pipeline plain (Ray's default
  blocks, and ``plain-blocks``: the block count resumelog's read picks), with
  resumelog (``rd.read_parquet`` + ``rd.write_parquet``), with Ray's native
  ``CheckpointConfig`` and with ``ResumelogCheckpointConfig``; overhead vs plain and vs
  plain-blocks (the checkpointing cost alone);
  objects and bytes written (outputs and checkpoint)
* ``resume``    a rerun with 40 % of the files left (the first 60 % done by a previous
  run) as a fraction of a fresh run: resumelog skips whole files before reading,
  native Ray reads every file and drops checkpointed rows after the read
* ``load``      checkpoint load at 200k and 2M ids (``--smoke``: 20k), 10k ids per file:
  Ray's ``IdColumnCheckpointManager.load_checkpoint`` on its per-block id files vs
  ``ResumelogCheckpointManager.load_checkpoint`` (first start: reads the id files and
  folds them into resumelog in a background Ray task; later starts: one snapshot) and
  ``resumelog.open`` alone

* ``memory``    the native filter's memory for string ids (1M; full run: 1M and 5M;
  ``--smoke``: 100k; ids like ``doc-00000000042``, one Ray id file): what each
  manager's ``load_checkpoint`` reports (Ray reserves 1.5x it per filter actor) and
  what a filter actor really holds, the RSS growth of a fresh Ray actor
  (``/proc/self/status``: ``VmRSS``, split into anonymous memory and the object
  store's shared pages) after it builds the filter and filters one 10k-row block:
  Ray's ``IdColumnCheckpointManager`` + ``NumpyArrayBasedCheckpointFilter`` vs
  ``ResumelogCheckpointManager`` + ``ResumelogCheckpointFilter``; MB and MB per 1M ids

Ray 2.60's DataSource V2 Parquet reader costs ~80 ms per small file on 2 cores, which
would drown every other figure; the V1 reader is used unless ``--datasource-v2``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

import resumelog
import resumelog.ray_data as rd
from resumelog.testing.ray import init_local_ray


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def tree(path: str) -> tuple[int, int]:
    """(objects, bytes) under ``path``."""
    n = size = 0
    for root, _, files in os.walk(path):
        for f in files:
            n += 1
            size += os.path.getsize(os.path.join(root, f))
    return n, size


def make_inputs(d: str, files: int, rows: int) -> list[str]:
    os.makedirs(d, exist_ok=True)
    out = []
    for i in range(files):
        p = os.path.join(d, f"part-{i:05d}.parquet")
        ids = pa.array(range(i * rows, (i + 1) * rows), pa.int64())
        text = pc.binary_join_element_wise(pc.cast(ids, pa.string()), "lorem ipsum dolor sit amet consectetur", " ")
        pq.write_table(pa.table({"id": ids, "text": text, "v": pc.cast(ids, pa.float64())}), p)
        out.append(p)
    return out


def work(batch: pa.Table) -> pa.Table:
    """Some real per-row work: string ops and arithmetic."""
    up = pc.utf8_upper(batch["text"])
    n = pc.utf8_length(up)
    score = pc.add(pc.multiply(batch["v"], 0.5), pc.cast(n, pa.float64()))
    return batch.append_column("upper", up).append_column("score", score)


def native_config(path: str, cls: Any = None) -> Any:
    from ray.data.checkpoint import CheckpointConfig

    if cls is None:
        return CheckpointConfig(id_column="id", checkpoint_path=path, delete_checkpoint_on_success=False)
    return cls(id_column="id", checkpoint_path=path)


def run_variant(variant: str, files: list[str], out: str, ckpt_dir: str) -> float:
    ctx = ray.data.DataContext.get_current()
    t0 = time.perf_counter()
    if variant == "plain":
        ray.data.read_parquet(files).map_batches(work, batch_format="pyarrow").write_parquet(out)
    elif variant == "plain-blocks":  # plain, with the block count resumelog's read picks
        blocks = rd._read_tasks(len(files), len(files))
        kw = {} if blocks is None else {"override_num_blocks": blocks}
        ray.data.read_parquet(files, **kw).map_batches(work, batch_format="pyarrow").write_parquet(out)
    elif variant == "resumelog":
        ckpt = resumelog.open(ckpt_dir)
        ds = rd.read_parquet(ckpt, files)
        # the same columns as the plain output: the bookkeeping columns are dropped
        rd.write_parquet(ds.map_batches(work, batch_format="pyarrow"), ckpt, out, drop_columns=("row_hash", "path"))
    else:
        ctx.checkpoint_config = native_config(
            ckpt_dir, rd.ResumelogCheckpointConfig if variant == "native+rl" else None
        )
        try:
            ray.data.read_parquet(files).map_batches(work, batch_format="pyarrow").write_parquet(out)
        finally:
            ctx.checkpoint_config = None
    return time.perf_counter() - t0


VARIANTS = ("plain", "plain-blocks", "resumelog", "native", "native+rl")


def bench_pipeline(tmp: str, files: list[str], rows: int, repeat: int) -> dict[str, float]:
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    sizes: dict[str, tuple[int, int, int, int]] = {}
    run_variant("plain", files[:2], os.path.join(tmp, "warm"), "")  # start the workers
    for r in range(repeat):
        for v in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
            out = os.path.join(tmp, f"out-{v}-{r}")
            ck = os.path.join(tmp, f"ck-{v}-{r}")
            times[v].append(run_variant(v, files, out, ck))
            sizes[v] = (*tree(out), *tree(ck))
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(ck, ignore_errors=True)
    med = {v: statistics.median(ts) for v, ts in times.items()}
    best = {v: min(ts) for v, ts in times.items()}
    for v in VARIANTS:
        emit(
            bench="pipeline",
            variant=v,
            files=len(files),
            rows=len(files) * rows,
            seconds=round(med[v], 3),
            min_seconds=round(best[v], 3),
            runs=[round(t, 3) for t in times[v]],
            overhead_pct=round(100 * (med[v] / med["plain"] - 1), 1),
            overhead_pct_min=round(100 * (best[v] / best["plain"] - 1), 1),
            # against plain Ray with the same blocks: the checkpointing cost alone
            overhead_pct_same_blocks=round(100 * (med[v] / med["plain-blocks"] - 1), 1),
            output_objects=sizes[v][0],
            output_bytes=sizes[v][1],
            checkpoint_objects=sizes[v][2],
            checkpoint_bytes=sizes[v][3],
        )
    return med


def bench_resume(tmp: str, files: list[str], rows: int, fresh: dict[str, float]) -> None:
    cut = int(len(files) * 0.6)
    for v in ("resumelog", "native", "native+rl"):
        out = os.path.join(tmp, f"resume-out-{v}")
        ck = os.path.join(tmp, f"resume-ck-{v}")
        run_variant(v, files[:cut], out, ck)  # a previous run did the first 60 %
        rd.ResumelogCheckpointManager.last_ingest = None
        t = run_variant(v, files, out, ck)  # the rerun: 40 % left
        if rd.ResumelogCheckpointManager.last_ingest is not None:  # let the background fold finish
            ray.get(rd.ResumelogCheckpointManager.last_ingest)
        got = sum(pq.ParquetFile(os.path.join(out, f)).metadata.num_rows for f in os.listdir(out))
        emit(
            bench="resume",
            variant=v,
            files=len(files),
            left_pct=round(100 * (len(files) - cut) / len(files)),
            seconds=round(t, 3),
            fresh_seconds=round(fresh[v], 3),
            fraction_of_fresh=round(t / fresh[v], 3),
            output_rows=got,
            exactly_once=got == len(files) * rows,
            checkpoint_objects=tree(ck)[0],
            checkpoint_bytes=tree(ck)[1],
        )
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(ck, ignore_errors=True)


def write_native_ids(path: str, n: int, per_file: int) -> None:
    """What Ray's checkpoint writer leaves: one committed Parquet file of ids per block."""
    os.makedirs(path, exist_ok=True)
    for i, start in enumerate(range(0, n, per_file)):
        ids = pa.array(range(start, min(n, start + per_file)), pa.int64())
        pq.write_table(pa.table({"id": ids}), os.path.join(path, f"ckpt_{i:06d}.parquet"))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    r = fn()
    return time.perf_counter() - t0, r


def bench_load(tmp: str, n: int, per_file: int) -> None:
    from ray.data.checkpoint.checkpoint_filter import IdColumnCheckpointManager

    ctx = ray.data.DataContext.get_current()
    warm = os.path.join(tmp, f"load-warm-{n}")  # start the workers the load tasks use
    write_native_ids(warm, 10, 10)
    IdColumnCheckpointManager(checkpoint_config=native_config(warm), data_context=ctx).load_checkpoint()
    native = os.path.join(tmp, f"load-native-{n}")
    write_native_ids(native, n, per_file)
    objs, size = tree(native)
    mgr = IdColumnCheckpointManager(checkpoint_config=native_config(native), data_context=ctx)
    t_native, (ref, _) = timed(mgr.load_checkpoint)
    assert len(ray.get(ref)) == n
    emit(bench="load", system="ray-native", ids=n, seconds=round(t_native, 3), objects=objs, bytes=size)

    rl = os.path.join(tmp, f"load-rl-{n}")
    write_native_ids(rl, n, per_file)
    cfg = native_config(rl, rd.ResumelogCheckpointConfig)  # ingest="background"
    m1 = rd.ResumelogCheckpointManager(checkpoint_config=cfg, data_context=ctx)
    t_first, (ref, _) = timed(m1.load_checkpoint)
    assert len(ray.get(ref)) == n
    t_fold, folded = timed(lambda: ray.get(rd.ResumelogCheckpointManager.last_ingest))
    assert folded == n
    emit(
        bench="load",
        system="resumelog-first-start",
        ids=n,
        seconds=round(t_first, 3),
        background_fold_s=round(t_fold, 3),
        note="reads Ray's id files (Arrow) and returns; folds them into resumelog in a Ray task (one time)",
        **{k: round(v, 3) for k, v in m1.stats.items()},
    )
    objs_rl, size_rl = tree(os.path.join(rl, "_resumelog"))
    m2 = rd.ResumelogCheckpointManager(checkpoint_config=cfg, data_context=ctx)
    t_next, (ref, _) = timed(m2.load_checkpoint)
    assert len(ray.get(ref)) == n
    emit(
        bench="load",
        system="resumelog",
        ids=n,
        seconds=round(t_next, 3),
        objects=objs_rl,
        bytes=size_rl,
        speedup_vs_native=round(t_native / t_next, 1),
        **{k: round(v, 3) for k, v in m2.stats.items()},
    )
    t_open, ck = timed(lambda: resumelog.open(os.path.join(rl, "_resumelog")))
    t_ids, _ = timed(lambda: rd.completed_ids(ck))
    ck.gc(grace=0)  # what `resumelog gc` leaves: the snapshot (journals it covers are deleted)
    objs_gc, size_gc = tree(os.path.join(rl, "_resumelog"))
    emit(
        bench="load",
        system="resumelog-open-only",
        ids=n,
        open_s=round(t_open, 4),
        completed_ids_s=round(t_ids, 4),
        objects_after_gc=objs_gc,
        bytes_after_gc=size_gc,
    )
    shutil.rmtree(native, ignore_errors=True)
    shutil.rmtree(rl, ignore_errors=True)


def _status_kb() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssShmem", "RssFile"):
                out[k] = int(v.split()[0])
    return out


@ray.remote(num_cpus=0)
class _FilterProbe:
    """A filter actor's process, fresh (its own runtime env, so no reused worker)."""

    def __init__(self) -> None:
        from ray.data.checkpoint import checkpoint_filter  # noqa: F401

        import resumelog.ray_data  # noqa: F401  (imports out of the measurement)

    def measure(self, cls: Any, cfg: Any, refs: list[Any], block: pa.Table) -> dict[str, Any]:
        """RSS growth from building ``cls`` over the ids and filtering one block."""
        import gc

        gc.collect()
        before = _status_kb()
        t0 = time.perf_counter()
        f = cls(cfg, refs[0])
        kept = f.filter_rows_for_block(block).num_rows
        seconds = time.perf_counter() - t0
        gc.collect()
        after = _status_kb()
        return {"kept": kept, "seconds": seconds, **{k: (after[k] - before.get(k, 0)) * 1024 for k in after}}


def bench_memory(tmp: str, n: int) -> None:
    from ray.data.checkpoint.checkpoint_filter import IdColumnCheckpointManager, NumpyArrayBasedCheckpointFilter

    ctx = ray.data.DataContext.get_current()
    ids = pc.binary_join_element_wise("doc-", pc.utf8_lpad(pc.cast(pa.array(range(n)), pa.string()), 11, "0"), "")
    block_ids = pc.binary_join_element_wise(
        "doc-", pc.utf8_lpad(pc.cast(pa.array(range(n - 5_000, n + 5_000)), pa.string()), 11, "0"), ""
    )
    block = pa.table({"id": block_ids})
    per_m = 1e6 / n
    for system in ("ray-native", "resumelog"):
        d = os.path.join(tmp, f"mem-{system}-{n}")
        os.makedirs(d, exist_ok=True)
        pq.write_table(pa.table({"id": ids}), os.path.join(d, "ids-0.parquet"))  # as Ray's writer leaves them
        if system == "ray-native":
            cfg = native_config(d)
            mgr: Any = IdColumnCheckpointManager(checkpoint_config=cfg, data_context=ctx)
            cls: Any = NumpyArrayBasedCheckpointFilter
        else:
            cfg = rd.ResumelogCheckpointConfig(id_column="id", checkpoint_path=d, ingest="blocking")
            mgr = rd.ResumelogCheckpointManager(checkpoint_config=cfg, data_context=ctx)
            cls = rd.ResumelogCheckpointFilter
        ref, reported = mgr.load_checkpoint()
        probe = _FilterProbe.options(  # type: ignore[attr-defined]
            runtime_env={"env_vars": {"RESUMELOG_FILTER_PROBE": f"{system}-{n}-{time.time_ns()}"}}
        ).remote()
        m = ray.get(probe.measure.remote(cls, cfg, [ref], block))
        ray.kill(probe)
        assert m["kept"] == 5_000, m
        emit(
            bench="memory",
            system=system,
            ids=n,
            id_bytes=len("doc-") + 11,
            arrow_nbytes_mb=round(ids.nbytes / 1e6, 1),
            reported_mb=round(reported / 1e6, 1),
            reserved_mb=round(max(cfg.checkpoint_actor_memory_bytes, int(reported * 1.5)) / 1e6, 1),
            rss_delta_mb=round(m["VmRSS"] / 1e6, 1),
            anon_delta_mb=round(m["RssAnon"] / 1e6, 1),
            shmem_delta_mb=round(m["RssShmem"] / 1e6, 1),
            rss_per_1m_ids_mb=round(m["VmRSS"] / 1e6 * per_m, 1),
            reported_per_1m_ids_mb=round(reported / 1e6 * per_m, 1),
            build_and_first_block_s=round(m["seconds"], 3),
        )
        del ref
        shutil.rmtree(d, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (seconds), to check the script runs")
    ap.add_argument("--only", nargs="*", default=None, help="pipeline resume load memory")
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument("--datasource-v2", action="store_true", help="use Ray's default (V2) Parquet reader")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    if args.smoke:
        files, rows, repeat, sizes, per_file = 12, 200, 1, [20_000], 2_000
        mem_sizes = [100_000]
    elif args.quick:
        files, rows, repeat, sizes, per_file = 100, 20_000, 3, [200_000, 2_000_000], 10_000
        mem_sizes = [1_000_000]
    else:
        files, rows, repeat, sizes, per_file = 400, 50_000, 5, [200_000, 2_000_000], 10_000
        mem_sizes = [1_000_000, 5_000_000]
    repeat = args.repeat or repeat
    only = set(args.only or ("pipeline", "resume", "load", "memory"))

    tmp = tempfile.mkdtemp(prefix="bench-ray-data-", dir=args.workdir)
    init_local_ray(num_cpus=2, log_to_driver=False, logging_level="ERROR")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.use_datasource_v2 = args.datasource_v2
    emit(
        bench="env",
        ray=ray.__version__,
        pyarrow=pa.__version__,
        cpus=os.cpu_count(),
        files=files,
        rows_per_file=rows,
        repeat=repeat,
        datasource_v2=args.datasource_v2,
        mode="smoke" if args.smoke else "quick" if args.quick else "full",
    )
    try:
        paths = make_inputs(os.path.join(tmp, "in"), files, rows) if only - {"memory"} else []
        fresh: dict[str, float] = {}
        if "pipeline" in only or "resume" in only:
            fresh = bench_pipeline(tmp, paths, rows, repeat)
        if "resume" in only:
            bench_resume(tmp, paths, rows, fresh)
        if "load" in only:
            for n in sizes:
                bench_load(tmp, n, per_file)
        if "memory" in only:
            for n in mem_sizes:
                bench_memory(tmp, n)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
