"""A loopback HTTP fault-injection proxy for the S3 tests (no mocks: real server behind it).

Clients talk to the proxy; the proxy forwards each request to the real S3 server and
injects faults chosen by a plan: an HTTP 500/503 instead of forwarding, a connection
reset before forwarding, a reset *after* forwarding (the server applied the request,
the client never hears back: the "ambiguous success" case), or a delay. Every request
and every injected fault is counted. It listens on 127.0.0.1 only and stops with the
context manager.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

FAULTS = ("http500", "http503", "reset_before", "reset_after", "delay")

Plan = Callable[[str, str], "str | None"]
"""(method, path) -> a fault name from FAULTS, or None to forward untouched."""


@dataclass
class ProxyStats:
    requests: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)


class FaultProxy:
    """Use :func:`fault_proxy`; ``plan`` may be replaced at any time."""

    def __init__(self, upstream: str, plan: Plan | None = None, delay: float = 0.3) -> None:
        self.upstream = upstream.rstrip("/")
        self.plan: Plan = plan or (lambda m, p: None)
        self.delay = delay
        self.stats = ProxyStats()
        self.port = 0
        self._lock = threading.Lock()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _choose(self, method: str, path: str) -> str | None:
        with self._lock:
            self.stats.requests[method] += 1
            fault = self.plan(method, path)
            if fault is not None:
                self.stats.faults[fault] += 1
            return fault

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        fault = self._choose(request.method, request.path_qs)
        if fault == "http500" or fault == "http503":
            code = 500 if fault == "http500" else 503
            xml = (
                f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>"
                f"{'InternalError' if code == 500 else 'SlowDown'}</Code><Message>injected</Message></Error>"
            )
            return web.Response(status=code, body=xml.encode(), content_type="application/xml")
        if fault == "reset_before":
            _abort(request)
            raise ConnectionResetError("injected reset before forwarding")
        if fault == "delay":
            await asyncio.sleep(self.delay)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        headers["Host"] = request.headers.get("Host", "")
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.request(
                request.method, self.upstream + request.path_qs, data=body, headers=headers, allow_redirects=False
            ) as up,
        ):
            payload = await up.read()
            if fault == "reset_after":
                _abort(request)
                raise ConnectionResetError("injected reset after the server applied the request")
            drop = {"content-length", "transfer-encoding", "content-encoding", "connection"}
            return web.Response(
                status=up.status, body=payload, headers={k: v for k, v in up.headers.items() if k.lower() not in drop}
            )


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:  # RST instead of FIN: the client sees a reset
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        transport.abort()


@contextmanager
def fault_proxy(upstream: str, plan: Plan | None = None, delay: float = 0.3) -> Iterator[FaultProxy]:
    """Run a :class:`FaultProxy` on 127.0.0.1 in a background thread."""
    proxy = FaultProxy(upstream, plan, delay)
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)  # injected resets are expected
    loop = asyncio.new_event_loop()
    started = threading.Event()
    state: dict[str, object] = {}

    async def start() -> None:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", proxy.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        proxy.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        state["runner"] = runner

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        started.set()
        loop.run_forever()

    t = threading.Thread(target=run, daemon=True, name="fault-proxy")
    t.start()
    if not started.wait(10):
        raise RuntimeError("fault proxy did not start")
    try:
        yield proxy
    finally:
        runner = state.get("runner")
        if isinstance(runner, web.AppRunner):
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)
        loop.close()


def every(n: int, fault: str, methods: tuple[str, ...] = ("PUT",), limit: int | None = None) -> Plan:
    """A plan injecting ``fault`` into every ``n``-th request of ``methods`` (at most ``limit``)."""
    seen = Counter[str]()
    done = [0]

    def plan(method: str, path: str) -> str | None:
        if method not in methods:
            return None
        seen[method] += 1
        if seen[method] % n == 0 and (limit is None or done[0] < limit):
            done[0] += 1
            return fault
        return None

    return plan
