"""Overload, disconnects and shutdown on a pod with one batch slot and two queue places.

A flood gets 429 with `Retry-After` beyond the queue while every admitted request still
completes; a client that goes away (streaming or not) has its request aborted and its KV
blocks freed; SIGTERM lets the in-flight request finish, refuses new work, exits 0.
The SIGTERM test ends this module's pod, so it comes last.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import CHAT_PROMPT
from tests.integration.runtime_servers import RuntimeServer, runtime_server

pytestmark = [pytest.mark.model, pytest.mark.slow]
FLOOD_TOKENS = 40  # long enough that all eight requests arrive while the first runs


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeServer]:
    with runtime_server("--max-num-seqs", "1", "--max-waiting", "2", "--max-model-len", "512",
                        "--shutdown-grace-s", "60",
                        log_dir=tmp_path_factory.mktemp("small-pod")) as server:
        yield server


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == name and labels.items() <= sample.labels.items())


def wait_until(condition, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def body(max_new_tokens: int) -> dict:
    return {"inputs": CHAT_PROMPT, "parameters": {"max_new_tokens": max_new_tokens,
                                                  "ignore_eos_token": True, "details": True}}


def engine_idle(url: str) -> bool:
    return (metric(url, "loraplex_num_requests_running") == 0
            and metric(url, "loraplex_kv_cache_free_blocks")
            == metric(url, "loraplex_kv_cache_total_blocks"))


@pytest.mark.timeout(300)
def test_flood_gets_429_and_every_admitted_request_completes(pod) -> None:
    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=pod.url, timeout=300) as client:
            return await asyncio.gather(*(client.post("/generate", json=body(FLOOD_TOKENS))
                                          for _ in range(8)))

    responses = asyncio.run(flood())
    accepted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(accepted) + len(refused) == len(responses)
    assert 1 <= len(accepted) <= 3  # one running + two waiting
    for response in refused:
        assert int(response.headers["Retry-After"]) >= 1
        assert response.json()["error_type"] == "overloaded"
    for response in accepted:
        assert response.json()["details"]["generated_tokens"] == FLOOD_TOKENS
    wait_until(lambda: engine_idle(pod.url))
    assert metric(pod.url, "loraplex_http_errors_total", error_type="overloaded") >= len(refused)


@pytest.mark.timeout(300)
def test_stream_disconnect_aborts_and_frees_blocks(pod) -> None:
    aborted_before = metric(pod.url, "loraplex_requests_total", outcome="aborted")
    with httpx.Client(base_url=pod.url, timeout=120) as client, \
            client.stream("POST", "/generate_stream", json=body(400)) as response:
        assert response.status_code == 200
        events = 0
        for line in response.iter_lines():
            events += line.startswith("data:")
            if events == 2:
                assert metric(pod.url, "loraplex_num_requests_running") == 1
                break  # closing the line iterator closes the connection
    wait_until(lambda: engine_idle(pod.url))
    assert metric(pod.url, "loraplex_requests_total", outcome="aborted") == aborted_before + 1


@pytest.mark.timeout(300)
def test_non_streaming_disconnect_aborts_too(pod) -> None:
    aborted_before = metric(pod.url, "loraplex_requests_total", outcome="aborted")
    payload = json.dumps(body(400)).encode()
    request = (f"POST /generate HTTP/1.1\r\nHost: {pod.host}\r\nContent-Type: "
               f"application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode() + payload
    with socket.create_connection((pod.host, pod.port)) as connection:
        connection.sendall(request)
        wait_until(lambda: metric(pod.url, "loraplex_num_requests_running") == 1)
    wait_until(lambda: engine_idle(pod.url))
    assert metric(pod.url, "loraplex_requests_total", outcome="aborted") == aborted_before + 1


@pytest.mark.timeout(300)
def test_sigterm_drains_in_flight_work_then_exits_zero(pod) -> None:
    result: dict[str, httpx.Response] = {}

    def long_request() -> None:
        result["response"] = httpx.post(pod.url + "/generate", json=body(64), timeout=300)

    worker = threading.Thread(target=long_request)
    worker.start()
    wait_until(lambda: metric(pod.url, "loraplex_num_requests_running") == 1)
    pod.process.terminate()
    wait_until(lambda: httpx.get(pod.url + "/ready", timeout=10).status_code == 503)
    refused = httpx.post(pod.url + "/generate", json=body(2), timeout=30)
    assert refused.status_code == 503
    assert refused.json()["error_type"] == "unavailable"
    assert pod.process.wait(120) == 0
    worker.join(60)
    response = result["response"]
    assert response.status_code == 200
    assert response.json()["details"]["generated_tokens"] == 64
    assert "shutting down" in pod.log_text()
