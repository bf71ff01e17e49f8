"""Pure counter deltas of a Curator-style stage (``docs/concepts.md``), no I/O.

A stage maps a batch of input tasks to a batch of output tasks. :func:`stage_deltas`
turns one such call into the signed records ``(key, source, delta)`` that NeMo
Curator's ``BaseStageAdapter._apply_resumability_counters`` fires, with two
fixes (a single-stage pipeline completes; the ambiguous-batch warning is
logged once per stage). Writing the records, flushing and skipping already completed
sources belong to the caller (the stage runner in :mod:`resumelog.curator`).

Summary of the rules (``n_real`` / ``n_failed`` count the real / failed outputs):

====================================  =================================================
stage shape                           records
====================================  =================================================
source stage                          NoneTasks dropped, a FailedTask raises
                                      ``ValueError``; per output ``(id, src, +1)``
                                      (an emission); if also the sink, a
                                      ``(child_id(id, 0), src, -1)`` follows it
empty output                          none
fan-out 1→N, N>1                      one ``(outputs[0] id, input src,
                                      (0 if sink else n_real) + n_failed - 1)``
positional M→M (incl. 1→1)            per slot ``(outputs[i] id, inputs[i] src, d)``:
                                      filtered ``-1``, failed ``0``, real ``-1`` at the
                                      sink else ``0``
M→K, M≠K, M>1                         none; one warning per stage name
====================================  =================================================

Which records are emissions
    Every record with a positive delta produced at a source stage is an emission, and
    no other record is (the only non-positive source-stage record is the ``-1`` of a
    source stage that is also the sink). :func:`is_emission` states that rule; a
    runner writes ``w.record(key, src, d, emission=is_emission(d, is_source=...))``.
    A separate ``source_emissions()`` function was rejected: it would recompute the
    source-stage records and invite the caller to record the same ``+1`` twice.

Keys
    Keys must be unique per processing event within a source. With Curator's ids
    (:func:`root_id`, :func:`child_id`: a task's id is re-derived at every stage, so
    it grows one segment per stage) output ids are unique per stage by construction.
    A framework that keeps a task's id across stages must namespace keys itself, for
    example ``task_id=lambda t: f"{stage}/{t.id}"``, or a later stage's record replaces
    an earlier one with the same key.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "ROOT_PARENT_ID",
    "FailedTask",
    "NoneTask",
    "Record",
    "Task",
    "child_id",
    "default_is_failed",
    "default_is_filtered",
    "default_source_id",
    "default_task_id",
    "is_emission",
    "root_id",
    "stage_deltas",
]

logger = logging.getLogger("resumelog")

T = TypeVar("T")

Record = tuple[str, str, int]
"""One counter record ``(key, source, delta)``."""

ROOT_PARENT_ID = "0"
"""Id of the implicit root every source task descends from (Curator's ``EmptyTask``)."""


@dataclass
class Task:
    """A task of the minimal stage runner.

    Parameters
    ----------
    task_id : str
        Identity of the task at the stage that produced it; keys its records.
        Curator-style ids are :func:`root_id` for a source task and
        :func:`child_id` of the parent's id for every later task.
    source_id : str or None, optional
        The source the task descends from. A source stage must set it on its
        outputs; later stages copy it from the parent. ``None`` means "not tracked"
        (a task upstream of the source stage).
    data : object, optional
        The payload.
    """

    task_id: str
    source_id: str | None = None
    data: object = None


@dataclass
class NoneTask(Task):
    """Sentinel output: this slot was filtered.

    The counter treats it as a consumed branch (``-1`` in a positional slot, ``0``
    in a fan-out). Sentinels are never passed to the next stage.
    """


@dataclass
class FailedTask(Task):
    """Sentinel output: this slot failed; the source is retried on resume.

    The counter keeps the source open (``0`` in a positional slot, ``+1`` in a
    fan-out), so it never completes in this run. ``data`` may carry the error.
    """


def child_id(parent_id: str, i: int) -> str:
    """Return the id of the ``i``-th output of a task (Curator's scheme).

    Parameters
    ----------
    parent_id : str
        Id of the input task.
    i : int
        Position of the output among the task's outputs (``0`` for a 1→1 stage).

    Returns
    -------
    str
        ``f"{parent_id}_{i}"``.
    """
    return f"{parent_id}_{i}"


def root_id(source_id: str) -> str:
    """Return the id of a source's root task, the output of the source stage.

    Curator seeds a pipeline with an ``EmptyTask`` whose id is ``"0"``; a source
    stage's outputs are its children named by their source, so the root task of
    source ``s`` is ``"0_s"``. The id is only ever used as an opaque key.

    Parameters
    ----------
    source_id : str
        The source id.

    Returns
    -------
    str
        ``f"0_{source_id}"``.
    """
    return f"{ROOT_PARENT_ID}_{source_id}"


def default_task_id(task: object) -> str:
    """Return ``task.task_id`` of a :class:`Task`.

    Parameters
    ----------
    task : object
        A :class:`Task` (or sentinel).

    Returns
    -------
    str
        The task's id.

    Raises
    ------
    TypeError
        If ``task`` is not a :class:`Task`; pass ``task_id=`` for other task types.
    """
    if isinstance(task, Task):
        return task.task_id
    raise TypeError(f"default_task_id needs a resumelog Task, got {type(task).__name__}; pass task_id=...")


def default_source_id(task: object) -> str | None:
    """Return ``task.source_id`` of a :class:`Task`.

    Parameters
    ----------
    task : object
        A :class:`Task` (or sentinel).

    Returns
    -------
    str or None
        The task's source id, ``None`` if it is not tracked.

    Raises
    ------
    TypeError
        If ``task`` is not a :class:`Task`; pass ``source_id=`` for other task types.
    """
    if isinstance(task, Task):
        return task.source_id
    raise TypeError(f"default_source_id needs a resumelog Task, got {type(task).__name__}; pass source_id=...")


def default_is_filtered(task: object) -> bool:
    """Return whether ``task`` is a :class:`NoneTask` (a filtered slot).

    Parameters
    ----------
    task : object
        Any task.

    Returns
    -------
    bool
        ``isinstance(task, NoneTask)``.
    """
    return isinstance(task, NoneTask)


def default_is_failed(task: object) -> bool:
    """Return whether ``task`` is a :class:`FailedTask` (a failed slot).

    Parameters
    ----------
    task : object
        Any task.

    Returns
    -------
    bool
        ``isinstance(task, FailedTask)``.
    """
    return isinstance(task, FailedTask)


def is_emission(delta: int, *, is_source: bool) -> bool:
    """Return whether a record returned by :func:`stage_deltas` is an emission.

    An emission marks its source as entered into the run (``Writer.record(...,
    emission=True)``); every positive record of a source stage is one, nothing else
    is. Positive records (emissions and fan-out ``+k``) must be flushed before the
    outputs they account for are dispatched (the durability barrier of ``docs/concepts.md``).

    Parameters
    ----------
    delta : int
        The record's delta.
    is_source : bool
        The ``is_source`` flag the records were computed with.

    Returns
    -------
    bool
        ``is_source and delta > 0``.
    """
    return is_source and delta > 0


_warned_stages: set[str] = set()
_warned_lock = threading.Lock()


def _warn_ambiguous(stage_name: str, n_in: int, n_out: int) -> None:
    with _warned_lock:
        if stage_name in _warned_stages:
            return
        _warned_stages.add(stage_name)
    logger.warning(
        "resumelog: stage %r produced %d outputs for %d inputs; sources cannot be attributed, "
        "so no counter records are written for such batches (their sources stay pending and "
        "rerun on resume). Return one output (or a NoneTask) per input, or process one input "
        "per batch, to keep the stage resumable. This warning is shown once per stage.",
        stage_name,
        n_out,
        n_in,
    )


def stage_deltas(
    inputs: Sequence[T],
    outputs: Sequence[T],
    *,
    is_source: bool,
    is_sink: bool,
    task_id: Callable[[T], str] = default_task_id,
    source_id: Callable[[T], str | None] = default_source_id,
    is_filtered: Callable[[T], bool] = default_is_filtered,
    is_failed: Callable[[T], bool] = default_is_failed,
    stage_name: str = "",
) -> list[Record]:
    """Compute the counter records of one stage call (Curator parity).

    Parameters
    ----------
    inputs : Sequence[T]
        The batch the stage was called with (ignored at a source stage).
    outputs : Sequence[T]
        What it returned, sentinels included, in slot order.
    is_source : bool
        The stage is the pipeline's source stage: its outputs are the sources.
    is_sink : bool
        The stage is the pipeline's last stage: its real outputs are drained.
    task_id : Callable[[T], str], optional
        A task's id; keys the records. Default: :attr:`Task.task_id`.
    source_id : Callable[[T], str | None], optional
        A task's source id, ``None`` if untracked. Read from the outputs at a source
        stage, from the inputs elsewhere. Default: :attr:`Task.source_id`.
    is_filtered : Callable[[T], bool], optional
        Whether an output is a "filtered" sentinel. Default: a :class:`NoneTask`.
    is_failed : Callable[[T], bool], optional
        Whether an output is a "failed" sentinel. Default: a :class:`FailedTask`.
        A task for which both predicates hold counts as filtered.
    stage_name : str, optional
        Names the stage in the ambiguous-batch warning, which is logged once per
        name and process (all unnamed stages share one warning).

    Returns
    -------
    list[tuple[str, str, int]]
        ``(key, source, delta)`` records, in output order:

        * **source stage**: filtered outputs are dropped, a failed one raises
          ``ValueError`` (as in Curator); each remaining output gives
          ``(task_id(out), source_id(out), +1)``. If the stage is also the sink
          (single-stage pipeline) it is followed by ``(child_id(task_id(out), 0),
          source_id(out), -1)``: the key the identity sink of the equivalent
          two-stage pipeline (source → 1:1 sink) would use, so the records are those
          of that pipeline and the key differs from the ``+1``'s (one key with two
          deltas would be a rewrite, not a completion). Curator never completes a
          single-stage pipeline; resumelog completes it. Skipping already
          completed sources is the caller's job (drop them from ``outputs`` first).
        * **empty output**: no records.
        * **fan-out 1→N, N>1**: one record keyed on ``task_id(outputs[0])`` with the
          input's source and delta ``(0 if is_sink else n_real) + n_failed - 1``
          (the parent is consumed, each real child continues, each failed child
          keeps the source open, a filtered child adds 0).
        * **positional M→M** (including 1→1): per slot ``i``, keyed on
          ``task_id(outputs[i])`` with ``source_id(inputs[i])``: filtered ``-1``,
          failed ``0``, real ``-1`` at the sink and ``0`` elsewhere. Slots whose
          input has no source id (upstream of the source stage) give no record.
        * **M→K, M≠K, M>1**: no records (the sources stay pending and rerun); a
          warning on logger ``"resumelog"`` the first time per ``stage_name``.

        A non-source stage whose inputs all lack a source id (or that has no inputs)
        gives no records and no warning, as in Curator. Every positive source-stage
        record is an emission (see :func:`is_emission`); no other record is.

    Raises
    ------
    ValueError
        If an output of a source stage that is not a sentinel has no source id, or
        one is a failed sentinel (NeMo Curator raises there too; the error it carries
        in ``data``, if any, is chained).
    """
    if is_source:
        return _source_records(outputs, is_sink, task_id, source_id, is_filtered, is_failed)
    if not outputs:
        return []
    sources = [source_id(t) for t in inputs]
    if all(s is None for s in sources):
        return []  # upstream of the source stage (or nothing to attribute to)
    n_in, n_out = len(inputs), len(outputs)
    if n_in == 1 and n_out > 1:
        src = sources[0]
        assert src is not None  # at least one input has a source
        n_real = n_failed = 0
        for t in outputs:
            if is_filtered(t):
                continue
            if is_failed(t):
                n_failed += 1
            else:
                n_real += 1
        delta = (0 if is_sink else n_real) + n_failed - 1
        return [(task_id(outputs[0]), src, delta)]
    if n_in == n_out:
        records: list[Record] = []
        for src, out in zip(sources, outputs):
            if src is None:
                continue
            if is_filtered(out):
                delta = -1
            elif is_failed(out):
                delta = 0
            else:
                delta = -1 if is_sink else 0
            records.append((task_id(out), src, delta))
        return records
    _warn_ambiguous(stage_name, n_in, n_out)
    return []


def _source_records(
    outputs: Sequence[T],
    is_sink: bool,
    task_id: Callable[[T], str],
    source_id: Callable[[T], str | None],
    is_filtered: Callable[[T], bool],
    is_failed: Callable[[T], bool],
) -> list[Record]:
    records: list[Record] = []
    for out in outputs:
        if is_filtered(out):
            continue
        if is_failed(out):
            cause = getattr(out, "data", None)
            raise ValueError(
                "source stage emitted a FailedTask, which is not supported (NeMo Curator parity): "
                "a source that cannot be read fails the run"
                + (f": {cause!r}" if isinstance(cause, BaseException) else "")
            ) from (cause if isinstance(cause, BaseException) else None)
        src = source_id(out)
        key = task_id(out)
        if src is None:
            raise ValueError(f"source-stage output {key!r} has no source id; a source stage must set it")
        records.append((key, src, 1))
        if is_sink:
            records.append((child_id(key, 0), src, -1))
    return records
