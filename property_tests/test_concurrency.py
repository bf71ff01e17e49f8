"""Real threads: compactors racing each other and GC while writers flush.

The interleavings of the state machine (``compactors_race``) are deterministic; this
test lets the OS schedule. Whatever the schedule, once everything is flushed and one
last compaction ran, every completion is there and nothing else.
"""

from __future__ import annotations

import threading

import pytest

import resumelog
from resumelog import compactor
from resumelog.testing.stateful import local_store_factory, memory_store_factory

FACTORIES = {"memory": memory_store_factory(), "local": local_store_factory()}


@pytest.mark.parametrize("backend", sorted(FACTORIES))
@pytest.mark.parametrize("round_", range(3))
def test_compactors_gc_and_writers_in_threads(backend, round_):
    store, cleanup = FACTORIES[backend]()
    try:
        ck = resumelog.open(store, run_id="run1")
        errors: list[BaseException] = []
        done = threading.Event()
        expected: set[str] = set()

        def writer(i: int) -> None:
            w = ck.handle().writer(f"w{i}")
            for j in range(40):
                src = f"w{i}-s{j}"
                if j % 3:
                    w.complete(src)
                    expected.add(src)
                else:
                    w.emit(src)  # never drains: must never complete
                if j % 4 == 0:
                    w.flush()
            w.close()

        def maintainer(retain: int) -> None:
            while not done.is_set():
                try:
                    compactor.compact(store, progress=False)
                    compactor.gc(store, retain=retain, grace=0)
                except BaseException as exc:
                    errors.append(exc)
                    return

        writers = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
        maintainers = [threading.Thread(target=maintainer, args=(r,)) for r in (1, 2, 3)]
        for t in writers + maintainers:
            t.start()
        for t in writers:
            t.join()
        done.set()
        for t in maintainers:
            t.join()
        assert errors == []
        compactor.compact(store, progress=False)
        assert set(resumelog.open(store, run_id="run2").completed) == expected
    finally:
        cleanup()
