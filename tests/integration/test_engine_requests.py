"""Request life cycle on the builtin model: abort, refusals, seeds, stops, logprobs, EOS.

Oracles: transformers (`generate` with `output_logits`, and a plain forward for prompt
logprobs) and the tokenizer's own `decode`.
"""

from __future__ import annotations

import math

import pytest
import torch

from loraplex.runtime.engine.engine import Engine
from loraplex.runtime.engine.request import FinishReason, GenerationRequest, SamplingParams
from tests.helpers import (
    builtin_config,
    builtin_loaded,
    builtin_tokenizer,
    chat_prompt_ids,
    hf_builtin_model,
    hf_greedy,
)

pytestmark = [pytest.mark.model, pytest.mark.timeout(600)]

STORY = ({"role": "user", "content": "Tell me a short story about a cat."},)
CAPITAL = ({"role": "user", "content": "What is the capital of France?"},)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(builtin_config(), builtin_loaded())


def run(engine: Engine, *requests: GenerationRequest):
    return engine.generate(list(requests))


def text_of(events) -> str:
    return "".join(event.text for event in events)


def assert_all_blocks_free(engine: Engine) -> None:
    stats = engine.stats()
    assert stats.num_free_blocks == stats.num_total_blocks


def test_abort_mid_decode_frees_blocks_and_leaves_others_running(engine):
    prompt = chat_prompt_ids(STORY)
    params = SamplingParams(max_new_tokens=20, ignore_eos=True)
    engine.add_request(GenerationRequest("victim", prompt, params))
    engine.add_request(GenerationRequest("survivor", prompt, params))
    events: dict[str, list] = {"victim": [], "survivor": []}
    for _ in range(3):
        for event in engine.step():
            events[event.request_id].append(event)
    engine.abort("victim")
    engine.abort("no-such-request")  # unknown ids are ignored
    while engine.has_unfinished():
        for event in engine.step():
            events[event.request_id].append(event)
    assert events["victim"][-1].finish_reason is FinishReason.ABORT
    assert len(events["victim"]) == 4  # three tokens, then the abort
    assert len(events["survivor"]) == 20
    assert tuple(e.token_id for e in events["survivor"]) == hf_greedy(tuple(prompt), 20)[:20]
    assert_all_blocks_free(engine)


def test_requests_that_can_never_fit_are_refused_and_nothing_else_is_lost(engine):
    prompt = chat_prompt_ids(CAPITAL)
    engine.add_request(GenerationRequest("good", prompt, SamplingParams(max_new_tokens=8)))
    too_long = [42] * engine.max_model_len
    with pytest.raises(ValueError, match="context holds"):
        engine.add_request(GenerationRequest("long", too_long))
    with pytest.raises(ValueError, match="exceeds the context length"):
        engine.add_request(GenerationRequest("long2", [42] * 100, SamplingParams(
            max_new_tokens=engine.max_model_len)))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.add_request(GenerationRequest("bad-ids", [10**9]))
    with pytest.raises(ValueError, match="already running"):
        engine.add_request(GenerationRequest("good", prompt))
    results: dict[str, list] = {}
    while engine.has_unfinished():
        for event in engine.step():
            results.setdefault(event.request_id, []).append(event)
    assert set(results) == {"good"}
    assert tuple(e.token_id for e in results["good"]) == hf_greedy(tuple(prompt), 8)
    assert_all_blocks_free(engine)


def test_more_blocks_than_the_cache_holds_is_refused():
    small = Engine(builtin_config(kv_cache_bytes=4 << 20), builtin_loaded())
    capacity = small.stats().num_total_blocks * small.stats().block_size
    with pytest.raises(ValueError, match="KV blocks"):
        small.add_request(GenerationRequest("big", [42] * capacity,
                                            SamplingParams(max_new_tokens=1)))


def test_seeded_sampling_is_reproducible_and_seeds_differ(engine):
    prompt = chat_prompt_ids(STORY)

    def sample(request_id: str, seed: int) -> GenerationRequest:
        return GenerationRequest(request_id, prompt, SamplingParams(
            max_new_tokens=16, temperature=1.0, top_p=0.95, seed=seed, ignore_eos=True))

    alone = run(engine, sample("a", 7))["a"]
    batched = run(engine, sample("b", 7), sample("c", 8), sample("d", 9))
    tokens = {key: [e.token_id for e in events] for key, events in batched.items()}
    assert [e.token_id for e in alone] == tokens["b"]
    assert tokens["b"] != tokens["c"] and tokens["c"] != tokens["d"]
    assert alone[0].seed == 7
    unseeded = run(engine, GenerationRequest("u", prompt, SamplingParams(temperature=1.0)))
    assert unseeded["u"][0].seed is not None  # the seed used is reported


def test_stop_sequence_cuts_the_text_before_it(engine):
    prompt = chat_prompt_ids(STORY)
    full = text_of(run(engine, GenerationRequest("full", prompt, SamplingParams(
        max_new_tokens=24, ignore_eos=True)))["full"])
    stop = full[10:14]
    assert stop.strip(), full
    events = run(engine, GenerationRequest("stopped", prompt, SamplingParams(
        max_new_tokens=24, stop=[stop], ignore_eos=True)))["stopped"]
    assert events[-1].finish_reason is FinishReason.STOP
    assert text_of(events) == full[:full.index(stop)]
    assert_all_blocks_free(engine)


def test_finish_reasons_eos_length_and_ignore_eos(engine):
    prompt = chat_prompt_ids(CAPITAL)
    reference = hf_greedy(tuple(prompt), 24)
    assert reference[-1] == 2  # the model ends its answer with <|im_end|>
    eos = run(engine, GenerationRequest("eos", prompt, SamplingParams(max_new_tokens=24)))
    assert eos["eos"][-1].finish_reason is FinishReason.EOS
    assert eos["eos"][-1].special and eos["eos"][-1].token_id == 2
    length = run(engine, GenerationRequest("len", prompt, SamplingParams(max_new_tokens=3)))
    assert [e.finish_reason for e in length["len"]] == [None, None, FinishReason.LENGTH]
    assert length["len"][-1].num_generated_tokens == 3
    beyond = run(engine, GenerationRequest("beyond", prompt, SamplingParams(
        max_new_tokens=len(reference) + 3, ignore_eos=True)))["beyond"]
    assert len(beyond) == len(reference) + 3
    assert tuple(e.token_id for e in beyond[:len(reference)]) == reference


def test_logprobs_and_alternatives_match_transformers(engine):
    prompt = chat_prompt_ids(CAPITAL)
    events = run(engine, GenerationRequest("lp", prompt, SamplingParams(
        max_new_tokens=6, logprobs=3, prompt_logprobs=True)))["lp"]
    with torch.inference_mode():
        output = hf_builtin_model().generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=6, do_sample=False, return_dict_in_generate=True,
            output_logits=True)
        prompt_logits = hf_builtin_model()(torch.tensor([prompt])).logits[0]
    for event, logits in zip(events, output.logits, strict=True):
        expected = torch.log_softmax(logits[0].float(), dim=-1)
        assert event.logprob == pytest.approx(expected[event.token_id].item(), abs=1e-4)
        top = expected.topk(3)
        assert [alt.token_id for alt in event.top_logprobs] == top.indices.tolist()
        assert [alt.logprob for alt in event.top_logprobs] == pytest.approx(
            top.values.tolist(), abs=1e-4)
        assert event.top_logprobs[0].text == builtin_tokenizer().decode(
            [event.top_logprobs[0].token_id])
    first = events[0].prompt_logprobs
    assert [entry.token_id for entry in first] == prompt and math.isnan(first[0].logprob)
    expected_prompt = torch.log_softmax(prompt_logits, -1)[
        torch.arange(len(prompt) - 1), torch.tensor(prompt[1:])]
    assert [entry.logprob for entry in first[1:]] == pytest.approx(
        expected_prompt.tolist(), abs=1e-4)
    assert all(event.prompt_logprobs is None for event in events[1:])


def test_repetition_penalty_matches_transformers(engine):
    prompt = chat_prompt_ids(STORY)
    events = run(engine, GenerationRequest("rp", prompt, SamplingParams(
        max_new_tokens=16, repetition_penalty=1.3)))["rp"]
    with torch.inference_mode():
        expected = hf_builtin_model().generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=16, do_sample=False, repetition_penalty=1.3)[0, len(prompt):]
    assert [e.token_id for e in events] == expected.tolist()


def test_generate_refuses_a_batch_with_a_bad_request_before_running_any(engine):
    good = GenerationRequest("fine", chat_prompt_ids(CAPITAL), SamplingParams(max_new_tokens=4))
    bad = GenerationRequest("bad", [42] * engine.max_model_len)
    with pytest.raises(ValueError, match="context holds"):
        engine.generate([good, bad])
    with pytest.raises(ValueError, match="unique"):
        engine.generate([good, good])
    assert not engine.has_unfinished()
    assert_all_blocks_free(engine)
