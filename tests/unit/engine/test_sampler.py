"""The batched sampler against transformers' own logits processors, and its counter noise.

Every row of a batch is processed at once; the tests check each step against the
reference that defines it (Hugging Face's warpers and repetition penalty, OpenAI's
frequency/presence formula), that Gumbel-max with the hashed noise really samples the
softmax, and that a seeded row draws the same tokens alone or batched.
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    RepetitionPenaltyLogitsProcessor,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from loraplex.runtime.layers.sampler import (
    PenaltyBatch,
    Sampler,
    SamplingTensors,
    apply_penalties,
    first_max_index,
    mask_top_k_top_p,
)
from loraplex.runtime.layers.sampling_noise import uniform_hash

VOCAB = 50


def random_logits(rows: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


def sampling(rows: int, seeds: list[int | None], step: int = 0, **kwargs) -> SamplingTensors:
    """Tensors for `rows` rows: None in `seeds` marks a greedy row."""
    greedy = [seed is None for seed in seeds]
    values = {"temperatures": torch.full((rows,), 0.8), "greedy": torch.tensor(greedy),
              "seeds": torch.tensor([seed or 0 for seed in seeds]),
              "token_indices": torch.full((rows,), step), "all_greedy": all(greedy)}
    return SamplingTensors(**{**values, **kwargs})


@pytest.mark.parametrize("k", [1, 5, 17, VOCAB])
def test_top_k_keeps_what_transformers_keeps(k):
    logits = random_logits()
    ours = mask_top_k_top_p(logits, torch.full((4,), k), None)
    reference = TopKLogitsWarper(top_k=k)(None, logits.clone())
    assert torch.equal(ours.isinf(), reference.isinf())
    assert torch.equal(ours[~ours.isinf()], logits[~ours.isinf()])


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.999])
def test_top_p_keeps_what_transformers_keeps(p):
    logits = random_logits(rows=8, seed=1)
    ours = mask_top_k_top_p(logits, None, torch.full((8,), p))
    reference = TopPLogitsWarper(top_p=p)(None, logits.clone())
    assert torch.equal(ours.isinf(), reference.isinf())


def test_top_k_then_top_p_per_row_like_transformers_in_sequence():
    logits = random_logits(rows=3, seed=5)
    ks, ps = [3, 20, VOCAB], [0.5, 0.9, 0.7]
    ours = mask_top_k_top_p(logits, torch.tensor(ks), torch.tensor(ps))
    for row, (k, p) in enumerate(zip(ks, ps, strict=True)):
        reference = TopPLogitsWarper(top_p=p)(None, TopKLogitsWarper(top_k=k)(
            None, logits[row:row + 1].clone()))
        assert torch.equal(ours[row:row + 1].isinf(), reference.isinf()), row


def penalty_batch(rows: list[int], history: torch.Tensor, generated: torch.Tensor,
                  repetition: float, frequency: float, presence: float) -> PenaltyBatch:
    counts = torch.zeros(len(rows), VOCAB, dtype=torch.int32)
    seen = torch.zeros(len(rows), VOCAB, dtype=torch.bool)
    for index in range(len(rows)):
        seen[index, history[index]] = True
        counts[index].index_add_(0, generated[index], torch.ones(generated.shape[1],
                                                                 dtype=torch.int32))
    full = torch.full((len(rows),), 1.0)
    return PenaltyBatch(torch.tensor(rows), counts, seen, full * repetition,
                        full * frequency, full * presence)


def test_repetition_penalty_matches_transformers():
    logits = random_logits(rows=2, seed=2)
    history = torch.tensor([[3, 7, 7, 20, 41], [0, 1, 2, 3, 49]])
    ours = apply_penalties(logits, penalty_batch([0, 1], history, history[:, :0],
                                                 1.3, 0.0, 0.0))
    reference = RepetitionPenaltyLogitsProcessor(penalty=1.3)(history, logits.clone())
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)


def test_frequency_and_presence_penalties_follow_openai_on_their_rows_only():
    logits = random_logits(rows=3, seed=6)
    generated = torch.tensor([[4, 4, 4, 9]])  # row 1 only
    ours = apply_penalties(logits, penalty_batch([1], generated, generated, 1.0, 0.5, 0.25))
    expected = logits.clone()
    expected[1, 4] -= 3 * 0.5 + 0.25
    expected[1, 9] -= 0.5 + 0.25
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_greedy_rows_take_the_argmax_and_report_logprobs():
    logits = random_logits()
    out = Sampler()(logits, sampling(4, [None] * 4, max_num_logprobs=3))
    assert torch.equal(out.token_ids, logits.argmax(-1))
    expected = torch.log_softmax(logits, -1)
    torch.testing.assert_close(out.logprobs, expected.gather(1, out.token_ids[:, None])[:, 0])
    assert torch.equal(out.top_token_ids[:, 0], out.token_ids)
    torch.testing.assert_close(out.top_logprobs, expected.topk(3).values)
    packed = out.packed()  # [4, 2 + 2 * 3]: id, logprob, ids, logprobs
    assert packed.shape == (4, 8) and packed[:, 0].long().tolist() == out.token_ids.tolist()


def test_greedy_and_sampled_rows_share_a_batch():
    logits = random_logits(rows=4, seed=7)
    out = Sampler()(logits, sampling(4, [None, 11, None, 12]))
    assert out.token_ids[[0, 2]].tolist() == logits[[0, 2]].argmax(-1).tolist()


def test_seeded_sampling_is_reproducible_whatever_shares_the_batch():
    logits = random_logits(rows=3, seed=3)
    alone, batched = [], []
    for step in range(20):
        alone.append(Sampler()(logits[1:2], sampling(1, [1234], step)).token_ids[0].item())
        batched.append(Sampler()(logits, sampling(3, [None, 1234, 99], step))
                       .token_ids[1].item())
    assert alone == batched
    assert len(set(alone)) > 1  # it really samples, step after step


def test_different_seeds_draw_differently():
    logits = torch.zeros(1, VOCAB)  # uniform: any two seeds almost surely disagree somewhere
    draws = {seed: [Sampler()(logits, sampling(1, [seed], step)).token_ids[0].item()
                    for step in range(10)] for seed in (1, 2)}
    assert draws[1] != draws[2]


def test_gumbel_max_draws_follow_the_softmax():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    rows = 4000
    tensors = sampling(rows, list(range(3, 3 + rows)), temperatures=torch.ones(rows))
    drawn = Sampler()(probs.log().expand(rows, 4).contiguous(), tensors).token_ids
    frequencies = torch.bincount(drawn, minlength=4).float() / rows
    torch.testing.assert_close(frequencies, probs, atol=0.025, rtol=0)


def test_hashed_uniforms_look_uniform_and_never_touch_the_ends():
    values = uniform_hash(torch.tensor([0, 1, 2**40 + 5]), torch.tensor([0, 0, 7]), 4096)
    assert values.min() > 0 and values.max() < 1
    assert abs(values.mean().item() - 0.5) < 0.01
    assert (values[0] != values[1]).float().mean() > 0.99  # neighbouring seeds differ


def test_sampling_respects_top_k():
    logits = random_logits(rows=1, seed=4)
    allowed = set(logits[0].topk(3).indices.tolist())
    draws = {Sampler()(logits, sampling(1, [7], step, top_ks=torch.tensor([3]),
                                        temperatures=torch.tensor([5.0]))).token_ids[0].item()
             for step in range(50)}  # flat: without the mask, others would appear
    assert draws <= allowed and len(draws) > 1


def test_a_token_mask_constrains_only_its_rows():
    import xgrammar

    from loraplex.runtime.layers.grammar_mask import TokenMask

    logits = random_logits()
    bitmask = xgrammar.allocate_token_bitmask(4, VOCAB)  # int32 [4, 2], all allowed
    bitmask[1] = torch.tensor([1 << 7, 0], dtype=torch.int32)  # row 1: token 7 only
    bitmask[3] = torch.tensor([0, 1 << 3], dtype=torch.int32)  # row 3: token 35 only
    bitmask[2] = 0  # row 2 says nothing is allowed, but is not one of the mask's rows
    tensors = sampling(4, [None] * 4, max_num_logprobs=1,
                       token_mask=TokenMask(bitmask, [1, 3]))
    free = logits.argmax(dim=-1).tolist()
    output = Sampler()(logits.clone(), tensors)
    assert output.token_ids.tolist() == [free[0], 7, free[2], 35]
    raw = torch.log_softmax(logits, dim=-1)  # logprobs stay the model's own
    assert output.logprobs[1].item() == pytest.approx(raw[1, 7].item())


def test_a_logits_processor_hook_runs_before_the_choice():
    logits = random_logits(rows=2, seed=8)
    banned = logits.argmax(-1)

    def ban_the_favourite(batch_logits, tensors):
        return batch_logits.scatter(1, banned[:, None], float("-inf"))

    out = Sampler([ban_the_favourite])(logits, sampling(2, [None, None]))
    assert torch.equal(out.token_ids, logits.scatter(1, banned[:, None], -1e9).argmax(-1))
    # reported logprobs stay those of the model's own distribution
    expected = torch.log_softmax(logits, -1).gather(1, out.token_ids[:, None])[:, 0]
    torch.testing.assert_close(out.logprobs, expected)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_first_maximum_is_argmax_with_ties_nan_and_infinities(threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(threads)
        ties = torch.randint(0, 4, (64, 4099), generator=generator).float()  # many ties
        assert torch.equal(first_max_index(ties), ties.argmax(dim=-1))
        odd = torch.randn(5, 4099, generator=generator)
        odd[1, 700] = odd[3, 9] = odd[3, 4000] = float("nan")  # NaN wins, the first one
        odd[2] = float("-inf")
        odd[4, 33] = odd[4, 2000] = float("inf")
        assert first_max_index(odd).tolist() == [int(odd[0].argmax()), 700, 0, 9, 33]
    finally:
        torch.set_num_threads(previous)
