"""The sampler against transformers' own logits processors, and seeded reproducibility."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    RepetitionPenaltyLogitsProcessor,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from loraplex.runtime.layers.sampler import (
    RepetitionPenalty,
    Sampler,
    SamplingMetadata,
    apply_repetition_penalties,
    mask_top_k,
    mask_top_p,
)

VOCAB = 50


def random_logits(rows: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("k", [1, 5, 17, VOCAB])
def test_top_k_keeps_what_transformers_keeps(k):
    logits = random_logits()
    ours = mask_top_k(logits, torch.full((4,), k))
    reference = TopKLogitsWarper(top_k=k)(None, logits.clone())
    assert torch.equal(ours.isinf(), reference.isinf())


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.999])
def test_top_p_keeps_what_transformers_keeps(p):
    logits = random_logits(rows=8, seed=1)
    ours = mask_top_p(logits, torch.full((8,), p))
    reference = TopPLogitsWarper(top_p=p)(None, logits.clone())
    assert torch.equal(ours.isinf(), reference.isinf())


def test_repetition_penalty_matches_transformers():
    logits = random_logits(rows=2, seed=2)
    history = torch.tensor([[3, 7, 7, 20, 41], [0, 1, 2, 3, 49]])
    ours = apply_repetition_penalties(
        logits.clone(), [RepetitionPenalty(row, 1.3, history[row]) for row in range(2)])
    reference = RepetitionPenaltyLogitsProcessor(penalty=1.3)(history, logits.clone())
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)


def metadata(rows: int, seeds: list[int | None], **kwargs) -> SamplingMetadata:
    generators = [None if s is None else torch.Generator().manual_seed(s) for s in seeds]
    return SamplingMetadata(temperatures=torch.full((rows,), 0.8), top_ks=None, top_ps=None,
                            generators=generators, **kwargs)


def test_greedy_rows_take_the_argmax_and_report_logprobs():
    logits = random_logits()
    out = Sampler()(logits, metadata(4, [None] * 4, max_num_logprobs=3))
    assert out.token_ids == logits.argmax(-1).tolist()
    expected = torch.log_softmax(logits, -1)
    for row in range(4):
        assert out.logprobs[row] == pytest.approx(expected[row, out.token_ids[row]].item())
        assert out.top_token_ids[row][0] == out.token_ids[row]
        assert out.top_logprobs[row] == pytest.approx(expected[row].topk(3).values.tolist())


def test_seeded_sampling_is_reproducible_whatever_shares_the_batch():
    logits = random_logits(rows=3, seed=3)
    sequence_alone, sequence_batched = [], []
    alone, batched = metadata(1, [1234]), metadata(3, [None, 1234, 99])
    for _ in range(20):
        sequence_alone.append(Sampler()(logits[1:2], alone).token_ids[0])
        sequence_batched.append(Sampler()(logits, batched).token_ids[1])
    assert sequence_alone == sequence_batched
    assert len(set(sequence_alone)) > 1  # it really samples


def test_different_seeds_draw_differently():
    logits = torch.zeros(1, VOCAB)  # uniform: any two seeds almost surely disagree somewhere
    draws = {}
    for seed in (1, 2):
        meta = metadata(1, [seed])
        draws[seed] = [Sampler()(logits, meta).token_ids[0] for _ in range(10)]
    assert draws[1] != draws[2]


def test_sampling_respects_top_k():
    logits = random_logits(rows=1, seed=4)
    allowed = set(logits[0].topk(3).indices.tolist())
    meta = metadata(1, [7])
    meta.top_ks = torch.tensor([3])
    meta.temperatures = torch.tensor([5.0])  # flat: without the mask, others would appear
    draws = {Sampler()(logits, meta).token_ids[0] for _ in range(50)}
    assert draws <= allowed and len(draws) > 1


def test_a_token_mask_constrains_only_its_rows():
    import xgrammar

    from loraplex.runtime.layers.grammar_mask import TokenMask

    logits = random_logits()
    bitmask = xgrammar.allocate_token_bitmask(4, VOCAB)  # int32 [4, 2], all allowed
    bitmask[1] = torch.tensor([1 << 7, 0], dtype=torch.int32)  # row 1: token 7 only
    bitmask[3] = torch.tensor([0, 1 << 3], dtype=torch.int32)  # row 3: token 35 only
    bitmask[2] = 0  # row 2 says nothing is allowed, but is not one of the mask's rows
    meta = SamplingMetadata(temperatures=torch.ones(4), top_ks=None, top_ps=None,
                            generators=[None] * 4, max_num_logprobs=1,
                            token_mask=TokenMask(bitmask, [1, 3]))
    free = logits.argmax(dim=-1).tolist()
    output = Sampler()(logits.clone(), meta)
    assert output.token_ids == [free[0], 7, free[2], 35]
    raw = torch.log_softmax(logits, dim=-1)  # logprobs stay the model's own
    assert output.logprobs[1] == pytest.approx(raw[1, 7].item())
