"""Cost of an exactly-once output (``Writer.output``) against writing the output plainly.

    python benchmarks/bench_outputs.py [--smoke] [--server seaweedfs|moto] [--no-s3]

Prints JSON lines (``bench: "outputs"``), one per (storage, size, variant):

* ``plain``            — local: ``os.makedirs`` + ``open(path, "wb").write(data)``; S3: one
  ``put_object`` (``fs.pipe_file``); to the same names as the outputs
  (``<run>/<source>/~/output``: SeaweedFS's filer, like a local disk, creates a
  directory per new prefix, which costs as much as the write itself);
* ``plain+fsync``      — local only: the same, then ``fsync`` of the file (durable, as
  the protocol's publish is);
* ``exactly-once``     — ``with w.output(source, root) as f: f.write(data)``: spool,
  put-if-absent publish, ``complete(source)`` and a flush per output;
* ``exactly-once, flush every 100`` — ``flush=False`` and one ``w.flush()`` per 100
  outputs (a crash then reruns at most the last 100 sources).

Each row has ``ms_per_output`` (wall time / outputs, one process) and, on S3,
``requests_per_output`` (every S3 call the checkpoint and output stores made).

On S3 it also publishes one large spool file (``bench: "outputs_publish_memory"``, 256 MiB;
32 MiB with ``--smoke``) two ways and prints the peak of Python's heap during the
publish (``tracemalloc``, which sees every buffer botocore and aiohttp allocate):

* ``streamed``   — ``FsspecStore.put_if_absent_file``: a create-only multipart upload,
  parts read from the file as they go (default 16 MiB parts, 4 at a time);
* ``read whole`` — the former way (``Store.put_if_absent_file``, the base class): the
  file read into memory, one conditional ``PUT``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import resumelog
from resumelog.outputs import output_store

SIZES = {
    "smoke": {"n": 20, "n_s3": 10, "sizes": [4096], "large": 32 << 20},
    "full": {"n": 400, "n_s3": 200, "sizes": [4096, 1 << 20], "large": 256 << 20},
}


def emit(**row: Any) -> None:
    print(json.dumps({"bench": "outputs", **row}), flush=True)


def exactly_once(url: str, root: str, opts: dict[str, Any], n: int, data: bytes, batch: int) -> tuple[float, int]:
    ck = resumelog.open(url, storage_options=opts, run_id=f"bench-{uuid.uuid4().hex[:8]}")
    out = output_store(root, opts)
    w = ck.writer("bench")
    with w.output("warm-up", root) as f:  # connections, directories: not counted
        f.write(data)
    reqs0 = sum(ck.store.requests.values()) + sum(out.requests.values())
    t0 = time.perf_counter()
    for i in range(n):
        with w.output(f"src-{i:06d}", root, flush=batch == 1) as f:
            f.write(data)
        if batch > 1 and (i + 1) % batch == 0:
            w.flush()
    w.flush()
    dt = time.perf_counter() - t0
    reqs = sum(ck.store.requests.values()) + sum(out.requests.values()) - reqs0
    w.close()
    return dt, reqs


def local(n: int, size: int, workdir: str) -> None:
    data = os.urandom(size)
    plain = os.path.join(workdir, "plain")
    os.makedirs(plain)
    for variant, sync in (("plain", False), ("plain+fsync", True)):
        t0 = time.perf_counter()
        for i in range(n):
            d = os.path.join(plain, variant, f"src-{i:06d}", "~")
            os.makedirs(d)
            with open(os.path.join(d, "output"), "wb") as f:
                f.write(data)
                if sync:
                    f.flush()
                    os.fsync(f.fileno())
        emit(system="plain", storage="local", variant=variant, size=size, n=n,
             ms_per_output=round((time.perf_counter() - t0) / n * 1000, 3))  # fmt: skip
    for variant, batch in (("exactly-once", 1), ("exactly-once, flush every 100", 100)):
        tag = uuid.uuid4().hex[:6]
        dt, _ = exactly_once(
            os.path.join(workdir, f"ck-{tag}"), os.path.join(workdir, f"out-{tag}"), {}, n, data, batch
        )
        emit(system="resumelog", storage="local", variant=variant, size=size, n=n,
             ms_per_output=round(dt / n * 1000, 3))  # fmt: skip


def publish_memory(kind: str, opts: dict[str, Any], bucket: str, size: int) -> None:
    """Peak Python heap while one ``size``-byte file is published, streamed and read whole."""
    import tracemalloc

    from resumelog.storage import FsspecStore, Store

    fd, path = tempfile.mkstemp(prefix="resumelog-bench-large-")
    try:
        with os.fdopen(fd, "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(size >> 20):
                f.write(block)
        for variant in ("streamed", "read whole"):
            store = FsspecStore(f"s3://{bucket}/large-{uuid.uuid4().hex[:8]}", opts)
            store.put_if_absent("warm-up", b"x")  # the client and its connection: not measured
            tracemalloc.start()
            t0 = time.perf_counter()
            if variant == "streamed":
                store.put_if_absent_file("output", path)
            else:
                Store.put_if_absent_file(store, "output", path)
            dt = time.perf_counter() - t0
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            emit_row = {"bench": "outputs_publish_memory", "system": "resumelog", "storage": f"s3-{kind}"}
            print(json.dumps({**emit_row, "variant": variant, "size_mib": size >> 20,
                              "peak_heap_mib": round(peak / (1 << 20), 1), "seconds": round(dt, 2),
                              "requests": dict(store.requests)}), flush=True)  # fmt: skip
            store.clear()
    finally:
        os.unlink(path)


def s3(kind: str, n: int, sizes: list[int], large: int) -> None:
    from bench_s3 import BUCKET, S3Unavailable, s3_server

    try:
        cm = s3_server(kind)
        opts = cm.__enter__()
    except S3Unavailable as exc:
        emit(system="skipped", storage=f"s3-{kind}", reason=str(exc))
        return
    try:
        store = output_store(f"s3://{BUCKET}/plain", opts)
        fs = store.fs  # type: ignore[attr-defined]
        for size in sizes:
            data = os.urandom(size)
            fs.pipe_file(f"{BUCKET}/plain/warm-up", data)
            store.requests.clear()
            store._hook()  # type: ignore[attr-defined]
            t0 = time.perf_counter()
            for i in range(n):
                fs.pipe_file(f"{BUCKET}/plain/{size}/src-{i:06d}/~/output", data)
            dt = time.perf_counter() - t0
            emit(system="plain", storage=f"s3-{kind}", variant="plain", size=size, n=n,
                 ms_per_output=round(dt / n * 1000, 3), requests_per_output=1.0)  # fmt: skip
            for variant, batch in (("exactly-once", 1), ("exactly-once, flush every 100", 100)):
                tag = uuid.uuid4().hex[:6]
                dt, reqs = exactly_once(f"s3://{BUCKET}/ck-{tag}", f"s3://{BUCKET}/out-{tag}", opts, n, data, batch)
                emit(system="resumelog", storage=f"s3-{kind}", variant=variant, size=size, n=n,
                     ms_per_output=round(dt / n * 1000, 3), requests_per_output=round(reqs / n, 3))  # fmt: skip
        publish_memory(kind, opts, BUCKET, large)
    finally:
        cm.__exit__(None, None, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes")
    ap.add_argument("--quick", action="store_true", help="(the default size; accepted for run.py)")
    ap.add_argument("--server", default="seaweedfs", choices=["seaweedfs", "moto"])
    ap.add_argument("--no-s3", action="store_true")
    args = ap.parse_args()
    size = SIZES["smoke" if args.smoke else "full"]
    workdir = tempfile.mkdtemp(prefix="resumelog-bench-outputs-")
    try:
        for s in size["sizes"]:
            d = os.path.join(workdir, str(s))
            os.makedirs(d)
            local(size["n"], s, d)
        if not args.no_s3:
            s3(args.server, size["n_s3"], size["sizes"], size["large"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
