"""Next tokens from logits: penalties, temperature, top-k, top-p, seeded sampling, logprobs.

The processing order is Hugging Face's (repetition penalty, then temperature, top-k,
top-p), so greedy and penalized greedy choices equal `generate`'s. Every sampled row has
its own `torch.Generator`, seeded per request, so a seeded request draws the same tokens
whatever else shares its batch. Rows of constrained requests (structured output) are first
masked to the tokens their grammar allows. Reported logprobs are those of the model's own
distribution (log-softmax of the raw logits), before any processing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from loraplex.runtime.layers.grammar_mask import TokenMask


@dataclass(slots=True)
class RepetitionPenalty:
    row: int
    penalty: float
    token_ids: torch.Tensor  # int64 [n]: prompt + generated tokens of that row's sequence


@dataclass(slots=True)
class SamplingMetadata:
    temperatures: torch.Tensor  # float32 [N]; 1.0 on greedy rows
    top_ks: torch.Tensor | None  # int64 [N], vocab size where off; None: all off
    top_ps: torch.Tensor | None  # float32 [N], 1.0 where off; None: all off
    generators: list[torch.Generator | None]  # None on greedy rows
    penalties: list[RepetitionPenalty] = field(default_factory=list)
    max_num_logprobs: int = 0  # alternatives to report per row (the most any row asks)
    token_mask: TokenMask | None = None  # grammar masks of the constrained rows

    @property
    def all_greedy(self) -> bool:
        return all(generator is None for generator in self.generators)


@dataclass(slots=True)
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[float]  # of each chosen token
    top_token_ids: list[list[int]] | None  # [N][max_num_logprobs]
    top_logprobs: list[list[float]] | None


class Sampler(nn.Module):
    def forward(self, logits: torch.Tensor, meta: SamplingMetadata) -> SamplerOutput:
        # logits float32 [N, vocab]
        logprobs = torch.log_softmax(logits, dim=-1)
        if meta.token_mask is not None:
            meta.token_mask.apply(logits)
        if meta.penalties:
            logits = apply_repetition_penalties(logits.clone(), meta.penalties)
        token_ids = logits.argmax(dim=-1) if meta.all_greedy else self._sample(logits, meta)
        chosen = logprobs.gather(1, token_ids[:, None]).squeeze(1)
        top_ids = top_values = None
        if meta.max_num_logprobs:
            top = logprobs.topk(min(meta.max_num_logprobs, logprobs.shape[-1]), dim=-1)
            top_ids, top_values = top.indices.tolist(), top.values.tolist()
        return SamplerOutput(token_ids.tolist(), chosen.tolist(), top_ids, top_values)

    def _sample(self, logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
        greedy = logits.argmax(dim=-1)  # [N]
        scaled = logits / meta.temperatures[:, None]
        if meta.top_ks is not None:
            scaled = mask_top_k(scaled, meta.top_ks)
        if meta.top_ps is not None:
            scaled = mask_top_p(scaled, meta.top_ps)
        probs = torch.softmax(scaled, dim=-1)
        sampled = greedy.clone()
        for row, generator in enumerate(meta.generators):
            if generator is not None:
                # exponential race: argmax(p / E), E ~ Exp(1), draws from p
                noise = torch.empty_like(probs[row]).exponential_(generator=generator)
                sampled[row] = (probs[row] / noise).argmax()
        return sampled


def apply_repetition_penalties(logits: torch.Tensor,
                               penalties: list[RepetitionPenalty]) -> torch.Tensor:
    for item in penalties:
        row = logits[item.row]
        seen = row.gather(0, item.token_ids)
        row.scatter_(0, item.token_ids,
                     torch.where(seen < 0, seen * item.penalty, seen / item.penalty))
    return logits


def mask_top_k(logits: torch.Tensor, top_ks: torch.Tensor) -> torch.Tensor:
    # keep each row's k largest (ties at the k-th value kept, as Hugging Face does)
    vocab = logits.shape[-1]
    k = top_ks.clamp(1, vocab)
    kth = logits.sort(dim=-1, descending=True).values.gather(1, (k - 1)[:, None])  # [N, 1]
    return logits.masked_fill(logits < kth, float("-inf"))


def mask_top_p(logits: torch.Tensor, top_ps: torch.Tensor) -> torch.Tensor:
    # keep the smallest set of most likely tokens whose probability reaches p
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # [N, vocab]
    drop_sorted = mass_before >= top_ps[:, None]
    drop_sorted[:, 0] = False
    drop = torch.zeros_like(drop_sorted).scatter_(1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))
