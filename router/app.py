"""The router's HTTP face: the pods' inference routes, proxied, and its own health,
readiness, metrics and aggregated model list.

`RouterService` ties the parts together for one process: the pod pool and its sources
(static list, placement file or ConfigMap), the pod poller, the proxy and one shared
connection pool to the pods. Its `application()` is a plain aiohttp app, so tests and
`main` serve it the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from loraplex.router.config import RouterConfig
from loraplex.router.configmap_watch import ConfigMapWatch
from loraplex.router.metrics import RouterMetrics
from loraplex.router.placement_file import PlacementFile
from loraplex.router.poller import PodPoller
from loraplex.router.pool import PodPool
from loraplex.router.proxy import Proxy, error_response

INFERENCE_ROUTES = ("/", "/generate", "/generate_stream", "/invocations", "/v1/completions",
                    "/v1/chat/completions", "/embed", "/v1/embeddings", "/classify",
                    "/classify_batch", "/tokenize")
# Sent to the pods as-is: no Accept-Encoding the client did not ask for, no invented
# Content-Type, so bodies come back exactly as the pod would have answered the client.
SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
# Below the keep-alive timeout of common servers (uvicorn: 5 s), so that the router
# rarely reuses a connection the pod is closing.
KEEPALIVE_S = 4.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own 404/405/413 answers, in the LoRAX error body."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        error_type = "not_found" if error.status == 404 else "validation"
        return error_response(error.status, error.reason, error_type)


def pod_session(config: RouterConfig) -> aiohttp.ClientSession:
    """The one connection pool to the pods: unlimited connections, bounded waits, bodies
    passed through still encoded."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout_s,
                                      sock_read=config.read_timeout_s),
        auto_decompress=False, skip_auto_headers=SKIP_AUTO_HEADERS)


class RouterService:
    def __init__(self, config: RouterConfig, *, rng: random.Random | None = None) -> None:
        self.config = config
        self.metrics = RouterMetrics()
        self.pool = PodPool(config.pods, policy=config.policy,
                            spill_threshold=config.spill_threshold, rng=rng)
        self._configmap_watch = (
            ConfigMapWatch.from_config(config, self.pool.set_table, self.metrics)
            if config.placements_configmap else None)
        self._session: aiohttp.ClientSession | None = None
        self._proxy: Proxy | None = None

    def application(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes,
                              middlewares=[json_errors])
        app.cleanup_ctx.append(self._lifecycle)
        app.router.add_get("/health", self.health)
        app.router.add_get("/ready", self.ready)
        app.router.add_get("/metrics", self.metrics_page)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/info", self._forwarder("/info"))
        for route in INFERENCE_ROUTES:
            app.router.add_post(route, self._forwarder(route))
        return app

    async def _lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        config = self.config
        self._session = pod_session(config)
        self._proxy = Proxy(self.pool, self._session, self.metrics,
                            max_attempts=config.max_attempts)
        loops = [PodPoller(self.pool, self._session, self.metrics, interval_s=config.pod_poll_s,
                           timeout_s=config.pod_poll_timeout_s,
                           admin_token=config.admin_token).run()]
        if config.placements_file:
            placement_file = PlacementFile(config.placements_file, self.pool.set_table,
                                           self.metrics, interval_s=config.placements_poll_s)
            placement_file.check()  # the first table before the first request
            loops.append(placement_file.run())
        if self._configmap_watch is not None:
            loops.append(self._configmap_watch.run())
        tasks = [asyncio.create_task(loop) for loop in loops]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._session.close()

    def _forwarder(self, route: str) -> Handler:
        async def forward(request: web.Request) -> web.StreamResponse:
            if self._proxy is None:
                return error_response(503, "router is starting", "unavailable")
            return await self._proxy.forward(request, route)

        return forward

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(self, request: web.Request) -> web.Response:
        pods = self.pool.pods
        body = {"pods": len(pods), "usable": sum(pod.usable for pod in pods),
                "adapters_placed": len(self.pool.table.adapters)}
        if not pods:
            return error_response(503, "no pod known yet", "unavailable")
        return web.json_response(body)

    async def metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def models(self, request: web.Request) -> web.Response:
        """The union of the pods' `/v1/models` (each pod lists the base and its adapters),
        in first-seen order, one entry per id."""
        pods = [pod for pod in self.pool.pods if pod.usable] or self.pool.pods
        session = self._session
        if session is None or not pods:
            return error_response(503, "no pod known yet", "unavailable")
        timeout = aiohttp.ClientTimeout(total=self.config.connect_timeout_s + 5.0)

        async def listing(url: str) -> list[dict[str, Any]] | None:
            try:
                async with session.get(url + "/v1/models", timeout=timeout) as response:
                    if response.status != 200:
                        return None
                    document = await response.json(content_type=None)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                return None
            data = document.get("data") if isinstance(document, dict) else None
            return [entry for entry in data if isinstance(entry, dict)] if isinstance(
                data, list) else None

        listings = await asyncio.gather(*(listing(pod.url) for pod in pods))
        if all(entries is None for entries in listings):
            return error_response(502, "no pod answered GET /v1/models", "unavailable")
        merged: dict[str, dict[str, Any]] = {}
        for entries in listings:
            for entry in entries or ():
                merged.setdefault(str(entry.get("id")), entry)
        return web.json_response({"object": "list", "data": list(merged.values())})
