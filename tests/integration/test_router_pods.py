"""The router in front of three real runtime pods (tiny-llama, dummy weights) on
127.0.2.2-4:8080, started with its own CLI and a placement table file.

Where a request went is read from the pods' own `/metrics` (`loraplex_requests_total` by
adapter), never from the router's word. Clients are the real `lorax-client` and `openai`
packages; their answers through the router must equal their answers from a pod directly
(greedy decoding; every pod has the same dummy weights and the same adapter files).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.runtime_servers import RuntimeServer, start_runtime_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ADMIN_TOKEN = "router-test-token"
POD_HOSTS = ("127.0.2.2", "127.0.2.3", "127.0.2.4")
ROUTER_HOST = "127.0.2.1"
PORT = 8080
POD_ARGS = ("--model", "tiny-llama", "--load-format", "dummy", "--max-model-len", "512",
            "--max-num-seqs", "16", "--kv-cache-bytes", str(32 << 20), "--device-slots", "4")
PLACED = {"sql": (0, 1), "chat": (2,)}  # adapter -> indexes of the pods that hold it
PROMPT = "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"


def pod_url(host: str) -> str:
    return f"http://{host}:{PORT}"


@contextmanager
def router_process(*args: str, host: str = ROUTER_HOST, port: int = PORT,
                   log_dir: Path) -> Iterator[str]:
    """`loraplex router ARGS` on host:port until /ready; always stopped afterwards."""
    log_path = log_dir / f"router-{host}-{port}.log"
    command = [sys.executable, "-m", "loraplex.cli", "router", "--host", host, "--port",
               str(port), "--pod-poll-s", "0.5", *args]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "LORAPLEX_ADMIN_TOKEN": ADMIN_TOKEN})
    url = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"router did not start:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def adapter_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from loraplex.runtime.adapters.synthetic import write_random_adapter
    from loraplex.runtime.adapters.target import LoraTargetShapes
    from loraplex.runtime.models.shapes import shape_config

    target = LoraTargetShapes.from_hf_config(shape_config("tiny-llama"))
    root = tmp_path_factory.mktemp("router-adapters")
    for seed, (name, rank) in enumerate({"sql": 8, "chat": 4, "fresh": 8}.items(), start=1):
        write_random_adapter(root / name, target, rank, seed=seed, strength=2.0)
    return root


@pytest.fixture(scope="module")
def pods(adapter_root: Path, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[list[RuntimeServer]]:
    log_dir = tmp_path_factory.mktemp("router-pods")
    with ExitStack() as stack:
        servers = []
        for index, host in enumerate(POD_HOSTS):
            held = [f"{name}={adapter_root / name}" for name, where in PLACED.items()
                    if index in where]
            adapter_args = [arg for spec in held for arg in ("--adapter", spec)]
            server = start_runtime_server(
                *POD_ARGS, *adapter_args, "--allow-dynamic-adapters", str(adapter_root),
                host=host, port=PORT, log_dir=log_dir, wait=False,
                env={"LORAPLEX_ADMIN_TOKEN": ADMIN_TOKEN})
            stack.callback(server.stop)
            servers.append(server)
        for server in servers:  # started together, awaited one by one
            server.wait_ready()
        yield servers


@pytest.fixture(scope="module")
def router(pods: list[RuntimeServer], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[str]:
    from loraplex.contracts.placements import build_table

    folder = tmp_path_factory.mktemp("router")
    urls = [pod.url for pod in pods]
    table = build_table(urls, {name: [urls[i] for i in where] for name, where in PLACED.items()})
    (folder / "placements.json").write_text(table.to_json())
    with router_process("--placements-file", str(folder / "placements.json"),
                        log_dir=folder) as url:
        yield url


def requests_by_adapter(pod: RuntimeServer) -> Counter[str]:
    """The pod's own count of finished requests, by adapter label."""
    text = httpx.get(pod.url + "/metrics", timeout=10).text
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        if family.name == "loraplex_requests":
            for sample in family.samples:
                if sample.name == "loraplex_requests_total":
                    counts[sample.labels["adapter"]] += int(sample.value)
    return counts


def generate(url: str, adapter: str | None, **parameters) -> httpx.Response:
    body = {"inputs": PROMPT, "parameters": {"adapter_id": adapter, "max_new_tokens": 4,
                                             **parameters}}
    return httpx.post(url + "/generate", json=body, timeout=120)


def test_adapter_requests_land_only_on_their_pods(pods, router):
    before = [requests_by_adapter(pod) for pod in pods]
    for _ in range(6):
        for adapter in PLACED:
            assert generate(router, adapter).status_code == 200
    after = [requests_by_adapter(pod) for pod in pods]
    for adapter, where in PLACED.items():
        served = [after[i][adapter] - before[i][adapter] for i in range(len(pods))]
        assert sum(served) == 6, (adapter, served)
        assert all(count == 0 for i, count in enumerate(served) if i not in where), served


def test_an_adapter_no_pod_holds_is_loaded_on_demand_by_one_pod(pods, router, adapter_root):
    fresh = str(adapter_root / "fresh")
    answers = {generate(router, fresh, adapter_source="local").json()["generated_text"]
               for _ in range(4)}
    assert len(answers) == 1
    holders = []
    for pod in pods:
        listing = httpx.get(pod.url + "/v1/adapters", timeout=10,
                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
        if any(entry["source"].endswith(fresh) for entry in listing["adapters"]):
            holders.append(pod.url)
    assert len(holders) == 1  # one home pod, one cold load
    direct = generate(holders[0], fresh, adapter_source="local").json()["generated_text"]
    assert answers == {direct}


def test_an_unknown_adapter_gets_the_pods_own_404(router):
    response = generate(router, "nobody-has-this")
    assert response.status_code == 404
    assert "nobody-has-this" in response.json()["error"]


def test_base_requests_spread_over_the_pods(pods, router):
    before = [requests_by_adapter(pod) for pod in pods]
    with httpx.Client(timeout=120) as client:
        body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 48,
                                                 "ignore_eos_token": True}}
        with ThreadPoolExecutor(12) as executor:
            statuses = list(executor.map(lambda _: client.post(router + "/generate", json=body)
                                         .status_code, range(24)))
    assert statuses == [200] * 24
    after = [requests_by_adapter(pod) for pod in pods]
    served = [sum((after[i] - before[i]).values()) for i in range(len(pods))]
    assert sum(served) == 24
    assert sum(count > 0 for count in served) >= 2, served


@pytest.mark.parametrize("adapter", [None, "sql"])
def test_lorax_client_works_through_the_router(pods, router, adapter):
    from lorax import Client

    direct, routed = Client(pods[0].url, timeout=120), Client(router, timeout=120)
    expected = direct.generate(PROMPT, adapter_id=adapter, max_new_tokens=6)
    got = routed.generate(PROMPT, adapter_id=adapter, max_new_tokens=6)
    assert got.generated_text == expected.generated_text
    assert [t.id for t in got.details.tokens] == [t.id for t in expected.details.tokens]
    streamed = [event.token.id for event in
                routed.generate_stream(PROMPT, adapter_id=adapter, max_new_tokens=6)]
    assert streamed == [t.id for t in expected.details.tokens]


@pytest.mark.parametrize("model", ["tiny-llama", "chat"])
def test_openai_works_through_the_router(pods, router, model):
    from openai import OpenAI

    direct = OpenAI(base_url=pods[2].url + "/v1", api_key="unused", max_retries=0)
    routed = OpenAI(base_url=router + "/v1", api_key="unused", max_retries=0)
    asked = {"model": model, "max_tokens": 6, "temperature": 0}
    expected = direct.completions.create(prompt="Once upon", **asked).choices[0].text
    assert routed.completions.create(prompt="Once upon", **asked).choices[0].text == expected
    messages = [{"role": "user", "content": "Name a colour."}]
    whole = direct.chat.completions.create(messages=messages, **asked)
    chunks = routed.chat.completions.create(messages=messages, stream=True, **asked)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].message.content


def test_the_model_list_is_the_union_of_the_pods_lists(pods, router):
    from openai import OpenAI

    routed = OpenAI(base_url=router + "/v1", api_key="unused", max_retries=0)
    expected = {entry["id"] for pod in pods
                for entry in httpx.get(pod.url + "/v1/models", timeout=10).json()["data"]}
    assert {model.id for model in routed.models.list()} == expected
    assert "tiny-llama" in expected


def router_in_flight(router_url: str, pod: str) -> float:
    text = httpx.get(router_url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "loraplex_router_in_flight" and sample.labels["pod"] == pod:
                return sample.value
    return 0.0


async def test_killing_a_pod_loses_no_request_that_had_not_started_streaming(pods, tmp_path):
    victim = start_runtime_server(*POD_ARGS, host="127.0.2.5", port=PORT, log_dir=tmp_path)
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 160, "ignore_eos_token": True,
                                             "details": True}}

    async def plain(client: httpx.AsyncClient) -> dict:
        response = await client.post("/generate", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    async def streamed(client: httpx.AsyncClient) -> list[dict]:
        async with client.stream("POST", "/generate_stream", json=body) as response:
            assert response.status_code == 200
            return [json.loads(line[5:]) async for line in response.aiter_lines()
                    if line.startswith("data:")]

    try:
        with router_process("--pods", f"{pods[0].url},{victim.url}", host="127.0.2.6",
                            log_dir=tmp_path) as url:
            async with httpx.AsyncClient(base_url=url, timeout=300) as client:
                tasks = [asyncio.create_task(job(client)) for job in (plain, streamed) * 10]
                while router_in_flight(url, victim.url) < 4:
                    await asyncio.sleep(0.05)
                victim.process.kill()
                results = await asyncio.wait_for(asyncio.gather(*tasks), 240)
            metrics = httpx.get(url + "/metrics", timeout=10).text
    finally:
        victim.stop()
    whole = [result for result in results if isinstance(result, dict)]
    assert [r["details"]["generated_tokens"] for r in whole] == [160] * 10
    cut = 0
    for events in (result for result in results if isinstance(result, list)):
        if "error" in events[-1]:  # broken off by the kill: only after it had started
            assert events[-1]["error_type"] == "incomplete_generation"
            assert len(events) >= 2 and "token" in events[0]
            cut += 1
        else:
            assert events[-1]["details"]["generated_tokens"] == 160
    retried = sum(sample.value for family in text_string_to_metric_families(metrics)
                  for sample in family.samples
                  if sample.name == "loraplex_router_retries_total")
    assert retried + cut >= 1  # the kill did hit requests in flight
