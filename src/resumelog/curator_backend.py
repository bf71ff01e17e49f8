"""Run real NeMo Curator pipelines on resumelog: a drop-in checkpoint backend.

NeMo Curator 1.4 checkpoints a pipeline with one detached LMDB actor
(``Pipeline.run(checkpoint_path=...)``, which needs ``RAY_ADDRESS``). Every executor
reaches that actor through ``BaseStageAdapter.process_batch``, which calls three
client functions imported by name into ``nemo_curator.backends.base``:
``is_resumability_actor_active``, ``flush_resumability_deltas(per_task)`` and
``completed_resumability_sources(ids)``. :func:`enable` replaces those three names,
in the driver and in every Ray worker of the job, with functions that write the
same ``(task_id, source_id, delta)`` records to this process's resumelog writer
(:func:`resumelog.ray.worker_writer`) and read completed sources from the
checkpoint. No fork of Curator, no central actor, no ``RAY_ADDRESS``::

    import resumelog.curator_backend as rcb
    from nemo_curator.backends.ray_actor_pool import RayActorPoolExecutor

    backend = rcb.enable("s3://bucket/jobs/j1/ckpt", storage_options={...})
    pipeline.run(executor=RayActorPoolExecutor())      # no checkpoint_path
    backend.checkpoint.refresh(); print(len(backend.checkpoint.completed))
    backend.disable()

What :func:`enable` adds to Curator's own counter code
    * **Emissions.** Curator's tuples do not say which ``+1`` is a source entering
      the pipeline; resumelog needs to know (a source completes only if it was
      emitted in the run). ``BaseStageAdapter._source_counters`` is wrapped to mark
      the records it flushes as emissions.
    * **Single-stage pipelines complete.** A source stage that is also the sink
      records ``(<task id>_0, source, -1)`` after each ``+1``, as the identity sink
      of a two-stage pipeline would (Curator never completes such a pipeline).
    * **Durability.** Every call that produced records flushes before the batch moves
      on (one segment per stage batch and worker): ``+1``/``+k`` records are durable
      before the tasks they account for are dispatched, completions are durable when
      the pipeline returns. ``flush="barrier"`` flushes only calls with a positive
      record and leaves the others to the writer's size/age policy (cheaper; records
      a Ray worker still buffers when Ray kills it at shutdown are lost, so their
      sources rerun).
    * **Nothing to do.** When every source the source stage produced from the
      pipeline's root (Curator's ``EmptyTask``: the whole source stage is one batch)
      is already complete, :class:`CuratorNothingToDo` (a
      :class:`~resumelog.errors.NothingToDo` and a ``ValueError``, Curator's error
      type for "No tasks to process") is raised, with every executor
      (``on_nothing_to_do="raise"``, the default; under Ray Data it reaches the
      driver as itself, not wrapped in Ray Data's ``UserCodeException``), or a
      warning is logged (``"warn"``), or nothing (``"ignore"``). A source-stage
      batch of ``initial_tasks`` is one of several: its completed sources are
      dropped without raising (the executor then does what it does with an empty
      stream, as with Curator's own checkpointing).
    * **Leaf skip** (``leaf_resume=True``, off by default). At the last stage, an
      input whose output an earlier run already wrote (its sink record, keyed
      ``<input task id>_0``, has delta ``-1`` in that run) is not processed again:
      it is dropped before the stage runs and its ``-1`` is recorded in this run, so
      its source still drains. Only for deterministic stages: Curator's task ids
      are positions (``<parent>_<i>``), so the same input must give the same tasks
      in the same order in every run.
    * **Fold.** The records are folded order-independently (``docs/concepts.md``):
      the same key with two different deltas from two writers is a conflict that
      keeps the source pending (it reruns) where Curator's actor lets the later
      arrival win; a ``0`` arriving before the ``+1`` cannot complete a source early.

Ray workers
    :func:`enable` sets ``RAY_RUNTIME_ENV_HOOK`` in the driver, so every
    ``ray.init`` the driver makes from then on (Curator's executors each make one)
    gets a ``worker_process_setup_hook`` (:func:`setup_worker`) and an environment
    variable carrying the writer handle: each worker process installs the same three
    functions and opens its own journal stream. If the driver is already connected to
    Ray when :func:`enable` is called, the running job cannot be changed: pass
    :func:`runtime_env` to your own ``ray.init`` instead (a warning says so). The
    handle, storage options included, travels as a job environment variable.

Stages and executors
    Everything goes through ``BaseStageAdapter.process_batch`` (wrapped for the root
    batch and the leaf skip), so it works with the Ray actor pool, Ray Data and
    Xenna executors and in-process use of the adapter. Curator
    checks ``is_resumable`` only when ``checkpoint_path`` is given: with resumelog,
    keep the stages you would mark resumable. Do not pass ``checkpoint_path`` as
    well (Curator would also start its actor).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from resumelog.checkpoint import Checkpoint, Scalar, WriterHandle
from resumelog.checkpoint import open as _open
from resumelog.curator_deltas import child_id
from resumelog.errors import NothingToDo
from resumelog.ray import _entry

__all__ = [
    "ENV_CONFIG",
    "SUPPORTED_VERSIONS",
    "CuratorBackend",
    "CuratorNothingToDo",
    "FlushMode",
    "NothingToDoPolicy",
    "completed_resumability_sources",
    "curator_completed",
    "disable",
    "enable",
    "enabled",
    "flush_resumability_deltas",
    "install",
    "installed",
    "is_resumability_actor_active",
    "runtime_env",
    "runtime_env_hook",
    "setup_worker",
    "source_stage",
]


def __dir__() -> list[str]:
    return __all__


logger = logging.getLogger("resumelog")

ENV_CONFIG = "RESUMELOG_CURATOR"
"""Environment variable carrying the backend configuration (JSON) to Ray workers."""

_ENV_RAY_HOOK = "RAY_RUNTIME_ENV_HOOK"
_ENV_PREV_HOOK = "RESUMELOG_CURATOR_PREV_RUNTIME_ENV_HOOK"
_SETUP_HOOK = "resumelog.curator_backend.setup_worker"
_RUNTIME_ENV_HOOK = "resumelog.curator_backend.runtime_env_hook"

SUPPORTED_VERSIONS = ("1.4.",)
"""NeMo Curator releases whose adapter seam this module was tested against."""

NothingToDoPolicy = Literal["raise", "warn", "ignore"]
FlushMode = Literal["batch", "barrier"]

_CURATOR_METADATA = ".nemo_curator_metadata"
_SEAM = ("is_resumability_actor_active", "flush_resumability_deltas", "completed_resumability_sources")
_WRAPPED = ("process_batch", "_source_counters")


class CuratorNothingToDo(NothingToDo, ValueError):
    """Every source of a source-stage batch is already complete: nothing to process.

    A ``ValueError`` like the one Curator's actor-pool executor raises ("No tasks to
    process"), so code written for Curator's checkpointing catches it, and a
    :class:`~resumelog.errors.NothingToDo`. Not a failure: nothing to rerun.
    """


class _Config(msgspec.Struct, frozen=True):
    """What a process needs to install the backend (travels to Ray workers as JSON)."""

    handle: WriterHandle
    on_nothing_to_do: str = "raise"
    flush: str = "batch"
    leaf_resume: bool = False


@dataclass
class _Active:
    config: _Config
    reader: Checkpoint | None = None
    reader_lock: threading.Lock = field(default_factory=threading.Lock)
    leaves: dict[str, set[str]] = field(default_factory=dict)
    """Leaf keys (sink record keys with delta ``-1``) per source, read once per process."""

    def checkpoint(self, refresh: bool) -> Checkpoint:
        """This process's reader (opened on first use); call with ``reader_lock`` held."""
        ckpt = self.reader
        if ckpt is None:
            h = self.config.handle
            ckpt = self.reader = _open(h.url, storage_options=h.storage_options, run_id=h.run_id, create=False)
        elif refresh:
            ckpt.refresh()
        return ckpt


_active: _Active | None = None
_originals: dict[str, Any] = {}
_install_lock = threading.Lock()
_tls = threading.local()


# ---------------------------------------------------------------------- the three functions


def is_resumability_actor_active() -> bool:
    """Curator's gate for its counter code: ``True`` while the backend is installed."""
    return _active is not None


def flush_resumability_deltas(per_task: list[tuple[str, str, int]]) -> None:
    """Write Curator's ``(task_id, source_id, delta)`` records to this process's writer.

    Records flushed by ``BaseStageAdapter._source_counters`` are emissions (and, if
    the source stage is also the sink, each ``+1`` is followed by the ``-1`` of its
    identity sink). The writer is flushed before this returns whenever a record is
    positive (the durability barrier) and, with ``flush="batch"`` (the default),
    after every call with records.

    Parameters
    ----------
    per_task : list[tuple[str, str, int]]
        As Curator's adapter computed them; keys are output task ids.

    Raises
    ------
    FlushError
        The flush failed; the stage batch fails (Curator's actor would have dropped
        the records silently), the records stay buffered for a later flush.
    """
    active = _active
    if active is None or not per_task:
        return
    source_stage = getattr(_tls, "source_stage", None)
    is_source = source_stage is not None
    single = is_source and bool(getattr(source_stage, "is_sink_stage", False))
    entry = _entry(active.config.handle)
    positive = False
    with entry.lock:
        w = entry.writer
        for key, sid, delta in per_task:
            emission = is_source and delta > 0
            w.record(key, sid, delta, emission=emission)
            if emission and single:
                w.record(child_id(key, 0), sid, -1)
            positive = positive or delta > 0
        if positive or active.config.flush == "batch":
            w.flush()


def completed_resumability_sources(source_ids: list[str]) -> set[str]:
    """The given sources that are already complete; the source stage skips them.

    Reads the checkpoint (opened once per process, refreshed at each call: the
    source stage calls this once per batch).

    Parameters
    ----------
    source_ids : list[str]
        The source ids of a source-stage batch.

    Returns
    -------
    set[str]
        The complete ones.

    Raises
    ------
    CuratorNothingToDo
        With ``on_nothing_to_do="raise"`` (the default), if there is at least one id
        and every one is complete.
    """
    active = _active
    if active is None or not source_ids:
        return set()
    with active.reader_lock:
        ckpt = active.checkpoint(refresh=True)
        done = {s for s in source_ids if ckpt.is_completed(s)}
    if len(done) == len(set(source_ids)):
        msg = (
            f"No tasks to process: all {len(done)} sources of this source-stage batch are already "
            f"complete in {active.config.handle.url} (resumelog); nothing to do "
            "(reset them, or clear the checkpoint, to process them again)"
        )
        if not getattr(_tls, "root_batch", True):
            # one batch of several (initial_tasks): the others may have work to do
            logger.debug("resumelog: %s", msg)
            return done
        policy = active.config.on_nothing_to_do
        if policy == "raise":
            _raise_original_in_ray_data()
            raise CuratorNothingToDo(msg)
        if policy == "warn":
            logger.warning("resumelog: %s", msg)
    return done


def _raise_original_in_ray_data() -> None:
    """Inside a Ray Data map task, have Ray Data raise our exception as itself.

    Ray Data wraps an exception of a map function in its ``UserCodeException``,
    which reaches the driver without the original's type (the cause does not cross
    the process boundary), so the driver could not catch :class:`CuratorNothingToDo`.
    Its ``raise_original_map_exception`` switch turns that off; set here on the
    ``DataContext`` of the current task only (each task gets its own copy), right
    before the task fails: the driver then gets ``RayTaskError(CuratorNothingToDo)``,
    an instance of :class:`CuratorNothingToDo`, as with the other executors.
    """
    if "ray.data" not in sys.modules:
        return
    try:
        from ray.data import DataContext
        from ray.data._internal.execution.interfaces.task_context import TaskContext
    except ImportError:  # pragma: no cover - another Ray layout: left wrapped
        return
    if TaskContext.get_current() is not None:
        DataContext.get_current().raise_original_map_exception = True


def _written_leaves(active: _Active, source: str) -> set[str]:
    """Keys with a final ``-1`` for ``source`` in a live run (read once per process)."""
    with active.reader_lock:
        leaves = active.leaves.get(source)
        if leaves is None:
            leaves = active.leaves[source] = active.checkpoint(refresh=False).completed_leaves(source, prefix="")
        return leaves


def _skip_written_leaves(active: _Active, tasks: list[Any]) -> list[Any]:
    """The last stage's inputs still to process; records ``-1`` for the others.

    An input ``t`` whose sink record ``(<t.task_id>_0, source, -1)`` an earlier run
    wrote (output written, or filtered) is dropped, and the same record is written
    in this run so the source drains. Inputs without a source id or task id (not
    tracked) are kept.
    """
    keep: list[Any] = []
    skipped: list[tuple[str, str, int]] = []
    for t in tasks:
        sid = getattr(t, "_source_id", "")
        tid = getattr(t, "task_id", "")
        if sid and tid:
            key = child_id(tid, 0)
            if key in _written_leaves(active, sid):
                skipped.append((key, sid, -1))
                continue
        keep.append(t)
    if skipped:
        logger.debug("resumelog: skipping %d leaves an earlier run already wrote", len(skipped))
        flush_resumability_deltas(skipped)
    return keep


# ---------------------------------------------------------------------- install


@contextmanager
def source_stage(stage: object) -> Iterator[None]:
    """Within the block, records this thread flushes are a source stage's records.

    Their positive deltas are emissions, and if ``stage.is_sink_stage`` is true each
    ``+1`` gets its identity sink's ``-1``. The installed backend wraps Curator's
    ``BaseStageAdapter._source_counters`` in it; an executor that computes source
    records itself can use it around its :func:`flush_resumability_deltas` call.

    Parameters
    ----------
    stage : object
        The source stage (only its ``is_sink_stage`` attribute is read).
    """
    prev = getattr(_tls, "source_stage", None)
    _tls.source_stage = stage
    try:
        yield
    finally:
        _tls.source_stage = prev


def _wrap_source_counters(original: Callable[..., Any]) -> Callable[..., Any]:
    def _source_counters(self: Any, output_tasks: list[Any]) -> Any:
        with source_stage(self.stage):
            return original(self, output_tasks)

    _source_counters.__wrapped__ = original  # type: ignore[attr-defined]
    _source_counters.__doc__ = original.__doc__
    return _source_counters


def _process_batch(original: Callable[..., Any], adapter: Any, tasks: Any) -> Any:
    """``BaseStageAdapter.process_batch`` with what Curator 1.4 has no hook for.

    * At a source stage, whether the batch is the pipeline's root (only
      ``EmptyTask`` inputs: the whole source stage) decides whether "every source
      complete" means nothing to do.
    * At the last stage, with ``leaf_resume``, inputs whose output an earlier run
      wrote are dropped before the stage runs (:func:`_skip_written_leaves`); if none
      is left the stage is not called.
    """
    from nemo_curator.tasks import EmptyTask

    active = _active
    stage = adapter.stage
    if active is None:
        return original(adapter, tasks)
    if getattr(stage, "is_source_stage", False):
        prev = getattr(_tls, "root_batch", True)
        _tls.root_batch = len(tasks) > 0 and all(isinstance(t, EmptyTask) for t in tasks)
        try:
            return original(adapter, tasks)
        finally:
            _tls.root_batch = prev
    if active.config.leaf_resume and getattr(stage, "is_sink_stage", False):
        tasks = _skip_written_leaves(active, list(tasks))
        if not tasks:
            return []
    return original(adapter, tasks)


def _wrap_process_batch(original: Callable[..., Any]) -> Callable[..., Any]:
    # Ray pickles the methods of the adapter classes Curator's executors build, by
    # value when they are closures: this one refers only to importable functions
    # (not to the module's locks and thread-locals), as _wrap_source_counters.
    def process_batch(self: Any, tasks: Any) -> Any:
        return _process_batch(original, self, tasks)

    process_batch.__wrapped__ = original  # type: ignore[attr-defined]
    process_batch.__doc__ = original.__doc__
    return process_batch


def _curator_base() -> Any:
    try:
        import nemo_curator
        from nemo_curator.backends import base
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("resumelog.curator_backend needs NeMo Curator 1.4: pip install 'resumelog[curator]'") from e
    missing = [n for n in _SEAM if not hasattr(base, n)]
    if missing or not hasattr(base.BaseStageAdapter, "_source_counters"):
        raise RuntimeError(
            f"nemo_curator {getattr(nemo_curator, '__version__', '?')} has no resumability seam "
            f"({', '.join(missing) or 'BaseStageAdapter._source_counters'} missing); "
            f"resumelog.curator_backend supports NeMo Curator {', '.join(v + 'x' for v in SUPPORTED_VERSIONS)}"
        )
    version = str(getattr(nemo_curator, "__version__", ""))
    if not version.startswith(SUPPORTED_VERSIONS):
        logger.warning(
            "resumelog: NeMo Curator %s is untested with resumelog.curator_backend (tested: %s)",
            version,
            ", ".join(v + "x" for v in SUPPORTED_VERSIONS),
        )
    return base


def install(
    handle: WriterHandle,
    *,
    on_nothing_to_do: NothingToDoPolicy = "raise",
    flush: FlushMode = "batch",
    leaf_resume: bool = False,
) -> None:
    """Install the backend in this process only (no Ray hook).

    :func:`enable` calls it in the driver and :func:`setup_worker` in each Ray worker;
    call it yourself in a process Curator's stages run in that neither reaches.
    Installing again replaces the configuration (a new handle is a new run).

    Parameters
    ----------
    handle : WriterHandle
        From :meth:`Checkpoint.handle <resumelog.Checkpoint.handle>`.
    on_nothing_to_do : {"raise", "warn", "ignore"}, optional
        See :func:`enable`.
    flush : {"batch", "barrier"}, optional
        See :func:`enable`.
    leaf_resume : bool, optional
        See :func:`enable`.
    """
    global _active
    _check_options(on_nothing_to_do, flush)
    if not isinstance(handle, WriterHandle):
        raise TypeError(f"expected a resumelog.WriterHandle (ckpt.handle()), got {type(handle).__name__}")
    base = _curator_base()
    with _install_lock:
        if not _originals:
            for name in _SEAM:
                _originals[name] = getattr(base, name)
            setattr(base, _SEAM[0], is_resumability_actor_active)
            setattr(base, _SEAM[1], flush_resumability_deltas)
            setattr(base, _SEAM[2], completed_resumability_sources)
            adapter = base.BaseStageAdapter
            for name in _WRAPPED:
                _originals[name] = adapter.__dict__[name]
            adapter._source_counters = _wrap_source_counters(_originals["_source_counters"])
            adapter.process_batch = _wrap_process_batch(_originals["process_batch"])
        old = _active
        _active = _Active(_Config(handle, on_nothing_to_do, flush, bool(leaf_resume)))
    if old is not None and old.reader is not None:
        old.reader.close()


def installed() -> WriterHandle | None:
    """The handle the backend writes with in this process, ``None`` if not installed."""
    a = _active
    return a.config.handle if a is not None else None


def _uninstall() -> None:
    global _active
    with _install_lock:
        old, _active = _active, None
        if _originals:
            from nemo_curator.backends import base

            for name in _SEAM:
                setattr(base, name, _originals.pop(name))
            for name in _WRAPPED:
                setattr(base.BaseStageAdapter, name, _originals.pop(name))
    if old is not None and old.reader is not None:
        old.reader.close()


def _check_options(on_nothing_to_do: str, flush: str) -> None:
    if on_nothing_to_do not in ("raise", "warn", "ignore"):
        raise ValueError("on_nothing_to_do must be 'raise', 'warn' or 'ignore'")
    if flush not in ("batch", "barrier"):
        raise ValueError("flush must be 'batch' or 'barrier'")


# ---------------------------------------------------------------------- Ray workers


def _config_json() -> str:
    a = _active
    if a is None:
        raise RuntimeError("resumelog.curator_backend is not enabled in this process")
    return msgspec.json.encode(a.config).decode()


def runtime_env(base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A Ray ``runtime_env`` that installs the backend in every worker of the job.

    For a driver that calls ``ray.init`` itself *before* :func:`enable` could hook
    it: ``ray.init(runtime_env=rcb.runtime_env())`` after :func:`enable`.

    Parameters
    ----------
    base : Mapping, optional
        A runtime env to extend (its ``env_vars`` are kept).

    Returns
    -------
    dict
        ``base`` plus ``worker_process_setup_hook`` and the configuration variable.

    Raises
    ------
    ValueError
        If ``base`` already has another ``worker_process_setup_hook``.
    RuntimeError
        If the backend is not enabled in this process.
    """
    env = dict(base or {})
    hook = env.get("worker_process_setup_hook")
    if hook is not None and hook != _SETUP_HOOK:
        raise ValueError(
            f"the runtime env already has a worker_process_setup_hook ({hook!r}); call "
            f"resumelog.curator_backend.setup_worker() from it to combine both"
        )
    env["worker_process_setup_hook"] = _SETUP_HOOK
    env["env_vars"] = {**dict(env.get("env_vars") or {}), ENV_CONFIG: _config_json()}
    return env


def runtime_env_hook(env: dict[str, Any] | None) -> dict[str, Any]:
    """Ray's ``RAY_RUNTIME_ENV_HOOK``: add :func:`runtime_env` to a ``ray.init``'s env.

    :func:`enable` points ``RAY_RUNTIME_ENV_HOOK`` here; a hook that was set before
    runs first.
    """
    prev = os.environ.get(_ENV_PREV_HOOK)
    if prev:
        module, _, name = prev.rpartition(".")
        env = getattr(importlib.import_module(module), name)(env)
    if _active is None:  # disabled since: leave the env alone
        return dict(env or {})
    return runtime_env(env)


def setup_worker() -> None:
    """Ray's ``worker_process_setup_hook``: install the backend in this worker.

    Reads the configuration from ``$RESUMELOG_CURATOR``; does nothing without it.
    """
    raw = os.environ.get(ENV_CONFIG)
    if not raw:
        return
    cfg = msgspec.json.decode(raw, type=_Config)
    install(cfg.handle, on_nothing_to_do=cfg.on_nothing_to_do, flush=cfg.flush, leaf_resume=cfg.leaf_resume)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- the driver API


@dataclass
class CuratorBackend:
    """What :func:`enable` returns: the checkpoint and the run's writer handle.

    Attributes
    ----------
    checkpoint : Checkpoint
        The driver's view (call :meth:`~resumelog.Checkpoint.refresh` after a run to
        see what the workers recorded).
    handle : WriterHandle
        The handle every process writes with (its ``run_id`` is this run).
    """

    checkpoint: Checkpoint
    handle: WriterHandle

    @property
    def run_id(self) -> str:
        """The run every process's records go to."""
        return self.handle.run_id

    def disable(self) -> None:
        """Stop checkpointing: :func:`disable`, then close the checkpoint."""
        if installed() == self.handle:
            disable()
        self.checkpoint.close()

    def __enter__(self) -> CuratorBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.disable()


def enable(
    url: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    run_id: str | None = None,
    fingerprint: Mapping[str, Scalar] | None = None,
    on_nothing_to_do: NothingToDoPolicy = "raise",
    flush: FlushMode = "batch",
    leaf_resume: bool = False,
    ray_workers: bool = True,
) -> CuratorBackend:
    """Make real NeMo Curator 1.4 pipelines of this process checkpoint on resumelog.

    Opens (or creates) the checkpoint at ``url``, installs the backend in this
    process and, with ``ray_workers``, in every Ray worker of the jobs this driver
    starts from now on. Then run the pipeline as usual, without ``checkpoint_path``:
    sources already complete are skipped at the source stage, the others run. Call
    it once per pipeline execution (each call is a new run); :func:`disable` or the
    returned object's ``disable()`` undoes it.

    Parameters
    ----------
    url : str or PathLike
        Any fsspec URL or local path (``s3://...``, ``/shared/ckpt``...).
    storage_options : Mapping, optional
        Passed to fsspec in every process (they travel to Ray workers with the job).
    run_id : str, optional
        The run id (default: ``$RESUMELOG_RUN_ID``, ``$SLURM_ARRAY_JOB_ID`` or new).
    fingerprint : Mapping, optional
        As in :func:`resumelog.open`.
    on_nothing_to_do : {"raise", "warn", "ignore"}, optional
        When every source of a source-stage batch is already complete: raise
        :class:`CuratorNothingToDo` (a ``ValueError``, default), log a warning, or
        say nothing (the pipeline then runs on an empty stream).
    flush : {"batch", "barrier"}, optional
        ``"batch"`` (default): flush after every stage batch that produced records.
        ``"barrier"``: only after batches with a positive record (see the module
        docstring for what that costs on a crash).
    leaf_resume : bool, optional
        Skip, at the last stage, inputs whose output an earlier run already wrote
        (see the module docstring). Only for deterministic stages. Default ``False``.
    ray_workers : bool, optional
        Hook the Ray jobs this driver starts (``RAY_RUNTIME_ENV_HOOK``). Default
        ``True``; ``False`` for in-process use only.

    Returns
    -------
    CuratorBackend
        The checkpoint and the run's handle; a context manager that disables.

    Raises
    ------
    ImportError
        NeMo Curator is not installed.
    RuntimeError
        The installed Curator has no resumability seam.
    """
    _check_options(on_nothing_to_do, flush)
    _curator_base()
    ckpt = _open(url, storage_options=storage_options, run_id=run_id, fingerprint=fingerprint)
    handle = ckpt.handle()
    install(handle, on_nothing_to_do=on_nothing_to_do, flush=flush, leaf_resume=leaf_resume)
    if ray_workers:
        _hook_ray()
    return CuratorBackend(ckpt, handle)


def _hook_ray() -> None:
    cur = os.environ.get(_ENV_RAY_HOOK)
    if cur != _RUNTIME_ENV_HOOK:
        if cur:
            os.environ[_ENV_PREV_HOOK] = cur
        os.environ[_ENV_RAY_HOOK] = _RUNTIME_ENV_HOOK
    os.environ[ENV_CONFIG] = _config_json()  # child processes of the driver install it too
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        logger.warning(
            "resumelog: Ray is already initialised in this driver, so the running job's workers "
            "do not get the Curator backend; call enable() before ray.init, or pass "
            "runtime_env=resumelog.curator_backend.runtime_env() to your ray.init"
        )


def disable() -> None:
    """Undo :func:`enable` in this process: Curator's three functions come back.

    Ray jobs started while enabled keep their workers' backend until they end.
    """
    _uninstall()
    if os.environ.get(_ENV_RAY_HOOK) == _RUNTIME_ENV_HOOK:
        prev = os.environ.pop(_ENV_PREV_HOOK, None)
        if prev:
            os.environ[_ENV_RAY_HOOK] = prev
        else:
            del os.environ[_ENV_RAY_HOOK]
    os.environ.pop(ENV_CONFIG, None)


def curator_completed(path: str | os.PathLike[str]) -> set[str]:
    """The completed source ids of a NeMo Curator 1.4 LMDB checkpoint.

    Reads every ``*.mdb`` writer file of ``<path>/.nemo_curator_metadata`` (or of
    ``path`` itself if it is that directory) read-only, as Curator's actor does at
    startup, and returns the union of their ``completed_sources`` databases.

    Parameters
    ----------
    path : str or PathLike
        The ``checkpoint_path`` given to Curator's ``Pipeline.run``, or its
        ``.nemo_curator_metadata`` directory.

    Returns
    -------
    set[str]
        The completed source ids (empty if there is no checkpoint there).

    Raises
    ------
    ImportError
        The ``lmdb`` package is not installed.
    """
    from pathlib import Path

    import lmdb  # type: ignore[import-not-found,unused-ignore]

    d = Path(path)
    if d.name != _CURATOR_METADATA and (d / _CURATOR_METADATA).is_dir():
        d = d / _CURATOR_METADATA
    done: set[str] = set()
    for mdb in sorted(d.glob("*.mdb")):
        env = lmdb.open(str(mdb), subdir=False, readonly=True, lock=False, max_dbs=1)
        try:
            try:
                db = env.open_db(b"completed_sources", create=False)
            except lmdb.Error:  # a writer file without completions
                continue
            with env.begin() as txn, txn.cursor(db=db) as cur:
                done.update(k.decode() for k, _ in cur)
        finally:
            env.close()
    return done


@contextmanager
def enabled(url: str | os.PathLike[str], **kwargs: Any) -> Iterator[CuratorBackend]:
    """``with enabled(url) as backend:`` — :func:`enable`, then disable on exit."""
    backend = enable(url, **kwargs)
    try:
        yield backend
    finally:
        backend.disable()
