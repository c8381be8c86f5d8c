"""Prompt logprobs: how likely the model found each prompt token, computed while prefilling.

Row i of a prefill chunk's hidden states predicts prompt token i+1, so a chunk scores the
tokens after its rows (the first prompt token has no score: nothing precedes it). Each
score carries the token's rank among the whole vocabulary (1: the likeliest) and, when
asked (vLLM's `prompt_logprobs: k`, OpenAI's `echo` with `logprobs: k`), the position's
k likeliest tokens. Logits are materialized in slices of `ROWS` positions, so a long
prompt never holds a [prompt, vocab] matrix at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from loraplex.runtime.engine.scheduler import ScheduledSequence
from loraplex.runtime.models.llama import LlamaForCausalLM

ROWS = 256  # rows of prompt logits materialized at once ([ROWS, vocab])


@dataclass(frozen=True, slots=True)
class PromptTokenScore:
    token_id: int
    logprob: float  # NaN for the first prompt token
    rank: int | None  # None for the first prompt token
    top: list[tuple[int, float]]  # (token id, logprob) of the likeliest, best first


def score_prompt_chunk(model: LlamaForCausalLM, item: ScheduledSequence,
                       hidden: torch.Tensor, start: int) -> list[PromptTokenScore]:
    """Scores of the prompt tokens that the chunk `item` (rows `start`.. of `hidden`,
    [T, d]) predicts."""
    seq, first = item.seq, item.seq.num_computed_tokens
    targets = seq.token_ids[first + 1: min(first + item.num_new_tokens + 1,
                                           seq.num_prompt_tokens)]
    num_top = seq.params.prompt_top_logprobs
    scores: list[PromptTokenScore] = []
    if first == 0:
        scores.append(PromptTokenScore(seq.token_ids[0], float("nan"), None, []))
    for offset in range(0, len(targets), ROWS):
        chunk = targets[offset: offset + ROWS]
        rows = hidden[start + offset: start + offset + len(chunk)]  # [n, d]
        logprobs = torch.log_softmax(model.compute_logits(rows), dim=-1)  # [n, V] float32
        ids = torch.tensor(chunk, device=logprobs.device)
        chosen = logprobs.gather(1, ids[:, None])  # [n, 1]
        ranks = (logprobs > chosen).sum(dim=1) + 1  # [n]
        top_values, top_ids = logprobs.topk(num_top, dim=-1)  # [n, k]
        tops = zip(top_ids.tolist(), top_values.tolist(), strict=True)
        scores.extend(PromptTokenScore(token, value, rank, list(zip(*top, strict=True)))
                      for token, value, rank, top in zip(
                          chunk, chosen.squeeze(1).tolist(), ranks.tolist(), tops,
                          strict=True))
    return scores
