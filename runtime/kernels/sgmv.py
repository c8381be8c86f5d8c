"""Triton SGMV kernels: LoRA for a batch that mixes many adapters, in two launches.

`sgmv_shrink` computes `v = x @ A[slot].T` for every row and slice into an fp32 buffer;
`sgmv_expand` adds `v @ B[slot].T` into the base output, slice by slice. Design choices:

- Work items are tiles of up to BLOCK_M rows of one slot, built once per step from the
  segments (`LoraSegments.kernel_tiles`): rows are gathered through a slot-sorted index,
  so a slot's weights are read once per tile even when its rows are spread over the batch,
  and a long prefill segment does not leave idle programs behind short ones.
- Weights are gathered by integer slot index into the stacked pools, never through
  pointers loaded from memory (CUDA-graph safe, and runnable by the Triton interpreter).
- Each slot's real rank is loaded in the kernel: shrink programs whose rank block lies
  beyond it exit at once and expand loops stop at it, so small ranks cost less and the
  padded rows/columns of a slot (possibly garbage) are never read.
- Shrink splits d_in across programs when the batch is small (split-K) and reduces with
  fp32 atomics into an fp32 `v` (no bf16 atomics needed); expand needs no split (K = rank).
- Slices are fused: one shrink covers q/k/v (grid axis 2 = slice), one expand covers all
  slices, each slice writing its own column range `slice_offsets[s]:slice_offsets[s+1]`.
- The `*_tiles` launchers take a fixed-size tile list instead (unused tiles carry slot -1
  and exit at once), so their grid never depends on the batch: the decode step captured
  in a CUDA graph launches them on persistent tile buffers refilled every step.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from .checks import (
    check_expand_args,
    check_expand_tiles_args,
    check_shrink_args,
    check_shrink_tiles_args,
)
from .configs import KernelConfig, expand_config, num_sms, shrink_config
from .kernel_costs import report_expand, report_shrink
from .launch_costs import recording
from .segments import KernelTiles, LoraSegments

INTERPRETER_ENV = "TRITON_INTERPRET"


@triton.jit
def _sgmv_shrink_kernel(
    x_ptr,
    a_ptr,
    v_ptr,
    ranks_ptr,
    sorted_rows_ptr,
    tile_info_ptr,
    d_in,
    max_rank,
    k_per_split,
    stride_xm,
    stride_as,
    stride_asl,
    stride_ar,
    stride_vm,
    stride_vs,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_tile = tl.program_id(0)
    pid_n = tl.program_id(1) // SPLIT_K
    pid_k = tl.program_id(1) % SPLIT_K
    pid_slice = tl.program_id(2)

    slot = tl.load(tile_info_ptr + pid_tile * 3)
    if slot < 0:  # an unused tile of a fixed-size tile list
        return
    tile_start = tl.load(tile_info_ptr + pid_tile * 3 + 1)
    tile_end = tl.load(tile_info_ptr + pid_tile * 3 + 2)
    rank = tl.minimum(tl.load(ranks_ptr + slot), max_rank)
    if pid_n * BLOCK_N >= rank:
        return

    offs_m = tile_start + tl.arange(0, BLOCK_M)
    mask_m = offs_m < tile_end
    rows = tl.load(sorted_rows_ptr + offs_m, mask=mask_m, other=0).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < rank
    k_start = pid_k * k_per_split
    k_end = tl.minimum(k_start + k_per_split, d_in)
    offs_k = k_start + tl.arange(0, BLOCK_K)

    # x: [BLOCK_M, BLOCK_K] rows of the tile; A[slot, slice]: [BLOCK_K, BLOCK_N] (transposed)
    x_ptrs = x_ptr + rows[:, None] * stride_xm + offs_k[None, :]
    a_ptrs = (
        a_ptr
        + slot.to(tl.int64) * stride_as
        + pid_slice * stride_asl
        + offs_n[None, :] * stride_ar
        + offs_k[:, None]
    )
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(k_start, k_end, BLOCK_K):
        mask_k = offs_k < k_end - (k - k_start)
        x_tile = tl.load(x_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        a_tile = tl.load(a_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = tl.dot(x_tile, a_tile, acc, input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_K
        a_ptrs += BLOCK_K

    v_ptrs = v_ptr + rows[:, None] * stride_vm + pid_slice * stride_vs + offs_n[None, :]
    mask_v = mask_m[:, None] & mask_n[None, :]
    if SPLIT_K == 1:
        tl.store(v_ptrs, acc, mask=mask_v)
    else:
        tl.atomic_add(v_ptrs, acc, mask=mask_v)


@triton.jit
def _sgmv_expand_kernel(
    y_ptr,
    v_ptr,
    b_ptr,
    ranks_ptr,
    slice_offsets_ptr,
    sorted_rows_ptr,
    tile_info_ptr,
    max_rank,
    stride_ym,
    stride_vm,
    stride_vs,
    stride_bs,
    stride_bn,
    stride_bk,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_tile = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_slice = tl.program_id(2)

    col_start = tl.load(slice_offsets_ptr + pid_slice) + pid_n * BLOCK_N
    col_end = tl.load(slice_offsets_ptr + pid_slice + 1)
    if col_start >= col_end:
        return
    slot = tl.load(tile_info_ptr + pid_tile * 3)
    if slot < 0:  # an unused tile of a fixed-size tile list
        return
    tile_start = tl.load(tile_info_ptr + pid_tile * 3 + 1)
    tile_end = tl.load(tile_info_ptr + pid_tile * 3 + 2)
    rank = tl.minimum(tl.load(ranks_ptr + slot), max_rank)
    if rank <= 0:
        return

    offs_m = tile_start + tl.arange(0, BLOCK_M)
    mask_m = offs_m < tile_end
    rows = tl.load(sorted_rows_ptr + offs_m, mask=mask_m, other=0).to(tl.int64)
    offs_n = col_start + tl.arange(0, BLOCK_N)
    mask_n = offs_n < col_end
    offs_k = tl.arange(0, BLOCK_K)

    # v[rows, slice]: [BLOCK_M, BLOCK_K] fp32; B[slot, cols]: [BLOCK_K, BLOCK_N] (transposed)
    v_ptrs = v_ptr + rows[:, None] * stride_vm + pid_slice * stride_vs + offs_k[None, :]
    b_ptrs = (
        b_ptr
        + slot.to(tl.int64) * stride_bs
        + offs_n[None, :] * stride_bn
        + offs_k[:, None] * stride_bk
    )
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, rank, BLOCK_K):
        mask_k = offs_k < rank - k
        b_tile = tl.load(b_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        v_tile = tl.load(v_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        acc = tl.dot(v_tile.to(b_tile.dtype), b_tile, acc, input_precision=DOT_PRECISION)
        v_ptrs += BLOCK_K
        b_ptrs += BLOCK_K * stride_bk

    y_ptrs = y_ptr + rows[:, None] * stride_ym + offs_n[None, :]
    mask_y = mask_m[:, None] & mask_n[None, :]
    y_tile = tl.load(y_ptrs, mask=mask_y, other=0.0)
    tl.store(y_ptrs, (y_tile.to(tl.float32) + acc).to(y_tile.dtype), mask=mask_y)


def sgmv_shrink(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    segments: LoraSegments,
    ranks: torch.Tensor,
    *,
    config: KernelConfig | None = None,
) -> torch.Tensor:
    """v[t, s, :rank] = x[t] @ lora_a[slot, s, :rank].T -> fp32 [T, n_slices, R] (0 elsewhere).

    x: [T, d_in]; lora_a: [S, n_slices, R, d_in]; ranks: int32 [S].
    """
    check_shrink_args(x, lora_a, segments, ranks)
    _check_device(x)
    _, num_slices, max_rank, d_in = lora_a.shape
    if not segments.has_lora:
        return torch.zeros(x.shape[0], num_slices, max_rank, dtype=torch.float32,
                           device=x.device)
    if recording():
        report_shrink(x, lora_a, segments)
    if x.device.type == "meta":  # costed, not run (bench.step_model)
        return torch.empty(x.shape[0], num_slices, max_rank, dtype=torch.float32,
                           device=x.device)
    config = config or shrink_config(segments, max_rank, d_in, num_slices, num_sms(x.device))
    return _launch_shrink(x, lora_a, segments.kernel_tiles(config.block_m), ranks, config)


def sgmv_shrink_tiles(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    tiles: KernelTiles,
    ranks: torch.Tensor,
    config: KernelConfig,
) -> torch.Tensor:
    """`sgmv_shrink` over a fixed-size tile list whose unused tiles carry slot -1.

    The grid depends on `tiles.num_tiles` and `config` only, never on the tiles' values,
    so the launch can be captured in a CUDA graph and replayed after new tiles were
    copied into the same buffers. Tiles must hold at most `config.block_m` rows each.
    """
    check_shrink_tiles_args(x, lora_a, tiles, ranks)
    _check_device(x)
    return _launch_shrink(x, lora_a, tiles, ranks, config)


def sgmv_expand(
    y: torch.Tensor,
    v: torch.Tensor,
    lora_b: torch.Tensor,
    slice_offsets: Sequence[int],
    segments: LoraSegments,
    ranks: torch.Tensor,
    *,
    config: KernelConfig | None = None,
) -> None:
    """y[t, slice s] += v[t, s, :rank] @ lora_b[slot, slice s, :rank].T, in place.

    y: [T, d_out_total]; v: fp32 [T, n_slices, R]; lora_b: [S, d_out_total, R], contiguous
    or a transposed view of a rank-major [S, R, d_out_total] buffer (coalesced along
    d_out). Rows of slot -1 are left untouched.
    """
    check_expand_args(y, v, lora_b, slice_offsets, segments, ranks)
    _check_device(y)
    if not segments.has_lora:
        return
    if recording():
        report_expand(y, v, lora_b, segments)
    if y.device.type == "meta":  # costed, not run (bench.step_model)
        return
    config = config or expand_config(segments, v.shape[2], v.shape[1])
    _launch_expand(y, v, lora_b, slice_offsets, segments.kernel_tiles(config.block_m), ranks,
                   config)


def sgmv_expand_tiles(
    y: torch.Tensor,
    v: torch.Tensor,
    lora_b: torch.Tensor,
    slice_offsets: Sequence[int],
    tiles: KernelTiles,
    ranks: torch.Tensor,
    config: KernelConfig,
) -> None:
    """`sgmv_expand` over a fixed-size tile list (see `sgmv_shrink_tiles`)."""
    check_expand_tiles_args(y, v, lora_b, slice_offsets, tiles, ranks)
    _check_device(y)
    _launch_expand(y, v, lora_b, slice_offsets, tiles, ranks, config)


def _launch_shrink(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    tiles: KernelTiles,
    ranks: torch.Tensor,
    config: KernelConfig,
) -> torch.Tensor:
    _, num_slices, max_rank, d_in = lora_a.shape
    v = torch.zeros(x.shape[0], num_slices, max_rank, dtype=torch.float32, device=x.device)
    k_per_split = triton.cdiv(triton.cdiv(d_in, config.split_k), config.block_k) * config.block_k
    split_k = triton.cdiv(d_in, k_per_split)  # no empty splits
    grid = (tiles.num_tiles, triton.cdiv(max_rank, config.block_n) * split_k, num_slices)
    _sgmv_shrink_kernel[grid](
        x,
        lora_a,
        v,
        ranks,
        tiles.sorted_rows,
        tiles.tile_info,
        d_in,
        max_rank,
        k_per_split,
        x.stride(0),
        lora_a.stride(0),
        lora_a.stride(1),
        lora_a.stride(2),
        v.stride(0),
        v.stride(1),
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        SPLIT_K=split_k,
        DOT_PRECISION=_dot_precision(x.dtype),
        num_warps=config.num_warps,
        num_stages=config.num_stages,
        enable_fp_fusion=True,
    )
    return v


def _launch_expand(
    y: torch.Tensor,
    v: torch.Tensor,
    lora_b: torch.Tensor,
    slice_offsets: Sequence[int],
    tiles: KernelTiles,
    ranks: torch.Tensor,
    config: KernelConfig,
) -> None:
    num_slices, max_rank = v.shape[1], v.shape[2]
    offsets = tuple(int(offset) for offset in slice_offsets)
    max_width = max(b - a for a, b in zip(offsets, offsets[1:], strict=False))
    if max_width == 0:
        return
    grid = (tiles.num_tiles, triton.cdiv(max_width, config.block_n), num_slices)
    _sgmv_expand_kernel[grid](
        y,
        v,
        lora_b,
        ranks,
        _slice_offsets_tensor(offsets, y.device),
        tiles.sorted_rows,
        tiles.tile_info,
        max_rank,
        y.stride(0),
        v.stride(0),
        v.stride(1),
        lora_b.stride(0),
        lora_b.stride(1),
        lora_b.stride(2),
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        DOT_PRECISION=_dot_precision(y.dtype),
        num_warps=config.num_warps,
        num_stages=config.num_stages,
        enable_fp_fusion=True,
    )


def _check_device(tensor: torch.Tensor) -> None:
    if tensor.device.type not in ("cuda", "meta") and os.environ.get(INTERPRETER_ENV) != "1":
        raise ValueError(
            f"the triton backend needs CUDA tensors, got {tensor.device} "
            f"(or run under {INTERPRETER_ENV}=1)"
        )


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 batches are for exactness checks: no tf32 rounding there
    return "ieee" if dtype == torch.float32 else "tf32"


@functools.cache
def _slice_offsets_tensor(offsets: tuple[int, ...], device: torch.device) -> torch.Tensor:
    # a model has a handful of slice layouts: each is copied to the device once and kept
    # for good, since a captured CUDA graph holds on to the address it was given
    return torch.tensor(offsets, dtype=torch.int32, device=device)
