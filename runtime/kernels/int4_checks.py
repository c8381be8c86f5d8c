"""Argument checks of the int4 dequantize-GEMM (`int4_gemm.int4_matmul`).

The kernel reads the packed codes and the group tables at offsets computed from the
shapes it is given: a wrong shape reads past a tensor or pairs codes with another
group's scale, silently. So the launcher checks shapes, dtypes and devices first and
raises a `ValueError` naming the argument. Only metadata is read (no device sync).
"""

from __future__ import annotations

import torch

from .checks import FLOAT_DTYPES

INT4_GROUP_SIZES = (32, 64, 128, 256)


def check_int4_matmul_args(x: torch.Tensor, packed: torch.Tensor,
                           scales_and_zeros: torch.Tensor, group_size: int,
                           codebook: torch.Tensor | None = None) -> None:
    """x [T, K] float; packed uint8 [N, K / 2]; scales_and_zeros float [K / g, N, 2], or
    with a `codebook` (fp32 [16]) scales fp32 [K / g, N]."""
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D [T, K], got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"x must be float16, bfloat16 or float32, got {x.dtype}")
    if x.shape[1] > 1 and x.stride(1) != 1:
        raise ValueError("x must have contiguous rows (stride 1 along K)")
    if group_size not in INT4_GROUP_SIZES:
        raise ValueError(f"group_size must be one of {INT4_GROUP_SIZES}, got {group_size}")
    d_in = x.shape[1]
    if d_in % group_size:
        raise ValueError(f"x has K={d_in} inputs, not a multiple of group_size={group_size}")
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError(f"packed must be uint8 [N, K/2] (two codes a byte), got "
                         f"{packed.dtype} {tuple(packed.shape)}")
    if packed.shape[1] * 2 != d_in:
        raise ValueError(f"packed holds {packed.shape[1] * 2} codes per row but x has K={d_in}")
    if not packed.is_contiguous():
        raise ValueError("packed must be contiguous")
    table = "scales_and_zeros" if codebook is None else "scales"
    expected = (d_in // group_size, packed.shape[0]) + ((2,) if codebook is None else ())
    if tuple(scales_and_zeros.shape) != expected:
        raise ValueError(f"{table} must be [K/g, N{', 2' if codebook is None else ''}] = "
                         f"{expected}, got {tuple(scales_and_zeros.shape)}")
    dtypes, kind = (FLOAT_DTYPES, "float") if codebook is None else ((torch.float32,), "fp32")
    if scales_and_zeros.dtype not in dtypes or not scales_and_zeros.is_contiguous():
        raise ValueError(f"{table} must be a contiguous {kind} tensor, got "
                         f"{scales_and_zeros.dtype}")
    tensors = {"packed": packed, table: scales_and_zeros}
    if codebook is not None:
        if codebook.shape != (16,) or codebook.dtype != torch.float32 or \
                not codebook.is_contiguous():
            raise ValueError(f"codebook must be 16 contiguous fp32 values, got "
                             f"{codebook.dtype} {tuple(codebook.shape)}")
        tensors["codebook"] = codebook
    for name, tensor in tensors.items():
        if tensor.device != x.device:
            raise ValueError(f"{name} is on {tensor.device} but x is on {x.device}")
