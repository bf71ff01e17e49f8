"""S3 figures against a loopback S3 server: requests, bytes and startup, resumelog vs naive.

    python benchmarks/bench_s3.py [--quick | --smoke] [--server moto|seaweedfs]

Prints JSON lines (``run.py`` calls :func:`run` and puts them in its table):

* ``s3_write``    PUTs and bytes per 1M records written (default flush policy, 1 MiB
  segments), 1 writer and 64 writers; and the single-writer record rate;
* ``s3_startup``  time and requests (GET/LIST) of a resuming process: with 64 writers'
  journals (nothing compacted), after compaction + GC, after retiring the run;
* ``s3_compact``  compaction time and its requests;
* ``s3_vs_naive`` the same number of events done the naive way (one small JSON object
  per event, ``completed/<task>.json`` + ``expected_increments/<hash>_<task>.json``,
  every object read back at startup) side by side with resumelog, and the ratios
  (targets: >= 100x fewer requests, >= 20x faster startup at 100k events).

The server is ``resumelog.testing.s3server.run_s3_server(kind)`` (moto by default: a
Python server, ~250 small requests/s, so the naive side is kept to a few thousand events
in ``--quick``; request counts are exact at any size and scale linearly). Without that
module, ``moto_server -H 127.0.0.1 -p PORT`` is started directly. Loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from baselines.common import RECORDS_PER_SOURCE, ChildError, best_of, run_child, source_id

BUCKET = "resumelog-bench"
PROBE = source_id(7)

SIZES: dict[str, dict[str, Any]] = {
    # sources written by W writers for the request figures / the startup figures
    # (smoke: no single-writer run, no retired state; every child costs ~1 s of imports)
    "smoke": {
        "w64_sources": 2_000,
        "w64": 4,
        "w1_sources": 0,
        "events": 250,
        "naive_write_events": 25,
        "reps": 1,
        "retired": False,
    },
    "quick": {
        "w64_sources": 1_000_000,
        "w64": 64,
        "w1_sources": 200_000,
        "events": 10_000,
        "naive_write_events": 500,
        "reps": 2,
    },
    "full": {
        "w64_sources": 1_000_000,
        "w64": 64,
        "w1_sources": 1_000_000,
        "events": 100_000,
        "naive_write_events": 2_000,
        "reps": 3,
    },
}


class S3Unavailable(RuntimeError):
    """No S3 server could be started (the message says why)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def s3_server(kind: str = "moto") -> Iterator[dict[str, Any]]:
    """Storage options for a bucket ``BUCKET`` on a loopback S3 server of ``kind``."""
    try:
        import s3fs
    except ImportError as exc:
        raise S3Unavailable("s3fs is not installed (pip install 'resumelog[s3]')") from exc
    try:
        from resumelog.testing.s3server import S3ServerError, run_s3_server
    except ImportError:
        run_s3_server = None  # type: ignore[assignment]
    if run_s3_server is not None:
        try:
            cm = run_s3_server(kind)
            srv = cm.__enter__()
        except (S3ServerError, ValueError) as exc:
            raise S3Unavailable(f"{kind}: {str(exc).splitlines()[0]}") from exc
        try:
            srv.create_bucket(BUCKET)
            yield srv.storage_options()
        finally:
            cm.__exit__(None, None, None)
        return
    # fallback: moto's standalone server, started here
    exe = shutil.which("moto_server")
    if kind != "moto" or exe is None:
        raise S3Unavailable(f"no resumelog.testing.s3server module and no moto_server for {kind!r}")
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    opts = {
        "key": "bench",
        "secret": "bench",
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"},
    }
    try:
        import s3fs

        deadline = time.monotonic() + 30
        while True:
            try:
                fs = s3fs.S3FileSystem(**opts, skip_instance_cache=True, use_listings_cache=False)
                fs.call_s3("create_bucket", Bucket=BUCKET)
                break
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise S3Unavailable(f"moto_server did not answer: {exc}") from exc
                time.sleep(0.2)
        yield opts
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _reqs(d: dict[str, Any]) -> dict[str, int]:
    r: dict[str, int] = dict(d.get("requests") or {})
    return r


def _puts(r: dict[str, int]) -> int:
    return sum(v for k, v in r.items() if k in ("PutObject", "UploadPart", "CompleteMultipartUpload"))


def _gets(r: dict[str, int]) -> int:
    return sum(v for k, v in r.items() if k in ("GetObject", "HeadObject"))


def _lists(r: dict[str, int]) -> int:
    return sum(v for k, v in r.items() if k.startswith("ListObjects"))


def run(opts: dict[str, Any], sizes: dict[str, Any], emit: Callable[..., None]) -> None:
    """Every S3 figure, as rows passed to ``emit(**row)``."""
    reps = sizes["reps"]

    def rl(func: str, url: str, env: dict[str, str] | None = None, **kw: Any) -> dict[str, Any]:
        return run_child("resumelog_sys", func, {"url": url, "storage_options": opts, **kw}, timeout=1800, env=env)

    # ---- single-writer record rate and PUTs per 1M records, 1 writer and W writers
    if sizes["w1_sources"]:
        _throughput(rl, sizes["w1_sources"], emit)
    for w, n in ((1, sizes["w1_sources"]), (sizes["w64"], sizes["w64_sources"])):
        if not n:
            continue
        url = f"s3://{BUCKET}/rl-w{w}"
        wr = rl("write_journals", url, n=n, writers=w)
        r = _reqs(wr)
        per = 1_000_000 / wr["records"]
        emit(
            bench="s3_write",
            system="resumelog",
            writers=w,
            n=n,
            records=wr["records"],
            puts=_puts(r),
            puts_per_1m_records=round(_puts(r) * per, 1),
            bytes=wr["journal_bytes"],
            bytes_per_1m_records=round(wr["journal_bytes"] * per),
            requests=r,
        )
        if w == 1:
            continue
        # ---- startup: 64 writers' journals, compacted, retired
        st = best_of(1 if n >= 1_000_000 else reps, lambda url=url: rl("startup", url, probe=PROBE), "open_s")
        _startup_row(emit, "journal", n, w, st)
        c = rl("compact", url, collect=True)
        emit(
            bench="s3_compact",
            system="resumelog",
            n=n,
            writers=w,
            records=c["records"],
            seconds=c["seconds"],
            records_per_s=c["records_per_s"],
            peak_rss_mb=c["peak_rss_mb"],
            snapshot_bytes=c["snapshot_bytes"],
            requests=_reqs(c),
        )
        st = best_of(reps, lambda url=url: rl("startup", url, probe=PROBE), "open_s")
        _startup_row(emit, "snapshot", n, w, st, snapshot_bytes=c["snapshot_bytes"])
        # the same open with the local snapshot cache warm (one cold open first): a
        # ranged GET of the snapshot's header instead of the whole object
        with tempfile.TemporaryDirectory(prefix="resumelog-bench-cache-") as cache:
            env = {"RESUMELOG_CACHE_DIR": cache}
            rl("startup", url, probe=PROBE, env=env)
            st = best_of(reps, lambda url=url, env=env: rl("startup", url, probe=PROBE, env=env), "open_s")
        _startup_row(emit, "snapshot-cached", n, w, st, snapshot_bytes=c["snapshot_bytes"])
        if not sizes.get("retired", True):
            continue
        c = rl("compact", url, collect=True, keep_runs=0)
        st = best_of(reps, lambda url=url: rl("startup", url, probe=PROBE), "open_s")
        _startup_row(emit, "snapshot-retired", n, w, st, snapshot_bytes=c["snapshot_bytes"])

    # ---- side by side with the naive approach at `events` records
    events = sizes["events"]
    n = max(1, events // RECORDS_PER_SOURCE)
    wn = max(1, min(sizes["w64"], n))
    url = f"s3://{BUCKET}/side-{events}"
    wr = rl("write_journals", url, n=n, writers=wn)
    j = best_of(reps, lambda: rl("startup", url, probe=PROBE), "open_s")
    rl("compact", url, collect=True)
    s = best_of(reps, lambda: rl("startup", url, probe=PROBE), "open_s")

    def ope(func: str, **kw: Any) -> dict[str, Any]:
        return run_child("object_per_event", func, {"protocol": "s3", "storage_options": opts, **kw}, timeout=3600)

    root = f"{BUCKET}/naive-{events}"
    nw = max(1, min(n, sizes["naive_write_events"] // RECORDS_PER_SOURCE))
    tw = ope("throughput", root=root, n=nw)
    emit(
        bench="throughput",
        system="object-per-event",
        storage="s3",
        variant="sequential",
        n=nw,
        records=tw["records"],
        records_per_s=tw["records_per_s"],
        requests=tw["requests"],
        durable="each event (PUT)",
    )
    if n > nw:
        ope("populate", root=root, lo=nw, hi=n)
    ns = best_of(1, lambda: ope("startup", root=root, probe=PROBE), "open_s")
    naive_write_puts = n * RECORDS_PER_SOURCE + n  # one per event + one per completion
    naive_start = _gets(_reqs(ns)) + _lists(_reqs(ns))
    rows = [
        (f"resumelog ({wn} journals)", _puts(_reqs(wr)), j),
        ("resumelog (snapshot)", _puts(_reqs(wr)), s),
    ]
    for label, puts, st in rows:
        start_reqs = _gets(_reqs(st)) + _lists(_reqs(st))
        emit(
            bench="s3_vs_naive",
            system=label,
            events=n * RECORDS_PER_SOURCE,
            writers=wn,
            write_requests=puts,
            startup_requests=start_reqs,
            startup_s=st["open_s"],
            naive_write_requests=naive_write_puts,
            naive_startup_requests=naive_start,
            naive_startup_s=ns["open_s"],
            requests_ratio=round((naive_write_puts + naive_start) / max(puts + start_reqs, 1), 1),
            startup_ratio=round(ns["open_s"] / st["open_s"], 1),
        )
    emit(
        bench="s3_startup",
        system="object-per-event",
        state="objects",
        n=n,
        writers=1,
        open_s=ns["open_s"],
        peak_rss_mb=ns["peak_rss_mb"],
        objects=ns["objects"],
        gets=_gets(_reqs(ns)),
        lists=_lists(_reqs(ns)),
        requests=_reqs(ns),
        per_object_ms=round(ns["open_s"] / max(ns["objects"], 1) * 1e3, 3),
    )


def _throughput(rl: Callable[..., dict[str, Any]], n: int, emit: Callable[..., None]) -> None:
    t = rl("throughput", f"s3://{BUCKET}/thr", n=n)
    emit(
        bench="throughput",
        system="resumelog",
        storage="s3",
        variant="buffered",
        n=n,
        records=t["records"],
        seconds=t["seconds"],
        records_per_s=t["records_per_s"],
        flushes=t["flushes"],
        flush_p99_ms=t["flush_p99_ms"],
        requests=t["requests"],
        durable="each flush (PUT)",
    )


def _startup_row(emit: Callable[..., None], state: str, n: int, w: int, st: dict[str, Any], **extra: Any) -> None:
    r = _reqs(st)
    emit(
        bench="s3_startup",
        system="resumelog",
        state=state,
        n=n,
        writers=w,
        open_s=st["open_s"],
        open_s_all=st.get("open_s_all"),
        peak_rss_mb=st["peak_rss_mb"],
        completed=st["completed"],
        gets=_gets(r),
        lists=_lists(r),
        requests=r,
        **extra,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the sizes run.py --quick uses")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (seconds)")
    ap.add_argument("--server", default="moto", choices=["moto", "seaweedfs"])
    ap.add_argument("--events", type=int, help="events for the naive side-by-side (default by mode)")
    a = ap.parse_args()
    sizes = dict(SIZES["smoke" if a.smoke else "quick" if a.quick else "full"])
    if a.events:
        sizes["events"] = a.events

    def emit(**row: Any) -> None:
        print(json.dumps(row), flush=True)

    # every figure but the "snapshot-cached" row reads from the server, as a new machine would
    os.environ["RESUMELOG_CACHE_DIR"] = "off"
    try:
        with s3_server(a.server) as opts:
            run(opts, sizes, emit)
    except S3Unavailable as exc:
        emit(bench="skipped", system="s3", reason=str(exc))
    except ChildError as exc:
        emit(bench="error", system="s3", reason=str(exc)[-500:])
        sys.exit(1)


if __name__ == "__main__":
    main()
