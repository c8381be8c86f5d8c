"""Where the device memory goes, decided before anything big is allocated.

After the weights are loaded, the memory free on the device times `kv_cache_fraction` is
what the engine may use. From it come, in this order: the adapter slot pool (allocated
right after the plan, at its configured size), the activations of the largest forward
pass (`max_num_batched_tokens` rows), the sampler's working set (`max_num_seqs` rows of
the vocabulary, the per-sequence penalty tables), the decode attention scratch, and on
CUDA the captured decode graphs' pool. The KV cache gets what is left. A configuration
whose planned KV cache could not hold one full-length sequence (or whose given
`kv_cache_bytes` does not fit beside the rest) is refused at start-up with the plan and the
settings to change, instead of failing later, mid-request, out of memory.

Every size is arithmetic over the shapes (no allocation), so the plan of an 8B model on
an H200 is checked on any machine. On the CPU the adapter pool is a lazily committed
memory map and RAM is shared: the plan is reported, and the KV cache keeps its cap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import psutil
import torch
from transformers import PretrainedConfig

from loraplex.runtime.adapters.slots import DeviceSlotPool
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.config import EngineConfig
from loraplex.runtime.engine.kv_cache import KVCacheLayout
from loraplex.runtime.kernels.attention_torch import DECODE_GROUP as DECODE_GROUP_SIZE

CPU_KV_CACHE_CAP_BYTES = 4 << 30
SAMPLER_BYTES_PER_LOGIT = 4 * 3 + 12 + 8 * 3  # fp32 logits/logprobs/processed, sort, noise
PENALTY_BYTES_PER_LOGIT = 4 + 1  # int32 counts + bool seen, per sequence and token
GiB = 2**30


class MemoryPlanError(ValueError):
    """The configuration cannot fit the device; the message holds the plan."""


@dataclass(frozen=True, slots=True)
class MemoryPlan:
    device: str
    available: int  # bytes the engine may use: free after the weights x kv_cache_fraction
    weights: int  # already loaded (not part of `available`)
    adapter_pool: int
    activations: int
    sampler: int
    attention_scratch: int
    graph_pool: int
    kv_cache: int
    kv_blocks: int
    kv_tokens: int
    quantization: str = "none"  # of the weights: none, int8, int4, nf4, gguf, gptq, awq

    @property
    def planned(self) -> int:
        """Bytes the plan takes out of `available`."""
        return (self.adapter_pool + self.activations + self.sampler
                + self.attention_scratch + self.graph_pool + self.kv_cache)

    def rows(self) -> list[tuple[str, int]]:
        return [(f"weights (loaded, {self.quantization})", self.weights),
                ("adapter slot pool", self.adapter_pool),
                ("activations", self.activations), ("sampler", self.sampler),
                ("attention scratch", self.attention_scratch),
                ("CUDA graph pool", self.graph_pool),
                (f"KV cache ({self.kv_blocks} blocks, {self.kv_tokens} tokens)",
                 self.kv_cache),
                ("planned of available", self.planned), ("available", self.available)]

    def table(self) -> str:
        width = max(len(name) for name, _ in self.rows())
        lines = [f"memory plan on {self.device}:"]
        lines += [f"  {name:<{width}}  {size / GiB:9.2f} GiB" for name, size in self.rows()]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, int | str]:
        return asdict(self)


def activation_bytes(hf_config: PretrainedConfig, config: EngineConfig,
                     dtype: torch.dtype) -> int:
    """A generous bound on one forward pass's temporaries at `max_num_batched_tokens` rows."""
    hidden, intermediate = hf_config.hidden_size, hf_config.intermediate_size
    per_token = (6 * hidden + 3 * intermediate) * dtype.itemsize
    return config.max_num_batched_tokens * per_token


def sampler_bytes(hf_config: PretrainedConfig, config: EngineConfig) -> int:
    """fp32 logits and the sampler's temporaries for every row, and the penalty tables."""
    rows = config.max_num_seqs * hf_config.vocab_size
    return rows * (SAMPLER_BYTES_PER_LOGIT + PENALTY_BYTES_PER_LOGIT)


def attention_scratch_bytes(hf_config: PretrainedConfig, layout: KVCacheLayout,
                            max_model_len: int) -> int:
    """One decode group's gathered K/V at full length, heads expanded, and scores (the
    torch path's; the Triton kernels gather nothing and need far less)."""
    heads = hf_config.num_attention_heads
    keys_values = 2 * DECODE_GROUP_SIZE * max_model_len * heads * layout.head_dim
    scores = DECODE_GROUP_SIZE * heads * max_model_len * 4
    return keys_values * layout.dtype.itemsize + scores


def graph_pool_bytes(hf_config: PretrainedConfig, config: EngineConfig,
                     dtype: torch.dtype, activations: int) -> int:
    """Captured decode graphs: the largest batch's activations and its K/V gathers.

    The graphs' attention reads K/V in place; their shared pool holds the activation
    reserve (a bound) and one batch of `max_num_seqs` rows of activations.
    """
    hidden, intermediate = hf_config.hidden_size, hf_config.intermediate_size
    per_token = (6 * hidden + 3 * intermediate) * dtype.itemsize
    return activations + config.max_num_seqs * per_token


def free_device_bytes(device: torch.device) -> int:
    """Memory free now: on the GPU (after the weights), or the RAM available on the CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


def plan_memory(hf_config: PretrainedConfig, config: EngineConfig, dtype: torch.dtype,
                device: torch.device, free_bytes: int, weight_bytes: int,
                max_model_len: int, quantization: str = "none") -> MemoryPlan:
    """The plan for `free_bytes` free after the weights; raises MemoryPlanError if no fit."""
    layout = KVCacheLayout.of(hf_config, config.block_size, dtype)
    cuda = device.type == "cuda"
    available = int(free_bytes * config.kv_cache_fraction)
    target = LoraTargetShapes.from_hf_config(hf_config)
    activations = activation_bytes(hf_config, config, dtype)
    parts = {
        "adapter_pool": DeviceSlotPool.bytes_needed(target, config.device_slots,
                                                    config.max_lora_rank, dtype),
        "activations": activations,
        "sampler": sampler_bytes(hf_config, config),
        "attention_scratch": attention_scratch_bytes(hf_config, layout, max_model_len),
        "graph_pool": (graph_pool_bytes(hf_config, config, dtype, activations)
                       if cuda and not config.enforce_eager else 0),
    }
    left = available - sum(parts.values())
    if config.kv_cache_bytes:
        kv_budget = config.kv_cache_bytes
    elif cuda:
        kv_budget = left
    else:  # RAM is shared with everything else on the machine, and the pool is lazy
        kv_budget = min(int(free_bytes * config.kv_cache_fraction), CPU_KV_CACHE_CAP_BYTES)
    blocks_per_seq = -(-max_model_len // layout.block_size)
    useful = config.max_num_seqs * blocks_per_seq
    kv_blocks = max(0, min(kv_budget // layout.bytes_per_block, useful))
    plan = MemoryPlan(device=str(device), available=available, weights=weight_bytes,
                      kv_cache=kv_blocks * layout.bytes_per_block, kv_blocks=kv_blocks,
                      kv_tokens=kv_blocks * layout.block_size, quantization=quantization,
                      **parts)
    # a planned cache must hold a full-length sequence; a given size, at least a block
    # (requests longer than it are then refused when they arrive)
    minimum = blocks_per_seq if cuda and not config.kv_cache_bytes else 1
    if kv_blocks < minimum:
        needed = (f"one sequence of max_model_len {max_model_len}" if minimum > 1
                  else "one block")
        raise MemoryPlanError(
            f"the KV cache would hold {plan.kv_tokens} tokens, less than {needed}; "
            f"lower --device-slots or --max-lora-rank "
            f"(adapter pool {plan.adapter_pool / GiB:.2f} GiB), --max-num-batched-tokens, "
            f"--max-num-seqs or --max-model-len, or raise --kv-cache-fraction"
            f"{' or --kv-cache-bytes' if config.kv_cache_bytes else ''}\n{plan.table()}")
    if cuda and plan.planned > available:
        raise MemoryPlanError(
            f"the plan takes {plan.planned / GiB:.2f} GiB of the {available / GiB:.2f} GiB "
            f"available; lower --kv-cache-bytes or the settings above it\n{plan.table()}")
    return plan
