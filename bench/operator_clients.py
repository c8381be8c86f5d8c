"""The clients around the operator in bench.operator, each in a process of its own.

In a cluster the runtime pods and the people applying Adapters are other processes (other
machines) than the API server. Run as threads of the benchmark beside the emulated API
server, they shared one interpreter lock with it: at 10,000 Adapters the benchmark's own
process, not the operator, set the pace. Here the stub pods serve from one child process
and the Adapters are created from a few others (as `kubectl apply` from a few shells).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from aiohttp import web

from loraplex.contracts.adapters import (
    AdapterRegistration,
    AdapterRemoval,
    AdapterState,
    AdapterStatus,
)
from loraplex.operator import naming
from tests.integration.operator.kube import Kube

STUB_ADDRESS = "127.0.1.{}"  # from .100 up: clear of the integration tests' pods
METHODS = ("GET", "PUT", "DELETE")
SPAWN = multiprocessing.get_context("spawn")  # no fork of a process running threads


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stub_app(held: dict[str, dict], calls) -> web.Application:
    """One pod's admin API: loads at once, counts each call by method (`calls`)."""

    async def listing(request: web.Request) -> web.Response:
        calls[METHODS.index("GET")] += 1
        return web.json_response({"adapters": list(held.values())})

    async def put(request: web.Request) -> web.Response:
        calls[METHODS.index("PUT")] += 1
        body, name = await request.json(), request.match_info["name"]
        registration = AdapterRegistration.model_validate(body, strict=False)
        held[name] = AdapterStatus(
            name=name, source=registration.source, state=AdapterState.HOST,
            pinned=registration.pinned, rank=8, size_bytes=1 << 20,
            digest=f"sha256:{name}").model_dump(mode="json")
        return web.json_response(held[name])

    async def delete(request: web.Request) -> web.Response:
        calls[METHODS.index("DELETE")] += 1
        name = request.match_info["name"]
        held.pop(name, None)
        return web.json_response(
            AdapterRemoval(name=name, outcome="removed").model_dump(mode="json"))

    app = web.Application()
    app.router.add_get("/v1/adapters", listing)
    app.router.add_put("/v1/adapters/{name}", put)
    app.router.add_delete("/v1/adapters/{name}", delete)
    return app


def _serve_stubs(count: int, calls, ready) -> None:
    async def serve() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        runners = []
        for index in range(count):
            runner = web.AppRunner(_stub_app({}, calls), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, STUB_ADDRESS.format(100 + index),
                              naming.RUNTIME_PORT).start()
            runners.append(runner)
        ready.set()
        await stop.wait()
        for runner in runners:
            await runner.cleanup()

    asyncio.run(serve())


class StubPods:
    """Admin APIs that load instantly and count what they were asked, in one process."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._calls = SPAWN.Array("q", len(METHODS), lock=False)  # one writer: the child
        self._ready = SPAWN.Event()
        self._process = SPAWN.Process(target=_serve_stubs, daemon=True,
                                      args=(count, self._calls, self._ready))

    def urls(self) -> list[str]:
        return [f"http://{STUB_ADDRESS.format(100 + i)}:{naming.RUNTIME_PORT}"
                for i in range(self.count)]

    def start(self) -> StubPods:
        self._process.start()
        if not self._ready.wait(60):
            raise RuntimeError("the stub pods did not start")
        return self

    def stop(self) -> None:
        if self._process.is_alive():
            self._process.terminate()
        self._process.join(10)

    def calls(self) -> dict[str, int]:
        return {method: count for method, count in zip(METHODS, self._calls, strict=True)
                if count}

    def cpu_s(self) -> float:
        return process_cpu_s(self._process.pid)


_kube: Kube | None = None  # one client per applier process


def _connect(url: str, namespace: str) -> None:
    global _kube
    _kube = Kube(url, namespace, timeout_s=60.0)


def _create(body: dict) -> None:
    _kube.create("adapters", body)


def _pid(_: int) -> int:
    time.sleep(0.2)  # long enough that every idle worker takes one
    return os.getpid()


class Appliers:
    """A few processes creating Adapters, started (and connected) before the clock starts."""

    def __init__(self, url: str, namespace: str, workers: int) -> None:
        self.workers = workers
        self._pool = ProcessPoolExecutor(workers, mp_context=SPAWN, initializer=_connect,
                                         initargs=(url, namespace))

    def start(self) -> Appliers:
        """Returns once every worker has started and connected."""
        while len(set(self._pool.map(_pid, range(self.workers)))) < self.workers:
            pass
        return self

    def create_all(self, bodies: list[dict]) -> None:
        list(self._pool.map(_create, bodies, chunksize=16))

    def stop(self) -> None:
        self._pool.shutdown(cancel_futures=True)
