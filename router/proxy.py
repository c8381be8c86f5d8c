"""Relays one request to a pod and its response back, byte for byte, chunk by chunk.

A request may be tried on several pods: a pod that cannot be reached, drops the
connection, answers 503 (draining, not ready) or dies before the first body byte came
back is left for the next one, up to `max_attempts`. The router commits its own response
only when the first body chunk arrives, so "before the response starts" covers a pod that
sent headers and died. Once bytes have gone to the client there is no going back: a pod
that breaks a Server-Sent Events stream is reported with one last `data: {"error",
"error_type"}` event, any other cut-off response by closing the connection (so the client
sees a truncated body, never a complete-looking one). Nothing waits forever: connecting
and each read from a pod have timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from loraplex.router.metrics import RouterMetrics
from loraplex.router.pod import Pod
from loraplex.router.pool import PodPool
from loraplex.router.request_adapter import requested_adapter
from loraplex.router.routing import Choice

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "host", "content-length",
    "expect",  # the router answered any 100-continue itself; the body is in hand
})
RETRY_STATUSES = frozenset({429, 503})  # overloaded or draining: another pod may serve it
UPSTREAM_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


def error_response(status: int, message: str, error_type: str,
                   headers: dict[str, str] | None = None) -> web.Response:
    """The LoRAX error body, which both lorax-client and our pods use."""
    return web.json_response({"error": message, "error_type": error_type}, status=status,
                             headers=headers)


def upstream_headers(request: web.Request) -> CIMultiDict[str]:
    """The client's headers minus hop-by-hop ones, plus the client in X-Forwarded-For."""
    headers = CIMultiDict(
        (name, value) for name, value in request.headers.items()
        if name.lower() not in HOP_BY_HOP)
    if request.remote:
        earlier = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{earlier}, {request.remote}" if earlier else request.remote
    return headers


def sse_error_event(message: str) -> bytes:
    payload = json.dumps({"error": message, "error_type": "incomplete_generation"})
    return f"data: {payload}\n\n".encode()


@dataclass(frozen=True)
class Retry:
    """An attempt that failed before anything reached the client."""

    reason: str  # metrics label: connect, disconnect, timeout, status_429, status_503
    detail: str


class Proxy:
    def __init__(self, pool: PodPool, session: aiohttp.ClientSession, metrics: RouterMetrics,
                 *, max_attempts: int = 3) -> None:
        self.pool = pool
        self.session = session
        self.metrics = metrics
        self.max_attempts = max_attempts

    async def forward(self, request: web.Request, route: str) -> web.StreamResponse:
        started = time.monotonic()
        body = await request.read()
        adapter = self.pool.adapter_of(requested_adapter(request.path, body))
        tried: set[str] = set()
        failure: Retry | None = None
        attempts = 0
        for attempt in range(self.max_attempts):
            # Every pod tried: try them again (a dropped keep-alive connection is no
            # reason to give up on a single-pod deployment); attempts stay bounded.
            choice = self.pool.pick(adapter, exclude=tried) or self.pool.pick(adapter)
            if choice is None:
                break
            tried.add(choice.pod.url)
            attempts += 1
            if attempt == 0:
                self.metrics.routing.labels(adapter or "", choice.outcome).inc()
            else:
                self.metrics.retries.labels(failure.reason if failure else "").inc()
            last = attempt == self.max_attempts - 1
            result = await self._attempt(request, body, choice, adapter, route, last=last)
            if isinstance(result, web.StreamResponse):
                self._count(route, result.status, started)
                return result
            failure = result
            log.warning("pod %s failed before responding (%s): %s", choice.pod.url,
                        result.reason, result.detail)
        if failure is None:
            response = error_response(503, "no pod is known to serve this model", "unavailable",
                                      {"Retry-After": "1"})
        else:
            response = error_response(
                502, f"no pod answered after {attempts} attempt(s); last: {failure.detail}",
                "unavailable", {"Retry-After": "1"})
        self._count(route, response.status, started)
        return response

    def _count(self, route: str, status: int, started: float) -> None:
        self.metrics.requests.labels(route, str(status)).inc()
        self.metrics.request_duration.labels(route).observe(time.monotonic() - started)

    async def _attempt(self, request: web.Request, body: bytes, choice: Choice,
                       adapter: str | None, route: str, *, last: bool
                       ) -> web.StreamResponse | Retry:
        pod = choice.pod
        pod.in_flight += 1
        self.metrics.in_flight.labels(pod.url).inc()
        sent = time.monotonic()
        try:
            return await self._relay(request, body, pod, adapter, route, sent, last=last)
        finally:
            pod.in_flight -= 1
            self.metrics.in_flight.labels(pod.url).dec()

    async def _relay(self, request: web.Request, body: bytes, pod: Pod, adapter: str | None,
                     route: str, sent: float, *, last: bool) -> web.StreamResponse | Retry:
        url = URL(pod.url + request.raw_path, encoded=True)
        try:
            upstream = await self.session.request(request.method, url, data=body,
                                                  headers=upstream_headers(request))
        except UPSTREAM_ERRORS as error:
            # Only a failed connect says the pod is gone; a dropped connection may be a
            # keep-alive the pod closed as we reused it.
            refused = isinstance(error, (aiohttp.ClientConnectorError,
                                         aiohttp.ConnectionTimeoutError))
            if refused:
                pod.up = False
            return Retry(_reason(error, "connect" if refused else "disconnect"),
                         f"{type(error).__name__}: {error}")
        try:
            if upstream.status in RETRY_STATUSES and not last:
                return Retry(f"status_{upstream.status}", f"{pod.url} answered "
                             f"{upstream.status}")
            try:
                first = await upstream.content.readany()
            except UPSTREAM_ERRORS as error:
                return Retry(_reason(error, "disconnect"), f"{type(error).__name__}: {error}")
            self.metrics.upstream_latency.labels(route).observe(time.monotonic() - sent)
            pod.up = True
            if adapter is not None and upstream.status < 400:
                pod.served.add(adapter)
            return await self._stream(request, upstream, first, pod)
        finally:
            upstream.close()

    async def _stream(self, request: web.Request, upstream: aiohttp.ClientResponse,
                      first: bytes, pod: Pod) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for name, value in upstream.headers.items():
            if name.lower() not in HOP_BY_HOP:
                response.headers.add(name, value)
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        await response.prepare(request)
        chunk, tail = first, b""
        while chunk:
            try:
                await response.write(chunk)
            except ConnectionError:  # the client left: closing `upstream` tells the pod
                return response
            tail = (tail + chunk)[-2:]
            try:
                chunk = await upstream.content.readany()
            except UPSTREAM_ERRORS as error:
                await self._cut_off(request, response, upstream, tail, pod, error)
                return response
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response

    async def _cut_off(self, request: web.Request, response: web.StreamResponse,
                       upstream: aiohttp.ClientResponse, tail: bytes, pod: Pod,
                       error: BaseException) -> None:
        self.metrics.stream_errors.inc()
        message = f"pod {pod.url} stopped mid-response: {type(error).__name__}: {error}"
        log.warning(message)
        if upstream.content_type == "text/event-stream" and upstream.content_length is None:
            separator = b"" if tail.endswith(b"\n\n") or not tail else b"\n\n"
            with contextlib.suppress(ConnectionError):
                await response.write(separator + sse_error_event(message))
                await response.write_eof()
        elif request.transport is not None:
            request.transport.close()  # the client must not take a cut body for a whole one


def _reason(error: BaseException, default: str) -> str:
    return "timeout" if isinstance(error, asyncio.TimeoutError) else default
