"""The memory plan at Llama-3-8B shapes, for an H200 and a 24 GB GPU, without a GPU.

Weights are counted on a meta-device model, the adapter pool and KV cache sizes are
checked against the real allocators on meta tensors, and the plan is computed by the
same function the engine calls at start-up, from the free memory a GPU would report.
"""

from __future__ import annotations

import pytest
import torch

from loraplex.runtime.adapters.slots import DeviceSlotPool
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.config import EngineConfig
from loraplex.runtime.engine.kv_cache import KVCacheLayout, PagedKVCache
from loraplex.runtime.engine.memory_plan import GiB, MemoryPlanError, plan_memory
from loraplex.runtime.models.loader import build_model
from loraplex.runtime.models.shapes import shape_config

CUDA = torch.device("cuda")
H200_BYTES = int(139.8 * GiB)  # what torch reports for a 141 GB H200
GPU_24GB_BYTES = int(23.6 * GiB)  # what torch reports for a 24 GB card
CONTEXT_BYTES = GiB // 2  # CUDA context and library workspaces, taken before the plan
BF16 = torch.bfloat16


@pytest.fixture(scope="module")
def llama_8b():
    hf_config = shape_config("llama-3-8b")
    model = build_model(hf_config, BF16, torch.device("meta"))
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return hf_config, weights


def plan_on(gpu_bytes: int, hf_config, weights: int, **settings):
    config = EngineConfig(model="llama-3-8b", load_format="dummy", **settings)
    free = gpu_bytes - CONTEXT_BYTES - weights
    return plan_memory(hf_config, config, BF16, CUDA, free, weights,
                       hf_config.max_position_embeddings), free


def test_defaults_fit_an_h200_with_room_for_a_busy_batch(llama_8b):
    hf_config, weights = llama_8b
    plan, free = plan_on(H200_BYTES, hf_config, weights)
    assert 14.9 * GiB < weights < 15.0 * GiB
    assert plan.adapter_pool == 10 * GiB  # 32 slots x rank 64, allocated before the KV cache
    assert plan.planned <= plan.available <= free
    assert CONTEXT_BYTES + weights + plan.planned <= H200_BYTES
    assert plan.kv_tokens >= 64 * 8192  # batch 64 at the full 8k context
    assert plan.attention_scratch > 0 and plan.graph_pool > 0 and plan.sampler > 0
    table = plan.table()
    assert "adapter slot pool" in table and "KV cache" in table
    assert set(plan.as_dict()) >= {"weights", "adapter_pool", "kv_cache", "available"}


def test_the_plan_counts_what_the_allocators_allocate(llama_8b):
    hf_config, weights = llama_8b
    plan, _ = plan_on(H200_BYTES, hf_config, weights)
    pool = DeviceSlotPool(LoraTargetShapes.from_hf_config(hf_config), 32, 64, BF16, "meta")
    pool_bytes = sum(t.numel() * t.element_size()
                     for t in (*pool.lora_a.values(), *pool.lora_b.values()))
    assert pool_bytes == plan.adapter_pool
    cache = PagedKVCache(KVCacheLayout.of(hf_config, 16, BF16), plan.kv_blocks,
                         torch.device("meta"))
    cache_bytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size()
                      for k, v in cache.layers)
    block = KVCacheLayout.of(hf_config, 16, BF16).bytes_per_block
    assert cache_bytes == plan.kv_cache + block  # plus the scratch block


def test_defaults_cannot_fit_a_24gb_gpu_and_say_what_to_change(llama_8b):
    hf_config, weights = llama_8b
    with pytest.raises(MemoryPlanError) as refused:
        plan_on(GPU_24GB_BYTES, hf_config, weights)
    message = str(refused.value)
    assert "--device-slots" in message and "max_model_len 8192" in message
    assert "adapter slot pool" in message  # the plan itself, as a table


def test_a_24gb_gpu_fits_with_fewer_slots_and_sequences(llama_8b):
    hf_config, weights = llama_8b
    plan, free = plan_on(GPU_24GB_BYTES, hf_config, weights, device_slots=8,
                         max_lora_rank=32, max_num_seqs=64, max_num_batched_tokens=4096)
    assert plan.planned <= plan.available <= free
    assert CONTEXT_BYTES + weights + plan.planned <= GPU_24GB_BYTES
    assert plan.kv_tokens >= 8192


def test_an_explicit_kv_cache_larger_than_the_device_is_refused(llama_8b):
    hf_config, weights = llama_8b
    with pytest.raises(MemoryPlanError, match="of the .* GiB available"):
        plan_on(H200_BYTES, hf_config, weights, kv_cache_bytes=120 * GiB)


def test_the_cpu_keeps_its_kv_cap_and_reports_the_plan(llama_8b):
    hf_config = shape_config("smollm2-135m")
    config = EngineConfig(model="smollm2-135m", load_format="dummy", max_model_len=2048)
    plan = plan_memory(hf_config, config, torch.float32, torch.device("cpu"), 16 * GiB,
                       0, 2048)
    assert plan.kv_cache <= 4 * GiB and plan.graph_pool == 0


def test_nf4_weights_on_a_gpu_are_planned_at_their_codes_and_scales(llama_8b):
    """`--quantize nf4` on a CUDA device (the meta device stands in: the same Triton
    kernel's layout): each decoder linear holds half a byte of codes and an fp32 scale per
    64 inputs (and its 16 codebook values), and nothing of its bf16 weight."""
    hf_config, full_weights = llama_8b
    model = build_model(hf_config, BF16, torch.device("meta"))
    linears = [m for m in model.own_linears() if m is not model.lm_head]
    full_linears = sum(m.weight_bytes for m in linears)  # bf16
    model.quantize_weights("nf4", 0)
    assert all(m.quantized.kernel == "triton" for m in linears)
    codebooks = 16 * 4 * len(linears)
    assert sum(m.weight_bytes for m in linears) == full_linears // 2 * (0.5 + 4 / 64) + codebooks
    assert model.weight_bytes() < full_weights - 0.7 * full_linears


def test_int4_weights_give_their_savings_to_the_kv_cache_of_a_24gb_gpu(llama_8b):
    """The decoder's linears served 4-bit (groups of 128) as `--quantize int4` loads them:
    the weights shrink to about 5 GiB, and the KV cache gets what they gave back."""
    hf_config, full_weights = llama_8b
    model = build_model(hf_config, BF16, torch.device("meta"))
    model.quantize_weights("int4", 128)
    weights = model.weight_bytes()
    # linears: codes 0.5 B + tables 1/32 B per weight; the LM head bf16; the embedding's
    # int8 rows 1 B + an fp32 scale per 32 (0.59 GB of the 1.05 GB bf16 table)
    assert 4.9 * GiB < weights < 5.1 * GiB
    settings = dict(device_slots=8, max_lora_rank=32, max_num_seqs=64,
                    max_num_batched_tokens=4096)
    plan, free = plan_on(GPU_24GB_BYTES, hf_config, weights, **settings)
    full_plan, _ = plan_on(GPU_24GB_BYTES, hf_config, full_weights, **settings)
    assert CONTEXT_BYTES + weights + plan.planned <= GPU_24GB_BYTES
    freed = full_weights - weights
    assert plan.kv_cache - full_plan.kv_cache >= 0.8 * freed  # x kv_cache_fraction
