"""Attention over a paged KV cache: write the new K/V into their slots, read through tables.

The cache of one layer is two tensors `[num_blocks, block_size, num_kv_heads, head_dim]`;
a sequence owns a list of blocks (its block table) and token `p` of it lives in slot
`table[p // block_size] * block_size + p % block_size`. The step's new K/V are written
first; then decode rows and prefill chunks are attended by the paged attention ops, which
read every key through the tables: the Triton kernels on CUDA (nothing gathered), the
torch path elsewhere (see `kernels.attention_torch`).
"""

from __future__ import annotations

import torch
from torch import nn

from loraplex.runtime.kernels import attention_torch
from loraplex.runtime.layers.forward_batch import ForwardBatch
from loraplex.runtime.layers.fused_ops import runs_fused, write_kv


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
        write_kv(key, value, key_cache, value_cache, batch.slot_mapping)
        ops = _attention_ops(query)
        output = torch.empty_like(query)
        if batch.decode is not None:
            rows = batch.decode.num_seqs
            ops.paged_decode(query[:rows], key_cache, value_cache, batch.decode.block_tables,
                             batch.decode.seq_lens, self.scale, out=output[:rows])
        if batch.prefill is not None:
            chunks = batch.prefill
            ops.paged_prefill(query, key_cache, value_cache, chunks.block_tables,
                              chunks.query_starts, chunks.query_lens, chunks.context_lens,
                              chunks.max_query_len, self.scale, out=output)
        return output.view(num_tokens, self.num_heads * self.head_dim)


def _attention_ops(query: torch.Tensor):
    """The Triton kernels where they run (CUDA, or meta tensors being costed), else torch."""
    if runs_fused(query):
        from loraplex.runtime.kernels import paged_attention  # imports triton

        return paged_attention
    return attention_torch
