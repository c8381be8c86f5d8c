"""The poller marks a pod down at once when it refuses connections, but only after
repeated timeouts when it accepts and stays silent (busy, or hung)."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import pytest

from loraplex.router.metrics import RouterMetrics
from loraplex.router.poller import TIMEOUTS_BEFORE_DOWN, PodPoller
from loraplex.router.pool import PodPool
from tests.unit.router.upstreams import ScriptedPod, closed_port_url, serving

pytestmark = pytest.mark.timeout(30)


@contextlib.asynccontextmanager
async def silent_upstream():
    """Accepts connections and reads, never answers."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def test_refused_is_down_at_once_silent_only_after_repeated_timeouts():
    live = ScriptedPod("live", waiting=3, adapters={"sql": "host", "bad": "error"})
    refused = closed_port_url()
    async with serving(live.app()) as live_url, silent_upstream() as silent_url, \
            aiohttp.ClientSession() as session:
        pool = PodPool([live_url, refused, silent_url])
        poller = PodPoller(pool, session, RouterMetrics(), interval_s=0.1, timeout_s=0.2,
                           admin_token="s3cret")
        await poller.poll_all()
        states = {url: pool.get(url) for url in (live_url, refused, silent_url)}
        assert (states[live_url].usable, states[live_url].waiting) == (True, 3)
        assert states[live_url].resident == {"sql"}
        assert states[live_url].base_model == "base-model"
        assert not states[refused].usable
        for _ in range(TIMEOUTS_BEFORE_DOWN - 1):
            assert states[silent_url].usable
            await poller.poll_all()
        assert not states[silent_url].usable


async def test_a_pod_that_says_it_is_not_ready_gets_no_requests_until_it_is():
    pod = ScriptedPod("a", ready_status=503)
    async with serving(pod.app()) as url, aiohttp.ClientSession() as session:
        pool = PodPool([url])
        poller = PodPoller(pool, session, RouterMetrics(), interval_s=0.1)
        await poller.poll_all()
        assert pool.get(url).up and not pool.get(url).usable
        pod.ready_status = 200
        await poller.poll_all()
        assert pool.get(url).usable
