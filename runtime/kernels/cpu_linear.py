"""fp32 linear layers on the CPU as one compiled call over weights stored in panels
(`cpu_linear.c`).

At the row counts of a decode step (1-64) a linear streams its weights from memory and
does a few FLOPs per byte; oneDNN's packed GEMM, the fastest torch path, read them at
about 15 GB/s at 16 rows where a plain sum reads 27. The kernel reads each weight panel as
one prefetched stream with the tile's accumulators in registers: every projection of the
builtin model at 16 rows took 0.81-0.90x oneDNN's time, 0.67-0.84x at 1 row, and
1.02-1.05x at 256-1024 rows (prefill chunks), over two runs of `python -m bench.linear`.
The panels are the layer's only copy of its weight, as oneDNN's packed copy was. Machines
without 512-bit vectors or a C compiler, and bf16 weights (oneDNN's AMX kernels), keep
oneDNN.

int4 weights (`pack_int4`, `linear_int4`) go through the same tiles, each panel dequantized
once per call into a thread's scratch: torch's own CPU kernel
(`aten._weight_int4pack_mm_for_cpu`) dequantizes the weights again for every row, so its
time grows with the rows (a 49k-wide LM head: 0.7 ms at 1 row, 10 ms at 32), where this
one's stays near the bytes' time at decode batch sizes.
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
    out_features, in_features = weight.shape
    padded = F.pad(weight.detach(), (0, 0, 0, -out_features % PANEL))
    return padded.view(-1, PANEL, in_features).transpose(1, 2).contiguous()


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
    rows = x.reshape(-1, in_features)
    if rows.shape[0] and rows.stride(1) != 1:
        rows = rows.contiguous()
    out = torch.empty(rows.shape[0], out_features, dtype=x.dtype)
    if rows.shape[0]:
        _library().linear_f32(
            out.data_ptr(), rows.data_ptr(), panels.data_ptr(),
            None if bias is None else bias.data_ptr(), rows.shape[0], out_features,
            in_features, rows.stride(0), out.stride(0), torch.get_num_threads())
    return out.view(*x.shape[:-1], out_features)


TABLE_DTYPES = (torch.float32, torch.bfloat16)  # int4 tables the kernel reads


def pack_int4(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
              dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """codes [N, K] in 0..15, scales and zeros [K / g, N] (w = (q - 8) * scale + zero) ->
    (panel codes [ceil(N / 32), K, 16] uint8, tables [ceil(N / 32), K / g, 2, 32] in
    `dtype`, fp32 or bf16): byte j of a panel's row k holds column j (low nibble) and
    j + 16 (high); the padding columns of the last panel are zero."""
    if dtype not in TABLE_DTYPES:
        raise ValueError(f"int4 panel tables are fp32 or bf16, not {dtype}")
    if codes.dim() != 2 or scales.shape != zeros.shape or scales.dim() != 2 or \
            scales.shape[1] != codes.shape[0] or codes.shape[1] % scales.shape[0]:
        raise ValueError(f"int4 panels need codes [N, K] and tables [K / g, N]; got codes "
                         f"{tuple(codes.shape)}, scales {tuple(scales.shape)}, zeros "
                         f"{tuple(zeros.shape)}")
    out_features, in_features = codes.shape
    padding = -out_features % PANEL
    panel_codes = F.pad(codes.to(torch.uint8), (0, 0, 0, padding)).view(
        -1, PANEL, in_features).transpose(1, 2)  # [P, K, 32]
    packed = (panel_codes[..., 16:] << 4 | panel_codes[..., :16]).contiguous()  # [P, K, 16]
    table = torch.stack([scales, zeros], dim=1).to(dtype)  # [K / g, 2, N]
    tables = F.pad(table, (0, padding)).view(table.shape[0], 2, -1, PANEL).permute(
        2, 0, 1, 3).contiguous()  # [P, K / g, 2, 32]
    return packed, tables


def unpack_int4(packed: torch.Tensor, tables: torch.Tensor, out_features: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`pack_int4` undone: (codes [N, K] int32, scales [K / g, N], zeros [K / g, N])."""
    codes = torch.cat([packed & 15, packed >> 4], dim=-1)  # [P, K, 32]
    codes = codes.transpose(1, 2).reshape(-1, packed.shape[1])[:out_features]
    table = tables.permute(1, 2, 0, 3).reshape(tables.shape[1], 2, -1)[..., :out_features]
    return codes.int(), table[:, 0], table[:, 1]


def linear_int4(x: torch.Tensor, packed: torch.Tensor, tables: torch.Tensor,
                out_features: int) -> torch.Tensor:
    """x [..., K] @ W^T -> [..., N] in fp32, for int4 W in `pack_int4`'s panels."""
    in_features, groups = packed.shape[1], tables.shape[1]
    if (x.dtype not in (torch.float32, torch.bfloat16) or x.device.type != "cpu"
            or x.shape[-1] != in_features or packed.dtype != torch.uint8
            or tables.dtype not in TABLE_DTYPES or packed.shape[0] * PANEL < out_features
            or tables.shape != (packed.shape[0], groups, 2, PANEL) or in_features % groups
            or not packed.is_contiguous() or not tables.is_contiguous()):
        raise ValueError(f"linear_int4 takes fp32 or bf16 CPU rows of {in_features} values "
                         f"and contiguous panels for {out_features} outputs")
    rows = x.reshape(-1, in_features).float()
    if rows.shape[0] and rows.stride(1) != 1:
        rows = rows.contiguous()
    out = torch.empty(rows.shape[0], out_features, dtype=torch.float32)
    if rows.shape[0]:
        status = _library().linear_int4(
            out.data_ptr(), rows.data_ptr(), packed.data_ptr(), tables.data_ptr(),
            tables.dtype == torch.float32, None, rows.shape[0], out_features, in_features,
            in_features // groups, rows.stride(0), out.stride(0), torch.get_num_threads())
        if status:
            raise MemoryError("linear_int4 could not allocate its scratch")
    return out.view(*x.shape[:-1], out_features)


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
    library.linear_int4.argtypes = [pointer] * 4 + [ctypes.c_int, pointer] + [size] * 6 + [
        ctypes.c_int]
    library.linear_int4.restype = ctypes.c_int
    return library
