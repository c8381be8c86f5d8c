"""Where the layers' small ops run as fused Triton kernels, and their torch forms.

On CUDA (and on meta tensors, which `bench.step_model` costs) RMSNorm, rotary, the SiLU
gate and the KV cache write each run as one Triton launch (`kernels.fused_layers`, which
round as these torch forms do); on the CPU they stay in torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def runs_fused(tensor: torch.Tensor) -> bool:
    return tensor.device.type in ("cuda", "meta")


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [T, 2I] -> silu(gate) * up [T, I]."""
    if runs_fused(gate_up):
        from loraplex.runtime.kernels import fused_layers  # imports triton

        return fused_layers.silu_and_mul(gate_up)
    gate, up = gate_up.split(gate_up.shape[-1] // 2, dim=-1)
    return F.silu(gate) * up


def write_kv(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
             value_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """key/value [T, Hkv, D] into slot slot_mapping[t] of the caches [blocks, size, Hkv, D]."""
    if runs_fused(key):
        from loraplex.runtime.kernels import fused_layers  # imports triton

        fused_layers.write_kv(key, value, key_cache, value_cache, slot_mapping)
        return
    num_kv_heads, head_dim = key.shape[1], key.shape[2]
    key_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, key)
    value_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, value)
