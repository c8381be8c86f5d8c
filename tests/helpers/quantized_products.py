"""The reference a quantized product is checked against, and its tolerance.

On the CPU a quantized product reads its activations in bf16 (`kernel_dtype`), so the
reference is the exact (fp64) product of the activations rounded the same way and the
format's dequantized weight; what is left is the output's rounding in that dtype.
"""

from __future__ import annotations

import torch

from loraplex.runtime.layers.quantized import kernel_dtype

TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1e-2}  # relative to the output's scale
CPU = torch.device("cpu")


def reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The exact product of the activations as the kernel reads them and `weight`."""
    x_served = x.to(kernel_dtype(CPU, x.dtype))
    return (x_served.double() @ weight.double().t()).float()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """Within the tolerance of the dtype the product ran in (its output's rounding)."""
    scale = expected.abs().max().item()
    error = (actual.float() - expected).abs().max().item()
    assert error <= TOLERANCE[kernel_dtype(CPU, dtype)] * scale, f"error {error} at scale {scale}"
