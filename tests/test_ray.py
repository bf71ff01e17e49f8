"""``resumelog.ray`` on a real local Ray cluster: per-worker writers, the ``completes``
durability barrier, failures, retries after a worker crash, actor restarts, reruns that
submit nothing, an S3 checkpoint, and the ``examples/ray_tasks.py`` example."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import resumelog
import resumelog.ray as rray
from resumelog.errors import NothingToDo
from resumelog.testing.ray import init_local_ray

ray = pytest.importorskip("ray")

from s3_support import S3_KINDS  # noqa: E402 - after the importorskip

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parent.parent

# Ray workers cannot import this test module (tests/ is not on their path): ship the
# task functions and actor classes defined here by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def ray_cluster() -> Any:
    """A private local Ray instance (xdist workers each start their own)."""
    init_local_ray(num_cpus=2, log_to_driver=False, object_store_memory=80 * 1024 * 1024)
    yield ray
    ray.shutdown()


def sources(n: int, prefix: str = "src") -> list[str]:
    return [f"{prefix}-{k:04d}" for k in range(n)]


def fresh(url: str, **kw: Any) -> resumelog.Checkpoint:
    """A new view of the checkpoint, as another process or a rerun would open it."""
    return resumelog.open(url, **kw)


# ---------------------------------------------------------------------- remote functions


@ray.remote
@rray.completes("handle", source="src")
def convert(src: str, handle: resumelog.WriterHandle, outdir: str) -> int:
    Path(outdir, src).write_text(src)
    return os.getpid()


@ray.remote(max_retries=0)
@rray.completes("handle", source="src")
def fail_odd(src: str, handle: resumelog.WriterHandle) -> str:
    if int(src.rsplit("-", 1)[1]) % 2:
        raise ValueError(f"boom {src}")
    return src


@ray.remote
@rray.completes("handle")  # the return value is the list of sources finished
def convert_batch(srcs: list[str], handle: resumelog.WriterHandle, skip: list[str]) -> list[str]:
    return [s for s in srcs if s not in skip]


@ray.remote(max_retries=0)
def record_one_by_one(srcs: list[str], handle: resumelog.WriterHandle, fail_at: int) -> None:
    for i, s in enumerate(srcs):
        if i == fail_at:
            raise RuntimeError(f"stage failed at {s}")
        rray.record_completed(handle, s)


@ray.remote(max_retries=2)
@rray.completes("handle", source="src")
def crash_once(src: str, handle: resumelog.WriterHandle, marker: str, ledger: str) -> int:
    with open(ledger, "a") as f:
        f.write(f"{src} {os.getpid()}\n")
    if not os.path.exists(marker):
        Path(marker).touch()
        os._exit(1)  # the worker process dies mid-task, before anything is recorded
    return os.getpid()


@ray.remote(max_restarts=1, max_task_retries=1, num_cpus=0)
class Recorder:
    def __init__(self, handle: resumelog.WriterHandle) -> None:
        self.handle = handle  # ``completes("handle")`` finds it on self

    @rray.completes("handle", source="srcs")
    def process(self, srcs: list[str]) -> tuple[int, str, str]:
        w = rray.worker_writer(self.handle)
        return os.getpid(), w.writer_id, w.incarnation

    def pid(self) -> int:
        return os.getpid()

    def emit_unflushed(self, src: str) -> int:
        rray.worker_writer(self.handle).emit(src)  # buffered only: never flushed
        return rray.worker_writer(self.handle).buffered


# ---------------------------------------------------------------------- tests without Ray


_FORK_SCRIPT = """
import os, sys
import resumelog, resumelog.ray as rray
assert "ray" not in sys.modules, "import resumelog.ray imported ray"
ckpt = resumelog.open(sys.argv[1], run_id="r1")
h = ckpt.handle()
w = rray.worker_writer(h)
assert rray.worker_writer(h) is w and w.writer_id == resumelog.paths.default_writer_id()
pid = os.fork()
if pid == 0:
    w2 = rray.worker_writer(h)
    ok = w2 is not w and w2.incarnation != w.incarnation and w2.writer_id.endswith(str(os.getpid()))
    rray.record_completed(h, "from-child")
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
assert rray.worker_writer(h) is w
rray.record_completed(h, ["from-parent-1", "from-parent-2"])
assert "ray" not in sys.modules
print("ok", w.writer_id, w.incarnation)
"""


def test_worker_writer_is_cached_per_process_reopened_after_fork_without_importing_ray(tmp_path: Path) -> None:
    url = str(tmp_path / "ckpt")
    out = subprocess.run(
        [sys.executable, "-c", _FORK_SCRIPT, url], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert out.returncode == 0, out.stdout + out.stderr
    _, parent_id, parent_inc = out.stdout.split()
    ck = fresh(url)
    assert set(ck.completed) == {"from-child", "from-parent-1", "from-parent-2"}
    streams = {(s.writer_id, s.incarnation) for s in ck.status().writers}
    assert len(streams) == 2 and (parent_id, parent_inc) in streams  # one stream per process


def test_handle_writer_id_is_used_and_a_closed_writer_is_replaced(tmp_path: Path) -> None:
    ckpt = resumelog.open(str(tmp_path / "ckpt"), run_id="r1")
    h = ckpt.handle("etl-7")
    w = rray.worker_writer(h)
    assert w.writer_id == "etl-7" and rray.worker_writer(h) is w
    assert rray.worker_writer(ckpt.handle()) is not w  # another writer id, another writer
    w.close()
    w2 = rray.worker_writer(h)
    assert w2 is not w and not w2.closed and w2.writer_id == "etl-7" and w2.incarnation != w.incarnation
    assert rray.record_completed(h, (s for s in ["a", "b"])) == ["a", "b"]
    assert set(fresh(ckpt.url).completed) == {"a", "b"}


def test_completes_modes_and_errors_in_process(tmp_path: Path) -> None:
    ckpt = resumelog.open(str(tmp_path / "ckpt"), run_id="r1")
    h = ckpt.handle("local")

    @rray.completes(h, source=lambda item, scale: f"item-{item}")
    def by_callable(item: int, scale: int = 2) -> int:
        return item * scale

    @rray.completes(h)
    def by_return(n: int) -> Any:
        return [f"ret-{k}" for k in range(n)] if n >= 0 else None

    @rray.completes(h, source="name")
    async def by_async(name: str) -> str:
        await asyncio.sleep(0)
        return name.upper()

    @rray.completes(h, source="name")
    def raises(name: str) -> None:
        raise KeyError(name)

    assert by_callable(3) == 6 and by_callable.__name__ == "by_callable"
    assert by_return(2) == ["ret-0", "ret-1"]
    assert asyncio.run(by_async("async-1")) == "ASYNC-1"
    with pytest.raises(KeyError):
        raises("never")
    with pytest.raises(TypeError, match="returned None"):
        by_return(-1)
    assert set(fresh(ckpt.url).completed) == {"item-3", "ret-0", "ret-1", "async-1"}  # flushed at return

    with pytest.raises(TypeError, match="no parameter 'nope'"):
        rray.completes(h, source="nope")(lambda x: x)
    with pytest.raises(TypeError, match="no parameter 'handle'"):
        rray.completes("handle", source="x")(lambda x: x)
    with pytest.raises(TypeError, match=r"under @ray\.remote"):
        rray.completes(h, source="src")(convert)
    with pytest.raises(TypeError, match="generator"):

        @rray.completes(h, source="x")
        def gen(x: str) -> Any:
            yield x

    class NoHandle:
        @rray.completes("handle", source="x")
        def m(self, x: str) -> str:
            return x

    with pytest.raises(TypeError, match=r"self\.handle"):
        NoHandle().m("y")
    with pytest.raises(TypeError, match="one-shot iterator"):
        rray.completes(h)(lambda: iter(["z"]))()
    assert "never" not in fresh(ckpt.url).completed and "y" not in fresh(ckpt.url).completed


def test_submit_pending_submits_only_pending_sources_in_order(tmp_path: Path, caplog: Any) -> None:
    ckpt = resumelog.open(str(tmp_path / "ckpt"), run_id="r1")
    with ckpt.writer() as w:
        w.complete_many(["s1", "s3"])
    calls: list[tuple[str, Any]] = []
    refs = rray.submit_pending(ckpt, ["s0", "s1", "s2", "s0", "s3"], lambda s, **kw: calls.append((s, kw)) or s, x=1)
    assert list(refs) == ["s0", "s2"] and calls == [("s0", {"x": 1}), ("s2", {"x": 1})]
    with caplog.at_level(logging.WARNING, logger="resumelog"):
        assert rray.submit_pending(ckpt, ["s1", "s3"], lambda s: calls.append((s, None))) == {}
    assert "nothing to do" in caplog.text and len(calls) == 2
    with pytest.raises(NothingToDo):
        rray.submit_pending(ckpt, ["s1"], lambda s: s, on_nothing_to_do="raise")
    assert rray.submit_pending(ckpt, [], lambda s: s, on_nothing_to_do="raise") == {}


# ---------------------------------------------------------------------- tests on Ray


def test_forty_tasks_one_writer_per_worker_durable_when_result_visible(ray_cluster: Any, tmp_path: Path) -> None:
    url = str(tmp_path / "ckpt")
    ckpt = resumelog.open(url)
    srcs = sources(40)
    refs = rray.submit_pending(ckpt, srcs, convert, handle=ckpt.handle(), outdir=str(tmp_path))
    assert list(refs) == srcs
    src_of = {ref: s for s, ref in refs.items()}
    reader = fresh(url)
    pids: dict[str, int] = {}
    waiting = list(refs.values())
    while waiting:
        ready, waiting = ray.wait(waiting, num_returns=1)
        s = src_of[ready[0]]
        pids[s] = ray.get(ready[0])
        reader.refresh()
        # the barrier: the result is visible, so the completion is durable (the writer
        # would not flush on its own: 10 s / 200k records / 1 MiB)
        assert reader.is_completed(s), s
    ck = fresh(url)
    assert set(ck.completed) == set(srcs) and ck.pending(srcs) == []
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("src-")) == srcs
    # one writer (one stream) per worker process, named ray-<node>-<pid>, reused by its tasks
    node = ray.get_runtime_context().get_node_id()[:8]
    per_pid = collections.Counter(pids.values())
    streams = ck.status().writers
    assert sorted(s.writer_id for s in streams) == sorted(f"ray-{node}-{p}" for p in per_pid)
    assert {s.writer_id: s.records for s in streams} == {f"ray-{node}-{p}": 2 * n for p, n in per_pid.items()}
    assert sum(per_pid.values()) == 40 and max(per_pid.values()) > 1  # a worker ran several tasks, one stream


def test_failed_tasks_record_nothing_returned_and_partial_batches_do(ray_cluster: Any, tmp_path: Path) -> None:
    url = str(tmp_path / "ckpt")
    ckpt = resumelog.open(url)
    h = ckpt.handle()
    srcs = sources(10)
    refs = rray.submit_pending(ckpt, srcs, fail_odd, handle=h)
    for k, (s, ref) in enumerate(refs.items()):
        if k % 2:
            with pytest.raises(ValueError, match=f"boom {s}"):
                ray.get(ref)
        else:
            assert ray.get(ref) == s
    batch = sources(6, "b")
    assert ray.get(convert_batch.remote(batch, h, skip=["b-0001", "b-0004"])) == [
        "b-0000",
        "b-0002",
        "b-0003",
        "b-0005",
    ]
    steps = sources(5, "step")
    with pytest.raises(RuntimeError, match="stage failed at step-0003"):
        ray.get(record_one_by_one.remote(steps, h, fail_at=3))
    ck = fresh(url)
    assert set(ck.completed) == set(srcs[0::2]) | {"b-0000", "b-0002", "b-0003", "b-0005"} | set(steps[:3])
    assert ck.status().anomalies == 0
    # the rerun submits exactly the failures
    assert list(rray.submit_pending(ck, srcs, lambda s: s)) == srcs[1::2]


def test_task_retried_after_worker_crash_completes_once_and_rerun_skips_it(ray_cluster: Any, tmp_path: Path) -> None:
    url = str(tmp_path / "ckpt")
    ckpt = resumelog.open(url, run_id="run1")
    marker, ledger = tmp_path / "crashed", tmp_path / "attempts.txt"
    refs = rray.submit_pending(ckpt, ["only"], crash_once, handle=ckpt.handle(), marker=str(marker), ledger=str(ledger))
    pid = ray.get(refs["only"])  # attempt 1 killed its worker; Ray retried on a new one
    attempts = [line.split() for line in ledger.read_text().splitlines()]
    assert marker.exists() and [a[0] for a in attempts] == ["only", "only"]
    assert int(attempts[0][1]) != pid == int(attempts[1][1])  # the crashed process never came back
    ck = fresh(url)
    st = ck.status()
    assert ck.is_completed("only") and st.completed == 1 and st.anomalies == 0
    assert [(w.records, w.writer_id.endswith(f"-{pid}")) for w in st.writers] == [(2, True)]  # one +1/-1 pair
    # a rerun (new run) submits nothing: no task runs, the ledger does not grow
    rerun = fresh(url, run_id="run2")
    n = rray.submit_pending(
        rerun,
        ["only"],
        crash_once,
        handle=rerun.handle(),
        marker=str(marker),
        ledger=str(ledger),
        on_nothing_to_do="ignore",
    )
    assert n == {} and len(ledger.read_text().splitlines()) == 2


def test_actor_restart_opens_a_new_incarnation_and_keeps_what_was_flushed(ray_cluster: Any, tmp_path: Path) -> None:
    url = str(tmp_path / "ckpt")
    ckpt = resumelog.open(url)
    actor = Recorder.remote(ckpt.handle())
    first, second = sources(5, "a"), sources(5, "b")
    pid1, wid1, inc1 = ray.get(actor.process.remote(first))
    assert ray.get(actor.process.remote(["a-0000"]))[2] == inc1  # same process, same writer
    assert ray.get(actor.emit_unflushed.remote("lost")) == 1
    ray.kill(actor, no_restart=False)  # force-kill; Ray restarts it (max_restarts=1)
    deadline = time.monotonic() + 60  # the kill is asynchronous: wait for the new process
    while True:
        try:
            if ray.get(actor.pid.remote(), timeout=60) != pid1:
                break
        except ray.exceptions.RayActorError:
            pass  # restarting
        assert time.monotonic() < deadline, "the actor was not restarted"
        time.sleep(0.2)
    pid2, wid2, inc2 = ray.get(actor.process.remote(second), timeout=60)
    assert pid2 != pid1 and inc2 != inc1 and wid2 == wid1.replace(str(pid1), str(pid2))
    assert ray.get(actor.process.remote(["a-0001"]))[1:] == (wid2, inc2)  # a duplicate completion
    ck = fresh(url)
    st = ck.status()
    assert set(ck.completed) == set(first) | set(second)  # everything flushed before the kill survived
    assert st.anomalies == 0 and st.pending == 0  # the duplicate is idempotent; the unflushed emit is gone
    assert {(w.writer_id, w.incarnation) for w in st.writers} == {(wid1, inc1), (wid2, inc2)}
    ray.kill(actor, no_restart=True)


def test_rerun_of_a_finished_job_submits_no_task(ray_cluster: Any, tmp_path: Path) -> None:
    url = str(tmp_path / "ckpt")
    srcs = sources(12)
    half = resumelog.open(url)
    first = rray.submit_pending(half, srcs[:6], convert, handle=half.handle(), outdir=str(tmp_path))
    ray.get(list(first.values()))
    submitted: list[str] = []

    def submit(s: str) -> Any:
        submitted.append(s)
        return convert.remote(s, rerun.handle(), str(tmp_path))

    rerun = fresh(url)
    ray.get(list(rray.submit_pending(rerun, srcs, submit).values()))
    assert submitted == srcs[6:]
    again = fresh(url)
    with pytest.raises(NothingToDo):
        rray.submit_pending(again, srcs, submit, on_nothing_to_do="raise")
    assert rray.submit_pending(again, srcs, submit, on_nothing_to_do="ignore") == {}
    assert submitted == srcs[6:] and set(again.completed) == set(srcs)


@pytest.mark.s3
@pytest.mark.parametrize("s3_server", S3_KINDS[:1], indirect=True)  # one S3 kind is enough here
def test_tasks_on_an_s3_checkpoint(ray_cluster: Any, s3_url: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    url, opts = s3_url
    ckpt = resumelog.open(url, storage_options=opts)
    srcs = sources(8)
    refs = rray.submit_pending(ckpt, srcs, convert, handle=ckpt.handle(), outdir=str(tmp_path))
    ray.get(list(refs.values()))
    ck = fresh(url, storage_options=opts)
    assert set(ck.completed) == set(srcs)
    assert all(w.writer_id.startswith("ray-") for w in ck.status().writers)
    assert rray.submit_pending(ck, srcs, convert, on_nothing_to_do="ignore") == {}


# ---------------------------------------------------------------------- the example


def test_example_ray_tasks_crash_then_rerun(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RESUMELOG_RUN_ID", "SLURM_ARRAY_JOB_ID", "RAY_ADDRESS")}
    cmd = [sys.executable, str(ROOT / "examples" / "ray_tasks.py"), "--workdir", str(tmp_path)]
    proc = subprocess.run(
        [*cmd, "--sources", "8", "--crash-at", "3", "--delay", "0.05"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "phase 1: skipped 0 already complete, submitted 8" in out
    assert "phase 1: src-0003 failed: WorkerCrashedError" in out
    assert "phase 1: completed 7/8; failed 1: src-0003" in out
    m = re.search(r"the crashed worker \(pid \d+\) had finished (\d+) sources; (\d+) are recorded", out)
    assert m is not None and m.group(1) == m.group(2), out
    assert "phase 2 (rerun): skipped 7 already complete, submitted 1: src-0003" in out
    assert "complete 8/8, outputs 8/8" in out
    assert set(fresh(str(tmp_path / "checkpoint")).completed) == set(sources(8))
