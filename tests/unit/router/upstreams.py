"""Upstreams for the router's unit tests: a scripted pod (aiohttp) that reports what the
router polls and answers like a pod, and raw sockets that break the HTTP exchange at a
chosen byte, which no real pod can be made to do on cue. End-to-end behaviour against
real runtime servers lives in tests/integration/test_router_*.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, generate_latest


@contextlib.asynccontextmanager
async def serving(app: web.Application, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Serve `app` on a free loopback port, as `main` does; yields the base URL."""
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    try:
        yield f"http://{host}:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@dataclass
class ScriptedPod:
    """A pod that echoes requests and reports scripted readiness, queue and adapters."""

    name: str
    ready_status: int = 200
    waiting: int = 0
    adapters: dict[str, str] = field(default_factory=dict)  # name -> state
    generate_status: int = 200
    received: list[dict] = field(default_factory=list)
    stream_gate: asyncio.Event = field(default_factory=asyncio.Event)
    stream_cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/v1/adapters", self._adapters)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/generate", self._generate)
        app.router.add_post("/v1/completions", self._generate)
        app.router.add_post("/generate_stream", self._stream)
        return app

    async def _ready(self, request: web.Request) -> web.Response:
        return web.json_response({}, status=self.ready_status)

    async def _metrics(self, request: web.Request) -> web.Response:
        registry = CollectorRegistry()
        gauge = Gauge("vllm:num_requests_waiting", "queue", ["model_name"], registry=registry)
        gauge.labels("base").set(self.waiting)
        Gauge("vllm:num_requests_running", "batch", ["model_name"], registry=registry)
        return web.Response(body=generate_latest(registry), content_type="text/plain")

    async def _adapters(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer s3cret":
            return web.json_response({"error": "no", "error_type": "unauthorized"}, status=401)
        return web.json_response({"adapters": [{"name": name, "state": state}
                                               for name, state in self.adapters.items()]})

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": "base-model", "object": "model", "owned_by": self.name}]
        data += [{"id": name, "object": "model", "parent": "base-model"}
                 for name in self.adapters]
        return web.json_response({"object": "list", "data": data})

    async def _generate(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received.append({"path": request.path, "body": body,
                              "headers": request.headers.copy()})
        adapter = (body.get("parameters") or {}).get("adapter_id")
        if adapter and adapter != "base-model":  # loaded on demand, as a pod does
            self.adapters.setdefault(adapter, "device")
        return web.json_response({"pod": self.name, "body": body}, status=self.generate_status,
                                 headers={"X-Pod": self.name})

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        self.received.append({"path": request.path, "body": await request.json()})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "X-Pod": self.name})
        await response.prepare(request)
        try:
            await response.write(b'data: {"token": 1}\n\n')
            await asyncio.wait_for(self.stream_gate.wait(), timeout=10)
            await response.write(b'data: {"token": 2}\n\n')
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionError):
            self.stream_cancelled.set()
            raise
        return response


@contextlib.asynccontextmanager
async def raw_upstream(reply: bytes) -> AsyncIterator[str]:
    """A socket that reads one request, writes `reply` verbatim and hangs up."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        await reader.readexactly(length)
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


def sse_head() -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def closed_port_url() -> str:
    """A loopback URL nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def sse_events(text: str) -> list[dict]:
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]
