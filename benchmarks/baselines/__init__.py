"""Systems measured by ``benchmarks/run.py``: resumelog and the baselines users would pick instead.

* :mod:`.common`           the shared workload (Curator-style task ids), child processes, sizes
* :mod:`.resumelog_sys`    resumelog itself (local, memory, S3)
* :mod:`.curator_lmdb`     NeMo Curator 1.4.0's LMDB ``ResumabilityActor`` (runs in its own venv)
* :mod:`.object_per_event` one small JSON object per event on an fsspec path (local, S3)
* :mod:`.sqlite_wal`       one SQLite file in WAL mode
"""
