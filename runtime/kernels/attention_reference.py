"""The plainest correct paged attention: what the kernels and the torch path are checked
against. Gathers each sequence's keys through its table and computes the softmax in full,
in the query's dtype (tests pass fp64), one sequence at a time. Never used to serve.
"""

from __future__ import annotations

import torch


def gather_keys(cache: torch.Tensor, table: torch.Tensor, length: int) -> torch.Tensor:
    """cache [num_blocks, block_size, Hkv, D], table [W] -> the first `length` rows
    [length, Hkv, D] of the sequence the table describes."""
    block_size = cache.shape[1]
    positions = torch.arange(length, device=cache.device)
    return cache[table[positions // block_size].long(), positions % block_size]


def attend(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
           query_positions: torch.Tensor, scale: float) -> torch.Tensor:
    """query [Q, H, D] at `query_positions` [Q]; keys/values [C, Hkv, D] at positions
    0..C-1; each query sees keys up to its own position. -> [Q, H, D]"""
    group = query.shape[1] // keys.shape[1]
    keys = keys.repeat_interleave(group, dim=1)  # [C, H, D]
    values = values.repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,chd->hqc", query, keys) * scale
    hidden = torch.arange(keys.shape[0], device=keys.device)[None, :] > query_positions[:, None]
    probs = torch.softmax(scores.masked_fill(hidden, float("-inf")), dim=-1)
    return torch.einsum("hqc,chd->qhd", probs, values)


def decode_reference(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                     block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float
                     ) -> torch.Tensor:
    """`paged_decode`'s result: query [B, H, D] -> [B, H, D]."""
    rows = []
    for seq, length in enumerate(seq_lens.tolist()):
        keys = gather_keys(key_cache, block_tables[seq], length)
        values = gather_keys(value_cache, block_tables[seq], length)
        position = torch.tensor([length - 1], device=query.device)
        rows.append(attend(query[seq:seq + 1], keys, values, position, scale))
    return torch.cat(rows)


def prefill_reference(query: torch.Tensor, key_cache: torch.Tensor,
                      value_cache: torch.Tensor, block_tables: torch.Tensor,
                      query_starts: torch.Tensor, query_lens: torch.Tensor,
                      context_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """`paged_prefill`'s result on the spans' rows (other rows zero): [T, H, D]."""
    out = torch.zeros_like(query)
    spans = zip(query_starts.tolist(), query_lens.tolist(), context_lens.tolist(), strict=True)
    for span, (start, length, context) in enumerate(spans):
        keys = gather_keys(key_cache, block_tables[span], context)
        values = gather_keys(value_cache, block_tables[span], context)
        positions = torch.arange(context - length, context, device=query.device)
        out[start:start + length] = attend(query[start:start + length], keys, values,
                                           positions, scale)
    return out
