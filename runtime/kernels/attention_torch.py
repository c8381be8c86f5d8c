"""Paged attention for the CPU: the same ops as the Triton kernels.

Decode steps run the compiled kernel (`cpu_attention`) where it builds and takes the
dtype; the rest of this module is the torch ops, for prefill, fp16 and machines without a
C compiler.

Keys are gathered through the block tables, but never more than a few sequences' worth
of one layer at a time: decode rows go in small groups of similar length (each padded to
its own longest, masked by length), prefill chunks one sequence at a time, and a long
chunk over a cached prefix in slices of QUERY_SLICE queries, so no score matrix grows
beyond [heads, QUERY_SLICE, context]. `scaled_dot_product_attention` does the math
(`enable_gqa`: K/V are never repeated per query head). Lengths are read on the host
(callers pass their host copies, so a step reads no tensor value here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import cpu_attention
from .attention_checks import check_decode_args, check_prefill_args

DECODE_GROUP = 8  # decode sequences per attention call
QUERY_SLICE = 256  # queries of a chunk over a cached prefix attended at once


@dataclass(frozen=True)
class DecodeGroup:
    """Up to DECODE_GROUP decode rows of similar length, attended in one call."""

    rows: torch.Tensor  # int64 [n]: the rows of query/out
    tables: torch.Tensor  # [n, w]: their block tables, cut to the longest
    visible: torch.Tensor  # bool [n, 1, 1, w * block_size]: key positions each row sees
    stale: torch.Tensor | None  # int64: positions of the gathered [n * L] keys past a length


@dataclass(frozen=True)
class DecodePlan:
    """How one decode step is attended on the CPU, the same for every layer."""

    native: cpu_attention.NativeDecode | None  # the compiled kernel's inputs, where it runs
    groups: tuple[DecodeGroup, ...]  # else the torch ops' groups


def decode_plan(query: torch.Tensor, key_cache: torch.Tensor, block_tables: torch.Tensor,
                lengths: Sequence[int], native: bool = True) -> DecodePlan:
    """Built once per step: the compiled kernel's inputs where it takes this dtype (and
    `native`), else the torch ops' groups of similar length."""
    block_size = key_cache.shape[1]
    if native and cpu_attention.supports(query, key_cache):
        return DecodePlan(cpu_attention.native_decode(block_tables, lengths, block_size,
                                                      key_cache.shape[0]), ())
    device = block_tables.device
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups = []
    for first in range(0, len(order), DECODE_GROUP):
        rows = order[first:first + DECODE_GROUP]
        width = -(-max(lengths[row] for row in rows) // block_size)
        span = width * block_size
        row_lengths = [lengths[row] for row in rows]
        index = torch.tensor(rows, device=device)
        visible = (torch.arange(span, device=device)[None, :]
                   < torch.tensor(row_lengths, device=device)[:, None])  # [n, L]
        stale = [i * span + position for i, length in enumerate(row_lengths)
                 for position in range(length, span)]
        groups.append(DecodeGroup(
            index, block_tables[index, :width], visible[:, None, None, :],
            torch.tensor(stale, dtype=torch.int64, device=device) if stale else None))
    return DecodePlan(None, tuple(groups))


def paged_decode(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                 block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                 out: torch.Tensor | None = None, lengths: Sequence[int] | None = None,
                 plan: DecodePlan | None = None, native: bool = True) -> torch.Tensor:
    """As `paged_attention.paged_decode`: query [B, H, D] -> out [B, H, D]. lengths: the
    values of seq_lens on the host, when the caller has them (else read here); plan:
    `decode_plan` of these tables and lengths, when the caller keeps it for every layer;
    native: False keeps the torch ops even where the compiled kernel runs."""
    check_decode_args(query, key_cache, value_cache, block_tables, seq_lens)
    out = torch.empty_like(query) if out is None else out
    if plan is None:
        lengths = seq_lens.tolist() if lengths is None else lengths
        plan = decode_plan(query, key_cache, block_tables, lengths, native)
    if plan.native is not None:
        cpu_attention.paged_decode(query, key_cache, value_cache, plan.native, scale, out)
        return out
    for group in plan.groups:
        keys = _gathered(key_cache, group.tables, group.stale)  # [n, Hkv, L, D]
        values = _gathered(value_cache, group.tables, group.stale)
        attended = F.scaled_dot_product_attention(
            query[group.rows].unsqueeze(2), keys, values, attn_mask=group.visible,
            scale=scale, enable_gqa=True)  # [n, H, 1, D]
        out[group.rows] = attended.squeeze(2)
    return out


def paged_prefill(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                  block_tables: torch.Tensor, query_starts: torch.Tensor,
                  query_lens: torch.Tensor, context_lens: torch.Tensor, max_query_len: int,
                  scale: float, out: torch.Tensor | None = None,
                  spans: Sequence[tuple[int, int, int]] | None = None) -> torch.Tensor:
    """As `paged_attention.paged_prefill`: the spans' rows of out [T, H, D]. spans: the
    (start, query len, context len) of each chunk on the host, when the caller has them."""
    check_prefill_args(query, key_cache, value_cache, block_tables, query_starts, query_lens,
                       context_lens)
    out = torch.empty_like(query) if out is None else out
    block_size = key_cache.shape[1]
    if spans is None:
        spans = list(zip(query_starts.tolist(), query_lens.tolist(), context_lens.tolist(),
                         strict=True))
    for span, (start, length, context) in enumerate(spans):
        table = block_tables[span:span + 1, :-(-context // block_size)]
        keys = _gathered(key_cache, table)[:, :, :context]  # [1, Hkv, C, D]
        values = _gathered(value_cache, table)[:, :, :context]
        prefix = context - length
        for offset in range(0, length, QUERY_SLICE):
            rows = slice(start + offset, start + min(offset + QUERY_SLICE, length))
            q = query[rows].transpose(0, 1).unsqueeze(0)  # [1, H, Qs, D]
            if prefix == 0 and length <= QUERY_SLICE:
                attended = F.scaled_dot_product_attention(
                    q, keys, values, is_causal=True, scale=scale, enable_gqa=True)
            else:
                seen = prefix + offset + q.shape[2]  # keys any query of the slice sees
                query_positions = torch.arange(prefix + offset, seen, device=query.device)
                visible = (torch.arange(seen, device=query.device)[None, :]
                           <= query_positions[:, None])  # [Qs, seen]
                attended = F.scaled_dot_product_attention(
                    q, keys[:, :, :seen], values[:, :, :seen], attn_mask=visible,
                    scale=scale, enable_gqa=True)
            out[rows] = attended[0].transpose(0, 1)
    return out


def _gathered(cache: torch.Tensor, tables: torch.Tensor,
              stale: torch.Tensor | None = None) -> torch.Tensor:
    """cache [num_blocks, block_size, Hkv, D], tables [n, w] -> [n, Hkv, w * block_size, D]

    `stale`: positions of the gathered `[n * w * block_size]` keys past their row's length,
    zeroed, since a block may hold stale (even non-finite) keys of an earlier request there
    and a zero attention weight times NaN is still NaN. One `index_fill_` over the copy
    while it is contiguous (not a broadcast `masked_fill_` over the transposed copy), and
    `index_select` instead of advanced indexing.
    """
    num_seqs, width = tables.shape
    blocks = cache.index_select(0, tables.reshape(-1))  # [n * w, block_size, Hkv, D]
    if stale is not None:
        blocks.view(-1, *cache.shape[2:]).index_fill_(0, stale, 0)
    rows = blocks.view(num_seqs, width * cache.shape[1], *cache.shape[2:])  # [n, L, Hkv, D]
    return rows.transpose(1, 2)
