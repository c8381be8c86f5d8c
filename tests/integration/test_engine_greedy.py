"""Greedy output of our engine equals transformers `generate`, token for token (fp32, CPU).

The same ten chat prompts run one at a time, all in one continuously-batched run, with
requests arriving while others decode, and under pressure (chunked prefill with a tiny
token budget, a KV cache too small for all of them so sequences are preempted and
recomputed). Every KV block is free again at the end of each run.
"""

from __future__ import annotations

import pytest
import torch

from loraplex.runtime.engine.engine import Engine
from loraplex.runtime.engine.kv_cache import KVCacheLayout
from loraplex.runtime.engine.request import FinishReason, GenerationRequest, SamplingParams
from tests.helpers import (
    CHAT_PROMPTS,
    builtin_config,
    builtin_loaded,
    builtin_tokenizer,
    chat_prompt_ids,
    hf_greedy,
)

pytestmark = [pytest.mark.model, pytest.mark.timeout(600)]

NEW_TOKENS = 24


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    return [chat_prompt_ids(messages) for messages in CHAT_PROMPTS]


@pytest.fixture(scope="module")
def references(prompts) -> list[tuple[int, ...]]:
    return [hf_greedy(tuple(prompt), NEW_TOKENS) for prompt in prompts]


def make_engine(**overrides) -> Engine:
    return Engine(builtin_config(**overrides), builtin_loaded())


def greedy_request(index: int, prompt: list[int]) -> GenerationRequest:
    return GenerationRequest(f"req-{index}", prompt, SamplingParams(max_new_tokens=NEW_TOKENS))


def token_ids(events) -> tuple[int, ...]:
    return tuple(event.token_id for event in events)


def assert_all_blocks_free(engine: Engine) -> None:
    stats = engine.stats()
    assert stats.num_free_blocks == stats.num_total_blocks
    assert stats.num_running == stats.num_waiting == 0 and stats.kv_cache_usage == 0


def test_prompts_are_varied(prompts):
    lengths = sorted(len(p) for p in prompts)
    assert len(prompts) >= 8 and lengths[-1] > 2 * lengths[0]


def test_one_at_a_time(prompts, references):
    engine = make_engine()
    for index, (prompt, reference) in enumerate(zip(prompts, references, strict=True)):
        events = engine.generate([greedy_request(index, prompt)])[f"req-{index}"]
        assert token_ids(events) == reference, CHAT_PROMPTS[index]
        assert_all_blocks_free(engine)


def test_all_together_in_one_batch(prompts, references):
    engine = make_engine()
    results = engine.generate([greedy_request(i, p) for i, p in enumerate(prompts)])
    for index, reference in enumerate(references):
        assert token_ids(results[f"req-{index}"]) == reference, CHAT_PROMPTS[index]
    assert engine.stats().num_steps <= NEW_TOKENS + 1  # really batched
    assert_all_blocks_free(engine)


def test_requests_arriving_while_others_decode(prompts, references):
    engine = make_engine()
    results: dict[str, list] = {}
    pending = list(enumerate(prompts))
    steps = 0
    while pending or engine.has_unfinished():
        if pending and steps % 3 == 0:  # a new request every third step
            index, prompt = pending.pop(0)
            engine.add_request(greedy_request(index, prompt))
        for event in engine.step():
            results.setdefault(event.request_id, []).append(event)
        steps += 1
    for index, reference in enumerate(references):
        assert token_ids(results[f"req-{index}"]) == reference, CHAT_PROMPTS[index]
    assert_all_blocks_free(engine)


def test_chunked_prefill_and_preemption_keep_the_output(prompts, references):
    longest = max(len(p) for p in prompts) + NEW_TOKENS
    block_size = 8
    blocks = 2 * (-(-longest // block_size))  # room for about two sequences at a time
    layout = KVCacheLayout.of(builtin_loaded().hf_config, block_size, torch.float32)
    engine = make_engine(block_size=block_size, max_num_batched_tokens=40,
                         kv_cache_bytes=blocks * layout.bytes_per_block)
    assert engine.stats().num_total_blocks == blocks
    results = engine.generate([greedy_request(i, p) for i, p in enumerate(prompts)])
    for index, reference in enumerate(references):
        assert token_ids(results[f"req-{index}"]) == reference, CHAT_PROMPTS[index]
    assert engine.stats().num_preemptions > 0
    assert_all_blocks_free(engine)


def test_capital_of_france_is_paris():
    engine = make_engine()
    prompt = chat_prompt_ids(({"role": "user", "content": "What is the capital of France?"},))
    events = engine.generate([greedy_request(0, prompt)])["req-0"]
    text = "".join(event.text for event in events)
    assert "Paris" in text
    assert events[-1].finished and events[-1].finish_reason is FinishReason.EOS
    generated = [event.token_id for event in events]
    assert text == builtin_tokenizer().decode(generated, skip_special_tokens=True)
