"""What the compiled decode layers' tests share: the chat requests they generate, an
engine's steps for them, and the check that a model's compiled steps give the
layer-by-layer path's tokens."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from loraplex.runtime.config import EngineConfig
from loraplex.runtime.engine.engine import Engine
from loraplex.runtime.engine.request import GenerationRequest, SamplingParams
from loraplex.runtime.models.loader import LoadedModel
from tests.helpers import CHAT_PROMPTS, chat_prompt_ids

Steps = list[list[tuple[int, float, list]]]  # per request: (token, logprob, top-3) per step


def requests(new_tokens: int, adapters: list[str | None] | None = None
             ) -> list[GenerationRequest]:
    names = adapters or [None] * len(CHAT_PROMPTS)
    return [GenerationRequest(f"r{index}", chat_prompt_ids(messages), SamplingParams(
        max_new_tokens=new_tokens, logprobs=3, ignore_eos=True), adapter=names[index])
        for index, messages in enumerate(CHAT_PROMPTS)]


def generate_steps(config: EngineConfig, loaded: LoadedModel, batch: list[GenerationRequest],
                   adapters: dict[str, str] | None = None) -> Steps:
    """`batch` through an engine on `loaded` with `adapters` (name -> folder) registered
    and on the device first: requests waiting for a loading adapter would be admitted in
    other batches from run to run, and a quantized product's rows decide its path (from 48,
    dense bf16 blocks), so the same requests could differ in their logits' last digits."""
    engine = Engine(config, loaded)
    try:
        for name, folder in (adapters or {}).items():
            engine.adapters.register(name, folder)
        engine.generate([GenerationRequest(f"load-{name}", batch[0].prompt_token_ids,
                                           SamplingParams(max_new_tokens=1), adapter=name)
                         for name in adapters or {}])
        results = engine.generate(batch)
    finally:
        engine.close()
    return [[(event.token_id, event.logprob, [(alt.token_id, alt.logprob)
                                               for alt in event.top_logprobs])
             for event in results[request.request_id]] for request in batch]


def assert_same_steps(model, calls: list[int], generate: Callable[[], Steps],
                      exact: bool = False) -> None:
    """Decode steps of every row compile (`calls`: each compiled call's rows), and their
    tokens and top-3 equal the layer-by-layer path's (`model.compiled_layers` off), logprobs
    within the SiLU's last bits (`exact`: tokens and logprobs equal)."""
    compiled = generate()
    assert calls and max(calls) == len(CHAT_PROMPTS)
    try:
        model.compiled_layers = False
        calls.clear()
        one_by_one = generate()
    finally:
        model.compiled_layers = True
    assert not calls
    if exact:
        assert compiled == one_by_one
        return
    for got, want in zip(compiled, one_by_one, strict=True):
        assert [token for token, *_ in got] == [token for token, *_ in want]
        for (_, logprob, top), (_, want_logprob, want_top) in zip(got, want, strict=True):
            assert logprob == pytest.approx(want_logprob, abs=1e-4)
            assert [t for t, _ in top] == [t for t, _ in want_top]
