"""The whole router service: its own endpoints, the pod poller feeding routing, the
placement file followed as it changes, and aggregated model lists."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loraplex.contracts.placements import build_table
from loraplex.router.app import RouterService
from loraplex.router.config import RouterConfig
from loraplex.router.routing import rendezvous_weight
from tests.unit.router.upstreams import ScriptedPod, serving

pytestmark = pytest.mark.timeout(30)


@contextlib.asynccontextmanager
async def pods_serving(*pods: ScriptedPod) -> AsyncIterator[list[str]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(serving(pod.app())) for pod in pods]


@contextlib.asynccontextmanager
async def router(**settings) -> AsyncIterator[tuple[str, RouterService]]:
    config = RouterConfig(**{"pod_poll_s": 0.1, "placements_poll_s": 0.05,
                             "admin_token": "s3cret", **settings})
    service = RouterService(config, rng=random.Random(0))
    async with serving(service.application()) as url:
        yield url, service


async def eventually(condition, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def generate(client: aiohttp.ClientSession, url: str, adapter: str | None) -> str:
    body = {"inputs": "x", "parameters": {"adapter_id": adapter}}
    async with client.post(url + "/generate", json=body) as response:
        assert response.status == 200
        return (await response.json())["pod"]


async def test_own_endpoints_and_json_errors():
    async with router() as (url, _), aiohttp.ClientSession() as client:
        async with client.get(url + "/health") as response:
            assert response.status == 200
        async with client.get(url + "/ready") as response:
            assert response.status == 503
            assert (await response.json())["error_type"] == "unavailable"
        async with client.get(url + "/v1/adapters") as response:
            assert response.status == 404
            assert (await response.json())["error_type"] == "not_found"
        async with client.get(url + "/generate") as response:
            assert response.status == 405
            assert "error" in await response.json()


async def test_oversized_bodies_are_refused_with_413():
    pod = ScriptedPod("a")
    async with pods_serving(pod) as urls, router(pods=urls, max_body_bytes=1024) as (url, _), \
            aiohttp.ClientSession() as client, \
            client.post(url + "/generate", data=b"x" * 4096) as response:
        assert response.status == 413
        assert (await response.json())["error_type"] == "validation"
    assert pod.received == []


async def test_pods_reports_steer_routing():
    pods = [ScriptedPod("a"), ScriptedPod("b", adapters={"sql": "device"}),
            ScriptedPod("c", ready_status=503)]
    async with pods_serving(*pods) as urls, router(pods=urls) as (url, service), \
            aiohttp.ClientSession() as client:
        await eventually(lambda: service.pool.get(urls[1]).holds("sql")
                         and not service.pool.get(urls[2]).usable)
        assert service.pool.base_models() == {"base-model"}
        assert {await generate(client, url, "sql") for _ in range(5)} == {"b"}
        # The pod's base model id names no adapter.
        assert {await generate(client, url, "base-model") for _ in range(6)} <= {"a", "b"}
        pods[0].waiting = 50  # pod a reports a long queue: base requests avoid it
        await eventually(lambda: service.pool.get(urls[0]).waiting == 50)
        assert {await generate(client, url, None) for _ in range(4)} == {"b"}
        async with client.get(url + "/ready") as response:
            assert await response.json() == {"pods": 3, "usable": 2, "adapters_placed": 0}
    assert pods[2].received == []


async def test_a_cold_adapter_stays_at_its_home_pod():
    pods = [ScriptedPod("a"), ScriptedPod("b"), ScriptedPod("c")]
    async with pods_serving(*pods) as urls, router(pods=urls) as (url, _), \
            aiohttp.ClientSession() as client:
        names = dict(zip(urls, "abc", strict=True))
        for i in range(6):
            home = max(urls, key=lambda pod_url: rendezvous_weight(f"cold-{i}", pod_url))
            assert {await generate(client, url, f"cold-{i}") for _ in range(4)} == {names[home]}
        async with client.get(url + "/metrics") as response:
            families = {family.name: family for family in
                        text_string_to_metric_families(await response.text())}
    outcomes = {(s.labels["adapter"], s.labels["outcome"]): s.value
                for s in families["loraplex_router_routing"].samples
                if s.name.endswith("_total")}
    assert outcomes[("cold-0", "miss")] == 1  # then the pod has served it: hits
    assert outcomes[("cold-0", "hit")] == 3
    requests = [s for s in families["loraplex_router_requests"].samples
                if s.name.endswith("_total") and s.labels == {"route": "/generate", "code": "200"}]
    assert requests[0].value == 24


async def test_placement_file_is_followed_as_it_changes(tmp_path):
    pods = [ScriptedPod("a"), ScriptedPod("b")]
    table_file = tmp_path / "placements.json"
    async with pods_serving(*pods) as urls:
        table_file.write_text(build_table(urls, {"sql": [urls[0]]}).to_json())
        # A wrong admin token: the pods' own reports are refused, only the table counts.
        async with router(placements_file=str(table_file), admin_token="wrong") as (
                url, service), \
                aiohttp.ClientSession() as client:
            assert {await generate(client, url, "sql") for _ in range(4)} == {"a"}
            service.pool.get(urls[0]).served.clear()  # forget what the router saw itself
            table_file.write_text(build_table(urls, {"sql": [urls[1]]}, generation=2).to_json())
            await eventually(lambda: service.pool.table.generation == 2)
            service.pool.get(urls[0]).served.clear()
            assert {await generate(client, url, "sql") for _ in range(4)} == {"b"}
            table_file.write_text("{ broken")  # a bad write keeps the last good table
            await asyncio.sleep(0.3)
            assert service.pool.table.generation == 2
            assert {pod.url for pod in service.pool.pods} == set(urls)


async def test_models_are_the_union_of_the_pods_lists():
    pods = [ScriptedPod("a", adapters={"x": "device"}),
            ScriptedPod("b", adapters={"x": "host", "y": "device"})]
    async with pods_serving(*pods) as urls, router(pods=urls) as (url, _), \
            aiohttp.ClientSession() as client, client.get(url + "/v1/models") as response:
        document = await response.json()
    assert [entry["id"] for entry in document["data"]] == ["base-model", "x", "y"]
    assert document["object"] == "list"


async def test_metrics_page_is_prometheus_text():
    async with router(pods=["http://127.0.0.1:9"]) as (url, _), \
            aiohttp.ClientSession() as client, client.get(url + "/metrics") as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        names = {family.name for family in text_string_to_metric_families(await response.text())}
    assert {"loraplex_router_requests", "loraplex_router_retries",
            "loraplex_router_upstream_latency_seconds", "loraplex_router_pods"} <= names

