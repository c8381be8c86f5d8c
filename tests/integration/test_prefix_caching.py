"""Prefix caching keeps greedy output token for token, and never crosses adapters.

Eight requests share a 200-token system prompt, two on each of three adapters (strong
enough to change K/V: they adapt k_proj and v_proj) and two on the base model, each ending
in its own question. The oracle is transformers (base) and PEFT (adapters); the engine
runs them with caching off, with caching on (cold: submitted together, each identity's
prefix is computed once; then warm), and with caching on under memory pressure with
chunked prefill (so blocks are shared, freed, evicted and sequences preempted). Every
block is free at the end of every run. One adapter is then replaced under its name by
other weights: its requests stop hitting the blocks of the old ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from loraplex.runtime.adapters.synthetic import write_random_adapter
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.engine.engine import Engine
from loraplex.runtime.engine.kv_cache import KVCacheLayout
from loraplex.runtime.engine.request import GenerationRequest, SamplingParams
from tests.helpers import (
    builtin_config,
    builtin_loaded,
    builtin_tokenizer,
    hf_builtin_model,
    peft_greedy,
)

pytestmark = [pytest.mark.model, pytest.mark.timeout(600)]

NEW_TOKENS = 8
PREFIX_TOKENS = 200
QUESTION_TOKENS = 11
BLOCK_SIZE = 16
ADAPTERS = ("support", "legal", "poet")
IDENTITIES: tuple[str | None, ...] = (*ADAPTERS, None)
QUESTIONS = (
    "How do I reset my password on the website today?",
    "What are the opening hours of the main office in town?",
    "Can I return a product that I bought three months ago?",
    "Why was my last invoice higher than the one before it?",
    "Where can I find the terms of the warranty for my phone?",
    "Is it possible to change the delivery address after ordering?",
    "How long does shipping take to another country in Europe?",
    "Who should I contact when a package arrives damaged at home?",
)


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    """Eight prompts: one 200-token system prompt, then an 11-token question each."""
    tokenizer = builtin_tokenizer()
    system = ("You are the support assistant of a large online shop. Be precise, polite and "
              "brief. Never invent a policy; when unsure, say so and point to the help "
              "page. ") * 12
    prefix = tokenizer.encode(system)[:PREFIX_TOKENS]
    assert len(prefix) == PREFIX_TOKENS
    questions = [tokenizer.encode(" " + question)[:QUESTION_TOKENS] for question in QUESTIONS]
    assert all(len(question) == QUESTION_TOKENS for question in questions)
    return [prefix + question for question in questions]


def identity_of(index: int) -> str | None:
    return IDENTITIES[index % len(IDENTITIES)]  # two requests per adapter and the base


@pytest.fixture(scope="module")
def adapter_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    target = LoraTargetShapes.from_hf_config(builtin_loaded().hf_config)
    root = tmp_path_factory.mktemp("prefix-lora")
    modules = ["q_proj", "k_proj", "v_proj", "o_proj"]
    return {name: write_random_adapter(root / name, target, 8, modules, seed=index + 40,
                                       strength=2.0)
            for index, name in enumerate((*ADAPTERS, "poet-v2"))}


@pytest.fixture(scope="module")
def references(prompts, adapter_folders) -> list[tuple[int, ...]]:
    """PEFT's greedy tokens for each of the eight requests (the base rows: no adapter)."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(hf_builtin_model(), adapter_folders[ADAPTERS[0]],
                                           adapter_name=ADAPTERS[0])
    try:
        for name in (*ADAPTERS[1:], "poet-v2"):
            peft_model.load_adapter(adapter_folders[name], adapter_name=name)
        rows = [identity_of(index) or "__base__" for index in range(len(prompts))]
        outputs = peft_greedy(peft_model, prompts, rows, NEW_TOKENS)
        outputs.append(peft_greedy(peft_model, prompts[2:3], ["poet-v2"], NEW_TOKENS)[0])
    finally:
        peft_model.unload()
    return outputs


def make_engine(adapter_folders: dict[str, Path], **overrides) -> Engine:
    engine = Engine(builtin_config(block_size=BLOCK_SIZE, device_slots=4, max_lora_rank=8,
                                   **overrides), builtin_loaded())
    for name in ADAPTERS:
        engine.adapters.register(name, str(adapter_folders[name]))
    return engine


@pytest.fixture
def engine(adapter_folders) -> Iterator[Engine]:
    engine = make_engine(adapter_folders)
    yield engine
    engine.close()


def run(engine: Engine, prompts: list[list[int]], tag: str,
        adapters: list[str | None] | None = None) -> list[tuple[int, ...]]:
    adapters = adapters or [identity_of(index) for index in range(len(prompts))]
    requests = [GenerationRequest(f"{tag}-{index}", prompt,
                                  SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True),
                                  adapter=adapter)
                for index, (prompt, adapter) in enumerate(zip(prompts, adapters, strict=True))]
    results = engine.generate(requests)
    stats = engine.stats()
    assert stats.num_free_blocks == stats.num_total_blocks  # no block leaked
    assert all(info.in_use == 0 for info in engine.adapters.list())
    return [tuple(event.token_id for event in results[request.request_id])
            for request in requests]


def test_the_adapters_change_the_output(references):
    base = {references[index] for index in range(len(references) - 1)
            if identity_of(index) is None}
    changed = [index for index in range(len(references) - 1)
               if identity_of(index) is not None and references[index] not in base]
    assert len(changed) >= 5, changed


def test_output_with_and_without_caching_equals_the_oracle(adapter_folders, prompts,
                                                           references):
    uncached = make_engine(adapter_folders, prefix_caching=False)
    try:
        assert run(uncached, prompts, "off") == references[:8]
        assert uncached.stats().prefix_cache.total_queries == 0
        assert uncached.stats().num_prompt_tokens == 8 * (PREFIX_TOKENS + QUESTION_TOKENS)
    finally:
        uncached.close()
    cached = make_engine(adapter_folders)
    try:
        assert run(cached, prompts, "cold") == references[:8]
        cold = cached.stats().prefix_cache
        # submitted together: each identity's second request waits one step for the
        # first one's 12 full prefix blocks, so each prefix is computed once
        shared = 4 * (PREFIX_TOKENS // BLOCK_SIZE) * BLOCK_SIZE
        assert cold.total_hits == shared
        assert cached.stats().num_prompt_tokens == 8 * (PREFIX_TOKENS + QUESTION_TOKENS) - shared
        assert run(cached, prompts, "warm") == references[:8]
        warm = cached.stats().prefix_cache
        assert warm.total_hits - cold.total_hits == 8 * 13 * BLOCK_SIZE  # 13 full blocks each
        assert warm.total_queries == 2 * 8 * (PREFIX_TOKENS + QUESTION_TOKENS)
    finally:
        cached.close()


def test_a_request_never_reuses_blocks_another_adapter_computed(engine, prompts,
                                                                references):
    """Fails if the adapter is left out of the block names: "legal" would hit here."""
    prompt = [prompts[1]]  # the prompt of a "legal" request
    run(engine, prompt, "base", [None])
    run(engine, prompt, "support", ["support"])
    assert run(engine, prompt, "legal", ["legal"]) == [references[1]]
    assert engine.stats().prefix_cache.hits["legal"] == 0  # no other identity's blocks
    assert run(engine, prompt, "again", ["legal"]) == [references[1]]
    assert engine.stats().prefix_cache.hits["legal"] == 13 * BLOCK_SIZE


def test_an_adapter_replaced_under_its_name_stops_matching(engine, adapter_folders,
                                                           prompts, references):
    assert run(engine, [prompts[2]], "v1", ["poet"]) == [references[2]]
    engine.adapters.register("poet", str(adapter_folders["poet-v2"]))
    assert run(engine, [prompts[2]], "v2", ["poet"]) == [references[8]]
    assert engine.stats().prefix_cache.hits["poet"] == 0
    assert run(engine, [prompts[2]], "v2-again", ["poet"]) == [references[8]]
    assert engine.stats().prefix_cache.hits["poet"] == 13 * BLOCK_SIZE


@pytest.mark.slow
def test_memory_pressure_chunked_prefill_and_preemption_with_hits(adapter_folders, prompts,
                                                                   references):
    per_request = -(-(PREFIX_TOKENS + QUESTION_TOKENS + NEW_TOKENS) // BLOCK_SIZE)
    blocks = per_request + 3  # one request and a little more
    layout = KVCacheLayout.of(builtin_loaded().hf_config, BLOCK_SIZE, torch.float32)
    engine = make_engine(adapter_folders, max_num_batched_tokens=32,
                         kv_cache_bytes=blocks * layout.bytes_per_block)
    try:
        assert engine.stats().num_total_blocks == blocks
        assert run(engine, prompts, "pressure") == references[:8]
        stats = engine.stats()
        assert stats.prefix_cache.total_hits > 0
        assert engine.block_manager.num_evictions > 0
        assert stats.num_preemptions > 0
    finally:
        engine.close()
