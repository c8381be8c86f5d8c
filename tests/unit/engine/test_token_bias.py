"""Per-row logit bias, minimum length and allowed tokens, against transformers' processors.

Each row of one batch asks for something else (or nothing); every row must come out as
transformers' own processor would leave it (`SequenceBiasLogitsProcessor` for one-token
biases, `MinNewTokensLengthLogitsProcessor`, `SuppressTokensLogitsProcessor` for the
complement of an allow list), and rows that ask nothing must be untouched.
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    MinNewTokensLengthLogitsProcessor,
    SequenceBiasLogitsProcessor,
    SuppressTokensLogitsProcessor,
)

from loraplex.runtime.engine.request import SamplingParams
from loraplex.runtime.engine.step_sampling import build_token_bias
from loraplex.runtime.layers.sampler import Sampler, SamplingTensors, token_bias_processor
from loraplex.runtime.layers.token_bias import apply_token_bias

VOCAB = 40
END_IDS = (2, 7)
CPU = torch.device("cpu")


def logits_of(rows: int) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(3)) * 3


def test_each_row_is_processed_as_transformers_would() -> None:
    params = [SamplingParams(logit_bias={5: 12.5, 9: -100.0, 31: 0.25}),
              SamplingParams(max_new_tokens=8, min_tokens=4),
              SamplingParams(allowed_token_ids=[1, 3, 30]),
              SamplingParams()]
    generated = [0, 2, 0, 0]
    logits = logits_of(4)
    ours = apply_token_bias(logits, build_token_bias(params, generated, END_IDS, VOCAB, CPU))
    input_ids = torch.zeros(1, 3, dtype=torch.long)  # only its length matters below
    bias = SequenceBiasLogitsProcessor({(5,): 12.5, (9,): -100.0, (31,): 0.25})
    assert torch.allclose(ours[0], bias(input_ids, logits[0:1].clone())[0])
    min_length = MinNewTokensLengthLogitsProcessor(prompt_length_to_skip=1, min_new_tokens=4,
                                                   eos_token_id=list(END_IDS))
    assert torch.equal(ours[1], min_length(input_ids, logits[1:2].clone())[0])
    suppress = SuppressTokensLogitsProcessor(
        [token for token in range(VOCAB) if token not in (1, 3, 30)])
    assert torch.equal(ours[2], suppress(input_ids, logits[2:3].clone())[0])
    assert torch.equal(ours[3], logits[3])


def test_min_tokens_stops_blocking_once_reached() -> None:
    params = [SamplingParams(max_new_tokens=8, min_tokens=4)]
    assert build_token_bias(params, [4], END_IDS, VOCAB, CPU) is None
    assert build_token_bias([SamplingParams()], [0], END_IDS, VOCAB, CPU) is None


def test_greedy_choice_follows_the_bias_through_the_sampler() -> None:
    logits = logits_of(2)
    favourite = int(logits[0].argmin())
    params = [SamplingParams(logit_bias={favourite: 100.0}),
              SamplingParams(allowed_token_ids=[favourite])]
    tensors = SamplingTensors(temperatures=torch.ones(2), greedy=torch.ones(2, dtype=bool),
                              seeds=torch.zeros(2, dtype=torch.long),
                              token_indices=torch.zeros(2, dtype=torch.long),
                              token_bias=build_token_bias(params, [0, 0], END_IDS, VOCAB, CPU))
    output = Sampler([token_bias_processor])(logits.clone(), tensors)
    assert output.token_ids.tolist() == [favourite, favourite]
    # reported logprobs stay the model's own, before any processing
    assert torch.allclose(output.logprobs, torch.log_softmax(logits, -1)[:, favourite])


@pytest.mark.parametrize("fields", [{"min_tokens": 9, "max_new_tokens": 8},
                                    {"logit_bias": {3: 101.0}}, {"logit_bias": {-1: 1.0}},
                                    {"allowed_token_ids": []}])
def test_bad_values_are_refused(fields) -> None:
    with pytest.raises(ValueError):
        SamplingParams(**fields)
