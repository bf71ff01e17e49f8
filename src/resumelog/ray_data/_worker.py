"""The journal writer a Ray worker process records into, flushed by a background thread.

Write tasks and accounted map batches of one process share one writer per
checkpoint handle (the one :func:`resumelog.ray.worker_writer` opens); their
non-positive records are made durable by a flusher thread right after the task
returns, positive ones synchronously.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from resumelog.checkpoint import WriterHandle
from resumelog.journal import Writer
from resumelog.ray import _entry as _process_entry

logger = logging.getLogger("resumelog")


class _WriterEntry:
    """This process's writer for one handle, and a thread that flushes it in the background.

    Write tasks record their (non-positive) deltas and return; the flusher thread makes
    them durable right after, overlapping the PUT/fsync with the next task's work.
    Design §4 allows it: losing a non-positive record only leaves a source pending (it
    reruns). Positive deltas (a fan-out) are flushed synchronously (the barrier).
    """

    def __init__(self, writer: Writer, lock: threading.RLock) -> None:
        self.writer = writer
        self.lock = lock  # Writer.record is not thread-safe: every use holds this
        self.cond = threading.Condition(self.lock)
        self.dirty = False
        self.thread: threading.Thread | None = None

    def commit(self, records: Sequence[tuple[str, str, int]], completed: Sequence[str] = (), *, sync: bool) -> None:
        if not records and not completed:
            return
        with self.lock:
            for key, source, delta in records:
                self.writer.record(key, source, delta)
            for c in completed:
                self.writer.complete(c)
            if sync:
                self.writer.flush()
                return
            self.dirty = True
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="resumelog-flush", daemon=True)
                self.thread.start()
            self.cond.notify()

    def _run(self) -> None:
        while True:
            failed = False
            with self.lock:
                while not self.dirty:
                    self.cond.wait()
                self.dirty = False
                try:
                    self.writer.flush()
                except Exception:  # kept in the buffer by the writer; retried below
                    logger.warning("resumelog: background flush failed; retrying", exc_info=True)
                    self.dirty = failed = True
            if failed:
                time.sleep(1.0)


_WRITERS: dict[int, _WriterEntry] = {}
_WRITERS_LOCK = threading.Lock()


def _worker_writer(handle: WriterHandle) -> _WriterEntry:
    """This process's writer for ``handle``: the one :func:`resumelog.ray.worker_writer`
    opens (one journal stream per process, whichever module records), with its lock,
    plus this module's background flusher."""
    shared = _process_entry(handle)
    with _WRITERS_LOCK:
        entry = _WRITERS.get(id(shared))
        if entry is None or entry.writer is not shared.writer:
            entry = _WRITERS[id(shared)] = _WriterEntry(shared.writer, shared.lock)
        return entry
