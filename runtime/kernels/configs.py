"""Tile sizes of the SGMV kernels, chosen per call from the batch's shape.

Kept apart from the kernels so that they can be read, tested and tuned without Triton.
The starting points are vLLM's tuned LoRA defaults (shrink: block_n 16, a long block_k
and split-K for small batches; expand: wide column blocks); they have not been tuned on
our GPUs yet (`bench/kernels.py` measures them).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .segments import LoraSegments

FIXED_BLOCK_M = 16  # rows per tile of fixed-size tile lists: decode rarely has more per slot


@dataclass(frozen=True)
class KernelConfig:
    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 2


def shrink_config(
    segments: LoraSegments, max_rank: int, d_in: int, num_slices: int, num_sms: int
) -> KernelConfig:
    """Tile sizes for the shrink (vLLM's defaults as a start: block_n 16, big block_k
    and split-K for small batches), with split-K sized to fill the GPU."""
    block_m = row_block(segments)
    num_tiles = segments.kernel_tiles(block_m).num_tiles
    return _shrink_config(block_m, num_tiles, segments.num_rows, max_rank, d_in, num_slices,
                          num_sms)


def expand_config(segments: LoraSegments, max_rank: int, num_slices: int) -> KernelConfig:
    """Tile sizes for the expand: wide column blocks, and up to 64 of the rank per step.

    Loads past a slot's rank are masked off and fetch nothing, so a rank block wider than
    the rank costs no bandwidth, while each row of B is read in one contiguous piece.
    """
    return _expand_config(row_block(segments), max_rank, num_slices)


def fixed_tile_configs(
    num_rows: int, num_tiles: int, max_rank: int, d_in: int, num_slices: int, num_sms: int
) -> tuple[KernelConfig, KernelConfig]:
    """(shrink, expand) tile sizes for a fixed-size tile list of FIXED_BLOCK_M-row tiles.

    Chosen from the buffer sizes alone (the rows per slot are unknown when a decode step
    is captured): split-K is sized as if every tile were used.
    """
    shrink = _shrink_config(FIXED_BLOCK_M, num_tiles, num_rows, max_rank, d_in, num_slices,
                            num_sms)
    return shrink, _expand_config(FIXED_BLOCK_M, max_rank, num_slices)


def _shrink_config(block_m: int, num_tiles: int, num_rows: int, max_rank: int, d_in: int,
                   num_slices: int, num_sms: int) -> KernelConfig:
    block_n = 16
    block_k = 256 if num_rows < 128 else 64
    num_ctas = num_tiles * num_slices * _cdiv(max_rank, block_n)
    # a power of two, so that few kernel variants get compiled across batch shapes
    wanted = _next_power_of_2(_cdiv(4 * num_sms, num_ctas))
    split_k = max(1, min(wanted, _cdiv(d_in, block_k), 64))
    return KernelConfig(block_m=block_m, block_n=block_n, block_k=block_k, split_k=split_k)


def _expand_config(block_m: int, max_rank: int, num_slices: int) -> KernelConfig:
    block_n = 128 if num_slices == 1 else 64
    block_k = min(64, max(16, _next_power_of_2(max_rank)))
    return KernelConfig(block_m=block_m, block_n=block_n, block_k=block_k)


def row_block(segments: LoraSegments) -> int:
    """Rows per tile: enough for the busiest slot, 16..64 (16 is the smallest dot tile)."""
    return min(64, max(16, _next_power_of_2(segments.max_rows_per_slot)))


@functools.lru_cache(maxsize=16)
def num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def int4_gemm_config(num_rows: int, d_out: int, d_in: int, num_sms: int) -> KernelConfig:
    """Tile sizes of the int4 dequantize-GEMM for a [num_rows, d_in] @ [d_in, d_out] product.

    Decode (up to 64 rows) is bound by reading the 4-bit weight: one row tile, 64-column
    blocks, a long block_k (128 inputs: 64 bytes of each weight row) and split-K until about
    two programs per SM are in flight. Prefill is bound by the dot: 128 x 128 tiles over
    64 inputs, 8 warps. block_k is a power of two dividing d_in, so (the group size being
    one too) a tile's columns span whole groups or lie inside one.
    """
    if num_rows <= 64:
        block_m = max(16, _next_power_of_2(num_rows))
        block_n, block_k, num_warps, num_stages = 64, 128, 4, 3
    else:
        block_m = 64 if num_rows <= 128 else 128
        block_n, block_k, num_warps, num_stages = 128, 64, 8, 3
    while d_in % block_k:  # d_in is a multiple of the group size: stops at it at the latest
        block_k //= 2
    programs = max(1, _cdiv(num_rows, block_m) * _cdiv(d_out, block_n))
    wanted = _next_power_of_2(_cdiv(2 * num_sms, programs))
    split_k = max(1, min(wanted, d_in // block_k, 16))
    return KernelConfig(block_m=block_m, block_n=block_n, block_k=block_k, split_k=split_k,
                        num_warps=num_warps, num_stages=num_stages)
