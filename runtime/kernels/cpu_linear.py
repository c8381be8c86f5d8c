"""fp32 linear layers on the CPU as one compiled call over weights stored in panels
(`cpu_linear.c`).

At the row counts of a decode step (1-64) a linear streams its weights from memory and
does a few FLOPs per byte; oneDNN's packed GEMM, the fastest torch path, read them at
about 15 GB/s at 16 rows where a plain sum reads 27. The kernel reads each weight panel as
interleaved prefetched streams with the tile's accumulators in registers (see the C file
for the numbers). The panels are the layer's only copy of its weight, as oneDNN's packed
copy was. Machines without 512-bit vectors or a C compiler, and bf16 weights (oneDNN's AMX
kernels), keep oneDNN. Quantized weights go through the same tiles
(`cpu_quantized_linear`). The MLP's gate|up projection can take its SiLU gate in the same
call (`linear_silu_and_mul`), so the [T, 2I] product is never stored and read back.
"""

from __future__ import annotations

import ctypes
import functools

import torch
import torch.nn.functional as F

from . import cpu_native

PANEL = 32  # output features per panel, as `cpu_linear.c` tiles them


def supports(weight: torch.Tensor) -> bool:
    """Whether `pack` takes this weight [N, K] (fp32 on a CPU the kernel was built for)."""
    return (weight.device.type == "cpu" and weight.dtype == torch.float32
            and weight.dim() == 2 and _library() is not None)


def pack(weight: torch.Tensor) -> torch.Tensor:
    """weight [N, K] -> panels [ceil(N / 32), K, 32]: panel p is rows 32p.. transposed, the
    last one zero-padded."""
    if not supports(weight):
        raise ValueError("cpu_linear packs fp32 CPU weights [N, K], with the kernel built")
    return to_panels(weight.detach()).contiguous()


def to_panels(matrix: torch.Tensor) -> torch.Tensor:
    """[N, K] -> [ceil(N / 32), K, 32] (a view where no padding is needed): panel p is rows
    32p.. transposed, the last one zero-padded."""
    padded = F.pad(matrix, (0, 0, 0, -matrix.shape[0] % PANEL))
    return padded.view(-1, PANEL, matrix.shape[1]).transpose(1, 2)


def linear(x: torch.Tensor, panels: torch.Tensor, out_features: int,
           bias: torch.Tensor | None) -> torch.Tensor:
    """x [..., K] @ W^T (+ bias) -> [..., N] for W packed as `panels`."""
    in_features = panels.shape[1]
    if (x.dtype != torch.float32 or x.device.type != "cpu" or x.shape[-1] != in_features
            or panels.shape[0] * PANEL < out_features or not panels.is_contiguous()
            or (bias is not None and (bias.shape != (out_features,) or bias.dtype != x.dtype
                                      or not bias.is_contiguous()))):
        raise ValueError(f"cpu_linear takes fp32 CPU rows of {in_features} values and a "
                         f"contiguous fp32 bias of {out_features}")
    rows, out = _rows_and_output(x, in_features, out_features)
    if rows.shape[0]:
        _library().linear_f32(
            out.data_ptr(), rows.data_ptr(), panels.data_ptr(),
            None if bias is None else bias.data_ptr(), rows.shape[0], out_features,
            in_features, rows.stride(0), out.stride(0), torch.get_num_threads())
    return out.view(*x.shape[:-1], out_features)


def linear_silu_and_mul(x: torch.Tensor, panels: torch.Tensor,
                        intermediate: int) -> torch.Tensor:
    """x [..., K] -> silu(x W_gate^T) * (x W_up^T) [..., I] for a gate|up weight [2I, K]
    packed as `panels` (I a multiple of 32, no bias), as `F.silu(gate) * up` rounds."""
    in_features = panels.shape[1]
    if (x.dtype != torch.float32 or x.device.type != "cpu" or x.shape[-1] != in_features
            or intermediate % PANEL or panels.shape[0] * PANEL != 2 * intermediate
            or not panels.is_contiguous()):
        raise ValueError(f"cpu_linear's gated product takes fp32 CPU rows of {in_features} "
                         "values and gate|up panels of two multiples of 32 outputs")
    rows, out = _rows_and_output(x, in_features, intermediate)
    if rows.shape[0]:
        _library().linear_f32_gated(
            out.data_ptr(), rows.data_ptr(), panels.data_ptr(), rows.shape[0], intermediate,
            in_features, rows.stride(0), out.stride(0), torch.get_num_threads())
    return out.view(*x.shape[:-1], intermediate)


def _rows_and_output(x: torch.Tensor, in_features: int, width: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] as rows [M, K] of unit stride along K, and a new output [M, width]."""
    rows = x.reshape(-1, in_features)
    if rows.shape[0] and rows.stride(1) != 1:
        rows = rows.contiguous()
    return rows, torch.empty(rows.shape[0], width, dtype=x.dtype)


def available() -> bool:
    """Whether the kernel is built here (a C compiler and 512-bit vectors)."""
    return _library() is not None


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The kernel, typed; None without a compiler or where the build lacks 512-bit vectors."""
    library = cpu_native.load("cpu_linear")
    if library is None or not library.wide_vectors():
        return None
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    library.linear_f32.argtypes = [pointer] * 4 + [size] * 5 + [ctypes.c_int]
    library.linear_f32.restype = None
    library.linear_f32_gated.argtypes = [pointer] * 3 + [size] * 5 + [ctypes.c_int]
    library.linear_f32_gated.restype = None
    flag = ctypes.c_int
    # y, x, bf16, codes, tables, bias, m, n, k, x_row, y_row, threads (int4: + tables_fp32, g)
    quantized = [pointer, pointer, flag] + [pointer] * 3 + [size] * 5 + [flag]
    library.linear_int4.argtypes = quantized + [flag, size]
    library.linear_int8.argtypes = quantized
    library.linear_codebook4.argtypes = quantized + [pointer, size]  # + codebook, g
    library.linear_int4.restype = library.linear_int8.restype = ctypes.c_int
    library.linear_codebook4.restype = ctypes.c_int
    library.dequantize_int4.argtypes = [pointer] * 3 + [ctypes.c_int] + [size] * 4 + [
        ctypes.c_int]
    library.dequantize_int4.restype = None
    library.dequantize_int8.argtypes = [pointer] * 2 + [size] * 3 + [ctypes.c_int]
    library.dequantize_int8.restype = None
    library.dequantize_codebook4.argtypes = [pointer] * 4 + [size] * 4 + [ctypes.c_int]
    library.dequantize_codebook4.restype = None
    return library
