"""Constrained and free requests in one continuous batch of the engine.

Each constrained row is masked by its own grammar; the free rows beside them must still
equal transformers token for token, and every constrained output must be complete and
valid (JSON that validates against its schema, a full regex match, one of the choices).
"""

from __future__ import annotations

import asyncio
import json
import re

import jsonschema
import pytest

from loraplex.runtime.engine.engine import Engine
from loraplex.runtime.engine.request import FinishReason, GenerationRequest, SamplingParams
from loraplex.runtime.structured.grammar_cache import GrammarCache
from loraplex.runtime.structured.grammar_spec import GrammarSpec
from tests.helpers import CHAT_PROMPTS, builtin_config, builtin_loaded, chat_prompt_ids, hf_greedy

pytestmark = [pytest.mark.model, pytest.mark.slow, pytest.mark.timeout(600)]

FREE_TOKENS = 8
SCHEMA = {"type": "object",
          "properties": {"city": {"type": "string", "maxLength": 12},
                         "population": {"type": "integer", "minimum": 0, "maximum": 9999},
                         "rivers": {"type": "array", "items": {"enum": ["Seine", "Loire"]},
                                    "minItems": 1, "maxItems": 2}},
          "required": ["city", "population", "rivers"]}
DATE = r"\d{4}-\d{2}-\d{2}"
CHOICES = ["Paris", "Lyon", "Marseille"]


def compile_all(engine: Engine, specs: list[GrammarSpec]) -> list:
    cache = GrammarCache(engine.tokenizer, engine.vocab_size, engine.eos_token_ids, 64 << 20)

    async def run():
        return [(await cache.get(spec)).grammar for spec in specs]
    return asyncio.run(run())


def text_of(events) -> str:
    return "".join(event.text for event in events if not event.special)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(builtin_config(), builtin_loaded())


def test_constrained_and_free_rows_in_one_batch(engine) -> None:
    schema, date, choice = compile_all(engine, [GrammarSpec.json_schema(SCHEMA),
                                                GrammarSpec.regex(DATE),
                                                GrammarSpec.choice(CHOICES)])
    question = chat_prompt_ids(({"role": "user",
                                 "content": "Describe Paris as JSON with its rivers."},))
    free_prompts = [chat_prompt_ids(messages) for messages in CHAT_PROMPTS[:2]]
    requests = [GenerationRequest("schema", question, SamplingParams(max_new_tokens=60),
                                  grammar=schema),
                GenerationRequest("date", question, SamplingParams(max_new_tokens=20),
                                  grammar=date),
                GenerationRequest("choice", question, SamplingParams(max_new_tokens=10),
                                  grammar=choice)]
    requests += [GenerationRequest(f"free-{index}", prompt,
                                   SamplingParams(max_new_tokens=FREE_TOKENS))
                 for index, prompt in enumerate(free_prompts)]
    results = engine.generate(requests)
    for index, prompt in enumerate(free_prompts):
        events = results[f"free-{index}"]
        assert tuple(event.token_id for event in events) == hf_greedy(tuple(prompt),
                                                                      FREE_TOKENS)
    for name in ("schema", "date", "choice"):
        assert results[name][-1].finish_reason is FinishReason.EOS, text_of(results[name])
    jsonschema.validate(json.loads(text_of(results["schema"])), SCHEMA)
    assert re.fullmatch(DATE, text_of(results["date"]))
    assert text_of(results["choice"]) in CHOICES
    assert engine.stats().num_free_blocks == engine.stats().num_total_blocks


def test_a_finished_grammar_ends_the_request_even_when_eos_is_ignored(engine) -> None:
    (choice,) = compile_all(engine, [GrammarSpec.choice(["yes", "no"])])
    prompt = chat_prompt_ids(({"role": "user", "content": "Is Paris in France?"},))
    params = SamplingParams(max_new_tokens=30, ignore_eos=True)
    events = engine.generate([GenerationRequest("r", prompt, params, grammar=choice)])["r"]
    assert text_of(events) in ("yes", "no")
    assert events[-1].finish_reason is FinishReason.EOS and len(events) <= 3
