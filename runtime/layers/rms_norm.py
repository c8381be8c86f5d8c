"""RMSNorm computed exactly as Hugging Face Llama does (in fp32, weight applied last).

On CUDA one Triton launch; on a CPU one compiled call (`kernels.cpu_layer_ops`), which also
adds the residual first where the decoder layer asks (`add_and_norm`); elsewhere torch's ops.
"""

from __future__ import annotations

import torch
from torch import nn

from loraplex.runtime.kernels import cpu_layer_ops
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
        if cpu_layer_ops.supports(hidden, self.weight):
            return cpu_layer_ops.rms_norm(hidden, self.weight, self.eps)[0]
        return self.torch_form(hidden)

    def torch_form(self, hidden: torch.Tensor) -> torch.Tensor:  # [T, d] -> [T, d]
        input_dtype = hidden.dtype
        hidden = hidden.to(torch.float32)
        variance = hidden.pow(2).mean(-1, keepdim=True)
        hidden = hidden * torch.rsqrt(variance + self.eps)
        return self.weight * hidden.to(input_dtype)

    def add_and_norm(self, hidden: torch.Tensor, residual: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(residual + hidden), residual + hidden), all [T, d]."""
        if cpu_layer_ops.supports(hidden, residual, self.weight):
            return cpu_layer_ops.rms_norm(hidden, self.weight, self.eps, residual)
        summed = residual + hidden
        return self(summed), summed
