"""The OpenAI routes as the `openai` package and vLLM's users expect them: refusals raise
`openai.BadRequestError` / `openai.NotFoundError`, vLLM's leniencies are accepted, and
logprobs and usage have OpenAI's and vLLM's shapes."""

from __future__ import annotations

import json
import math

import openai
import pytest

from tests.integration.conftest import MAX_MODEL_LEN

pytestmark = [pytest.mark.model, pytest.mark.timeout(300)]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("arguments,param", [
    ({"prompt": "hello " * (MAX_MODEL_LEN * 2)}, "prompt"),
    ({"prompt": "hi", "logprobs": 21}, "logprobs"),
    ({"prompt": "hi", "seed": 2**63}, "seed"),
    ({"prompt": "hi", "max_tokens": 10**6}, "max_new_tokens"),
    ({"prompt": "hi", "stream_options": {"include_usage": True}}, "stream_options"),
])
def test_invalid_requests_raise_bad_request_error(client, arguments, param) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model="", **arguments)
    assert raised.value.status_code == 400
    error = raised.value.body
    assert error["type"] == "invalid_request_error"
    assert param in error["param"]
    # the server goes on serving
    assert client.completions.create(model="", prompt="hi", max_tokens=1).choices


def test_unknown_model_raises_not_found_error(client) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="no-such-adapter", messages=QUESTION)
    assert raised.value.body["code"] == "model_not_found"


def test_what_vllm_accepts_is_accepted(http) -> None:
    lenient = {"messages": [{"role": "user", "content": "What is the capital of France?",
                             "reasoning_content": None},  # an extra key in a message
                            {"role": "critic", "content": "Answer in one word."}],
               "max_tokens": 4, "temperature": 0}  # a custom role, and no model at all
    response = http.post("/v1/chat/completions", json=lenient)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]
    seed_ok = http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1,
                                                 "seed": 2**63 - 1})
    assert seed_ok.status_code == 200, seed_ok.text


def test_logprobs_zero_names_the_sampled_token(client) -> None:
    choice = client.completions.create(model="", prompt="The capital of France is",
                                       max_tokens=3, temperature=0, logprobs=0).choices[0]
    logprobs = choice.logprobs
    assert all(len(top) == 1 for top in logprobs.top_logprobs)
    for token, logprob, top in zip(logprobs.tokens, logprobs.token_logprobs,
                                   logprobs.top_logprobs, strict=True):
        assert top == {token: logprob}


def test_echo_with_logprobs_fills_every_prompt_position_but_the_first(client, tokenizer
                                                                      ) -> None:
    prompt = "The capital of France is"
    choice = client.completions.create(model="", prompt=prompt, max_tokens=2, temperature=0,
                                       logprobs=1, echo=True).choices[0]
    logprobs = choice.logprobs
    num_prompt = len(tokenizer.encode(prompt))
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    prompt_part = logprobs.token_logprobs[1:num_prompt]
    assert all(value is not None and value < 0 for value in prompt_part)
    assert "".join(logprobs.tokens[:num_prompt]) == prompt
    assert len(logprobs.tokens) == num_prompt + 2


def test_continuous_usage_stats_count_every_chunk(http) -> None:
    body = {"model": "", "messages": QUESTION, "max_tokens": 5, "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = [line.removeprefix("data:").strip() for line in response.iter_lines()
                 if line.startswith("data:")]
    chunks = [json.loads(line) for line in lines if line != "[DONE]"]
    assert all(chunk["usage"] is not None for chunk in chunks)
    counts = [chunk["usage"]["completion_tokens"] for chunk in chunks]
    assert counts == sorted(counts) and counts[0] == 0
    final = chunks[-1]
    assert final["choices"] == [] and final["usage"]["completion_tokens"] == counts[-2]
    assert {chunk["usage"]["prompt_tokens"] for chunk in chunks} == {
        final["usage"]["prompt_tokens"]}
    assert not math.isnan(final["usage"]["total_tokens"])


def test_logit_bias_forces_a_token(client, tokenizer) -> None:
    forced = tokenizer.encode(" banana")[-1]
    choice = client.completions.create(model="", prompt="The capital of France is",
                                       max_tokens=3, temperature=0,
                                       logit_bias={str(forced): 100}).choices[0]
    assert choice.text == tokenizer.decode([forced] * 3)


def test_min_tokens_holds_off_the_end_token(client) -> None:
    short = client.chat.completions.create(model="", messages=QUESTION, max_tokens=40,
                                           temperature=0)
    assert short.choices[0].finish_reason == "stop"
    wanted = short.usage.completion_tokens + 5
    longer = client.chat.completions.create(model="", messages=QUESTION, max_tokens=40,
                                            temperature=0, extra_body={"min_tokens": wanted})
    assert longer.usage.completion_tokens >= wanted
    assert longer.choices[0].message.content.startswith(short.choices[0].message.content)


def test_allowed_token_ids_limit_every_token(client, tokenizer) -> None:
    allowed = sorted(set(tokenizer.encode(" yes no maybe")))
    choice = client.completions.create(model="", prompt="Answer:", max_tokens=6,
                                       temperature=1, seed=5, logprobs=0,
                                       extra_body={"allowed_token_ids": allowed}).choices[0]
    produced = tokenizer.encode(choice.text, add_special_tokens=False)
    assert set(produced) <= set(allowed), choice.text


@pytest.mark.parametrize("arguments,param", [
    ({"logit_bias": {"banana": 1}}, "logit_bias"),
    ({"logit_bias": {"5": 101}}, "logit_bias"),
    ({"logit_bias": {str(10**9): 1}}, "logit_bias"),
    ({"extra_body": {"min_tokens": 9}, "max_tokens": 4}, "min_tokens"),
    ({"extra_body": {"allowed_token_ids": [-1]}}, "allowed_token_ids"),
])
def test_bad_token_choices_raise_bad_request_error(client, arguments, param) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model="", prompt="hi", **{"max_tokens": 2, **arguments})
    assert param in raised.value.body["param"]


def test_frequency_penalty_follows_openai(client, tokenizer, model_folder) -> None:
    """Greedy with frequency_penalty 2: at each step the oracle subtracts 2 x (times
    generated so far) from each token's logit (OpenAI's formula), on transformers' logits."""
    import torch
    from transformers import AutoModelForCausalLM

    prompt, steps = "Repeat after me: la la la la la la la", 8
    plain = client.completions.create(model="", prompt=prompt, max_tokens=steps,
                                      temperature=0, extra_body={"ignore_eos_token": True})
    penalized = client.completions.create(model="", prompt=prompt, max_tokens=steps,
                                          temperature=0, frequency_penalty=2,
                                          extra_body={"ignore_eos_token": True})
    assert penalized.choices[0].text != plain.choices[0].text
    ids = tokenizer.encode(prompt)
    model = AutoModelForCausalLM.from_pretrained(model_folder, torch_dtype=torch.float32).eval()
    generated: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([ids + generated])).logits[0, -1]
            for token in set(generated):
                logits[token] -= 2 * generated.count(token)
            generated.append(int(logits.argmax()))
    assert penalized.choices[0].text == tokenizer.decode(generated, skip_special_tokens=True)
