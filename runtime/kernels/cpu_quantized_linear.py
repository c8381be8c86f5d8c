"""Weight-only int4 and int8 linears on the CPU through `cpu_linear.c`'s panels.

torch's own CPU kernels for weight-only products dequantize the weights again for every row
(`aten._weight_int4pack_mm_for_cpu`: a 49k-wide LM head took 0.7 ms at 1 row and 10 ms at
32), or multiply in bf16 at one row and convert the whole weight at more
(`aten._weight_int8pack_mm`). These panels dequantize each weight once per call, in
registers for up to one tile of rows (12) and into a thread's scratch (it stays in L2) for
more, and multiply-add in fp32; bf16 rows give bf16 products (each rounded once), other rows
fp32 ones. Measured by `python -m bench.linear --quantized`.

- int4: w = (q - 8) * scale + zero, q in 0..15, a scale and a zero per group of g inputs
  and output feature. Codes [ceil(N / 32), K, 16] uint8 (byte j of a panel's row k holds
  column j in its low nibble and j + 16 in its high one), tables [ceil(N / 32), K / g, 2,
  32] in fp32 or bf16.
- int8: w = q * scale, q in -127..127, one fp32 scale per output feature. Codes
  [ceil(N / 32), K, 32] int8, scales [32 ceil(N / 32)].
- codebook int4 (NF4, FP4): w = codebook[q] * scale, q in 0..15 naming one of 16 values
  that are not evenly spaced, one fp32 scale per group of g inputs and output feature. Codes
  as int4's, scales [ceil(N / 32), K / g, 32], the codebook 16 fp32 values.
The last panel's padding columns are zero.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .cpu_linear import PANEL, _library, to_panels

TABLE_DTYPES = (torch.float32, torch.bfloat16)  # int4 tables the kernel reads
ROW_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # fp16 rows are read as fp32
DENSE_BLOCK_PANELS = 128  # 4096 outputs: a [K, 4096] bf16 block (4.7 MB at K = 576)


def pack_int4(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
              dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """codes [N, K] in 0..15, scales and zeros [K / g, N] -> (codes, tables) in panels,
    the tables in `dtype` (fp32 or bf16)."""
    if dtype not in TABLE_DTYPES:
        raise ValueError(f"int4 panel tables are fp32 or bf16, not {dtype}")
    if codes.dim() != 2 or scales.shape != zeros.shape or scales.dim() != 2 or \
            scales.shape[1] != codes.shape[0] or codes.shape[1] % scales.shape[0]:
        raise ValueError(f"int4 panels need codes [N, K] and tables [K / g, N]; got codes "
                         f"{tuple(codes.shape)}, scales {tuple(scales.shape)}, zeros "
                         f"{tuple(zeros.shape)}")
    packed = _pack_nibbles(codes)
    table = torch.stack([scales, zeros], dim=1).to(dtype)  # [K / g, 2, N]
    tables = F.pad(table, (0, -codes.shape[0] % PANEL)).view(
        table.shape[0], 2, -1, PANEL).permute(2, 0, 1, 3).contiguous()  # [P, K / g, 2, 32]
    return packed, tables


def _pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """codes [N, K] in 0..15 -> [P, K, 16] uint8: column j in the low nibble, j + 16 high."""
    panel_codes = to_panels(codes.to(torch.uint8))  # [P, K, 32]
    return (panel_codes[..., 16:] << 4 | panel_codes[..., :16]).contiguous()


def pack_codebook4(codes: torch.Tensor, scales: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """codes [N, K] in 0..15, scales [K / g, N] -> (codes, scales [P, K / g, 32] fp32)."""
    if codes.dim() != 2 or scales.dim() != 2 or scales.shape[1] != codes.shape[0] or \
            codes.shape[1] % scales.shape[0]:
        raise ValueError(f"codebook int4 panels need codes [N, K] and scales [K / g, N]; got "
                         f"codes {tuple(codes.shape)}, scales {tuple(scales.shape)}")
    padded = F.pad(scales.float(), (0, -codes.shape[0] % PANEL))  # [K / g, 32 P]
    panel_scales = padded.view(scales.shape[0], -1, PANEL).transpose(0, 1).contiguous()
    return _pack_nibbles(codes), panel_scales


def unpack_codebook4(packed: torch.Tensor, scales: torch.Tensor, out_features: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """`pack_codebook4` undone: (codes [N, K] int32, scales [K / g, N])."""
    codes = _unpanel(torch.cat([packed & 15, packed >> 4], dim=-1), out_features)
    return codes.int(), scales.transpose(0, 1).reshape(scales.shape[1], -1)[:, :out_features]


def check_codebook4(packed: torch.Tensor, scales: torch.Tensor, codebook: torch.Tensor,
                    out_features: int) -> None:
    in_features, groups = packed.shape[1], scales.shape[1]
    if (packed.dtype != torch.uint8 or scales.dtype != torch.float32
            or codebook.shape != (16,) or codebook.dtype != torch.float32
            or packed.shape[0] * PANEL < out_features
            or scales.shape != (packed.shape[0], groups, PANEL) or in_features % groups
            or not packed.is_contiguous() or not scales.is_contiguous()
            or not codebook.is_contiguous()):
        raise ValueError(f"codebook int4 kernels take contiguous int4 panels, fp32 scales "
                         f"and 16 fp32 codebook values for {out_features} outputs")


def codebook4_product(packed: torch.Tensor, scales: torch.Tensor, codebook: torch.Tensor,
                      out_features: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """x [..., K] @ W^T for codebook int4 W in `pack_codebook4`'s panels, checked once."""
    check_codebook4(packed, scales, codebook, out_features)
    return _product("linear_codebook4", packed, scales, out_features, codebook.data_ptr(),
                    packed.shape[1] // scales.shape[1])


def dense_codebook4_product(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor,
                            codebook: torch.Tensor, out_features: int) -> torch.Tensor:
    """x [M, K] @ W^T -> [M, N] in bf16 through dense bf16 products over blocks of codebook
    int4 W dequantized block by block."""
    check_codebook4(packed, scales, codebook, out_features)
    in_features, groups = packed.shape[1], scales.shape[1]

    def dequantize(first: int, last: int, columns: int) -> torch.Tensor:
        out = torch.empty(in_features, columns, dtype=torch.bfloat16)
        _library().dequantize_codebook4(
            out.data_ptr(), packed[first:last].data_ptr(), scales[first:last].data_ptr(),
            codebook.data_ptr(), columns, in_features, in_features // groups, out.stride(0),
            torch.get_num_threads())
        return out

    return _dense_blocks(x, out_features, dequantize)


def unpack_int4(packed: torch.Tensor, tables: torch.Tensor, out_features: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`pack_int4` undone: (codes [N, K] int32, scales [K / g, N], zeros [K / g, N])."""
    codes = _unpanel(torch.cat([packed & 15, packed >> 4], dim=-1), out_features)
    table = tables.permute(1, 2, 0, 3).reshape(tables.shape[1], 2, -1)[..., :out_features]
    return codes.int(), table[:, 0], table[:, 1]


def linear_int4(x: torch.Tensor, packed: torch.Tensor, tables: torch.Tensor,
                out_features: int) -> torch.Tensor:
    """x [..., K] @ W^T -> [..., N] for int4 W in `pack_int4`'s panels (bf16 for bf16 rows,
    else fp32)."""
    return int4_product(packed, tables, out_features)(x)


def int4_product(packed: torch.Tensor, tables: torch.Tensor, out_features: int
                 ) -> Callable[[torch.Tensor], torch.Tensor]:
    """`linear_int4` for this weight, its panels checked once (a layer's every call then
    pays only the rows' checks: the per-call Python cost is most of a small product's)."""
    check_int4(packed, tables, out_features)
    return _product("linear_int4", packed, tables, out_features, tables.dtype == torch.float32,
                    packed.shape[1] // tables.shape[1])


def check_int4(packed: torch.Tensor, tables: torch.Tensor, out_features: int) -> None:
    in_features, groups = packed.shape[1], tables.shape[1]
    if (packed.dtype != torch.uint8 or tables.dtype not in TABLE_DTYPES
            or packed.shape[0] * PANEL < out_features
            or tables.shape != (packed.shape[0], groups, 2, PANEL) or in_features % groups
            or not packed.is_contiguous() or not tables.is_contiguous()):
        raise ValueError(f"int4 kernels take contiguous int4 panels for {out_features} "
                         f"outputs")


def pack_int8(codes: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """codes [N, K] in -127..127, scales [N] -> (codes [P, K, 32] int8, scales [32 P] fp32)."""
    if codes.dim() != 2 or scales.shape != (codes.shape[0],):
        raise ValueError(f"int8 panels need codes [N, K] and scales [N]; got codes "
                         f"{tuple(codes.shape)}, scales {tuple(scales.shape)}")
    padded = F.pad(scales.float(), (0, -codes.shape[0] % PANEL)).contiguous()
    return to_panels(codes.to(torch.int8)).contiguous(), padded


def check_int8(packed: torch.Tensor, scales: torch.Tensor, out_features: int) -> None:
    if (packed.dtype != torch.int8 or packed.dim() != 3 or packed.shape[2] != PANEL
            or packed.shape[0] * PANEL < out_features or scales.dtype != torch.float32
            or scales.shape != (packed.shape[0] * PANEL,) or not packed.is_contiguous()
            or not scales.is_contiguous()):
        raise ValueError(f"int8 kernels take contiguous int8 panels for {out_features} "
                         f"outputs")


def unpack_int8(packed: torch.Tensor, out_features: int) -> torch.Tensor:
    """`pack_int8`'s codes undone: [N, K] int8."""
    return _unpanel(packed, out_features)


def linear_int8(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor,
                out_features: int) -> torch.Tensor:
    """x [..., K] @ W^T -> [..., N] for int8 W in `pack_int8`'s panels (bf16 for bf16 rows,
    else fp32)."""
    return int8_product(packed, scales, out_features)(x)


def int8_product(packed: torch.Tensor, scales: torch.Tensor, out_features: int
                 ) -> Callable[[torch.Tensor], torch.Tensor]:
    """`linear_int8` for this weight, its panels checked once."""
    check_int8(packed, scales, out_features)
    return _product("linear_int8", packed, scales, out_features)


def dense_int4(packed: torch.Tensor, tables: torch.Tensor, out_features: int) -> torch.Tensor:
    """int4 W in `pack_int4`'s panels -> W^T [K, N] in bf16, for one dense product."""
    in_features, groups = packed.shape[1], tables.shape[1]
    check_int4(packed, tables, out_features)
    out = torch.empty(in_features, out_features, dtype=torch.bfloat16)
    _library().dequantize_int4(out.data_ptr(), packed.data_ptr(), tables.data_ptr(),
                               tables.dtype == torch.float32, out_features, in_features,
                               in_features // groups, out.stride(0), torch.get_num_threads())
    return out


def dense_int8(packed: torch.Tensor, out_features: int) -> torch.Tensor:
    """int8 W's codes in `pack_int8`'s panels -> [K, N] in bf16 (exact: |q| <= 127), for one
    dense product scaled per output feature after."""
    if packed.dtype != torch.int8 or packed.dim() != 3 or packed.shape[2] != PANEL or \
            packed.shape[0] * PANEL < out_features or not packed.is_contiguous():
        raise ValueError(f"int8 kernels take contiguous int8 panels for {out_features} "
                         f"outputs")
    out = torch.empty(packed.shape[1], out_features, dtype=torch.bfloat16)
    _library().dequantize_int8(out.data_ptr(), packed.data_ptr(), out_features,
                               packed.shape[1], out.stride(0), torch.get_num_threads())
    return out


def dense_int4_product(x: torch.Tensor, packed: torch.Tensor, tables: torch.Tensor,
                       out_features: int) -> torch.Tensor:
    """x [M, K] @ W^T -> [M, N] in bf16 through dense bf16 products (oneDNN; AMX where
    present) over blocks of int4 W dequantized by `dense_int4`."""
    return _dense_blocks(x, out_features, lambda first, last, columns: dense_int4(
        packed[first:last], tables[first:last], columns))


def dense_int8_product(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor,
                       out_features: int) -> torch.Tensor:
    """x [M, K] @ W^T -> [M, N] in bf16 through dense bf16 products over blocks of int8 W's
    codes (`dense_int8`), scaled per output feature after."""
    output = _dense_blocks(x, out_features, lambda first, last, columns: dense_int8(
        packed[first:last], columns))
    return output.mul_(scales[:out_features])


def _dense_blocks(x: torch.Tensor, out_features: int,
                  dequantize: Callable[[int, int, int], torch.Tensor]) -> torch.Tensor:
    """The product block by block of DENSE_BLOCK_PANELS panels, `dequantize(first, last,
    columns)` giving panels [first, last) as [K, columns] bf16: a 49k-wide LM head's whole
    dense copy (57 MB, paged in afresh each call) cost more than its product."""
    rows = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)  # [M, K]
    num_panels = -(-out_features // PANEL)
    if num_panels <= DENSE_BLOCK_PANELS:
        return torch.mm(rows, dequantize(0, num_panels, out_features))
    output = torch.empty(rows.shape[0], out_features, dtype=torch.bfloat16)
    for first in range(0, num_panels, DENSE_BLOCK_PANELS):
        last = min(first + DENSE_BLOCK_PANELS, num_panels)
        columns = min(out_features, last * PANEL) - first * PANEL
        output[:, first * PANEL:first * PANEL + columns] = torch.mm(
            rows, dequantize(first, last, columns))
    return output


def _product(kernel: str, packed: torch.Tensor, tables: torch.Tensor, out_features: int,
             *format_args: object) -> Callable[[torch.Tensor], torch.Tensor]:
    """x [..., K] -> x @ W^T through `kernel` (its arguments after the common ones:
    `format_args`). The product holds the panels and reads their pointers at each call.
    bf16 rows are read as they are and give bf16 products (rounded once from the fp32 sums),
    fp32 rows fp32 ones, fp16 rows are read as fp32."""
    in_features, call = packed.shape[1], getattr(_library(), kernel)

    def product(x: torch.Tensor) -> torch.Tensor:
        if x.dtype not in ROW_DTYPES or x.device.type != "cpu" or x.shape[-1] != in_features:
            raise ValueError(f"{kernel} takes fp32, bf16 or fp16 CPU rows of {in_features} "
                             f"values, got {x.dtype} {x.device.type} rows of {x.shape[-1]}")
        rows = x.reshape(-1, in_features)
        if rows.dtype == torch.float16:
            rows = rows.float()
        elif rows.shape[0] and rows.stride(1) != 1:
            rows = rows.contiguous()
        out = torch.empty(rows.shape[0], out_features, dtype=rows.dtype)
        if rows.shape[0] and call(out.data_ptr(), rows.data_ptr(), rows.dtype == torch.bfloat16,
                                  packed.data_ptr(), tables.data_ptr(), None, rows.shape[0],
                                  out_features, in_features, rows.stride(0), out.stride(0),
                                  torch.get_num_threads(), *format_args):
            raise MemoryError(f"{kernel} could not allocate its scratch")
        return out.view(*x.shape[:-1], out_features)

    return product


def _unpanel(panels: torch.Tensor, out_features: int) -> torch.Tensor:  # -> [N, K]
    return panels.transpose(1, 2).reshape(-1, panels.shape[1])[:out_features]
