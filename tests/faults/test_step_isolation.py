"""One request never fails another's step: hostile values are bounded at admission, and a
step that still fails is retried without the request that broke it.

The engine is real (`tiny-llama`, random weights, CPU). A culprit is made by corrupting
one admitted request's own state at one point of the step: its sampling values (a
`top_k` no int64 holds), its LoRA slot, its KV block table (attention writes and reads
through it). The oracle is the same engine run without the culprit: every other request,
greedy or seeded, must produce the same tokens.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

from loraplex.runtime.engine.engine import Engine
from loraplex.runtime.engine.request import FinishReason, GenerationRequest, SamplingParams
from tests.helpers import tiny_llama_config

MAX_NEW_TOKENS = 10
PROMPTS = {"greedy-a": [5, 17, 99, 3, 250, 41, 7], "seeded": [8, 8, 120, 64, 2, 31, 77, 12, 9],
           "greedy-b": [300, 11, 42], "culprit": [6, 19, 230, 44, 21]}


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    engine = Engine(tiny_llama_config(device_slots=2, max_lora_rank=8))
    assert engine.adapters.pool is not None  # built: every step carries LoRA metadata
    yield engine
    engine.close()


def _request(request_id: str) -> GenerationRequest:
    params = SamplingParams(max_new_tokens=MAX_NEW_TOKENS, ignore_eos=True)
    if request_id in ("seeded", "culprit"):
        params = SamplingParams(max_new_tokens=MAX_NEW_TOKENS, ignore_eos=True,
                                temperature=0.9, top_k=40, seed=1234)
    return GenerationRequest(request_id, PROMPTS[request_id], params)


def _run(engine: Engine, ids: list[str], poison=None) -> dict[str, list]:
    events: dict[str, list] = {request_id: [] for request_id in ids}
    for request_id in ids:
        engine.add_request(_request(request_id))
    for event in engine.step():  # every prompt is prefilled in this first step
        events[event.request_id].append(event)
    if poison is not None:
        poison(engine, engine._seqs["culprit"])
    while engine.has_unfinished():
        for event in engine.step():
            events[event.request_id].append(event)
    return events


def _tokens(events: list) -> list[int]:
    return [event.token_id for event in events if event.token_id is not None]


def _poison_sampling(engine: Engine, seq) -> None:
    seq.params.top_k = -(2**63) - 1  # below int64: the sampling metadata cannot hold it


def _poison_lora(engine: Engine, seq) -> None:
    seq.lora_slot = engine.config.device_slots + 5  # a slot the pool does not have


def _poison_attention(engine: Engine, seq) -> None:
    # the block the next token's K/V goes to (the prompt does not fill a whole block)
    assert seq.num_tokens % engine.config.block_size
    seq.block_table[-1] = engine.block_manager.num_blocks + 3


@pytest.fixture(scope="module")
def baseline(engine: Engine) -> dict[str, list[int]]:
    events = _run(engine, ["greedy-a", "seeded", "greedy-b"])
    return {request_id: _tokens(found) for request_id, found in events.items()}


@pytest.mark.parametrize("poison", [_poison_sampling, _poison_lora, _poison_attention],
                         ids=["sampling-metadata", "lora-metadata", "attention"])
def test_a_request_that_fails_the_step_fails_alone(engine, baseline, poison):
    free_before = engine.stats().num_free_blocks
    events = _run(engine, ["greedy-a", "culprit", "seeded", "greedy-b"], poison)
    for request_id, tokens in baseline.items():
        assert _tokens(events[request_id]) == tokens, request_id
        assert events[request_id][-1].finish_reason is FinishReason.LENGTH
    last = events["culprit"][-1]
    assert last.finished and last.finish_reason is FinishReason.ERROR
    assert "failed the engine step" in last.error
    assert len(_tokens(events["culprit"])) == 1  # its prefill token, then nothing
    lost = 1 if poison is _poison_attention else 0  # the block the test overwrote
    assert engine.stats().num_free_blocks == free_before - lost
    assert not engine.has_unfinished()


def test_huge_top_k_is_clamped_and_its_neighbours_run(engine, baseline):
    # reproduction: top_k 2^63 used to fail every request in flight (int64 overflow)
    hostile = GenerationRequest("hostile", [4, 5, 6],
                                SamplingParams(max_new_tokens=3, temperature=1.0, top_k=2**63))
    neighbours = [_request("greedy-a"), _request("seeded")]  # seeded: a top_k of 40
    results = engine.generate([hostile, *neighbours])
    for request in neighbours:
        assert _tokens(results[request.request_id]) == baseline[request.request_id]
    assert results["hostile"][-1].finish_reason is FinishReason.LENGTH
    assert hostile.params.top_k == engine.loaded.hf_config.vocab_size


@pytest.mark.parametrize(("field", "value"), [
    ("temperature", math.nan), ("temperature", math.inf), ("repetition_penalty", math.nan),
    ("seed", 2**64), ("seed", -(2**63) - 1), ("top_k", 2.5), ("max_new_tokens", True)])
def test_values_no_step_can_use_are_refused_at_admission(engine, field, value):
    params = SamplingParams(max_new_tokens=3, temperature=0.5)
    setattr(params, field, value)
    with pytest.raises(ValueError, match=field):
        engine.add_request(GenerationRequest("refused", [1, 2, 3], params))
    assert "refused" not in engine._seqs and not engine.has_unfinished()


def test_prompt_ids_of_the_wrong_type_are_refused(engine):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.add_request(GenerationRequest("refused", [1, 2.0, 3]))
