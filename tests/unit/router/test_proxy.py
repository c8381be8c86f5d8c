"""The proxy on real sockets: bytes relayed unchanged and unbuffered, retries before the
response starts, and a clear end (never a hang) when a pod breaks off after it started.

The proxy runs here without the pod poller, so that a pod the test has broken is still
believed usable, as it is between two polls in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from functools import partial

import aiohttp
import pytest
from aiohttp import web

from loraplex.contracts.placements import build_table
from loraplex.router.app import INFERENCE_ROUTES, pod_session
from loraplex.router.config import RouterConfig
from loraplex.router.metrics import RouterMetrics
from loraplex.router.pool import PodPool
from loraplex.router.proxy import Proxy
from tests.unit.router.upstreams import (
    ScriptedPod,
    chunk,
    closed_port_url,
    raw_upstream,
    serving,
    sse_events,
    sse_head,
)

pytestmark = pytest.mark.timeout(30)
GENERATE = {"inputs": "Hello", "parameters": {"adapter_id": "sql", "max_new_tokens": 3}}


@contextlib.asynccontextmanager
async def proxy_in_front(pods: list[str], *, holders: list[str] = (),
                         max_attempts: int = 3) -> AsyncIterator[tuple[str, RouterMetrics]]:
    """A router in front of `pods`; the placement table puts adapter `sql` on `holders`."""
    pool = PodPool(pods)
    pool.set_table(build_table(pods, {"sql": holders}))
    metrics = RouterMetrics()
    config = RouterConfig(connect_timeout_s=2.0, read_timeout_s=10.0)
    async with pod_session(config) as session:
        proxy = Proxy(pool, session, metrics, max_attempts=max_attempts)
        app = web.Application()
        for route in INFERENCE_ROUTES:
            app.router.add_post(route, partial(proxy.forward, route=route))
        async with serving(app) as url:
            yield url, metrics


def sample(metrics: RouterMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_status_headers_and_body_arrive_as_the_pod_sent_them():
    pod = ScriptedPod("a", generate_status=422)
    async with serving(pod.app()) as pod_url, proxy_in_front([pod_url]) as (url, _), \
            aiohttp.ClientSession() as client:
        body = json.dumps(GENERATE).encode()
        headers = {"Content-Type": "application/json", "X-Request-Id": "r-1"}
        async with client.post(pod_url + "/generate?x=1", data=body, headers=headers) as direct:
            direct_body, direct_headers = await direct.read(), direct.headers
        async with client.post(url + "/generate?x=1", data=body, headers=headers) as routed:
            assert routed.status == direct.status == 422
            assert await routed.read() == direct_body
            for name in ("Content-Type", "Content-Length", "X-Pod"):
                assert routed.headers[name] == direct_headers[name]
    forwarded = pod.received[-1]
    assert forwarded["body"] == GENERATE
    assert forwarded["headers"]["X-Request-Id"] == "r-1"
    assert forwarded["headers"]["X-Forwarded-For"] == "127.0.0.1"


async def test_streams_pass_through_chunk_by_chunk():
    pod = ScriptedPod("a")
    async with serving(pod.app()) as pod_url, proxy_in_front([pod_url]) as (url, _), \
            aiohttp.ClientSession() as client, \
            client.post(url + "/generate_stream", json=GENERATE) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        # The pod holds its second event until the first has reached the client:
        # a buffering proxy would deadlock here and hit the timeout.
        first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
        assert first == b'data: {"token": 1}\n\n'
        pod.stream_gate.set()
        assert await response.read() == b'data: {"token": 2}\n\n'


async def test_a_client_that_leaves_cancels_the_request_on_the_pod(caplog):
    pod = ScriptedPod("a")
    async with serving(pod.app()) as pod_url, proxy_in_front([pod_url]) as (url, _), \
            aiohttp.ClientSession() as client:
        response = await client.post(url + "/generate_stream", json=GENERATE)
        await response.content.readuntil(b"\n\n")
        response.close()
        await asyncio.wait_for(pod.stream_cancelled.wait(), 5)
        pod.stream_gate.set()
        await asyncio.sleep(0.1)
    assert not [record for record in caplog.records if record.levelname == "ERROR"]


async def test_a_pod_that_refuses_connections_is_skipped():
    dead, live = closed_port_url(), ScriptedPod("live")
    async with serving(live.app()) as live_url, \
            proxy_in_front([dead, live_url], holders=[dead]) as (url, metrics), \
            aiohttp.ClientSession() as client, \
            client.post(url + "/generate", json=GENERATE) as response:
        assert response.status == 200
        assert (await response.json())["pod"] == "live"
    assert sample(metrics, "loraplex_router_retries_total", reason="connect") == 1
    assert sample(metrics, "loraplex_router_routing_total", adapter="sql", outcome="hit") == 1


@pytest.mark.parametrize("reply", [
    b"",  # hangs up without a word
    sse_head(),  # sends headers, then dies before the first event
], ids=["no-reply", "headers-only"])
async def test_a_pod_that_dies_before_the_first_byte_is_retried(reply):
    live = ScriptedPod("live")
    async with raw_upstream(reply) as broken, serving(live.app()) as live_url, \
            proxy_in_front([broken, live_url], holders=[broken]) as (url, metrics), \
            aiohttp.ClientSession() as client, \
            client.post(url + "/generate_stream", json=GENERATE) as response:
        live.stream_gate.set()
        assert response.headers["X-Pod"] == "live"
        assert sse_events(await response.text()) == [{"token": 1}, {"token": 2}]
    assert sample(metrics, "loraplex_router_retries_total", reason="disconnect") == 1


async def test_a_stream_cut_mid_way_ends_with_an_error_event():
    reply = sse_head() + chunk(b'data: {"token": 1}\n\n') + chunk(b'data: {"tok')
    async with raw_upstream(reply) as broken, proxy_in_front([broken]) as (url, metrics), \
            aiohttp.ClientSession() as client, \
            client.post(url + "/generate_stream", json=GENERATE) as response:
        assert response.status == 200
        text = await response.text()
    events = text.split("\n\n")
    assert events[0] == 'data: {"token": 1}'
    assert events[1] == 'data: {"tok'  # the pod's half event, kept apart from ours
    error = json.loads(events[2].removeprefix("data: "))
    assert error["error_type"] == "incomplete_generation"
    assert broken in error["error"]
    assert sample(metrics, "loraplex_router_stream_errors_total") == 1


async def test_a_cut_plain_body_is_never_passed_off_as_complete():
    reply = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n"
             b'[{"generated_text": ')
    async with raw_upstream(reply) as broken, proxy_in_front([broken]) as (url, _), \
            aiohttp.ClientSession() as client, \
            client.post(url + "/", json=GENERATE) as response:
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


@pytest.mark.parametrize("status", [429, 503])
async def test_busy_pods_are_retried_and_the_last_answer_passed_through(status):
    pods = [ScriptedPod("a", generate_status=status),
            ScriptedPod("b", generate_status=status)]
    async with serving(pods[0].app()) as url_a, serving(pods[1].app()) as url_b, \
            proxy_in_front([url_a, url_b], max_attempts=3) as (url, metrics), \
            aiohttp.ClientSession() as client, \
            client.post(url + "/generate", json=GENERATE) as response:
        assert response.status == status
        assert "pod" in await response.json()  # the pod's own answer, passed through
    assert sorted(len(pod.received) for pod in pods) == [1, 2]
    assert sample(metrics, "loraplex_router_retries_total", reason=f"status_{status}") == 2


async def test_no_pod_known_is_a_clear_503():
    async with proxy_in_front([]) as (url, _), aiohttp.ClientSession() as client, \
            client.post(url + "/generate", json=GENERATE) as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        assert (await response.json())["error_type"] == "unavailable"


async def test_attempts_are_bounded_when_every_pod_is_gone():
    dead = [closed_port_url(), closed_port_url()]
    async with proxy_in_front(dead, max_attempts=3) as (url, metrics), \
            aiohttp.ClientSession() as client, \
            client.post(url + "/v1/completions", json={"model": "sql"}) as response:
        assert response.status == 502
        body = await response.json()
    assert body["error_type"] == "unavailable"
    assert "after 3 attempt(s)" in body["error"]
    assert sample(metrics, "loraplex_router_retries_total", reason="connect") == 2
