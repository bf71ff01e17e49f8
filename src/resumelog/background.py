"""Compaction on a timer, in a thread of the process that drives the pipeline.

A job that never compacts leaves its next start to fold every record it ever wrote
(about 1.4 µs each in Python: 5M records, ~7 s); one that compacts every few minutes
leaves a snapshot, which opens in milliseconds, plus the records of the last few
minutes. :meth:`Checkpoint.compact_in_background <resumelog.Checkpoint.compact_in_background>`
starts one of these; ``resumelog compact --every`` is the same loop as a sidecar process.

Compaction is safe while writers run (``docs/format.md`` §7: a snapshot is created with
put-if-absent; a concurrent compactor loses and reloads), so the thread needs no
coordination with them. It never touches the checkpoint's view: the next
:meth:`~resumelog.Checkpoint.refresh` simply finds a newer snapshot and a shorter tail.
"""

from __future__ import annotations

import logging
import threading
import time

from resumelog import compactor
from resumelog.storage import Store

logger = logging.getLogger("resumelog")

__all__ = ["BackgroundCompaction"]


class BackgroundCompaction:
    """A daemon thread compacting ``store`` every ``every`` seconds until :meth:`stop`.

    A failed compaction is logged (a warning) and counted, and the next one is tried at
    the next tick: a storage outage never stops the thread, and the job it runs
    beside never sees the error. Use it as a context manager, or stop it (also done by
    :meth:`Checkpoint.close <resumelog.Checkpoint.close>`).
    """

    def __init__(
        self,
        store: Store,
        every: float,
        *,
        keep_runs: int | None = None,
        protect_runs: frozenset[str] = frozenset(),
        expect_epoch: bytes | None = None,
    ) -> None:
        if not every > 0:
            raise ValueError(f"every must be a positive number of seconds, got {every!r}")
        self.store = store
        self.every = float(every)
        self.keep_runs = keep_runs
        self.protect_runs = protect_runs
        self.expect_epoch = expect_epoch
        """Compact only while the checkpoint is this epoch (see :func:`resumelog.compactor.compact`)."""
        self.compactions = 0
        """Compactions that completed (including those with nothing new to fold)."""
        self.snapshots_written = 0
        """Compactions that published a new snapshot."""
        self.failures = 0
        """Compactions that raised."""
        self.last_result: compactor.CompactResult | None = None
        self.last_error: BaseException | None = None
        """The exception of the most recent failed compaction (cleared by a success)."""
        self.last_seconds: float | None = None
        """How long the most recent compaction took."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resumelog-compaction", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        """Whether the thread is alive (``False`` once :meth:`stop` returned)."""
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.run_once()

    def run_once(self) -> compactor.CompactResult | None:
        """One compaction now, in the calling thread (what each tick does); ``None`` if
        it failed (see :attr:`last_error`)."""
        t0 = time.perf_counter()
        try:
            r = compactor.compact(
                self.store,
                keep_runs=self.keep_runs,
                protect_runs=self.protect_runs,
                progress=False,
                expect_epoch=self.expect_epoch,
            )
        except Exception as exc:  # noqa: BLE001 - counted and logged; the next tick retries
            self.failures += 1
            self.last_error = exc
            logger.warning(
                "resumelog: background compaction of %s failed (retried in %.0f s): %s", self.store.url, self.every, exc
            )
            return None
        finally:
            self.last_seconds = time.perf_counter() - t0
        self.compactions += 1
        self.snapshots_written += r.written
        self.last_result = r
        self.last_error = None
        return r

    def stop(self, timeout: float | None = None) -> bool:
        """Stop the thread; a compaction under way is finished first (up to ``timeout``
        seconds). Returns whether the thread has ended."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def __enter__(self) -> BackgroundCompaction:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (
            f"BackgroundCompaction({self.store.url!r}, every={self.every:g}, {state}, "
            f"compactions={self.compactions}, failures={self.failures})"
        )
