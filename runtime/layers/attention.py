"""Attention over a paged KV cache: write the new K/V into their slots, read through tables.

The cache of one layer is two tensors `[num_blocks, block_size, num_kv_heads, head_dim]`;
a sequence owns a list of blocks (its block table) and token `p` of it lives in slot
`table[p // block_size] * block_size + p % block_size`. Decode rows are attended in one
batched call (keys gathered through the padded block tables, masked by length); each
prefill chunk is attended on its own, straight from the fresh K/V when it has no cached
prefix, else from its gathered blocks under a causal mask. Grouped-query heads are
handled by `scaled_dot_product_attention(enable_gqa=True)`, no K/V repeat.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loraplex.runtime.layers.forward_batch import DecodeGroup, ForwardBatch


class PagedAttention(nn.Module):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads {num_heads} is not a multiple of "
                             f"num_kv_heads {num_kv_heads}")
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                batch: ForwardBatch, key_cache: torch.Tensor, value_cache: torch.Tensor
                ) -> torch.Tensor:
        # query [T, H, D], key/value [T, Hkv, D] -> [T, H * D]
        num_tokens = query.shape[0]
        key_cache.view(-1, self.num_kv_heads, self.head_dim).index_copy_(
            0, batch.slot_mapping, key)
        value_cache.view(-1, self.num_kv_heads, self.head_dim).index_copy_(
            0, batch.slot_mapping, value)
        output = torch.empty_like(query)
        for group in batch.decode_groups:
            rows = slice(group.start, group.start + group.num_seqs)
            output[rows] = self._decode(query[rows], group, key_cache, value_cache)
        for span in batch.prefills:
            rows = slice(span.start, span.start + span.query_len)
            q = query[rows].transpose(0, 1).unsqueeze(0)  # [1, H, Q, D]
            if span.has_cached_prefix:
                k = self._gather_one(key_cache, span.block_table, span.context_len)
                v = self._gather_one(value_cache, span.block_table, span.context_len)
                out = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=span.causal_mask, scale=self.scale, enable_gqa=True)
            else:
                k = key[rows].transpose(0, 1).unsqueeze(0)  # [1, Hkv, Q, D]
                v = value[rows].transpose(0, 1).unsqueeze(0)
                out = F.scaled_dot_product_attention(
                    q, k, v, is_causal=True, scale=self.scale, enable_gqa=True)
            output[rows] = out[0].transpose(0, 1)
        return output.view(num_tokens, self.num_heads * self.head_dim)

    def _decode(self, query: torch.Tensor, group: DecodeGroup, key_cache: torch.Tensor,
                value_cache: torch.Tensor) -> torch.Tensor:
        # query [B, H, D] -> [B, H, D]; one new token per sequence
        tables = group.block_tables  # [B, max_blocks]
        num_seqs = tables.shape[0]
        keys = key_cache[tables].view(num_seqs, -1, self.num_kv_heads, self.head_dim)
        values = value_cache[tables].view(num_seqs, -1, self.num_kv_heads, self.head_dim)
        out = F.scaled_dot_product_attention(
            query.unsqueeze(2),  # [B, H, 1, D]
            keys.transpose(1, 2),  # [B, Hkv, L, D]
            values.transpose(1, 2),
            attn_mask=group.key_mask,  # [B, 1, 1, L]
            scale=self.scale, enable_gqa=True)
        return out.squeeze(2)

    def _gather_one(self, cache: torch.Tensor, block_table: torch.Tensor,
                    context_len: int) -> torch.Tensor:
        # -> [1, Hkv, context_len, D]
        blocks = cache[block_table].view(-1, self.num_kv_heads, self.head_dim)[:context_len]
        return blocks.transpose(0, 1).unsqueeze(0)
