"""Asks every pod, every few seconds, whether it is ready, how long its queue is and which
adapters it holds, so that routing follows what the pods really have (the placement table
says what the operator intends; a pod may also have loaded adapters on demand).

A pod that cannot be reached is marked down until a later poll or request reaches it.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from loraplex.router.metrics import RouterMetrics
from loraplex.router.pod import Pod
from loraplex.router.pod_report import (
    QueueGauges,
    parse_base_model,
    parse_queue_gauges,
    parse_resident_adapters,
)
from loraplex.router.pool import PodPool

log = logging.getLogger(__name__)
POLL_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)
# A pod that does not answer in time may only be busy: it is marked down after this many
# polls in a row time out (one that refuses connections is marked down at once).
TIMEOUTS_BEFORE_DOWN = 3


class PodPoller:
    def __init__(self, pool: PodPool, session: aiohttp.ClientSession, metrics: RouterMetrics,
                 *, interval_s: float, timeout_s: float = 5.0, admin_token: str = "") -> None:
        self.pool = pool
        self.session = session
        self.metrics = metrics
        self.interval_s = interval_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.admin_headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
        self._warned_admin: set[str] = set()

    async def run(self) -> None:
        while True:
            await self.poll_all()
            await asyncio.sleep(self.interval_s)

    async def poll_all(self) -> None:
        pods = self.pool.pods
        await asyncio.gather(*(self.poll(pod) for pod in pods))
        usable = sum(pod.usable for pod in pods)
        self.metrics.pods.labels("true").set(usable)
        self.metrics.pods.labels("false").set(len(pods) - usable)

    async def poll(self, pod: Pod) -> None:
        try:
            ready, gauges, adapters = await asyncio.gather(
                self._ready(pod), self._gauges(pod), self._adapters(pod))
            if not pod.base_model:
                pod.base_model = await self._base_model(pod)
        except POLL_ERRORS as error:
            pod.poll_timeouts += isinstance(error, asyncio.TimeoutError)
            down = (pod.poll_timeouts >= TIMEOUTS_BEFORE_DOWN
                    or not isinstance(error, asyncio.TimeoutError))
            if pod.up and down:
                log.warning("pod %s unreachable: %s: %s", pod.url, type(error).__name__, error)
                pod.up = False
            return
        pod.up, pod.ready, pod.poll_timeouts = True, ready, 0
        pod.report_queue(gauges.running, gauges.waiting)
        if adapters is not None:
            pod.report_residency(adapters)

    async def _get(self, pod: Pod, path: str, **kwargs) -> aiohttp.ClientResponse:
        return await self.session.get(pod.url + path, timeout=self.timeout, **kwargs)

    async def _ready(self, pod: Pod) -> bool:
        """Not ready only when the pod says so (5xx); a pod without /ready counts as ready."""
        async with await self._get(pod, "/ready") as response:
            return response.status < 500

    async def _gauges(self, pod: Pod) -> QueueGauges:
        """The pod's queue; zeros when it exposes none (routing then uses in-flight only)."""
        async with await self._get(pod, "/metrics") as response:
            text = await response.text() if response.status == 200 else ""
        try:
            return parse_queue_gauges(text)
        except ValueError as error:
            log.warning("pod %s /metrics unreadable: %s", pod.url, error)
            return QueueGauges(0, 0)

    async def _adapters(self, pod: Pod) -> frozenset[str] | None:
        async with await self._get(pod, "/v1/adapters", headers=self.admin_headers) as response:
            if response.status != 200:
                if pod.url not in self._warned_admin:
                    self._warned_admin.add(pod.url)
                    log.warning("pod %s answered %d to GET /v1/adapters (admin token?): "
                                "routing uses the placement table only", pod.url,
                                response.status)
                return None
            try:
                return parse_resident_adapters(await response.read())
            except ValueError as error:
                log.warning("pod %s /v1/adapters is not the admin API's answer: %s",
                            pod.url, error)
                return None

    async def _base_model(self, pod: Pod) -> str:
        async with await self._get(pod, "/v1/models") as response:
            if response.status != 200:
                return ""
            try:
                return parse_base_model(await response.json(content_type=None))
            except ValueError:
                return ""
