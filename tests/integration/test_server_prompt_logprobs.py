"""vLLM's `prompt_logprobs` on both OpenAI routes, checked against transformers: each
prompt token's logprob and rank, and its position's likeliest tokens, as vLLM shapes them
(null for the first token, then {token id: {logprob, rank, decoded_token}})."""

from __future__ import annotations

import math

import openai
import pytest

pytestmark = [pytest.mark.model, pytest.mark.timeout(300)]
PROMPT = "The capital of France is Paris, and the capital of Spain is"


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def reference(model_folder, tokenizer):
    """transformers' log-softmax over the prompt: [prompt, vocab] (row i predicts i+1)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_folder, torch_dtype=torch.float32).eval()
    ids = tokenizer.encode(PROMPT)
    with torch.no_grad():
        return ids, torch.log_softmax(model(torch.tensor([ids])).logits[0], dim=-1)


def check_positions(positions, reference, num_top: int) -> None:
    import torch

    ids, logprobs = reference
    assert positions[0] is None and len(positions) == len(ids)
    for index, entry in enumerate(positions[1:], start=1):
        row = logprobs[index - 1]  # [vocab]
        token = ids[index]
        own = entry[str(token)]
        assert own["logprob"] == pytest.approx(float(row[token]), abs=2e-4)
        assert own["rank"] == int((row > row[token]).sum()) + 1
        expected_top = torch.topk(row, num_top).indices.tolist()
        top = [int(key) for key, value in entry.items() if value["rank"] <= num_top]
        assert sorted(top) == sorted(expected_top)
        assert len(entry) == num_top + (token not in expected_top)
        assert all(math.isfinite(value["logprob"]) and value["decoded_token"] is not None
                   for value in entry.values())


def test_completions_prompt_logprobs_match_transformers(client, reference) -> None:
    response = client.completions.create(model="", prompt=PROMPT, max_tokens=2,
                                         temperature=0, extra_body={"prompt_logprobs": 3})
    check_positions(response.model_dump()["choices"][0]["prompt_logprobs"], reference, 3)


def test_chat_prompt_logprobs_cover_the_rendered_prompt(http, tokenizer) -> None:
    messages = [{"role": "user", "content": "Name a colour."}]
    body = {"messages": messages, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 0}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    payload = response.json()
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    positions = payload["prompt_logprobs"]
    assert len(positions) == len(rendered) == payload["usage"]["prompt_tokens"]
    assert positions[0] is None
    assert [list(entry) for entry in positions[1:]] == [[str(t)] for t in rendered[1:]]


def test_zero_names_only_the_prompt_token_and_absent_means_null(client, reference) -> None:
    asked = client.completions.create(model="", prompt=PROMPT, max_tokens=1, temperature=0,
                                      extra_body={"prompt_logprobs": 0})
    check_positions(asked.model_dump()["choices"][0]["prompt_logprobs"], reference, 0)
    plain = client.completions.create(model="", prompt=PROMPT, max_tokens=1, temperature=0)
    assert plain.model_dump()["choices"][0].get("prompt_logprobs") is None


def test_echo_with_logprobs_gives_prompt_alternatives(client, reference, tokenizer) -> None:
    ids, logprobs = reference
    choice = client.completions.create(model="", prompt=PROMPT, max_tokens=1, temperature=0,
                                       logprobs=2, echo=True).choices[0]
    prompt_tops = choice.logprobs.top_logprobs[1:len(ids)]
    for index, top in enumerate(prompt_tops, start=1):
        best = logprobs[index - 1].topk(2).indices.tolist()
        names = {tokenizer.decode([token]) for token in best}
        assert names <= set(top) and len(top) in (2, 3)


@pytest.mark.parametrize("body", [
    {"prompt_logprobs": 21},
    {"prompt_logprobs": -1},
    {"prompt_logprobs": 1, "stream": True},
])
def test_bad_prompt_logprobs_raise_bad_request_error(client, body) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model="", prompt="hi", max_tokens=1,
                                  stream=body.pop("stream", False), extra_body=body)
    assert "prompt_logprobs" in raised.value.body["param"]
    assert client.completions.create(model="", prompt="hi", max_tokens=1).choices
