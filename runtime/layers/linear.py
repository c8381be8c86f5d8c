"""Linear layers: pre-packed weights on the CPU, and fused projections.

On the CPU, torch's `F.linear` runs MKL's sgemm, which on some processors (the AMD EPYC
of our 2-core bench machine) takes slower code paths; oneDNN, the library torch's own
compiler uses for CPU linears (`mkldnn::_linear_pointwise` over weights reordered once
by `mkldnn::_reorder_linear_weight`), does the same fp32 arithmetic (only the summation
order differs) in about 0.6x the time there, 0.4x for the 49k-wide LM head at batch 32
(`python -m bench.engine`). fp32 weights go one step further where the compiled kernel
builds (`kernels.cpu_linear`: weight panels streamed at decode batch sizes, as fast as
oneDNN on long prompts); bf16 weights stay with oneDNN (its AMX kernels). `pack()` is
called once the weights are final; until then, and on CUDA, the layer is a plain
`nn.Linear`. A packed or quantized layer reads its weight through that one path only, so
the plain copy is released (`release_weight`) unless another module shares it (a tied LM
head).

`MergedLinear` is several projections side by side (q|k|v, gate|up): one GEMM instead of
several, each part at fixed column offsets, so a checkpoint's separate weights load into
their shard and a per-projection LoRA delta can later be added at `slice_offsets`.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from loraplex.runtime.kernels import cpu_decoder, cpu_linear
from loraplex.runtime.layers.quantized import QuantizedWeight, quantize_weight

PACKABLE_DTYPES = (torch.float32, torch.bfloat16)


class Linear(nn.Linear):
    packed_weight: torch.Tensor | None = None  # `weight` packed for a CPU kernel
    quantized: QuantizedWeight | None = None  # weight-only int8/int4 in place of `weight`

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, in] -> [T, out]
        if self.quantized is not None:
            output = self.quantized.linear(x)
            return output if self.bias is None else output + self.bias
        if self.packed_panels:
            return cpu_linear.linear(x, self.packed_weight, self.out_features, self.bias)
        if self.packed_weight is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias,
                                                      "none", [], "")
        return F.linear(x, self.weight, self.bias)

    @property
    def packed_panels(self) -> bool:
        """Whether `packed_weight` holds cpu_linear's panels [N / 32, K, 32] (oneDNN's layout
        is a 2-D tensor)."""
        return self.packed_weight is not None and self.packed_weight.dim() == 3

    def compiled_projection(self) -> cpu_decoder.Projection | None:
        """The weight as the compiled decode layers read it: fp32 panels, or int4/int8 ones
        (None: neither)."""
        if self.quantized is not None:
            return self.quantized.compiled_projection()
        if self.packed_panels and self.packed_weight.dtype == torch.float32:
            return cpu_decoder.Projection.fp32(self.packed_weight)
        return None

    @property
    def can_pack(self) -> bool:
        """Whether `pack()` will pre-pack this layer's weight (a plain CPU weight in fp32
        or bf16, where torch has oneDNN)."""
        weight = self.weight
        return (self.quantized is None and weight is not None and weight.device.type == "cpu"
                and weight.dtype in PACKABLE_DTYPES and torch.backends.mkldnn.is_available())

    def pack(self) -> bool:
        """Pre-pack the current weight for the CPU kernels (`cpu_linear`'s panels for fp32
        where it builds, else oneDNN's layout); False where not possible."""
        if not self.can_pack:
            return False
        self.packed_weight = (
            cpu_linear.pack(self.weight) if cpu_linear.supports(self.weight)
            else torch.ops.mkldnn._reorder_linear_weight(self.weight.detach()))
        return True

    def quantize(self, method: str, group_size: int) -> None:
        """Replace the weight by its weight-only quantized form (int8 or int4)."""
        self.use_quantized(quantize_weight(self.weight, method, group_size))

    def use_quantized(self, quantized: QuantizedWeight) -> None:
        expected = (self.out_features, self.in_features)
        if (quantized.out_features, quantized.in_features) != expected:
            raise ValueError(f"quantized weight {quantized.out_features}x"
                             f"{quantized.in_features} for a {expected[0]}x{expected[1]} layer")
        self.quantized, self.packed_weight = quantized, None

    def release_weight(self) -> None:
        """Drop the plain weight once it is read through a packed or quantized form."""
        if self.quantized is None and self.packed_weight is None:
            raise ValueError("the plain weight is this layer's only copy")
        self.register_parameter("weight", None)

    @property
    def weight_bytes(self) -> int:
        """Bytes the layer's weight occupies in the form it is read in."""
        if self.quantized is not None:
            return self.quantized.nbytes
        return self.out_features * self.in_features * (
            self.weight.element_size() if self.weight is not None
            else self.packed_weight.element_size())


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
