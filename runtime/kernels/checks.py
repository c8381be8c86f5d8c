"""Argument checks shared by the Triton launchers and the torch ops.

A wrong shape that reaches a kernel reads out of bounds or silently computes garbage, so
every public op checks its arguments first and raises a `ValueError` naming the argument.
Checks read only shapes, dtypes and the host-side segment lists: they never synchronise
with the device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .segments import KernelTiles, LoraSegments

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_shrink_args(
    x: torch.Tensor, lora_a: torch.Tensor, segments: LoraSegments, ranks: torch.Tensor
) -> None:
    _check_shrink_operands(x, lora_a, ranks)
    _check_segments("lora_a", lora_a, segments, num_rows=x.shape[0], device=x.device)


def check_shrink_tiles_args(
    x: torch.Tensor, lora_a: torch.Tensor, tiles: KernelTiles, ranks: torch.Tensor
) -> None:
    _check_shrink_operands(x, lora_a, ranks)
    _check_tiles(tiles, num_rows=x.shape[0], device=x.device)


def _check_shrink_operands(x: torch.Tensor, lora_a: torch.Tensor, ranks: torch.Tensor) -> None:
    _check_matrix("x", x)
    if lora_a.dim() != 4:
        raise ValueError(f"lora_a must be [S, n_slices, R, d_in], got shape {tuple(lora_a.shape)}")
    if lora_a.shape[3] != x.shape[1]:
        raise ValueError(f"lora_a has d_in {lora_a.shape[3]} but x has {x.shape[1]} columns")
    if lora_a.shape[1] < 1 or lora_a.shape[2] < 1:
        raise ValueError(f"lora_a needs at least one slice and rank 1, got {tuple(lora_a.shape)}")
    _check_same("lora_a", lora_a, "x", x)
    if not lora_a.is_contiguous():
        raise ValueError("lora_a must be contiguous")
    _check_ranks("lora_a", lora_a, ranks, device=x.device)


def check_expand_args(
    y: torch.Tensor,
    v: torch.Tensor,
    lora_b: torch.Tensor,
    slice_offsets: Sequence[int],
    segments: LoraSegments,
    ranks: torch.Tensor,
) -> None:
    _check_v_dim(v)
    _check_expand_target(y, lora_b, slice_offsets, segments, ranks, num_slices=v.shape[1])
    _check_v_matches(y, v, lora_b)


def check_expand_tiles_args(
    y: torch.Tensor,
    v: torch.Tensor,
    lora_b: torch.Tensor,
    slice_offsets: Sequence[int],
    tiles: KernelTiles,
    ranks: torch.Tensor,
) -> None:
    _check_v_dim(v)
    _check_expand_operands(y, lora_b, slice_offsets, ranks, num_slices=v.shape[1])
    _check_tiles(tiles, num_rows=y.shape[0], device=y.device)
    _check_v_matches(y, v, lora_b)


def _check_v_dim(v: torch.Tensor) -> None:
    if v.dim() != 3:
        raise ValueError(f"v must be [T, n_slices, R], got shape {tuple(v.shape)}")


def _check_v_matches(y: torch.Tensor, v: torch.Tensor, lora_b: torch.Tensor) -> None:
    if v.shape[0] != y.shape[0] or v.shape[2] != lora_b.shape[2]:
        raise ValueError(
            f"v must be [T={y.shape[0]}, n_slices, R={lora_b.shape[2]}], got {tuple(v.shape)}"
        )
    if v.dtype != torch.float32 or v.device != y.device or not v.is_contiguous():
        raise ValueError(
            f"v must be a contiguous float32 tensor on {y.device}, got {v.dtype} on {v.device}"
        )


def check_lora_args(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    slice_offsets: Sequence[int],
    segments: LoraSegments,
    ranks: torch.Tensor,
) -> None:
    check_shrink_args(x, lora_a, segments, ranks)
    _check_expand_target(y, lora_b, slice_offsets, segments, ranks, num_slices=lora_a.shape[1])
    if lora_b.shape[2] != lora_a.shape[2]:
        raise ValueError(f"lora_a has rank R={lora_a.shape[2]} but lora_b has {lora_b.shape[2]}")
    _check_same("y", y, "x", x)


def check_slice_offsets(slice_offsets: Sequence[int], num_slices: int, d_out_total: int) -> None:
    offsets = list(slice_offsets)
    if len(offsets) != num_slices + 1:
        raise ValueError(
            f"slice_offsets needs {num_slices + 1} entries for {num_slices} slices, got {offsets}"
        )
    if offsets[0] != 0 or offsets[-1] != d_out_total:
        raise ValueError(f"slice_offsets must run from 0 to d_out_total={d_out_total}: {offsets}")
    if any(b < a for a, b in zip(offsets, offsets[1:], strict=False)):
        raise ValueError(f"slice_offsets must not decrease: {offsets}")


def check_rank_values(rank_list: Sequence[int], max_rank: int) -> None:
    """Host-side check of the ranks (only where they are on the host anyway)."""
    bad = [rank for rank in rank_list if not 0 <= rank <= max_rank]
    if bad:
        raise ValueError(f"ranks must be in [0, R={max_rank}], got {bad}")


def _check_expand_target(
    y: torch.Tensor,
    lora_b: torch.Tensor,
    slice_offsets: Sequence[int],
    segments: LoraSegments,
    ranks: torch.Tensor,
    num_slices: int,
) -> None:
    _check_expand_operands(y, lora_b, slice_offsets, ranks, num_slices)
    _check_segments("lora_b", lora_b, segments, num_rows=y.shape[0], device=y.device)


def _check_expand_operands(
    y: torch.Tensor,
    lora_b: torch.Tensor,
    slice_offsets: Sequence[int],
    ranks: torch.Tensor,
    num_slices: int,
) -> None:
    _check_matrix("y", y)
    if lora_b.dim() != 3:
        raise ValueError(f"lora_b must be [S, d_out_total, R], got shape {tuple(lora_b.shape)}")
    if lora_b.shape[1] != y.shape[1]:
        raise ValueError(f"lora_b has d_out_total {lora_b.shape[1]} but y has {y.shape[1]}")
    _check_same("lora_b", lora_b, "y", y)
    if not (lora_b.is_contiguous() or is_rank_major(lora_b)):
        raise ValueError(
            "lora_b must be contiguous, or a transposed view of a contiguous [S, R, d_out_total]"
        )
    _check_ranks("lora_b", lora_b, ranks, device=y.device)
    check_slice_offsets(slice_offsets, num_slices=num_slices, d_out_total=y.shape[1])


def is_rank_major(lora_b: torch.Tensor) -> bool:
    """Whether lora_b [S, d_out_total, R] is a view of a contiguous [S, R, d_out_total]."""
    return lora_b.dim() == 3 and lora_b.transpose(1, 2).is_contiguous()


def _check_matrix(name: str, tensor: torch.Tensor) -> None:
    if tensor.dim() != 2:
        raise ValueError(f"{name} must be 2-D [T, features], got shape {tuple(tensor.shape)}")
    if tensor.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float16, bfloat16 or float32, got {tensor.dtype}")
    if tensor.shape[1] > 1 and tensor.stride(1) != 1:
        raise ValueError(f"{name} must have contiguous rows (stride 1 along features)")


def _check_same(name: str, tensor: torch.Tensor, other_name: str, other: torch.Tensor) -> None:
    if tensor.dtype != other.dtype:
        raise ValueError(f"{name} is {tensor.dtype} but {other_name} is {other.dtype}")
    if tensor.device != other.device:
        raise ValueError(f"{name} is on {tensor.device} but {other_name} is on {other.device}")


def _check_ranks(name: str, pool: torch.Tensor, ranks: torch.Tensor,
                 device: torch.device) -> None:
    num_slots = pool.shape[0]
    if ranks.dim() != 1 or ranks.dtype != torch.int32:
        raise ValueError(f"ranks must be int32 [S], got {ranks.dtype} {tuple(ranks.shape)}")
    if ranks.shape[0] != num_slots:
        raise ValueError(f"{name} has {num_slots} slots but ranks has {ranks.shape[0]}")
    if ranks.device != device or not ranks.is_contiguous():
        raise ValueError(f"ranks must be a contiguous tensor on {device}, got {ranks.device}")


def _check_segments(name: str, pool: torch.Tensor, segments: LoraSegments, num_rows: int,
                    device: torch.device) -> None:
    if segments.num_rows != num_rows:
        raise ValueError(f"segments cover {segments.num_rows} rows but the batch has {num_rows}")
    if segments.indptr.device != device:
        raise ValueError(f"segments are on {segments.indptr.device} but the batch is on {device}")
    if segments.max_slot >= pool.shape[0]:
        raise ValueError(
            f"segments use slot {segments.max_slot} but {name} has {pool.shape[0]} slots"
        )


def _check_tiles(tiles: KernelTiles, num_rows: int, device: torch.device) -> None:
    """Shapes only: the tiles' values live on the device (reading them would sync)."""
    rows, info = tiles.sorted_rows, tiles.tile_info
    if rows.dim() != 1 or rows.dtype != torch.int32 or rows.shape[0] > num_rows:
        raise ValueError(f"sorted_rows must be int32 [<= {num_rows}], got {rows.dtype} "
                         f"{tuple(rows.shape)}")
    if info.dtype != torch.int32 or tuple(info.shape) != (tiles.num_tiles, 3):
        raise ValueError(f"tile_info must be int32 [num_tiles={tiles.num_tiles}, 3], got "
                         f"{info.dtype} {tuple(info.shape)}")
    if not (rows.is_contiguous() and info.is_contiguous()):
        raise ValueError("sorted_rows and tile_info must be contiguous")
    if rows.device != device or info.device != device:
        raise ValueError(f"tiles are on {rows.device} but the batch is on {device}")
