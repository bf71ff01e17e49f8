"""Ray tasks and actors: one writer per worker process, no central actor.

The driver opens the checkpoint and hands ``ckpt.handle()`` (plain, picklable data) to
its tasks and actors. Inside a Ray worker, :func:`worker_writer` opens that process's
own writer (its own journal stream) once and reuses it for every later task the
process runs; nothing goes through a central actor. :func:`completes` wraps a task
function or actor method so that its sources are recorded complete *and flushed*
after it returns: when the task's result is visible to the driver, the completion is
durable, and a task that raises records nothing. ::

    import ray, resumelog, resumelog.ray

    ckpt = resumelog.open("s3://bucket/run1/ckpt")

    @ray.remote(max_retries=3)
    @resumelog.ray.completes("handle", source="path")
    def convert(path: str, handle: resumelog.WriterHandle) -> int:
        ...                                 # write the output of `path` first

    refs = resumelog.ray.submit_pending(ckpt, all_paths, convert, handle=ckpt.handle())
    ray.get(list(refs.values()))            # every returned task's path is durable

Retries and actor restarts are safe: a task that dies before returning recorded
nothing (it reruns); a retried task that had already recorded its completion records
the same deterministic keys again, which the fold treats as duplicates.

Ray does not run ``atexit`` handlers in worker processes at ``ray.shutdown()`` (it
kills them), so records a worker buffered and never flushed are lost then; the
library's ``atexit``/``SIGTERM`` hook only covers workers that exit normally. Losing
unflushed records is safe (the sources rerun), but to keep work, flush at the end of
every task: :func:`completes` and :func:`record_completed` do.

This module never imports Ray itself (it only looks at ``sys.modules``): importing
it is cheap, and its helpers work in any process, with or without Ray.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import IO, Any, Literal, ParamSpec, TypeVar, cast

from resumelog import paths
from resumelog.checkpoint import Checkpoint, WriterHandle
from resumelog.errors import NothingToDo
from resumelog.journal import Writer

__all__ = ["completes", "output", "record_completed", "submit_pending", "worker_writer"]


def __dir__() -> list[str]:
    return __all__


logger = logging.getLogger("resumelog")

P = ParamSpec("P")
R = TypeVar("R")

# ---------------------------------------------------------------------- per-process writers

_Key = tuple[str, str, str]  # (handle url, run id, writer id)


class _Entry:
    __slots__ = ("lock", "writer")

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.lock = threading.RLock()  # serialises record + flush of helpers in threaded actors


_CACHE: dict[_Key, _Entry] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_PID = os.getpid()


def _after_fork() -> None:
    """In a forked child the parent's writers are not ours (their pid differs): forget them."""
    global _CACHE_LOCK, _CACHE_PID
    _CACHE_LOCK = threading.Lock()
    _CACHE.clear()
    _CACHE_PID = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _default_writer_id() -> str:
    """``ray-<node id, 8 hex>-<pid>`` in a process connected to Ray, else ``<host>-<pid>``."""
    ray = sys.modules.get("ray")  # never import Ray: if it is not loaded, this is no Ray worker
    if ray is not None:
        try:
            if ray.is_initialized():
                node = str(ray.get_runtime_context().get_node_id() or "")[:8]
                if node:
                    return f"ray-{node}-{os.getpid()}"
        except Exception:  # noqa: BLE001 - a half-initialised Ray: fall back to the host name
            pass
    return paths.default_writer_id()


def _entry(handle: WriterHandle) -> _Entry:
    if not isinstance(handle, WriterHandle):
        raise TypeError(f"expected a resumelog.WriterHandle (ckpt.handle()), got {type(handle).__name__}")
    if os.getpid() != _CACHE_PID:  # forked without the at-fork hook (or before it ran)
        _after_fork()
    wid = paths.validate_id(handle.writer_id) if handle.writer_id is not None else _default_writer_id()
    key = (handle.url, handle.run_id, wid)
    with _CACHE_LOCK:
        e = _CACHE.get(key)
        if e is None or e.writer.closed:
            e = _CACHE[key] = _Entry(handle.writer(wid))
            logger.debug("resumelog.ray: opened writer %s/%s for %s", wid, e.writer.incarnation, handle.url)
        return e


def worker_writer(handle: WriterHandle) -> Writer:
    """Return this process's writer for ``handle``: opened on first use, then reused.

    Each Ray worker process (or any process) opens **one** writer per
    ``(handle.url, handle.run_id, writer id)`` and reuses it across every task it
    runs, so a worker that runs thousands of tasks writes one journal stream. A
    forked child, an actor restart (a new process) or a closed writer gets a new
    writer (a new incarnation). At normal process exit the library's ``atexit`` hook
    flushes and closes it; Ray kills workers at shutdown without running that hook,
    so flush before a task returns (:func:`record_completed` and :func:`completes`
    do).

    Parameters
    ----------
    handle : WriterHandle
        From :meth:`Checkpoint.handle <resumelog.Checkpoint.handle>` in the driver.

    Returns
    -------
    Writer
        Shared by every caller in this process: do not close it, and do not call it
        from several threads at once (the helpers of this module lock it).

    Notes
    -----
    The writer id is ``handle.writer_id`` if the handle names one (each process
    still gets its own incarnation, so processes never share a stream), else
    ``ray-<first 8 hex digits of the Ray node id>-<pid>`` in a process connected to
    Ray, else ``<host>-<pid>``.
    """
    return _entry(handle).writer


def record_completed(handle: WriterHandle, sources: str | Iterable[str]) -> list[str]:
    """Record ``sources`` complete in this process's writer and flush.

    Call it at the point where the outputs of ``sources`` are written, typically at
    the end of a task that processed a batch. When it returns the completions are
    durable (it flushes everything this process's writer buffered).

    Parameters
    ----------
    handle : WriterHandle
        From :meth:`Checkpoint.handle <resumelog.Checkpoint.handle>`.
    sources : str or Iterable[str]
        One source id, or several (a ``str`` is one source, not its characters).

    Returns
    -------
    list[str]
        The sources recorded, in order.

    Raises
    ------
    FlushError
        The flush failed; the records stay buffered and the next flush retries them.
    InvalidId
        A source id is not a non-empty ``str``.
    """
    done = _as_sources(sources, "sources", iterator_ok=True)
    e = _entry(handle)
    with e.lock:
        e.writer.complete_many(done)
        e.writer.flush()
    return done


def output(
    handle: WriterHandle,
    source: str,
    root: str,
    *,
    key: str | None = None,
    name: str = "output",
    storage_options: Mapping[str, Any] | None = None,
) -> AbstractContextManager[IO[bytes]]:
    """Write one output of ``source`` exactly once from a Ray task (or any process).

    ``with resumelog.ray.output(handle, path, "s3://bucket/out", name="part-0.parquet") as f: ...``
    spools the bytes locally and, on leaving the block, publishes them with
    put-if-absent under the run's deterministic name (:meth:`Writer.output
    <resumelog.Writer.output>` with ``record=False``, through this process's
    :func:`worker_writer`); it records nothing. Put :func:`completes` on the task: it
    records the sources after the task returns, so after every output is published.
    A retried task publishes the same names again, which keeps the first attempt's
    objects. Read the outputs with :func:`resumelog.outputs.committed`.

    Parameters
    ----------
    handle : WriterHandle
        From :meth:`Checkpoint.handle <resumelog.Checkpoint.handle>` in the driver.
    source : str
        The source the output belongs to.
    root : str
        The outputs root (any fsspec URL or local path).
    key, name : str, optional
        As for :meth:`Writer.output <resumelog.Writer.output>`: the same on every
        attempt of the task.
    storage_options : mapping, optional
        For ``root``; default: the handle's if ``root`` uses the checkpoint's protocol.
    """
    return worker_writer(handle).output(source, root, key=key, name=name, record=False, storage_options=storage_options)


def _as_sources(value: object, what: str, *, iterator_ok: bool = False) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterator) and not iterator_ok:
        raise TypeError(f"{what} is a one-shot iterator; pass a str or a list/tuple/set of str")
    if isinstance(value, (bytes, bytearray, memoryview)) or not isinstance(value, Iterable):
        raise TypeError(f"{what} must be a source id (str) or a collection of them, got {type(value).__name__}")
    return list(value)


# ---------------------------------------------------------------------- the decorator


def completes(
    handle: WriterHandle | str,
    *,
    source: str | Callable[..., str | Iterable[str]] | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a task function or actor method: record its sources complete after it returns.

    The wrapped callable runs unchanged. If it returns (rather than raises), every
    source it finished is recorded complete in this process's writer
    (:func:`worker_writer`) and the writer is **flushed before the call returns**, so
    when a Ray task's result is visible its completions are durable. If it raises,
    nothing is recorded. Put it *under* ``@ray.remote``::

        @ray.remote(max_retries=3)
        @completes("handle", source="path")
        def convert(path: str, handle: WriterHandle) -> None: ...

        @ray.remote(max_restarts=1, max_task_retries=1)
        class Converter:
            def __init__(self, handle: WriterHandle) -> None:
                self.handle = handle          # found by name: see ``handle`` below

            @completes("handle", source="paths")
            def convert_batch(self, paths: list[str]) -> int: ...

    Coroutine functions (async actors) are supported; generator functions are not
    (call :func:`record_completed` at their end instead).

    Parameters
    ----------
    handle : WriterHandle or str
        The checkpoint's :class:`~resumelog.WriterHandle`, or the *name* of the
        parameter that receives it at each call. For a method without such a
        parameter, the name of an attribute of ``self`` holding it (set it in the
        actor's ``__init__``). A handle fixed at decoration time travels with the
        function when Ray pickles it; prefer a parameter or attribute for functions
        defined in importable modules.
    source : str, callable or None
        Which sources the call finishes:

        * ``str`` — the name of a parameter whose argument is a source id or a
          collection of them (batch tasks);
        * callable — called *before* the function runs, with the same arguments
          (defaults filled in; ``self`` included for a method); returns a source id
          or an iterable of them;
        * ``None`` (default) — the function's return value is the source id or a
          collection of them (a list, tuple or set; ``[]`` records nothing).

    Returns
    -------
    Callable
        A decorator; the wrapped function keeps the signature and return value.

    Raises
    ------
    TypeError
        At decoration: a name that is no parameter (and not a method attribute), a
        generator function, or a Ray remote function (put ``completes`` under
        ``@ray.remote``). At a call: sources that are not a ``str`` or collection of
        ``str``, or a handle that is not a :class:`~resumelog.WriterHandle`.
    FlushError
        At a call, if the flush failed; the task fails (Ray retries it only if you
        asked it to retry on exceptions) and the completions stay buffered.
    """
    if not isinstance(handle, (WriterHandle, str)):
        raise TypeError(f"handle must be a WriterHandle or a parameter name, got {type(handle).__name__}")
    if source is not None and not isinstance(source, str) and not callable(source):
        raise TypeError(f"source must be a parameter name, a callable or None, got {type(source).__name__}")

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        if hasattr(fn, "remote"):
            raise TypeError("completes must wrap the plain function: put it under @ray.remote, not above it")
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(f"completes cannot wrap generator function {fn.__qualname__}; use record_completed")
        sig = inspect.signature(fn)
        params = list(sig.parameters)
        get_handle = _handle_getter(handle, sig, params, fn.__qualname__)
        get_sources = _source_getter(source, sig, fn.__qualname__)

        def before(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[WriterHandle, list[str] | None]:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            h = get_handle(bound.arguments)
            srcs = get_sources(bound) if get_sources is not None else None
            return h, srcs

        def after(h: WriterHandle, srcs: list[str] | None, result: object) -> None:
            record_completed(h, srcs if srcs is not None else _returned_sources(result, fn.__qualname__))

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                h, srcs = before(args, kwargs)
                result = await fn(*args, **kwargs)  # type: ignore[misc]
                after(h, srcs, result)  # blocking, on purpose: the writer is not thread-safe
                return result

            return cast(Callable[P, R], async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            h, srcs = before(args, kwargs)
            result = fn(*args, **kwargs)
            after(h, srcs, result)
            return result

        return wrapper

    return decorate


def _handle_getter(
    handle: WriterHandle | str, sig: inspect.Signature, params: list[str], name: str
) -> Callable[[dict[str, Any]], WriterHandle]:
    if isinstance(handle, WriterHandle):
        fixed = handle
        return lambda arguments: fixed
    attr = handle
    if attr in sig.parameters:
        return lambda arguments: _check_handle(arguments[attr], f"argument {attr!r} of {name}")
    if params and params[0] == "self":
        return lambda arguments: _check_handle(
            getattr(arguments["self"], attr, None), f"attribute self.{attr} in {name}"
        )
    raise TypeError(f"{name} has no parameter {attr!r} for the writer handle (and is not a method)")


def _check_handle(value: object, where: str) -> WriterHandle:
    if not isinstance(value, WriterHandle):
        raise TypeError(f"{where} must be a resumelog.WriterHandle (ckpt.handle()), got {type(value).__name__}")
    return value


def _source_getter(
    source: str | Callable[..., str | Iterable[str]] | None, sig: inspect.Signature, name: str
) -> Callable[[inspect.BoundArguments], list[str]] | None:
    if source is None:
        return None
    if isinstance(source, str):
        pname = source
        if pname not in sig.parameters:
            raise TypeError(f"{name} has no parameter {pname!r} to take the source ids from")
        return lambda bound: _as_sources(bound.arguments[pname], f"argument {pname!r} of {name}")
    fn = source
    return lambda bound: _as_sources(fn(*bound.args, **bound.kwargs), f"source({name} arguments)", iterator_ok=True)


def _returned_sources(result: object, name: str) -> list[str]:
    if result is None:
        raise TypeError(
            f"{name} returned None, but completes(source=None) records the sources the function "
            "returns; return them (a str or a list), or pass source=<parameter name or callable>"
        )
    return _as_sources(result, f"the return value of {name}")


# ---------------------------------------------------------------------- driver side

NothingToDoPolicy = Literal["warn", "raise", "ignore"]


def submit_pending(
    ckpt: Checkpoint,
    sources: Iterable[str],
    remote_fn: Any,
    /,
    *args: Any,
    on_nothing_to_do: NothingToDoPolicy = "warn",
    **kwargs: Any,
) -> dict[str, Any]:
    """Submit one task per source that is not complete yet; skip the others.

    Calls ``remote_fn.remote(source, *args, **kwargs)`` for every pending source, in
    the given order (duplicates dropped). Call :meth:`Checkpoint.refresh
    <resumelog.Checkpoint.refresh>` first if workers completed sources since the
    checkpoint was opened.

    Parameters
    ----------
    ckpt : Checkpoint
        The driver's open checkpoint.
    sources : Iterable[str]
        Every source the job must process.
    remote_fn : Ray remote function, actor method, or callable
        Anything with a ``.remote`` method; any other callable is called as
        ``remote_fn(source, *args, **kwargs)`` (e.g. a lambda that calls
        ``f.options(...).remote(...)`` or picks an actor).
    *args, **kwargs
        Passed on after the source (e.g. ``handle=ckpt.handle()``).
    on_nothing_to_do : {"warn", "raise", "ignore"}, optional
        When every one of at least one requested source is complete: log a warning
        (logger ``resumelog``, the default), raise
        :class:`~resumelog.errors.NothingToDo`, or say nothing.

    Returns
    -------
    dict[str, Any]
        Source id → what the submission returned (an ``ObjectRef``), in submission
        order; the skipped sources are the requested ones not in it.

    Raises
    ------
    NothingToDo
        With ``on_nothing_to_do="raise"``, if nothing is pending.
    """
    if on_nothing_to_do not in ("warn", "raise", "ignore"):
        raise ValueError("on_nothing_to_do must be 'warn', 'raise' or 'ignore'")
    submit = getattr(remote_fn, "remote", None)
    if submit is None:
        if not callable(remote_fn):
            raise TypeError(f"remote_fn must be a Ray remote function or a callable, got {type(remote_fn).__name__}")
        submit = remote_fn
    requested = list(dict.fromkeys(_as_sources(sources, "sources", iterator_ok=True)))
    pending = ckpt.pending(requested)
    logger.info(
        "resumelog.ray: %d of %d sources already complete, submitting %d",
        len(requested) - len(pending),
        len(requested),
        len(pending),
    )
    if requested and not pending and on_nothing_to_do != "ignore":
        msg = (
            f"resumelog: all {len(requested)} requested sources are already complete in {ckpt.url}; "
            "nothing to do (reset them, or clear the checkpoint, to process them again)"
        )
        if on_nothing_to_do == "raise":
            raise NothingToDo(msg)
        logger.warning("%s", msg)
    return {s: submit(s, *args, **kwargs) for s in pending}
