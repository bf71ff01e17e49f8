"""Curator-style stage pipelines: a per-batch checkpointing hook and a tiny runner.

A Curator-style pipeline is a chain of stages; each stage maps a batch of input tasks
to a batch of output tasks, with two sentinel outputs: :class:`NoneTask` ("this slot
was filtered") and :class:`FailedTask` ("this slot failed, retry the source on
resume"). The first stage is the *source stage*: its outputs are the sources.

Two layers:

:class:`StageCheckpointer`
    The executor hook (Curator's ``ExecutorPlugin`` idea): another framework's
    executor calls :meth:`~StageCheckpointer.after_stage` once per stage batch. It
    skips already completed sources at the source stage, records the counter records
    of :func:`stage_deltas`, **flushes before returning whenever a record
    is positive** (emission ``+1``, fan-out ``+k``: the durability barrier of
    ``docs/concepts.md``) and returns the outputs to dispatch, sentinels stripped. With
    ``leaf_resume=True`` it also skips, before the last stage, leaves that a previous
    run already wrote (:meth:`~StageCheckpointer.before_stage`).

:class:`Pipeline`
    A minimal in-process runner built on the hook, for examples and tests:
    ``Pipeline([SourceStage(sources, read), *stages], checkpoint=ckpt).run()``. Each
    stage is a callable ``list[Task] -> list``; ``None`` in the returned list is a
    filtered slot, a :class:`FailedTask` (or an exception raised by the stage) a
    failed one. The runner gives every task a deterministic id rooted at its source.

Example
-------
>>> import resumelog
>>> from resumelog.curator import Pipeline, SourceStage, Stage
>>> ckpt = resumelog.open("memory://curator-doc")
>>> split = Stage(lambda batch: [t.data + "!" for t in batch for _ in range(2)], name="split")
>>> result = Pipeline([SourceStage(["a", "b"]), split], checkpoint=ckpt).run()
>>> sorted(result.completed)
['a', 'b']
>>> Pipeline([SourceStage(["a", "b"]), split], checkpoint=ckpt).run().skipped
['a', 'b']

Task ids
    By default Curator's scheme: the root task of source ``s`` is ``"0_s"``
    (:func:`root_id`) and the ``i``-th output of task ``p`` is ``f"{p}_{i}"``
    (:func:`child_id`). With ``leaf_resume=True`` ids are *lineage keys*: the root
    task of ``s`` is ``s`` itself and children are ``f"{p}::{i}"``
    (:func:`lineage_child`), so the last stage's ``-1`` records are keyed
    ``<source>::<i>::<j>...`` and double as leaf completions
    (:meth:`resumelog.Checkpoint.completed_leaves`).

Leaf-level resume (opt in)
    A source that died half done reruns from scratch under source-level resume. With
    ``leaf_resume=True`` the last stage skips every input whose leaf key is among
    ``ckpt.completed_leaves(source)`` (written by an earlier run) and records its
    ``-1`` in the new run without calling the stage, so the source still drains.
    This is only correct when stages are deterministic: the same source must give
    the same tasks at the same lineage positions in every run.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from resumelog.checkpoint import Checkpoint
from resumelog.curator_deltas import (
    FailedTask,
    NoneTask,
    Record,
    Task,
    child_id,
    default_is_failed,
    default_is_filtered,
    default_source_id,
    default_task_id,
    is_emission,
    root_id,
    stage_deltas,
)
from resumelog.errors import NothingToDo
from resumelog.journal import Writer

__all__ = [
    "LINEAGE_SEP",
    "FailedTask",
    "NoneTask",
    "NothingToDoPolicy",
    "OutputSink",
    "Pipeline",
    "Record",
    "RunResult",
    "SourceStage",
    "Stage",
    "StageCheckpointer",
    "Task",
    "child_id",
    "is_emission",
    "lineage_child",
    "root_id",
    "stage_deltas",
]


def __dir__() -> list[str]:
    return __all__


logger = logging.getLogger("resumelog")

T = TypeVar("T")

NothingToDoPolicy = Literal["warn", "raise", "ignore"]
"""What to do when every requested source is already complete: log a warning, raise
:class:`~resumelog.errors.NothingToDo`, or say nothing."""

LINEAGE_SEP = "::"
"""Separator of the positions in a lineage key ``<source>::<i>::<j>``."""


def lineage_child(parent_id: str, i: int) -> str:
    """Return the lineage id of the ``i``-th output of a task (leaf-level resume).

    Parameters
    ----------
    parent_id : str
        Lineage id of the input task (the source id for a root task).
    i : int
        Position of the output among the task's outputs.

    Returns
    -------
    str
        ``f"{parent_id}::{i}"``.
    """
    return f"{parent_id}{LINEAGE_SEP}{i}"


def _lineage_root(source_id: str) -> str:
    return source_id


# ---------------------------------------------------------------------- the hook


class StageCheckpointer(Generic[T]):
    """Per-batch checkpointing hook for a Curator-style executor.

    An executor calls :meth:`after_stage` after every stage batch (and, for
    leaf-level resume, :meth:`before_stage` before the last stage) and dispatches only
    what it returns. The hook is framework-neutral: the four accessors say how to read
    a task of the host framework.

    Parameters
    ----------
    writer : Writer
        This process's journal writer. Positive records are flushed before
        :meth:`after_stage` returns; others stay buffered (flush or close the writer
        at the end; losing them only leaves a source pending).
    ckpt : Checkpoint
        The checkpoint, read for completed sources and (leaf resume) completed leaves.
    task_id, source_id, is_filtered, is_failed : Callable, optional
        Accessors, as in :func:`stage_deltas`; they default to the attributes of
        :class:`Task`, :class:`NoneTask` and :class:`FailedTask`. The host framework
        must give every output a unique id per processing event and copy the
        source id of an input onto its outputs.
    leaf_resume : bool, optional
        Skip leaves a previous run wrote, at the last stage (see :meth:`before_stage`).
        Needs deterministic stages and lineage ids. Default ``False``.
    leaf_key : Callable[[T], str], optional
        The key of the last stage's record for an input task, i.e. the id its first
        output gets. Default: ``lineage_child(task_id(t), 0)``, what :class:`Pipeline`
        assigns.
    on_nothing_to_do : {"warn", "raise", "ignore"}, optional
        When every source a source-stage batch produced is already complete: log a
        warning (default), raise :class:`~resumelog.errors.NothingToDo`, or neither.
        A source stage called in several batches should use ``"ignore"`` and check
        the whole source list with :meth:`pending_sources` instead.

    Attributes
    ----------
    skipped_sources : list[str]
        Sources skipped because they were already complete, in encounter order.
    emitted_sources : dict[str, None]
        Sources emitted (``+1`` recorded) through this hook, in order.
    leaves_skipped : int
        Last-stage inputs skipped by leaf-level resume.
    records : int
        Records written through this hook.
    """

    def __init__(
        self,
        writer: Writer,
        ckpt: Checkpoint,
        *,
        task_id: Callable[[T], str] = default_task_id,
        source_id: Callable[[T], str | None] = default_source_id,
        is_filtered: Callable[[T], bool] = default_is_filtered,
        is_failed: Callable[[T], bool] = default_is_failed,
        leaf_resume: bool = False,
        leaf_key: Callable[[T], str] | None = None,
        on_nothing_to_do: NothingToDoPolicy = "warn",
    ) -> None:
        if on_nothing_to_do not in ("warn", "raise", "ignore"):
            raise ValueError("on_nothing_to_do must be 'warn', 'raise' or 'ignore'")
        self.writer = writer
        self.ckpt = ckpt
        self.task_id = task_id
        self.source_id = source_id
        self.is_filtered = is_filtered
        self.is_failed = is_failed
        self.leaf_resume = leaf_resume
        self.leaf_key: Callable[[T], str] = leaf_key or (lambda t: lineage_child(task_id(t), 0))
        self.on_nothing_to_do: NothingToDoPolicy = on_nothing_to_do
        self.skipped_sources: list[str] = []
        self.emitted_sources: dict[str, None] = {}
        self.leaves_skipped = 0
        self.records = 0
        self._leaves: dict[str, set[str]] = {}

    # ------------------------------------------------------------------ sources

    def pending_sources(self, sources: Iterable[str]) -> list[str]:
        """Return the sources that are not complete yet, applying the nothing-to-do policy.

        Use it to skip completed sources *before* reading them (the source stage then
        never produces them). Duplicates are dropped, order is kept.

        Parameters
        ----------
        sources : Iterable[str]
            Every source the run was asked to process.

        Returns
        -------
        list[str]
            The sources still to process; the others are added to
            :attr:`skipped_sources`.

        Raises
        ------
        NothingToDo
            If ``on_nothing_to_do="raise"`` and every one of at least one requested
            source is complete.
        """
        requested = list(dict.fromkeys(sources))
        pending = self.ckpt.pending(requested)
        if len(pending) < len(requested):
            left = set(pending)
            self.skipped_sources.extend(s for s in requested if s not in left)
        if requested and not pending:
            self._nothing_to_do(len(requested))
        return pending

    def _nothing_to_do(self, n: int) -> None:
        msg = (
            f"resumelog: all {n} requested sources are already complete in {self.ckpt.url}; "
            "nothing to do (reset them, or clear the checkpoint, to process them again)"
        )
        if self.on_nothing_to_do == "raise":
            raise NothingToDo(msg)
        if self.on_nothing_to_do == "warn":
            logger.warning(msg)

    def _drop_completed(self, outputs: Sequence[T]) -> list[T]:
        kept: list[T] = []
        n_real = 0
        for t in outputs:
            if self.is_filtered(t) or self.is_failed(t):
                kept.append(t)  # stage_deltas drops source-stage sentinels itself
                continue
            n_real += 1
            src = self.source_id(t)
            if src is not None and self.ckpt.is_completed(src):
                self.skipped_sources.append(src)
                continue
            kept.append(t)
        if n_real and not any(not (self.is_filtered(t) or self.is_failed(t)) for t in kept):
            self._nothing_to_do(n_real)
        return kept

    # ------------------------------------------------------------------ the hook

    def before_stage(self, stage_name: str, inputs: Sequence[T], *, is_source: bool, is_sink: bool) -> list[T]:
        """Return the inputs a stage must still process (leaf-level resume).

        Only acts with ``leaf_resume=True`` at the last stage (``is_sink`` and not
        ``is_source``): an input whose :attr:`leaf_key` is among
        ``ckpt.completed_leaves(source)`` was written by an earlier run; it is
        dropped and its ``-1`` is recorded in this run, so the source still drains.
        Elsewhere the inputs are returned unchanged.

        Parameters
        ----------
        stage_name : str
            The stage's name (unused; for symmetry with :meth:`after_stage`).
        inputs : Sequence[T]
            The tasks about to be processed.
        is_source, is_sink : bool
            The stage's position in the pipeline.

        Returns
        -------
        list[T]
            The inputs to process, in order.
        """
        if not (self.leaf_resume and is_sink and not is_source):
            return list(inputs)
        todo: list[T] = []
        for t in inputs:
            src = self.source_id(t)
            if src is not None:
                key = self.leaf_key(t)
                if key in self._completed_leaves(src):
                    self.writer.record(key, src, -1)
                    self.records += 1
                    self.leaves_skipped += 1
                    continue
            todo.append(t)
        return todo

    def _completed_leaves(self, source: str) -> set[str]:
        leaves = self._leaves.get(source)
        if leaves is None:
            leaves = self._leaves[source] = self.ckpt.completed_leaves(source)
        return leaves

    def after_stage(
        self,
        stage_name: str,
        inputs: Sequence[T],
        outputs: Sequence[T],
        *,
        is_source: bool,
        is_sink: bool,
    ) -> list[T]:
        """Record one stage batch and return the outputs to dispatch.

        At a source stage, outputs whose source is already complete are dropped first
        (and the nothing-to-do policy applies if that drops every real output). Then
        the records of :func:`stage_deltas` are written (source-stage positives as
        emissions) and, if any is positive, flushed before this returns.

        Parameters
        ----------
        stage_name : str
            Names the stage in the ambiguous-batch warning.
        inputs : Sequence[T]
            The batch the stage was called with (ignored at a source stage).
        outputs : Sequence[T]
            What it returned, sentinels included, in slot order.
        is_source, is_sink : bool
            The stage's position in the pipeline.

        Returns
        -------
        list[T]
            The real outputs (no sentinels, no completed sources), in order.

        Raises
        ------
        NothingToDo
            At a source stage with ``on_nothing_to_do="raise"``, if every real output
            is an already complete source.
        FlushError
            If the barrier flush fails; nothing must be dispatched then (the buffer is
            kept, a later flush retries).
        """
        outs = self._drop_completed(outputs) if is_source else list(outputs)
        records = stage_deltas(
            inputs,
            outs,
            is_source=is_source,
            is_sink=is_sink,
            task_id=self.task_id,
            source_id=self.source_id,
            is_filtered=self.is_filtered,
            is_failed=self.is_failed,
            stage_name=stage_name,
        )
        positive = False
        for key, src, delta in records:
            emission = is_emission(delta, is_source=is_source)
            self.writer.record(key, src, delta, emission=emission)
            if emission:
                self.emitted_sources[src] = None
            positive = positive or delta > 0
        self.records += len(records)
        if positive:
            self.writer.flush()  # durability barrier: +1 / +k on storage before dispatch
        return [t for t in outs if not (self.is_filtered(t) or self.is_failed(t))]


# ---------------------------------------------------------------------- the runner


@dataclass
class SourceStage:
    """The first stage of a :class:`Pipeline`: one root task per source.

    Parameters
    ----------
    sources : Iterable[str]
        The source ids (non-empty strings; duplicates are dropped).
    read : Callable[[str], object], optional
        Loads a source's payload (the root task's ``data``); default: the source id.
        Returning ``None`` or a :class:`NoneTask` drops the source without emitting it
        (it stays pending); returning a :class:`FailedTask` or raising fails the run
        with ``ValueError`` (NeMo Curator parity: a source stage must not fail a slot;
        the read's exception is chained). To filter a whole source so that it
        *completes*, filter it in a later stage. Returning a :class:`Task` uses it
        as the root task (its ids are overwritten). Only pending sources are read.
    name : str, optional
        The stage name. Default ``"source"``.
    """

    sources: Iterable[str]
    read: Callable[[str], object] | None = None
    name: str = "source"

    def __post_init__(self) -> None:
        ids = list(dict.fromkeys(self.sources))
        for s in ids:
            if not isinstance(s, str) or not s:
                raise ValueError(f"source ids must be non-empty strings, got {s!r:.80}")
        self.sources = ids


@dataclass
class Stage:
    """A non-source stage of a :class:`Pipeline`.

    Parameters
    ----------
    fn : Callable[[list[Task]], Sequence[object]]
        Maps a batch of input tasks to a list of outputs. Each output is a payload
        (wrapped in a :class:`Task`), a :class:`Task` (its ``data`` kept), ``None`` or
        a :class:`NoneTask` (a filtered slot) or a :class:`FailedTask` (a failed
        slot). An exception fails every slot of the batch. Return one output per
        input (positional) or, for a batch of one input, any number (a fan-out);
        other shapes cannot be attributed to sources (warned once; their sources
        stay pending). The runner sets the outputs' ids and source ids.
    name : str, optional
        The stage name; default: ``fn.__name__``. A :class:`Pipeline` suffixes a
        name that an earlier stage already uses with ``#<position>``.
    batch_size : int, optional
        Inputs per call. Default 1.
    """

    fn: Callable[[list[Task]], Sequence[object]]
    name: str = ""
    batch_size: int = 1

    def __post_init__(self) -> None:
        if not self.name:
            self.name = getattr(self.fn, "__name__", "") or type(self.fn).__name__
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")


@dataclass
class OutputSink:
    """Exactly-once outputs for a :class:`Pipeline`: each real output of the last stage
    is published with :meth:`Writer.output <resumelog.Writer.output>` (``key`` = its
    task id) *before* the stage's ``-1`` records are written, so that
    :func:`resumelog.outputs.committed` shows every output of a completed source
    exactly once. An output whose publish fails counts as a failed slot (its source
    reruns).

    Parameters
    ----------
    root : str
        The outputs root (local path or any fsspec URL).
    encode : Callable[[Task], bytes]
        The bytes of an output task.
    name : str or Callable[[Task], str], optional
        The output's name (the same on every attempt). Default ``"output"``.
    storage_options : dict, optional
        For ``root``; default: the checkpoint's if ``root`` uses its protocol.
    """

    root: str
    encode: Callable[[Task], bytes]
    name: str | Callable[[Task], str] = "output"
    storage_options: dict[str, object] | None = None

    def publish(self, w: Writer, outputs: Sequence[Task]) -> list[Task]:
        """Publish each real output; return ``outputs`` with failed publishes as failed slots."""
        out: list[Task] = []
        for t in outputs:
            if isinstance(t, (NoneTask, FailedTask)) or t.source_id is None:
                out.append(t)
                continue
            name = self.name(t) if callable(self.name) else self.name
            try:
                with w.output(
                    t.source_id,
                    self.root,
                    key=t.task_id,
                    name=name,
                    record=False,
                    storage_options=self.storage_options,
                ) as f:
                    f.write(self.encode(t))
            except Exception as exc:  # noqa: BLE001 - a failed output fails its slot; the source reruns
                logger.warning("resumelog: publishing output %r failed: %r; its source stays pending", t.task_id, exc)
                out.append(FailedTask(t.task_id, t.source_id, exc))
                continue
            out.append(t)
        return out


@dataclass
class RunResult:
    """What one :meth:`Pipeline.run` did.

    Attributes
    ----------
    run_id : str
        The run the records were written in.
    requested : list[str]
        The source stage's sources.
    skipped : list[str]
        Already complete before this run: not read, not processed.
    processed : list[str]
        Emitted in this run (entered the pipeline).
    completed : list[str]
        Processed and complete after this run.
    failed : list[str]
        Requested, not skipped and not complete after this run: they rerun next time.
    leaves_skipped : int
        Last-stage inputs skipped by leaf-level resume.
    outputs : list[Task]
        Real outputs of the last stage.
    stage_calls : dict[str, int]
        Number of calls of each stage (the source stage counts one call per read).
    """

    run_id: str
    requested: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    processed: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    leaves_skipped: int = 0
    outputs: list[Task] = field(default_factory=list)
    stage_calls: dict[str, int] = field(default_factory=dict)

    @property
    def nothing_to_do(self) -> bool:
        """Every requested source was already complete."""
        return bool(self.requested) and len(self.skipped) == len(self.requested)

    def summary(self) -> str:
        """One line: requested, skipped, processed, completed, failed (and leaves)."""
        line = (
            f"requested {len(self.requested)}, skipped {len(self.skipped)} already complete, "
            f"processed {len(self.processed)}, completed {len(self.completed)}, failed {len(self.failed)}"
        )
        if self.leaves_skipped:
            line += f", skipped {self.leaves_skipped} leaves written by an earlier run"
        return line


class Pipeline:
    """A minimal in-process Curator-style runner with resumelog checkpointing.

    Stages run one after the other over all tasks (breadth first), in batches of
    each stage's ``batch_size``, through a :class:`StageCheckpointer`: completed
    sources are never read, ``+1``/``+k`` records are durable before their tasks run
    in the next stage, the last stage's real outputs are drained.

    Parameters
    ----------
    stages : Sequence[SourceStage | Stage | Callable]
        A :class:`SourceStage` first, then stages; a plain callable is a
        :class:`Stage` with ``batch_size=1``. A pipeline of only a source stage
        completes each source it reads (its read is the work).
    checkpoint : Checkpoint
        The checkpoint; its ``run_id`` is the run the records go to.
    leaf_resume : bool, optional
        Use lineage ids and skip, at the last stage, leaves an earlier run wrote
        (stages must be deterministic). Default ``False``.
    on_nothing_to_do : {"warn", "raise", "ignore"}, optional
        When every requested source is already complete. Default ``"warn"``.
    writer_id : str, optional
        The writer id of the writer :meth:`run` opens (default ``<host>-<pid>``).
    outputs : OutputSink, optional
        Publish the last stage's real outputs exactly once (see :class:`OutputSink`).
        Not with ``leaf_resume=True`` (``ValueError``): a skipped leaf's output
        belongs to the earlier run that wrote it, not to the run that completes the
        source.
    """

    def __init__(
        self,
        stages: Sequence[SourceStage | Stage | Callable[[list[Task]], Sequence[object]]],
        *,
        checkpoint: Checkpoint,
        leaf_resume: bool = False,
        on_nothing_to_do: NothingToDoPolicy = "warn",
        writer_id: str | None = None,
        outputs: OutputSink | None = None,
    ) -> None:
        if not stages or not isinstance(stages[0], SourceStage):
            raise TypeError("the first stage of a Pipeline must be a SourceStage")
        if leaf_resume and outputs is not None:
            # a leaf skipped as written by an earlier run has its output under that run's
            # name, and only the outputs of the run that completes a source are committed
            raise ValueError(
                "leaf_resume=True cannot be combined with outputs=: the outputs of leaves an earlier run "
                "wrote would not be among the completing run's (and output GC would delete them)"
            )
        self.source: SourceStage = stages[0]
        rest: list[Stage] = []
        names = {stages[0].name}
        for s in stages[1:]:
            if isinstance(s, SourceStage):
                raise TypeError("only the first stage may be a SourceStage")
            stage = s if isinstance(s, Stage) else Stage(s)
            if stage.name in names:  # e.g. two lambdas: keep names (warnings, call counts) apart
                stage = dataclasses.replace(stage, name=f"{stage.name}#{len(rest) + 1}")
            names.add(stage.name)
            rest.append(stage)
        self.stages = rest
        self.ckpt = checkpoint
        self.leaf_resume = leaf_resume
        self.on_nothing_to_do: NothingToDoPolicy = on_nothing_to_do
        self.writer_id = writer_id
        self.outputs = outputs
        self._root: Callable[[str], str] = _lineage_root if leaf_resume else root_id
        self._child: Callable[[str, int], str] = lineage_child if leaf_resume else child_id

    def run(self, writer: Writer | None = None) -> RunResult:
        """Run every pending source through the pipeline once.

        Parameters
        ----------
        writer : Writer, optional
            Write the records with this writer (left open, flushed at the end);
            default: open one from the checkpoint and close it at the end.

        Returns
        -------
        RunResult
            What was skipped, processed, completed and failed.

        Raises
        ------
        NothingToDo
            With ``on_nothing_to_do="raise"``, if every requested source is complete.
        """
        own = writer is None
        w = self.ckpt.writer(self.writer_id) if writer is None else writer
        try:
            result = self._run(w)
            w.flush()
        finally:
            if own:
                w.close()  # flushes: only non-positive records can be buffered here
        self.ckpt.refresh()
        result.completed = [s for s in result.processed if self.ckpt.is_completed(s)]
        done = set(result.completed) | set(result.skipped)
        result.failed = [s for s in result.requested if s not in done]
        return result

    def _run(self, w: Writer) -> RunResult:
        cp: StageCheckpointer[Task] = StageCheckpointer(
            w, self.ckpt, leaf_resume=self.leaf_resume, on_nothing_to_do=self.on_nothing_to_do
        )
        src = self.source
        result = RunResult(run_id=w.run_id, requested=list(src.sources))
        calls = result.stage_calls
        pending = cp.pending_sources(result.requested)
        roots: list[Task] = []
        for s in pending:
            calls[src.name] = calls.get(src.name, 0) + 1
            roots.append(self._read(s))
        single = not self.stages
        if single and self.outputs is not None:
            roots = self.outputs.publish(w, roots)  # before the records that count them
        tasks = cp.after_stage(src.name, [], roots, is_source=True, is_sink=single)
        for k, stage in enumerate(self.stages):
            is_sink = k == len(self.stages) - 1
            todo = cp.before_stage(stage.name, tasks, is_source=False, is_sink=is_sink)
            calls.setdefault(stage.name, 0)
            tasks = []
            for i in range(0, len(todo), stage.batch_size):
                batch = todo[i : i + stage.batch_size]
                calls[stage.name] += 1
                outputs = self._call(stage, batch, i // stage.batch_size)
                if is_sink and self.outputs is not None:
                    outputs = self.outputs.publish(w, outputs)  # before the records that count them
                tasks += cp.after_stage(stage.name, batch, outputs, is_source=False, is_sink=is_sink)
        result.skipped = list(dict.fromkeys(cp.skipped_sources))
        result.processed = list(cp.emitted_sources)
        result.leaves_skipped = cp.leaves_skipped
        result.outputs = tasks
        return result

    def _read(self, source: str) -> Task:
        rid = self._root(source)
        if self.source.read is None:
            return Task(rid, source, source)
        try:
            payload = self.source.read(source)
        except Exception as exc:  # noqa: BLE001 - a failed read fails the source, like a failed slot
            logger.warning("resumelog: reading source %r failed: %r; it stays pending", source, exc)
            return FailedTask(rid, source, exc)
        return _as_task(payload, rid, source)

    def _call(self, stage: Stage, batch: list[Task], n: int) -> list[Task]:
        try:
            raw = stage.fn(list(batch))
        except Exception as exc:  # noqa: BLE001 - a stage error fails its slots; the sources rerun
            logger.warning(
                "resumelog: stage %r failed on %d task(s) (first %r): %r; their sources stay pending",
                stage.name,
                len(batch),
                batch[0].task_id,
                exc,
            )
            raw = [FailedTask("", None, exc) for _ in batch]
        if raw is None or isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
            raise TypeError(
                f"stage {stage.name!r} must return a list of outputs (None for a filtered slot), got {type(raw).__name__}"
            )
        n_in, n_out = len(batch), len(raw)
        out: list[Task] = []
        for j, o in enumerate(raw):
            if n_in == 1:
                tid, src = self._child(batch[0].task_id, j), batch[0].source_id
            elif n_in == n_out:
                tid, src = self._child(batch[j].task_id, 0), batch[j].source_id
            else:  # ambiguous M->K: not attributable to a source, so not tracked
                tid, src = self._child(f"{stage.name}#{n}", j), None
            out.append(_as_task(o, tid, src))
        return out


def _as_task(payload: object, task_id: str, source_id: str | None) -> Task:
    """Wrap a stage output as a task with the runner's ids (``None`` = filtered)."""
    if payload is None:
        return NoneTask(task_id, source_id)
    if isinstance(payload, Task):
        return dataclasses.replace(payload, task_id=task_id, source_id=source_id)
    return Task(task_id, source_id, payload)
