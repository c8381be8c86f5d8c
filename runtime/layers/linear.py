"""Linear layers: oneDNN with pre-packed weights on the CPU, and fused projections.

On the CPU, torch's `F.linear` runs MKL's sgemm, which on some processors (the AMD EPYC
of our 2-core bench machine) takes slower code paths; oneDNN, the library torch's own
compiler uses for CPU linears (`mkldnn::_linear_pointwise` over weights reordered once
by `mkldnn::_reorder_linear_weight`), does the same fp32 arithmetic (only the summation
order differs) in about 0.6x the time there, 0.4x for the 49k-wide LM head at batch 32
(`python -m bench.engine`). `pack()` is called once the weights are final; until then,
and on CUDA, the layer is a plain `nn.Linear`.

`MergedLinear` is several projections side by side (q|k|v, gate|up): one GEMM instead of
several, each part at fixed column offsets, so a checkpoint's separate weights load into
their shard and a per-projection LoRA delta can later be added at `slice_offsets`.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

PACKABLE_DTYPES = (torch.float32, torch.bfloat16)


class Linear(nn.Linear):
    packed_weight: torch.Tensor | None = None  # oneDNN layout of `weight` (CPU only)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, in] -> [T, out]
        if self.packed_weight is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias,
                                                      "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def pack(self) -> bool:
        """Pre-pack the current weight for oneDNN (CPU only); False where not possible."""
        weight = self.weight
        if (weight.device.type != "cpu" or weight.dtype not in PACKABLE_DTYPES
                or not torch.backends.mkldnn.is_available()):
            return False
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach())
        return True


class MergedLinear(Linear):
    def __init__(self, in_features: int, output_sizes: tuple[int, ...], bias: bool) -> None:
        super().__init__(in_features, sum(output_sizes), bias=bias)
        self.output_sizes = output_sizes

    @property
    def slice_offsets(self) -> tuple[int, ...]:
        """Column where each part starts, plus the total (len = parts + 1)."""
        return (0, *itertools.accumulate(self.output_sizes))

    def load_shard(self, index: int, name: str, tensor: torch.Tensor) -> None:
        """Copy one part's `weight` or `bias` from a checkpoint into its columns."""
        start, end = self.slice_offsets[index], self.slice_offsets[index + 1]
        target = getattr(self, name)
        if target is None:
            raise ValueError(f"checkpoint has a {name} for a projection without one")
        expected = (end - start, *target.shape[1:])
        if tuple(tensor.shape) != expected:
            raise ValueError(f"shard {index} {name}: checkpoint shape {tuple(tensor.shape)}, "
                             f"model expects {expected}")
        target.data[start:end].copy_(tensor)
