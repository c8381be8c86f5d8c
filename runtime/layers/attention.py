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
        output = torch.empty_like(query)
        decode, prefill = batch.decode, batch.prefill
        fused = runs_fused(query)
        if fused:
            from loraplex.runtime.kernels import paged_attention  # imports triton
        if decode is not None:
            rows = decode.num_seqs
            args = (query[:rows], key_cache, value_cache, decode.block_tables, decode.seq_lens,
                    self.scale)
            if fused:
                paged_attention.paged_decode(*args, out=output[:rows])
            else:
                if decode.cpu_plan is None:
                    decode.cpu_plan = attention_torch.decode_plan(
                        query, key_cache, decode.block_tables, decode.seq_lens_host)
                attention_torch.paged_decode(*args, out=output[:rows],
                                             lengths=decode.seq_lens_host,
                                             plan=decode.cpu_plan)
        if prefill is not None:
            args = (query, key_cache, value_cache, prefill.block_tables, prefill.query_starts,
                    prefill.query_lens, prefill.context_lens, prefill.max_query_len,
                    self.scale)
            if fused:
                paged_attention.paged_prefill(*args, out=output)
            else:
                attention_torch.paged_prefill(*args, out=output, spans=prefill.spans_host)
        return output.view(num_tokens, self.num_heads * self.head_dim)

