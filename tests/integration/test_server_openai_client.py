"""The real `openai` package against a real pod: completions, chat, streams, adapters."""

from __future__ import annotations

import math

import openai
import pytest

from tests.integration.conftest import CHAT_PROMPT

pytestmark = [pytest.mark.model, pytest.mark.slow, pytest.mark.timeout(300)]
NEW_TOKENS = 8
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def base_id(client) -> str:
    return client.models.list().data[0].id


@pytest.fixture(scope="module")
def chat_ids(tokenizer) -> list[int]:
    return tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=True)


def test_completion_matches_transformers_greedy(client, tokenizer, hf_greedy) -> None:
    completion = client.completions.create(model="", prompt=CHAT_PROMPT, max_tokens=NEW_TOKENS,
                                           temperature=0, extra_body={"ignore_eos_token": True})
    expected = hf_greedy(tokenizer.encode(CHAT_PROMPT), NEW_TOKENS)
    choice = completion.choices[0]
    assert choice.text == tokenizer.decode(expected, skip_special_tokens=True)
    assert choice.finish_reason == "length"
    assert completion.usage.completion_tokens == NEW_TOKENS
    assert completion.usage.prompt_tokens == len(tokenizer.encode(CHAT_PROMPT))


def test_completion_defaults_to_sixteen_tokens_and_lists_prompts(client) -> None:
    completion = client.completions.create(model="", prompt=["Once upon a time", "The sea"],
                                           temperature=0, extra_body={"ignore_eos_token": True})
    assert [choice.index for choice in completion.choices] == [0, 1]
    assert completion.usage.completion_tokens == 32


def test_completion_logprobs_and_echo(client) -> None:
    completion = client.completions.create(model="", prompt="The capital of France is",
                                           max_tokens=3, temperature=0, logprobs=2, echo=True)
    choice = completion.choices[0]
    assert choice.text.startswith("The capital of France is")
    logprobs = choice.logprobs
    assert logprobs.token_logprobs[0] is None  # nothing predicts the first prompt token
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.text_offset)
    generated_top = logprobs.top_logprobs[-1]
    assert len(generated_top) == 2
    assert math.isclose(max(generated_top.values()), logprobs.token_logprobs[-1], abs_tol=1e-4)


def test_chat_matches_transformers_greedy(client, chat_ids, hf_greedy, tokenizer,
                                          base_id) -> None:
    chat = client.chat.completions.create(model=base_id, messages=QUESTION,
                                          max_tokens=NEW_TOKENS, temperature=0,
                                          extra_body={"ignore_eos_token": True})
    expected = hf_greedy(chat_ids, NEW_TOKENS)
    assert chat.choices[0].message.content == tokenizer.decode(expected,
                                                               skip_special_tokens=True)
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage.prompt_tokens == len(chat_ids)
    assert chat.model == base_id


def test_chat_stream_with_usage_equals_the_plain_answer(client) -> None:
    plain = client.chat.completions.create(model="", messages=QUESTION, max_tokens=20,
                                           temperature=0)
    chunks = list(client.chat.completions.create(
        model="", messages=QUESTION, max_tokens=20, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    content = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert content == plain.choices[0].message.content
    assert "Paris" in content
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finishes[-1] == plain.choices[0].finish_reason == "stop"
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert (usage.prompt_tokens, usage.completion_tokens) == (plain.usage.prompt_tokens,
                                                              plain.usage.completion_tokens)


def test_completion_stream(client) -> None:
    plain = client.completions.create(model="", prompt=CHAT_PROMPT, max_tokens=6,
                                      temperature=0)
    stream = client.completions.create(model="", prompt=CHAT_PROMPT, max_tokens=6,
                                       temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream) == plain.choices[0].text


def test_n_choices_with_a_seed_and_top_logprobs(client) -> None:
    chat = client.chat.completions.create(model="", messages=QUESTION, max_tokens=5, n=2,
                                          seed=7, temperature=1.0, logprobs=True,
                                          top_logprobs=2)
    assert [choice.index for choice in chat.choices] == [0, 1]
    for choice in chat.choices:
        for item in choice.logprobs.content:
            assert len(item.top_logprobs) == 2
            assert item.logprob <= 0
    again = client.chat.completions.create(model="", messages=QUESTION, max_tokens=5, n=2,
                                           seed=7, temperature=1.0)
    assert [c.message.content for c in again.choices] == \
        [c.message.content for c in chat.choices]


@pytest.mark.parametrize("adapter", ["alpha", "beta"])
def test_model_names_an_adapter(client, adapter, chat_ids, peft_greedy, tokenizer) -> None:
    chat = client.chat.completions.create(model=adapter, messages=QUESTION,
                                          max_tokens=NEW_TOKENS, temperature=0,
                                          extra_body={"ignore_eos_token": True})
    expected = peft_greedy(adapter)(chat_ids, NEW_TOKENS)
    assert chat.choices[0].message.content == tokenizer.decode(expected,
                                                               skip_special_tokens=True)
    assert chat.model == adapter


def test_models_lists_the_base_model_and_the_adapters(client, base_id) -> None:
    models = {model.id: model for model in client.models.list().data}
    assert {base_id, "alpha", "beta"} <= set(models)
    assert models["alpha"].model_extra["parent"] == base_id


def test_unknown_model_is_a_404_in_openai_shape(client) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="no-such-adapter", messages=QUESTION,
                                       max_tokens=2)
    error = raised.value.body
    assert "no-such-adapter" in error["message"]
    assert error["code"] == "model_not_found"
    assert set(error) == {"message", "type", "param", "code"}


def test_unsupported_options_are_refused_by_name(client) -> None:
    with pytest.raises(openai.BadRequestError, match="no tool format"):
        client.chat.completions.create(model="", messages=QUESTION, max_tokens=2, tools=[
            {"type": "function", "function": {"name": "f", "parameters": {}}}])
    with pytest.raises(openai.BadRequestError, match="suffix"):
        client.completions.create(model="", prompt="hi", max_tokens=2, suffix="end")
