"""A decode step of the engine waits for the device once: the copy of its sampled tokens.

Sixteen sequences with different sampling parameters (greedy, temperatures, top-k, top-p,
repetition/frequency/presence penalties, seeds, logprobs) and two adapters share a batch;
after their prefills, one decode step runs under `HostSyncCounter`. Seeded sampling stays
reproducible through the batched path: the same seeded request gives the same tokens
alone and inside that crowd.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loraplex.runtime.adapters.synthetic import write_random_adapter
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.engine.engine import Engine
from loraplex.runtime.engine.request import GenerationRequest, SamplingParams
from tests.helpers import tiny_llama_config
from tests.helpers.host_syncs import HostSyncCounter

pytestmark = pytest.mark.timeout(300)  # the engine with adapters starts slowly on a busy CPU

PARAMS = (
    {}, {"temperature": 0.7}, {"temperature": 1.3, "top_k": 5}, {"temperature": 0.9, "top_p": 0.8},
    {"repetition_penalty": 1.3}, {"temperature": 0.8, "frequency_penalty": 0.5},
    {"temperature": 0.8, "presence_penalty": 1.0}, {"temperature": 1.0, "seed": 7},
    {"logprobs": 3}, {"temperature": 0.6, "top_k": 20, "top_p": 0.9, "seed": 3},
    {"repetition_penalty": 0.8, "presence_penalty": -0.5}, {"temperature": 2.0, "logprobs": 1},
    {"top_k": 1}, {"temperature": 0.5, "repetition_penalty": 1.1, "frequency_penalty": 1.5},
    {"temperature": 1.0, "top_p": 0.5, "seed": 11}, {"temperature": 0.3, "logprobs": 5},
)
SEEDED = {"temperature": 1.0, "top_p": 0.95, "repetition_penalty": 1.2, "seed": 1234}


@pytest.fixture
def engine(tmp_path: Path):
    engine = Engine(tiny_llama_config(max_num_seqs=32, max_lora_rank=8, device_slots=2,
                                      cache_dir=str(tmp_path / "cache")))
    target = LoraTargetShapes.from_hf_config(engine.loaded.hf_config)
    for index, rank in enumerate((4, 8)):
        engine.adapters.register(f"lora-{index}", str(write_random_adapter(
            tmp_path / f"lora-{index}", target, rank, seed=index + 1)))
    yield engine
    engine.close()


def crowd(new_tokens: int) -> list[GenerationRequest]:
    return [GenerationRequest(f"r{index}", [5 + index, 17, 99, 240, 31 + index][: 3 + index % 3],
                              SamplingParams(max_new_tokens=new_tokens, ignore_eos=True,
                                             **params),
                              adapter=(None, "lora-0", "lora-1")[index % 3])
            for index, params in enumerate(PARAMS)]


def run_until_all_decode(engine: Engine) -> None:
    for _ in range(200):
        engine.step()
        running = engine.scheduler.running
        if (len(running) == len(PARAMS) and not engine.scheduler.waiting
                and all(seq.num_generated_tokens >= 2 for seq in running)):
            return
    raise AssertionError("the batch never reached steady decode")


def test_one_decode_step_waits_for_the_device_once(engine):
    for request in crowd(new_tokens=8):
        engine.add_request(request)
    run_until_all_decode(engine)
    with HostSyncCounter() as syncs:
        events = engine.step()
    assert len(events) == len(PARAMS)  # every sequence decoded one token in this step
    assert syncs.total == 1, syncs.counts


def test_the_counter_sees_value_reads():
    import torch

    values = torch.arange(4)
    with HostSyncCounter() as syncs:
        values.tolist()
        bool(values[1])
        values[values > 1]
    assert syncs.total == 3, syncs.counts


def test_seeded_request_draws_the_same_alone_and_in_a_crowd(engine):
    seeded = GenerationRequest("seeded", [3, 14, 15, 92], SamplingParams(
        max_new_tokens=8, ignore_eos=True, **SEEDED))
    alone = [event.token_id for event in engine.generate([seeded])["seeded"]]
    crowded = engine.generate([*crowd(new_tokens=4), seeded])["seeded"]
    assert [event.token_id for event in crowded] == alone
    assert len(set(alone)) > 1
