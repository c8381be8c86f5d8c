"""The paged KV cache tensors, sized from a byte budget.

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

import psutil
import torch
from transformers import PretrainedConfig

from loraplex.runtime.config import EngineConfig
from loraplex.runtime.models.llama import head_dim_of

logger = logging.getLogger(__name__)

CPU_KV_CACHE_CAP_BYTES = 4 << 30


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


def activation_bytes(hf_config: PretrainedConfig, config: EngineConfig,
                     dtype: torch.dtype) -> int:
    """A generous bound on one forward pass's temporaries (kept free on the device)."""
    hidden, intermediate = hf_config.hidden_size, hf_config.intermediate_size
    per_token = (6 * hidden + 3 * intermediate) * dtype.itemsize
    logits = 3 * config.max_num_seqs * hf_config.vocab_size * 4  # fp32 logits + softmaxes
    return config.max_num_batched_tokens * per_token + logits


def kv_cache_budget(config: EngineConfig, device: torch.device, reserved_bytes: int = 0) -> int:
    """Bytes for the KV cache: `kv_cache_bytes`, else a fraction of free memory.

    On CUDA the fraction is of the memory free after loading the model, less
    `reserved_bytes` for activations; on the CPU it is of the available RAM, capped.
    """
    if config.kv_cache_bytes:
        return config.kv_cache_bytes
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * config.kv_cache_fraction) - reserved_bytes
    available = psutil.virtual_memory().available
    return min(int(available * config.kv_cache_fraction), CPU_KV_CACHE_CAP_BYTES)


def num_blocks_for_budget(layout: KVCacheLayout, budget_bytes: int, max_num_seqs: int,
                          max_model_len: int) -> int:
    """Blocks that fit the budget, and no more than full-length sequences could use."""
    useful = max_num_seqs * -(-max_model_len // layout.block_size)
    num_blocks = min(budget_bytes // layout.bytes_per_block, useful)
    if num_blocks < 1:
        raise ValueError(f"KV cache budget of {budget_bytes} bytes holds no block "
                         f"({layout.bytes_per_block} bytes each); raise kv_cache_bytes "
                         "or kv_cache_fraction")
    return num_blocks


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
