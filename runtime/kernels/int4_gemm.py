"""Triton int4 dequantize-GEMM: y = x @ W.T with W read as 4-bit codes, never as a whole.

The GPU path of `Int4Weight` and, with a codebook, of `CodebookWeight` (NF4, FP4).
Dequantizing the weight to bf16 for each product writes and reads 4x the bytes the codes
take, which undoes what 4 bits buy in a decode step (bound by reading the weights). Here
each program loads a [BLOCK_N, BLOCK_K / 2] tile of packed bytes, splits it into codes,
applies its groups' scales and zeros in registers and feeds the tile to `tl.dot`,
accumulating in fp32; the full-precision weight exists nowhere.

Layout (what `pack_int4` writes off the CPU; tinygemm's CUDA layout is tied to its own
kernel and undocumented, this one is plain and the dot wants nothing else):
- packed: uint8 [N, K / 2], byte j of row n holds code 2j in its low nibble and code
  2j + 1 in its high one. A tile's bytes are contiguous along K per output row, so a
  program reads BLOCK_K / 2 consecutive bytes of each of its BLOCK_N rows, and the low and
  high nibbles interleave back into K order with `tl.interleave`.
- scales_and_zeros: [K / g, N, 2] (the model's dtype): w = (q - 8) * scale + zero, the
  same table as the CPU kernel reads, so one `Int4Weight.dequantize()` is the reference.
- or, for codebook codes (`codebook_matmul`), scales [K / g, N] fp32 and the codebook's 16
  fp32 values: w = codebook[q] * scale, each value looked up in the 64 cached bytes.
BLOCK_K is a power of two that divides K, as is the group size g: a K tile either lies
inside one group or spans TILE_GROUPS whole groups. Rows (T) and outputs (N) are masked,
so any batch works. Small batches split K over programs so that decode fills the GPU, in
one launch: each split writes an fp32 partial, and the last split of an output tile to
arrive (a per-tile counter) sums the partials and writes the output, then zeroes its
counter for the next launch, so nothing needs clearing in between (no memset, no second
kernel: at decode those would cost more than the product itself). The counters are shared
per device: split launches must not run concurrently on two streams.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from .configs import KernelConfig, int4_gemm_config, num_sms
from .int4_checks import check_int4_matmul_args
from .kernel_costs import report_int4_matmul
from .launch_costs import recording

INTERPRETER_ENV = "TRITON_INTERPRET"
MAX_SPLIT_TILES = 4096  # output tiles a split-K launch may have (decode: N / BLOCK_N)


@triton.jit
def _int4_gemm_kernel(
    x_ptr,
    w_ptr,
    sz_ptr,
    codebook_ptr,
    y_ptr,
    partials_ptr,
    arrivals_ptr,
    num_rows,
    d_out,
    d_in,
    k_per_split,
    stride_xm,
    stride_wn,
    stride_sg,
    stride_ym,
    stride_ps,
    GROUP_SIZE: tl.constexpr,
    TILE_GROUPS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    CODEBOOK: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < num_rows
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < d_out
    offs_k = tl.arange(0, BLOCK_K)
    offs_byte = tl.arange(0, BLOCK_K // 2)
    offs_group = tl.arange(0, TILE_GROUPS)
    k_start = pid_k * k_per_split
    k_end = tl.minimum(k_start + k_per_split, d_in)

    # x: [BLOCK_M, BLOCK_K]; packed W: [BLOCK_N, BLOCK_K / 2]; group table: [BLOCK_N, TILE_GROUPS]
    # (x2 for scale and zero, without a codebook)
    x_ptrs = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + (k_start + offs_k)[None, :]
    w_ptrs = (w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn
              + (k_start // 2 + offs_byte)[None, :])
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(k_start, k_end, BLOCK_K):
        x_tile = tl.load(x_ptrs, mask=mask_m[:, None], other=0.0)
        packed = tl.load(w_ptrs, mask=mask_n[:, None], other=0)
        codes = tl.interleave(packed & 15, packed >> 4)  # [BLOCK_N, BLOCK_K] in K order
        groups = k // GROUP_SIZE + offs_group
        codes = tl.reshape(codes, (BLOCK_N, TILE_GROUPS, BLOCK_K // TILE_GROUPS))
        if CODEBOOK:  # w = codebook[q] * scale
            scale_ptrs = sz_ptr + groups[None, :] * stride_sg + offs_n[:, None]
            scale = tl.load(scale_ptrs, mask=mask_n[:, None], other=0.0)
            weight = tl.load(codebook_ptr + codes) * scale[:, :, None]
        else:
            group_ptrs = sz_ptr + groups[None, :] * stride_sg + offs_n[:, None] * 2
            scale = tl.load(group_ptrs, mask=mask_n[:, None], other=0.0).to(tl.float32)
            zero = tl.load(group_ptrs + 1, mask=mask_n[:, None], other=0.0).to(tl.float32)
            offset = zero - 8.0 * scale  # w = q * scale + (zero - 8 * scale)
            weight = codes.to(tl.float32) * scale[:, :, None] + offset[:, :, None]
        weight = tl.reshape(weight, (BLOCK_N, BLOCK_K)).to(x_tile.dtype)
        if UPCAST:  # the interpreter has no bf16 dot: the same bf16 values, in fp32
            x_tile = x_tile.to(tl.float32)
            weight = weight.to(tl.float32)
        acc = tl.dot(x_tile, tl.trans(weight), acc, input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K // 2

    y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
    mask_y = mask_m[:, None] & mask_n[None, :]
    if SPLIT_K > 1:
        # each split stores its fp32 partial [SPLIT_K, T, N]; the last of a tile's splits to
        # arrive (the acq_rel atomic orders the others' stores before its loads) sums them
        tile_offs = offs_m.to(tl.int64)[:, None] * d_out + offs_n[None, :]
        tl.store(partials_ptr + pid_k * stride_ps + tile_offs, acc, mask=mask_y)
        tile = pid_m * tl.num_programs(1) + pid_n
        tl.debug_barrier()  # every thread's partial is stored before the release
        arrived = tl.atomic_add(arrivals_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:
            tl.debug_barrier()  # every thread's loads come after the acquire
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for split in range(SPLIT_K):
                acc += tl.load(partials_ptr + split * stride_ps + tile_offs, mask=mask_y,
                               other=0.0, cache_modifier=".cg")
            tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_y)
            tl.atomic_xchg(arrivals_ptr + tile, 0)  # ready for the next launch
    else:
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_y)


def int4_matmul(x: torch.Tensor, packed: torch.Tensor, scales_and_zeros: torch.Tensor,
                group_size: int, *, config: KernelConfig | None = None) -> torch.Tensor:
    """y = x @ W.T -> [T, N] in x's dtype, W dequantized tile by tile from its codes.

    x: [T, K] (float16, bfloat16 or float32); packed: uint8 [N, K / 2] (see the module
    docstring); scales_and_zeros: [K / group_size, N, 2]. `config` overrides the tile
    sizes `int4_gemm_config` picks.
    """
    check_int4_matmul_args(x, packed, scales_and_zeros, group_size)
    return _launch(x, packed, scales_and_zeros, None, group_size, config)


def codebook_matmul(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor,
                    codebook: torch.Tensor, group_size: int, *,
                    config: KernelConfig | None = None) -> torch.Tensor:
    """y = x @ W.T -> [T, N] in x's dtype, W = codebook[q] * scale tile by tile.

    x: [T, K]; packed: uint8 [N, K / 2] as for `int4_matmul`; scales: fp32 [K / group_size,
    N]; codebook: fp32 [16].
    """
    check_int4_matmul_args(x, packed, scales, group_size, codebook)
    return _launch(x, packed, scales, codebook, group_size, config)


def _launch(x: torch.Tensor, packed: torch.Tensor, table: torch.Tensor,
            codebook: torch.Tensor | None, group_size: int,
            config: KernelConfig | None) -> torch.Tensor:
    num_rows, d_in = x.shape
    d_out = packed.shape[0]
    config = config or int4_gemm_config(num_rows, d_out, d_in, num_sms(x.device))
    _check_config(config, d_in)
    _check_device(x)
    grid_m, grid_n = triton.cdiv(num_rows, config.block_m), triton.cdiv(d_out, config.block_n)
    split_k = config.split_k if grid_m * grid_n <= MAX_SPLIT_TILES else 1
    k_per_split = triton.cdiv(triton.cdiv(d_in, split_k), config.block_k) * config.block_k
    split_k = triton.cdiv(d_in, k_per_split)  # no empty splits
    if recording():
        report_int4_matmul(x, packed, table, split_k)
    if x.device.type == "meta":  # costed, not run (bench.step_model)
        return torch.empty(num_rows, d_out, dtype=x.dtype, device=x.device)
    if num_rows == 0:
        return torch.empty(0, d_out, dtype=x.dtype, device=x.device)
    y = torch.empty(num_rows, d_out, dtype=x.dtype, device=x.device)
    # fp32 partials of the splits (y stands in, unread, when there is no split)
    partials = (torch.empty(split_k, num_rows, d_out, dtype=torch.float32, device=x.device)
                if split_k > 1 else y)
    upcast, precision = _dot_mode(x.dtype)
    _int4_gemm_kernel[(grid_m, grid_n, split_k)](
        x, packed, table, table if codebook is None else codebook, y, partials,
        _arrival_counters(x.device), num_rows, d_out, d_in, k_per_split,
        x.stride(0), packed.stride(0), table.stride(0), y.stride(0),
        partials.stride(0),
        GROUP_SIZE=group_size,
        TILE_GROUPS=max(1, config.block_k // group_size),
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        SPLIT_K=split_k,
        UPCAST=upcast,
        DOT_PRECISION=precision,
        CODEBOOK=codebook is not None,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )  # fmt: skip
    return y


@functools.cache
def _arrival_counters(device: torch.device) -> torch.Tensor:
    """int32 [MAX_SPLIT_TILES] zeros, one per output tile of a split launch; each launch
    leaves them at zero again. Kept for good (a captured CUDA graph holds the address)."""
    return torch.zeros(MAX_SPLIT_TILES, dtype=torch.int32, device=device)


def _check_config(config: KernelConfig, d_in: int) -> None:
    block_k = config.block_k
    if block_k < 16 or block_k & (block_k - 1) or d_in % block_k:
        raise ValueError(f"block_k must be a power of two >= 16 dividing K={d_in}, got {block_k}")
    if config.block_m < 16 or config.block_n < 16:
        raise ValueError(f"block_m and block_n must be at least 16 (the smallest dot), got "
                         f"{config.block_m} and {config.block_n}")


def _check_device(tensor: torch.Tensor) -> None:
    if tensor.device.type not in ("cuda", "meta") and os.environ.get(INTERPRETER_ENV) != "1":
        raise ValueError(f"the int4 triton kernel needs CUDA tensors, got {tensor.device} "
                         f"(or run under {INTERPRETER_ENV}=1)")


def _dot_mode(dtype: torch.dtype) -> tuple[bool, str]:
    """(widen tiles to fp32, dot precision): exact fp32 dots for fp32 activations."""
    interpreted = os.environ.get(INTERPRETER_ENV) == "1"
    if dtype == torch.float32:
        return False, "ieee"
    return interpreted and dtype == torch.bfloat16, "ieee" if interpreted else "tf32"
