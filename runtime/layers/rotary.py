"""Rotary position embedding, with the scaling variants Hugging Face configs name.

The inverse frequencies come from transformers' own `ROPE_INIT_FUNCTIONS` (default,
linear, llama3, yarn, longrope), so every rope_scaling a config can carry is computed
the way the reference computes it. cos/sin are built once per forward pass for the
batch's positions and shared by all layers; the arithmetic mirrors HF Llama bit for bit
in fp32 (frequencies in fp32, `rotate_half` convention).
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from loraplex.runtime.kernels import cpu_layer_ops
from loraplex.runtime.layers.fused_ops import runs_fused

logger = logging.getLogger(__name__)


def rope_type_of(config: PretrainedConfig) -> str:
    scaling = getattr(config, "rope_scaling", None)
    if not isinstance(scaling, dict):
        return "default"
    return scaling.get("rope_type", scaling.get("type", "default"))


class RotaryEmbedding(nn.Module):
    def __init__(self, config: PretrainedConfig, head_dim: int) -> None:
        super().__init__()
        rope_type = rope_type_of(config)
        if rope_type not in ROPE_INIT_FUNCTIONS:
            raise ValueError(f"unsupported rope_scaling type {rope_type!r}")
        if rope_type == "dynamic":
            logger.warning("dynamic NTK rope: frequencies are fixed at the configured length")
        self.config = config
        self.rope_type = rope_type
        self.head_dim = head_dim
        # fp32 whatever the model's dtype: a bf16 buffer turns position 2,000 by radians
        self.register_buffer("inv_freq", torch.empty(head_dim // 2, dtype=torch.float32),
                             persistent=False)
        self.attention_scaling = 1.0

    def reset_parameters(self) -> None:
        """Compute the frequencies (after the module reached its device)."""
        inv_freq, self.attention_scaling = ROPE_INIT_FUNCTIONS[self.rope_type](
            self.config, self.inv_freq.device
        )
        if inv_freq.numel() * 2 != self.head_dim:
            raise ValueError(f"partial rotary embeddings are not supported "
                             f"({inv_freq.numel() * 2} of {self.head_dim} dims)")
        self.inv_freq.copy_(inv_freq)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor]:
        # positions [T] -> cos, sin [T, 1, head_dim] (broadcast over heads)
        freqs = positions.float()[:, None] * self.inv_freq[None, :]  # fp32 [T, head_dim/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(dtype)[:, None, :], sin.to(dtype)[:, None, :]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x [T, heads, head_dim], cos/sin [T, 1, head_dim]
    return (x * cos) + (rotate_half(x) * sin)


def apply_rotary_qk(query: torch.Tensor, key: torch.Tensor, cos: torch.Tensor,
                    sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both rotated: query [T, H, D], key [T, Hkv, D]; in place, in one Triton launch, where
    the layers run fused (see `fused_ops`), and in one compiled call on a CPU where key's
    heads follow query's in each row, as in the fused q|k|v output (`cpu_layer_ops`)."""
    if runs_fused(query):
        from loraplex.runtime.kernels.fused_layers import rotary_qk_

        rotary_qk_(query, key, cos, sin)
        return query, key
    if cpu_layer_ops.supports(query, key, cos, sin) and _adjacent(query, key):
        rows, heads, head_dim = query.shape
        both = query.as_strided((rows, heads + key.shape[1], head_dim),
                                (query.stride(0), head_dim, 1))  # [T, H + Hkv, D]
        cpu_layer_ops.rotary_(both, cos, sin)
        return query, key
    return apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)


def _adjacent(query: torch.Tensor, key: torch.Tensor) -> bool:
    """Whether key's heads start where query's end, in every row, all heads contiguous."""
    head_dim = query.shape[2]
    return (query.stride()[1:] == (head_dim, 1) and key.stride()[1:] == (head_dim, 1)
            and (key.stride(0) == query.stride(0) or query.shape[0] == 1)
            and key.shape[2] == head_dim
            and key.data_ptr() == query.data_ptr()
            + query.shape[1] * head_dim * query.element_size())
