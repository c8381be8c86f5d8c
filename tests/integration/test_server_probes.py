"""Probes, `/info`, Prometheus metrics and the JSON access log of a real pod."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import CHAT_PROMPT, MAX_MODEL_LEN

pytestmark = [pytest.mark.model, pytest.mark.timeout(300)]


def samples(http) -> dict[tuple[str, tuple], float]:
    text = http.get("/metrics").text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(snapshot: dict, name: str, **labels: str) -> float:
    return sum(v for (n, found), v in snapshot.items()
               if n == name and labels.items() <= dict(found).items())


def log_entries(server, request_id: str, timeout_s: float = 10.0) -> list[dict]:
    """The access-log lines of one request (written just after its response is sent)."""
    deadline = time.monotonic() + timeout_s
    while True:
        entries = [json.loads(line) for line in server.log_text().splitlines()
                   if request_id in line and line.startswith("{")]
        if entries or time.monotonic() > deadline:
            return entries
        time.sleep(0.05)


def test_health_ready_and_info(http) -> None:
    assert http.get("/health").json() == {"status": "ok"}
    assert http.get("/ready").json() == {"status": "ready"}
    info = http.get("/info").json()
    assert info["model_id"] == "builtin:smollm2-135m-instruct"
    assert info["model_dtype"] == "float32"
    assert info["quantization"] == "none"
    assert info["model_device_type"] == "cpu"
    assert info["max_model_len"] == MAX_MODEL_LEN
    assert info["max_input_length"] == MAX_MODEL_LEN - 1
    assert info["max_concurrent_requests"] == info["max_num_seqs"] + info["max_waiting"]
    assert info["prefix_caching"] is True
    assert info["version"]
    plan = info["memory_plan"]  # bytes, as the engine planned them at start-up
    assert plan["device"] == "cpu" and plan["kv_cache"] > 0 and plan["weights"] > 0
    assert plan["kv_blocks"] * info["block_size"] == plan["kv_tokens"]


def test_a_request_moves_the_counters_and_histograms(http, tokenizer) -> None:
    before = samples(http)
    response = http.post("/generate", json={"inputs": CHAT_PROMPT, "parameters": {
        "max_new_tokens": 5, "ignore_eos_token": True}})
    assert response.status_code == 200
    after = samples(http)
    base = {"adapter": "__base__"}

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("loraplex_requests_total", endpoint="generate", outcome="length",
                **base) == 1
    assert grew("loraplex_generation_tokens_total", **base) == 5
    assert grew("loraplex_prompt_tokens_total", **base) == len(tokenizer.encode(CHAT_PROMPT))
    assert grew("loraplex_time_to_first_token_seconds_count", **base) == 1
    assert grew("loraplex_inter_token_latency_seconds_count", **base) == 4
    assert grew("loraplex_engine_steps_total") >= 5


def test_a_repeated_prompt_moves_the_prefix_cache_counters(http, tokenizer) -> None:
    prompt = CHAT_PROMPT * 8
    num_tokens = len(tokenizer.encode(prompt))
    block_size = http.get("/info").json()["block_size"]
    body = {"inputs": prompt, "parameters": {"max_new_tokens": 1}}
    assert http.post("/generate", json=body).status_code == 200
    before = samples(http)
    assert http.post("/generate", json=body).status_code == 200
    after = samples(http)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("vllm:prefix_cache_queries_total") == num_tokens
    hits = grew("vllm:prefix_cache_hits_total")
    assert hits == (num_tokens - 1) // block_size * block_size > 0
    assert grew("loraplex_prefix_cache_hits_total", adapter="__base__") == hits
    assert grew("loraplex_prefix_cache_queries_total", adapter="__base__") == num_tokens


def test_gauges_the_inference_extension_scrapes(http) -> None:
    snapshot = samples(http)
    names = {name for name, _ in snapshot}
    assert {"vllm:num_requests_running", "vllm:num_requests_waiting",
            "vllm:kv_cache_usage_perc", "vllm:lora_requests_info"} <= names
    assert value(snapshot, "vllm:num_requests_running") == 0
    assert 0 <= value(snapshot, "vllm:kv_cache_usage_perc") <= 1
    (labels,) = [dict(found) for name, found in snapshot if name == "vllm:lora_requests_info"]
    assert set(labels) == {"max_lora", "running_lora_adapters", "waiting_lora_adapters"}
    assert int(labels["max_lora"]) > 0


def test_adapter_requests_are_labelled_per_adapter(http) -> None:
    before = samples(http)
    response = http.post("/generate", json={"inputs": CHAT_PROMPT, "parameters": {
        "max_new_tokens": 2, "adapter_id": "alpha"}})
    assert response.status_code == 200
    after = samples(http)
    assert value(after, "loraplex_requests_total", adapter="alpha") == \
        value(before, "loraplex_requests_total", adapter="alpha") + 1
    assert value(after, "loraplex_adapters_resident", tier="host") >= 1


def test_one_json_log_line_per_request(http, server) -> None:
    request_id = uuid.uuid4().hex
    response = http.post("/generate", headers={"X-Request-Id": request_id},
                         json={"inputs": CHAT_PROMPT, "parameters": {"max_new_tokens": 3}})
    assert response.headers["x-request-id"] == request_id
    lines = log_entries(server, request_id)
    assert len(lines) == 1
    entry = lines[0]
    assert entry["event"] == "request"
    assert (entry["method"], entry["path"], entry["status"]) == ("POST", "/generate", 200)
    assert entry["generated_tokens"] == 3
    assert entry["prompt_tokens"] > 0
    assert 0 < entry["ttft_s"] <= entry["duration_s"]
    assert entry["adapter"] is None


def test_failed_requests_are_logged_with_their_error_type(http, server) -> None:
    request_id = uuid.uuid4().hex
    http.post("/generate", headers={"X-Request-Id": request_id}, json={"inputs": 1})
    (entry,) = log_entries(server, request_id)
    assert (entry["status"], entry["error_type"]) == (422, "validation")


def test_lora_requests_info_names_the_running_adapter(http) -> None:
    with http.stream("POST", "/generate_stream", json={"inputs": CHAT_PROMPT, "parameters": {
            "adapter_id": "alpha", "max_new_tokens": 64, "ignore_eos_token": True}}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                snapshot = samples(http)
                break
    (labels,) = [dict(found) for name, found in snapshot if name == "vllm:lora_requests_info"]
    assert labels["running_lora_adapters"] == "alpha"
    assert labels["waiting_lora_adapters"] == ""
