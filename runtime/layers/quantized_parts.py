"""Quantized weights built from others: permuted inputs, and shards side by side.

A GPTQ checkpoint quantized with `desc_act` groups its inputs in activation order, not in
index order, so a group's inputs are scattered over K. The int4 kernel needs each group
contiguous: the weight is stored with its input columns sorted by group and the product
reads the input in that order (`PermutedInputs`). The shards of a fused layer (q|k|v,
gate|up) share their input; when their orders differ they cannot be one GEMM, and are
served as separate products whose outputs sit side by side (`SideBySide`). So are the
shards of a checkpoint that quantized some projections of a fused layer and kept others
in full precision (bitsandbytes' `llm_int8_skip_modules` naming, say, `gate_proj`): the
full-precision ones multiply as they are (`DenseShard`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from loraplex.runtime.layers.quantized import QuantizedWeight


class PermutedInputs(QuantizedWeight):
    """`inner` holds W[:, order]: y = x[:, order] @ W[:, order]^T = x @ W^T."""

    def __init__(self, inner: QuantizedWeight, order: torch.Tensor) -> None:
        if tuple(order.shape) != (inner.in_features,):
            raise ValueError(f"an input order of {tuple(order.shape)} for a weight of "
                             f"{inner.in_features} inputs")
        self.inner = inner
        self.order = order.to(torch.int64)  # [K]: stored column j is input order[j]
        self.out_features, self.in_features = inner.out_features, inner.in_features

    def linear(self, x: torch.Tensor) -> torch.Tensor:  # [T, K] -> [T, N]
        return self.inner.linear(x.index_select(-1, self.order))

    def dequantize(self) -> torch.Tensor:  # [N, K] in the original input order
        return self.inner.dequantize().index_select(1, torch.argsort(self.order))

    @property
    def nbytes(self) -> int:
        return self.inner.nbytes + self.order.nbytes


class SideBySide(QuantizedWeight):
    """Weights on the same input whose outputs are concatenated: [T, K] -> [T, sum N]."""

    def __init__(self, parts: Sequence[QuantizedWeight]) -> None:
        inputs = {part.in_features for part in parts}
        if len(inputs) != 1:
            raise ValueError(f"side-by-side weights must share their input width, got {inputs}")
        self.parts = tuple(parts)
        self.in_features = inputs.pop()
        self.out_features = sum(part.out_features for part in parts)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([part.linear(x) for part in self.parts], dim=-1)

    def dequantize(self) -> torch.Tensor:
        return torch.cat([part.dequantize() for part in self.parts], dim=0)

    @property
    def nbytes(self) -> int:
        return sum(part.nbytes for part in self.parts)


class DenseShard(QuantizedWeight):
    """A full-precision shard beside quantized ones of the same fused layer."""

    def __init__(self, weight: torch.Tensor) -> None:
        """weight [N, K] in the model's dtype."""
        self.weight = weight
        self.out_features, self.in_features = weight.shape

    def linear(self, x: torch.Tensor) -> torch.Tensor:  # [T, K] -> [T, N]
        return F.linear(x, self.weight)

    def dequantize(self) -> torch.Tensor:
        return self.weight.float()

    @property
    def nbytes(self) -> int:
        return self.weight.nbytes
