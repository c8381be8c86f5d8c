"""vLLM's metric set on `/metrics`, parsed with `prometheus_client`'s own text parser after
real traffic: names, labels (`model_name`, `engine`) and counts as vLLM exports them."""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.model, pytest.mark.timeout(300)]
NEW_TOKENS = 4
REQUEST_HISTOGRAMS = ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds",
                      "vllm:request_queue_time_seconds", "vllm:request_prompt_tokens",
                      "vllm:request_generation_tokens", "vllm:request_prefill_time_seconds",
                      "vllm:request_decode_time_seconds",
                      "vllm:request_inference_time_seconds")
TOKEN_GAP_HISTOGRAMS = ("vllm:inter_token_latency_seconds",
                        "vllm:time_per_output_token_seconds")


def scrape(http) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on /metrics: (name, sorted labels) -> value."""
    text = http.get("/metrics").text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_vllm_series_count_real_traffic(http) -> None:
    model = http.get("/v1/models").json()["data"][0]["id"]
    labels = {"model_name": model, "engine": "0"}
    before = scrape(http)
    usages = []
    for prompt in ("The capital of France is", "Once upon a time"):
        usages.append(http.post("/v1/completions", json={
            "prompt": prompt, "max_tokens": NEW_TOKENS, "temperature": 0,
            "ignore_eos_token": True}).json()["usage"])
    usages.append(http.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "Hi"}], "max_tokens": NEW_TOKENS,
        "temperature": 0, "ignore_eos_token": True, "model": "alpha"}).json()["usage"])
    details = http.post("/generate", json={"inputs": "Hello", "parameters": {
        "max_new_tokens": NEW_TOKENS, "ignore_eos_token": True, "details": True}}).json()
    usages.append({"prompt_tokens": details["details"]["prompt_tokens"],
                   "completion_tokens": details["details"]["generated_tokens"]})
    after = scrape(http)

    def delta(name: str, **extra: str) -> float:
        return value(after, name, **labels, **extra) - value(before, name, **labels, **extra)

    sent = len(usages)
    for histogram in REQUEST_HISTOGRAMS:
        assert delta(histogram + "_count") == sent, histogram
    for histogram in TOKEN_GAP_HISTOGRAMS:
        assert delta(histogram + "_count") == sent * (NEW_TOKENS - 1), histogram
    assert delta("vllm:request_success_total", finished_reason="length") == sent
    assert delta("vllm:prompt_tokens_total") == sum(u["prompt_tokens"] for u in usages)
    assert delta("vllm:generation_tokens_total") == sent * NEW_TOKENS
    assert delta("vllm:request_generation_tokens_sum") == sent * NEW_TOKENS
    assert delta("vllm:time_to_first_token_seconds_sum") > 0
    # the phases add up: running = prefill + decode, and decode is measurable at 4 tokens
    assert delta("vllm:request_decode_time_seconds_sum") > 0
    assert delta("vllm:request_inference_time_seconds_sum") == pytest.approx(
        delta("vllm:request_prefill_time_seconds_sum")
        + delta("vllm:request_decode_time_seconds_sum"), rel=1e-6)
    assert value(after, "vllm:num_preemptions_total", **labels) >= 0
    assert ("vllm:num_preemptions_total", tuple(sorted(labels.items()))) in after


def test_cache_config_info_names_the_kv_cache(http) -> None:
    samples = scrape(http)
    (labels,) = [dict(key) for name, key in samples if name == "vllm:cache_config_info"]
    info = http.get("/info").json()
    assert labels["block_size"] == str(info["block_size"])
    assert int(labels["num_gpu_blocks"]) > 0
    assert labels["engine"] == "0"
    assert samples[("vllm:cache_config_info", tuple(sorted(labels.items())))] == 1


def test_an_aborted_stream_counts_as_abort(http) -> None:
    model = http.get("/v1/models").json()["data"][0]["id"]
    labels = {"model_name": model, "engine": "0", "finished_reason": "abort"}
    before = value(scrape(http), "vllm:request_success_total", **labels)
    with http.stream("POST", "/v1/completions", json={
            "prompt": "Count to a thousand:", "max_tokens": 400, "stream": True,
            "ignore_eos_token": True}) as response:
        next(response.iter_lines())  # one chunk, then the client goes away
    for _ in range(100):  # the server sees the disconnect within a few steps
        if value(scrape(http), "vllm:request_success_total", **labels) == before + 1:
            break
        time.sleep(0.05)
    assert value(scrape(http), "vllm:request_success_total", **labels) == before + 1
