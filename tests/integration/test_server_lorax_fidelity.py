"""LoRAX protocol details as LoRAX's router (TGI's) has them: `decoder_input_details` alone
asks for details, a stop sequence stays in `generated_text` (not on the OpenAI routes), and
`/info` carries every field of LoRAX's `Info`."""

from __future__ import annotations

import json

import lorax
import pytest

from tests.integration.conftest import CHAT_PROMPT

pytestmark = [pytest.mark.model, pytest.mark.timeout(300)]
NEW_TOKENS = 12
GREEDY = {"max_new_tokens": NEW_TOKENS, "ignore_eos_token": True}


def test_decoder_input_details_alone_returns_details_with_prefill(server, tokenizer) -> None:
    client = lorax.Client(server.url, timeout=120)
    response = client.generate("The capital of France is", max_new_tokens=2,
                               decoder_input_details=True)
    details = response.details
    assert details is not None
    prompt_ids = tokenizer.encode("The capital of France is")
    assert [token.id for token in details.prefill] == prompt_ids
    assert details.prefill[0].logprob is None
    assert all(token.logprob < 0 for token in details.prefill[1:])
    assert details.generated_tokens == 2


@pytest.fixture(scope="module")
def plain_text(http) -> str:
    return http.post("/generate", json={"inputs": CHAT_PROMPT,
                                        "parameters": GREEDY}).json()["generated_text"]


@pytest.fixture(scope="module")
def stop(plain_text) -> str:
    words = plain_text.split()
    assert len(words) >= 3, plain_text
    return " " + words[2]  # a stop sequence in the middle of the greedy answer


def test_a_stop_sequence_stays_in_lorax_generated_text(http, plain_text, stop) -> None:
    answer = http.post("/generate", json={"inputs": CHAT_PROMPT, "parameters": {
        **GREEDY, "stop": [stop], "details": True}}).json()
    text = answer["generated_text"]
    assert answer["details"]["finish_reason"] == "stop_sequence"
    assert stop in text and plain_text.startswith(text)
    assert text.index(stop) == plain_text.index(stop)


def test_a_stop_sequence_stays_in_the_lorax_stream(http, plain_text, stop) -> None:
    body = {"inputs": CHAT_PROMPT, "parameters": {**GREEDY, "stop": [stop]}}
    with http.stream("POST", "/generate_stream", json=body) as response:
        events = [json.loads(line.removeprefix("data:")) for line in response.iter_lines()
                  if line.startswith("data:")]
    final = events[-1]["generated_text"]
    plain = http.post("/generate", json=body).json()["generated_text"]
    assert final == plain and stop in final


def test_openai_routes_leave_the_stop_sequence_out(http, plain_text, stop) -> None:
    completion = http.post("/v1/completions", json={
        "prompt": CHAT_PROMPT, "max_tokens": NEW_TOKENS, "temperature": 0, "stop": [stop],
        "ignore_eos_token": True}).json()["choices"][0]
    assert completion["finish_reason"] == "stop"
    assert completion["text"] == plain_text[:plain_text.index(stop)]


def test_info_has_every_field_of_lorax_info(http) -> None:
    info = http.get("/info").json()
    for name, kind in {"model_id": str, "model_dtype": str, "model_device_type": str,
                       "max_concurrent_requests": int, "max_best_of": int,
                       "max_stop_sequences": int, "max_input_length": int,
                       "max_total_tokens": int, "waiting_served_ratio": float,
                       "max_batch_total_tokens": int, "max_waiting_tokens": int,
                       "validation_workers": int, "eager_prefill": bool, "version": str}.items():
        assert isinstance(info[name], kind), name
    metrics = http.get("/metrics").text
    (line,) = [line for line in metrics.splitlines()
               if line.startswith("vllm:cache_config_info{")]
    blocks = int(line.split('num_gpu_blocks="')[1].split('"')[0])
    assert info["max_batch_total_tokens"] == blocks * info["block_size"]
