"""The real `lorax-client` against a real pod: sync, async, streaming, details, adapters.

Expected tokens come from transformers (base) and PEFT (adapters) run greedily in this
process, with `ignore_eos_token` so that both sides generate exactly N tokens.
"""

from __future__ import annotations

import asyncio
import math

import pytest
from lorax import AsyncClient, Client
from lorax.errors import GenerationError, NotFoundError, ValidationError

from tests.integration.conftest import CHAT_PROMPT

pytestmark = [pytest.mark.model, pytest.mark.slow, pytest.mark.timeout(300)]
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server.url, timeout=120)


@pytest.fixture(scope="module")
def prompt_ids(tokenizer) -> list[int]:
    return tokenizer.encode(CHAT_PROMPT)


def test_generate_matches_transformers_greedy(client, prompt_ids, hf_greedy, tokenizer) -> None:
    response = client.generate(CHAT_PROMPT, max_new_tokens=NEW_TOKENS, ignore_eos_token=True)
    expected = hf_greedy(prompt_ids, NEW_TOKENS)
    details = response.details
    assert [token.id for token in details.tokens] == expected
    assert details.finish_reason.value == "length"
    assert details.prompt_tokens == len(prompt_ids)
    assert details.generated_tokens == NEW_TOKENS
    assert response.generated_text == tokenizer.decode(expected, skip_special_tokens=True)
    assert all(token.logprob <= 0 for token in details.tokens)


def test_plain_greedy_stops_at_the_end_of_turn(client, prompt_ids, hf_greedy,
                                               tokenizer) -> None:
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    expected = hf_greedy(prompt_ids, 30)
    expected = expected[:expected.index(end_of_turn) + 1]  # the oracle must reach it
    response = client.generate(CHAT_PROMPT, max_new_tokens=30)
    assert [token.id for token in response.details.tokens] == expected
    assert response.details.finish_reason.value == "eos_token"
    assert response.details.tokens[-1].special
    assert "Paris" in response.generated_text  # DESIGN: the builtin model knows this


def test_async_client_gives_the_same_greedy_answer(client, server) -> None:
    async def ask() -> str:
        answer = await AsyncClient(server.url).generate(CHAT_PROMPT, max_new_tokens=NEW_TOKENS,
                                                        ignore_eos_token=True)
        return answer.generated_text

    expected = client.generate(CHAT_PROMPT, max_new_tokens=NEW_TOKENS,
                               ignore_eos_token=True).generated_text
    assert asyncio.run(ask()) == expected


def test_stream_yields_each_token_then_the_full_text(client, prompt_ids, hf_greedy) -> None:
    events = list(client.generate_stream(CHAT_PROMPT, max_new_tokens=NEW_TOKENS,
                                         ignore_eos_token=True))
    assert [event.token.id for event in events] == hf_greedy(prompt_ids, NEW_TOKENS)
    assert all(event.generated_text is None and event.details is None for event in events[:-1])
    last = events[-1]
    assert last.generated_text == "".join(e.token.text for e in events if not e.token.special)
    assert last.details.generated_tokens == NEW_TOKENS
    assert last.details.prompt_tokens == len(prompt_ids)


def test_async_stream(server, client) -> None:
    async def stream() -> list[str]:
        return [event.token.text async for event in AsyncClient(server.url).generate_stream(
            CHAT_PROMPT, max_new_tokens=NEW_TOKENS, ignore_eos_token=True)]

    expected = client.generate(CHAT_PROMPT, max_new_tokens=NEW_TOKENS,
                               ignore_eos_token=True).generated_text
    assert "".join(asyncio.run(stream())) == expected


def test_prefill_and_alternatives(client, prompt_ids) -> None:
    response = client.generate(CHAT_PROMPT, max_new_tokens=4, ignore_eos_token=True,
                               decoder_input_details=True, return_k_alternatives=3)
    prefill = response.details.prefill
    assert [token.id for token in prefill] == prompt_ids
    assert prefill[0].logprob is None
    assert all(token.logprob is not None and token.logprob <= 0 for token in prefill[1:])
    for token in response.details.tokens:
        alternatives = token.alternative_tokens
        assert len(alternatives) == 3
        assert alternatives[0].id == token.id  # greedy picks the most likely
        assert math.isclose(alternatives[0].logprob, token.logprob, abs_tol=1e-4)
        logprobs = [alt.logprob for alt in alternatives]
        assert logprobs == sorted(logprobs, reverse=True)


def test_stop_sequence_ends_the_text_with_it(client, prompt_ids, hf_greedy,
                                             tokenizer) -> None:
    """As LoRAX and TGI: the stop sequence is the end of `generated_text`."""
    full = tokenizer.decode(hf_greedy(prompt_ids, NEW_TOKENS), skip_special_tokens=True)
    stop = full.split()[2]  # a word the model is known to produce
    response = client.generate(CHAT_PROMPT, max_new_tokens=NEW_TOKENS, ignore_eos_token=True,
                               stop_sequences=[stop])
    assert response.details.finish_reason.value == "stop_sequence"
    assert response.generated_text == full[:full.index(stop) + len(stop)]


def test_return_full_text_prepends_the_prompt(client) -> None:
    plain = client.generate(CHAT_PROMPT, max_new_tokens=3, ignore_eos_token=True)
    full = client.generate(CHAT_PROMPT, max_new_tokens=3, ignore_eos_token=True,
                           return_full_text=True)
    assert full.generated_text == CHAT_PROMPT + plain.generated_text


def test_seeded_sampling_is_reproducible_and_reports_its_seed(client) -> None:
    first = client.generate(CHAT_PROMPT, max_new_tokens=8, do_sample=True, temperature=1.5,
                            seed=1234, ignore_eos_token=True)
    second = client.generate(CHAT_PROMPT, max_new_tokens=8, do_sample=True, temperature=1.5,
                             seed=1234, ignore_eos_token=True)
    assert first.generated_text == second.generated_text
    assert first.details.seed == 1234


def test_best_of_returns_the_most_likely_candidate(client) -> None:
    response = client.generate(CHAT_PROMPT, max_new_tokens=6, best_of=2, do_sample=True,
                               ignore_eos_token=True)
    others = response.details.best_of_sequences
    assert len(others) == 1
    best_logprob = sum(token.logprob for token in response.details.tokens)
    assert best_logprob >= sum(token.logprob for token in others[0].tokens) - 1e-6


@pytest.mark.parametrize("adapter", ["alpha", "beta"])
def test_adapter_output_matches_peft(client, adapter, prompt_ids, peft_greedy,
                                     hf_greedy) -> None:
    response = client.generate(CHAT_PROMPT, adapter_id=adapter, max_new_tokens=NEW_TOKENS,
                               ignore_eos_token=True)
    tokens = [token.id for token in response.details.tokens]
    assert tokens == peft_greedy(adapter)(prompt_ids, NEW_TOKENS)
    assert tokens != hf_greedy(prompt_ids, NEW_TOKENS)  # the adapter does change the output


def test_unknown_adapter_is_not_found(client) -> None:
    with pytest.raises(NotFoundError, match="no-such-adapter"):
        client.generate(CHAT_PROMPT, adapter_id="no-such-adapter", max_new_tokens=2)


@pytest.mark.parametrize("arguments,mentions", [
    ({"max_new_tokens": 100_000}, "context length"),
    ({"typical_p": 0.5}, "typical_p"),
    ({"watermark": True}, "watermark"),
    ({"stop_sequences": [""]}, "stop"),
])
def test_validation_errors_raise_the_client_validation_error(client, arguments,
                                                             mentions) -> None:
    with pytest.raises(ValidationError, match=mentions):
        client.generate(CHAT_PROMPT, **arguments)


def test_errors_leave_the_server_serving(client) -> None:
    with pytest.raises((ValidationError, NotFoundError, GenerationError)):
        client.generate(CHAT_PROMPT, adapter_id="../../etc", max_new_tokens=2)
    assert client.generate(CHAT_PROMPT, max_new_tokens=2).generated_text
