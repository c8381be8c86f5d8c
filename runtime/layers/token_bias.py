"""Per-row logit biases and token masks: `logit_bias`, `min_tokens`, `allowed_token_ids`.

A logits processor for the batched sampler (see `sampler.py`): every row's wishes become
entries of one sparse table, added to the batch's logits in a single indexed write on
the device. A bias is added as OpenAI's `logit_bias` is; a blocked token (an end token
while a row has fewer than its `min_tokens`) gets -inf; a row with `allowed_token_ids`
gets -inf everywhere else. The engine builds the table on the host from the rows'
parameters (`step_sampling.py`) and copies it without waiting, so the step still reads
nothing back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(slots=True)
class TokenBias:
    rows: torch.Tensor  # int64 [B]: batch row of each entry
    token_ids: torch.Tensor  # int64 [B]
    values: torch.Tensor  # float32 [B]: added to the logit (-inf: blocked)
    allowed_rows: torch.Tensor | None = None  # int64 [R]: rows restricted to a token list
    allowed: torch.Tensor | None = None  # bool [R, vocab]: the tokens each of them may take


def apply_token_bias(logits: torch.Tensor, bias: TokenBias | None) -> torch.Tensor:
    """fp32 [N, vocab] -> fp32 [N, vocab] with the table's biases and masks applied."""
    if bias is None:
        return logits
    logits = logits.index_put((bias.rows, bias.token_ids), bias.values, accumulate=True)
    if bias.allowed_rows is not None and bias.allowed is not None:
        rows = logits.index_select(0, bias.allowed_rows)  # [R, vocab]
        rows = rows.masked_fill(~bias.allowed, float("-inf"))
        logits = logits.index_copy(0, bias.allowed_rows, rows)
    return logits
