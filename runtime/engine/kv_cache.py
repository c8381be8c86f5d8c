"""The paged KV cache tensors (their number of blocks comes from `memory_plan`).

Per layer, keys and values are `[num_blocks, block_size, num_kv_heads, head_dim]`. The
memory is allocated uninitialized (on the CPU, untouched pages cost no RAM) and each
block is zeroed the first time it is handed out, before any forward pass reads it:
attention masks padded positions out, but a NaN left in fresh memory would still leak
through the masked product, while stale values of a reused block cannot.

One block more than asked for is allocated: the scratch block (id `num_blocks`, never
handed out), where the padding rows of a captured decode step write their K/V and which
pads the block tables there. It is zeroed at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import PretrainedConfig

from loraplex.runtime.models.llama import head_dim_of

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class KVCacheLayout:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    dtype: torch.dtype

    @classmethod
    def of(cls, hf_config: PretrainedConfig, block_size: int, dtype: torch.dtype
           ) -> KVCacheLayout:
        num_kv_heads = (getattr(hf_config, "num_key_value_heads", None)
                        or hf_config.num_attention_heads)
        return cls(hf_config.num_hidden_layers, num_kv_heads, head_dim_of(hf_config),
                   block_size, dtype)

    @property
    def bytes_per_block(self) -> int:
        elements = 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim
        return elements * self.dtype.itemsize


class PagedKVCache:
    def __init__(self, layout: KVCacheLayout, num_blocks: int, device: torch.device) -> None:
        self.layout = layout
        self.num_blocks = num_blocks  # blocks for sequences, ids 0..num_blocks-1
        self.scratch_block = num_blocks
        self.device = device
        shape = (num_blocks + 1, layout.block_size, layout.num_kv_heads, layout.head_dim)
        self.layers = [
            (torch.empty(shape, dtype=layout.dtype, device=device),
             torch.empty(shape, dtype=layout.dtype, device=device))
            for _ in range(layout.num_layers)
        ]
        for key_cache, value_cache in self.layers:
            key_cache[self.scratch_block].zero_()
            value_cache[self.scratch_block].zero_()
        self._num_zeroed_blocks = 0
        logger.info("KV cache: %d blocks of %d tokens (%.1f MiB, %d tokens)", num_blocks,
                    layout.block_size, num_blocks * layout.bytes_per_block / 2**20,
                    num_blocks * layout.block_size)

    def zero_fresh_blocks(self, num_blocks_ever_used: int) -> None:
        """Zero blocks `[zeroed, num_blocks_ever_used)`, those handed out for the first time."""
        if num_blocks_ever_used <= self._num_zeroed_blocks:
            return
        fresh = slice(self._num_zeroed_blocks, num_blocks_ever_used)
        for key_cache, value_cache in self.layers:
            key_cache[fresh].zero_()
            value_cache[fresh].zero_()
        self._num_zeroed_blocks = num_blocks_ever_used
