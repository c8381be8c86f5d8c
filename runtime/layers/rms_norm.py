"""RMSNorm computed exactly as Hugging Face Llama does (in fp32, weight applied last)."""

from __future__ import annotations

import torch
from torch import nn

from loraplex.runtime.layers.fused_ops import runs_fused


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [T, d] -> [T, d]
        if runs_fused(hidden):  # one Triton launch, same rounding
            from loraplex.runtime.kernels.fused_layers import rms_norm

            return rms_norm(hidden, self.weight, self.eps)
        input_dtype = hidden.dtype
        hidden = hidden.to(torch.float32)
        variance = hidden.pow(2).mean(-1, keepdim=True)
        hidden = hidden * torch.rsqrt(variance + self.eps)
        return self.weight * hidden.to(input_dtype)
