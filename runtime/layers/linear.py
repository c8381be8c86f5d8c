"""A linear layer whose output is several projections side by side (q|k|v, gate|up).

Fusing the projections makes one GEMM instead of three; the output keeps its parts at
fixed column offsets, so a checkpoint's separate q/k/v (or gate/up) weights load into
their shard, and a per-projection LoRA delta can later be added at `slice_offsets`.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn


class MergedLinear(nn.Linear):
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
