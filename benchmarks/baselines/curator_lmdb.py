"""NeMo Curator 1.4.0's LMDB checkpoint, measured through its own code.

Runs only in the baselines virtualenv (``benchmarks/.venv-baselines``, see
``run.py --help``): ``nemo-curator==1.4.0`` installed with ``--no-deps`` plus ``lmdb``
and ``loguru``; ``ray`` comes from the main environment (the venv sees its site-packages).

How the code is reached (nothing re-implemented):

* ``nemo_curator/utils/resumability_actor.py`` is loaded from the installed wheel by
  file path (``importlib.util.spec_from_file_location``) under the module name
  ``_curator_resumability_actor``, without running ``nemo_curator/__init__.py`` (which
  imports ``cosmos_xenna``, part of the GPU stack that ``--no-deps`` leaves out). The
  module itself needs only ``lmdb``, ``ray`` and ``loguru``; its source is unchanged.
* Ray actor path: the module's ``ResumabilityActor`` (a ``ray.actor.ActorClass``),
  ``.remote(dir)``, then ``apply_deltas.remote(batch)`` fire-and-forget, one call per
  stage call, exactly as ``flush_resumability_deltas`` sends them, and a final
  ``ray.get`` of a no-op method to drain (the actor has ``max_concurrency=1``, so calls
  from one caller run in order).
* Adapter (client) path: the same, through ``resumability_client.py``'s own functions
  (loaded the same way): per stage call ``is_resumability_actor_active()`` and
  ``flush_resumability_deltas()`` (each a ``ray.get_actor`` lookup), and at the source
  stage ``completed_resumability_sources()`` (a blocking ``are_completed`` RPC), as
  ``BaseStageAdapter._apply_resumability_counters`` does.
* In-process: the undecorated class, ``ResumabilityActor.__ray_metadata__.modified_class
  .__ray_actor_class__`` (Ray keeps the original class there), instantiated directly.
* Startup: a new instance of that class in a fresh process (its ``__init__`` opens its own
  ``<writer>.mdb`` and runs ``_load_completed``, the union over every ``*.mdb``).
* The W files for the startup figures are filled through the class's own
  ``_persist_completed`` (bound to a plain namespace holding the env and db, 100k ids
  per transaction) with the actor's own ``lmdb.open`` flags.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import importlib.util
import os
import sys
import time
import types
from typing import Any

from baselines.common import SOURCE, call_chunks, calls, dir_bytes, proc_status, source_id, writer_slices

_MODS: dict[str, types.ModuleType] = {}


def _load(name: str) -> types.ModuleType:
    if name in _MODS:
        return _MODS[name]
    spec = importlib.machinery.PathFinder.find_spec("nemo_curator")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("nemo_curator is not installed in this interpreter")
    path = os.path.join(next(iter(spec.submodule_search_locations)), "utils", f"{name}.py")
    mspec = importlib.util.spec_from_file_location(f"_curator_{name}", path)
    assert mspec is not None and mspec.loader is not None
    mod = importlib.util.module_from_spec(mspec)
    sys.modules[mspec.name] = mod
    mspec.loader.exec_module(mod)
    from loguru import logger

    logger.remove()  # the actor's warnings would only add noise to stdout
    _MODS[name] = mod
    return mod


def original_class() -> type:
    return _load("resumability_actor").ResumabilityActor.__ray_metadata__.modified_class.__ray_actor_class__  # type: ignore[no-any-return]


def info() -> dict[str, Any]:
    import lmdb
    import ray

    t0 = time.perf_counter()
    cls = original_class()
    return {
        "nemo_curator": importlib.metadata.version("nemo-curator"),
        "lmdb": lmdb.__version__,
        "ray": ray.__version__,
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "module_import_s": round(time.perf_counter() - t0, 3),
    }


def _lmdb_bytes(base_dir: str) -> tuple[int, int, int]:
    d = os.path.join(base_dir, ".nemo_curator_metadata")
    size, alloc = dir_bytes(d)
    files = len([f for f in os.listdir(d) if f.endswith(".mdb")]) if os.path.isdir(d) else 0
    return size, alloc, files


def throughput_inproc(base_dir: str, n: int) -> dict[str, Any]:
    """The undecorated class in this process; one ``apply_deltas`` per stage call."""
    cls = original_class()
    a = cls(base_dir, writer_id="inproc")
    busy = 0.0
    records = 0
    for chunk in call_chunks(0, n, chunk=20_000):
        t0 = time.perf_counter()
        apply = a.apply_deltas
        for _stage, recs in chunk:
            apply(recs)
        busy += time.perf_counter() - t0
        records += sum(len(r) for _, r in chunk)
    completed = len(a._completed)
    a.close()
    size, alloc, _ = _lmdb_bytes(base_dir)
    return {
        "records": records,
        "seconds": round(busy, 3),
        "records_per_s": round(records / busy),
        "completed": completed,
        "bytes": size,
        "bytes_allocated": alloc,
        "bytes_per_completed": round(size / max(completed, 1), 2),
    }


def _ray_init() -> Any:
    import ray

    from resumelog.testing.ray import init_local_ray

    init_local_ray(num_cpus=2, log_to_driver=False, logging_level="ERROR")
    return ray


def throughput_ray(base_dir: str, n_actor: int, n_client: int) -> dict[str, Any]:
    """Both Ray paths in one Ray session (``ray.init`` is paid once, not timed)."""
    t0 = time.perf_counter()
    ray = _ray_init()
    init_s = time.perf_counter() - t0
    actor_mod = _load("resumability_actor")
    client = _load("resumability_client")
    out: dict[str, Any] = {"ray_init_s": round(init_s, 2)}

    # (1) actor handle held by the caller: apply_deltas.remote per stage call
    d1 = os.path.join(base_dir, "actor")
    h = actor_mod.ResumabilityActor.remote(d1, writer_id="actor")
    ray.get(h.wait.remote())
    chunk = calls(0, n_actor)
    records = sum(len(r) for _, r in chunk)
    t0 = time.perf_counter()
    for _stage, recs in chunk:
        h.apply_deltas.remote(recs)
    submit = time.perf_counter() - t0
    ray.get(h.wait.remote())
    dt = time.perf_counter() - t0
    done = sum(ray.get(h.are_completed.remote([source_id(i) for i in range(n_actor)])))
    ray.get(h.close.remote())
    ray.kill(h)
    size, alloc, _ = _lmdb_bytes(d1)
    out["actor"] = {
        "records": records,
        "seconds": round(dt, 3),
        "submit_seconds": round(submit, 3),
        "records_per_s": round(records / dt),
        "calls": len(chunk),
        "completed": done,
        "bytes": size,
        "bytes_allocated": alloc,
        "bytes_per_completed": round(size / max(done, 1), 2),
    }

    # (2) the adapter's own client functions (named detached-style actor, looked up per call)
    if n_client:
        d2 = os.path.join(base_dir, "client")
        name = client.ACTOR_NAME
        h2 = actor_mod.ResumabilityActor.options(name=name, namespace=name, get_if_exists=True).remote(d2)
        ray.get(h2.wait.remote())
        chunk = calls(0, n_client)
        records = sum(len(r) for _, r in chunk)
        t0 = time.perf_counter()
        for stage, recs in chunk:
            if client.is_resumability_actor_active():
                if stage == SOURCE:
                    done_ids = client.completed_resumability_sources([s for _, s, _ in recs])
                    recs = [r for r in recs if r[1] not in done_ids]
                client.flush_resumability_deltas(recs)
        ray.get(h2.wait.remote())
        dt = time.perf_counter() - t0
        ray.get(h2.close.remote())
        ray.kill(h2)
        out["client"] = {"records": records, "seconds": round(dt, 3), "records_per_s": round(records / dt)}
    ray.shutdown()
    return out


def build_union(base_dir: str, n: int, writers: int) -> dict[str, Any]:
    """``writers`` LMDB files under ``base_dir/.nemo_curator_metadata`` holding sources
    ``0..n-1`` between them, written by the class's own ``_persist_completed``."""
    import lmdb

    mod = _load("resumability_actor")
    cls = original_class()
    d = os.path.join(base_dir, mod.METADATA_DIRNAME)
    os.makedirs(d, exist_ok=True)
    t0 = time.perf_counter()
    for wi, (lo, hi) in enumerate(writer_slices(n, writers)):
        env = lmdb.open(
            os.path.join(d, f"host-{wi:05d}.mdb"),
            subdir=False,
            lock=False,
            max_dbs=1,
            map_size=mod._DEFAULT_MAP_SIZE,
            metasync=False,
            sync=True,
            readahead=False,
        )
        ns = types.SimpleNamespace(_env=env, _db=env.open_db(mod._COMPLETED_DB))
        for a in range(lo, hi, 100_000):
            cls._persist_completed(ns, [source_id(i) for i in range(a, min(a + 100_000, hi))])
        env.close()
    size, alloc, files = _lmdb_bytes(base_dir)
    return {"seconds": round(time.perf_counter() - t0, 3), "bytes": size, "bytes_allocated": alloc, "files": files}


def startup(base_dir: str, probe: str) -> dict[str, Any]:
    """A resuming Curator process: a new ``ResumabilityActor`` instance (own file + union
    of all files) and the first ``are_completed``."""
    cls = original_class()
    rss0 = proc_status("VmRSS")
    t0 = time.perf_counter()
    a = cls(base_dir, writer_id="bench-resume")
    hit = a.are_completed([probe])[0]
    dt = time.perf_counter() - t0
    t1 = time.perf_counter()
    misses = sum(a.are_completed([f"absent-{i}" for i in range(10_000)]))
    lookup = (time.perf_counter() - t1) / 10_000
    completed = len(a._completed)
    own = a._path
    a.close()
    os.unlink(own)  # keep the directory at exactly W files for the next repetition
    return {
        "open_s": round(dt, 5),
        "hit": hit,
        "misses": misses,
        "completed": completed,
        "lookup_us": round(lookup * 1e6, 3),
        "rss_before_mb": round(rss0, 1),
    }
