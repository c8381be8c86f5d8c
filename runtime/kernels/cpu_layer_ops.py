"""RMSNorm (after the residual add) and the rotary embedding as one compiled call each on the
CPU (`cpu_layer_ops.c`).

In torch a decoder layer's norms and rotary are about 25 small ops (pow, mean, rsqrt, casts,
the halves of `rotate_half`, their products and sums), each a few microseconds of dispatch
on rows of a few hundred values: at batch 16 that was a tenth of a bf16 decode step. The
kernels round as the torch forms do (`layers.rms_norm`, `layers.rotary`); only the order of
the sum of squares differs. fp32 and bf16 on contiguous rows; anything else, and machines
without a C compiler, keep the torch ops (`supports` says which).
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from typing import NamedTuple

import torch

from . import cpu_native

DTYPES = {torch.float32: "f32", torch.bfloat16: "bf16"}


class _Kernels(NamedTuple):
    rms_norm: Callable[..., None]
    rotary: Callable[..., None]


def supports(hidden: torch.Tensor, *others: torch.Tensor) -> bool:
    """Whether the kernels take `hidden` (and the tensors that go with it)."""
    return (hidden.device.type == "cpu" and hidden.dtype in _kernels()
            and all(t.dtype == hidden.dtype and t.device.type == "cpu" for t in others))


def rms_norm(hidden: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(norm(h), h) for h = hidden [T, d] (+ residual [T, d]): h is a new tensor only with a
    residual. Rows need unit stride along d; weight [d] contiguous."""
    rows, width = hidden.shape
    if hidden.stride(1) != 1 or not weight.is_contiguous() or weight.shape != (width,) or (
            residual is not None and (residual.shape != hidden.shape or residual.stride(1) != 1)):
        raise ValueError("cpu rms_norm needs rows of unit stride and a weight of their width")
    out = torch.empty(rows, width, dtype=hidden.dtype)
    summed = hidden if residual is None else torch.empty(rows, width, dtype=hidden.dtype)
    null = ctypes.c_void_p(None)
    _kernels()[hidden.dtype].rms_norm(
        out.data_ptr(), null if residual is None else summed.data_ptr(), hidden.data_ptr(),
        null if residual is None else residual.data_ptr(), weight.data_ptr(), rows, width,
        hidden.stride(0), 0 if residual is None else residual.stride(0), width, width,
        ctypes.c_float(eps))
    return out, summed


def rotary_(heads: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """heads [T, H, D] rotated in place (H contiguous heads of a row, rows at any stride);
    cos, sin [T, 1, D] contiguous."""
    rows, count, head_dim = heads.shape
    if (heads.stride(2) != 1 or heads.stride(1) != head_dim or head_dim % 2
            or cos.shape != (rows, 1, head_dim) or sin.shape != cos.shape
            or not cos.is_contiguous() or not sin.is_contiguous()):
        raise ValueError("cpu rotary needs contiguous heads of an even size and cos/sin "
                         "[T, 1, D]")
    _kernels()[heads.dtype].rotary(
        heads.data_ptr(), cos.data_ptr(), sin.data_ptr(), rows, count, head_dim,
        heads.stride(0))


@functools.cache
def _kernels() -> dict[torch.dtype, _Kernels]:
    """Each dtype's entry points, typed once; empty where the library cannot be built."""
    library = cpu_native.load("cpu_layer_ops")
    if library is None:
        return {}
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    kernels = {}
    for dtype, suffix in DTYPES.items():
        norm, rotary = getattr(library, f"rms_norm_{suffix}"), getattr(library, f"rotary_{suffix}")
        norm.argtypes = [pointer] * 5 + [size] * 6 + [ctypes.c_float]
        rotary.argtypes = [pointer] * 3 + [size] * 4
        norm.restype = rotary.restype = None
        kernels[dtype] = _Kernels(norm, rotary)
    return kernels
