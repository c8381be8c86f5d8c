"""Runs the Triton kernels under the Triton interpreter, in a process of its own.

`TRITON_INTERPRET` is read once, when triton is imported, and is inherited by every
process started afterwards: setting it in the test process would turn the GPU kernels of
every later test (and of every server a test starts) into the interpreter. So the kernels
run here, in a spawned worker whose initializer sets the variable before triton is ever
imported; this module itself must not import triton or the kernels at top level.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from loraplex.runtime.kernels.configs import KernelConfig
from loraplex.runtime.kernels.segments import LoraSegments


def init() -> None:
    os.environ["TRITON_INTERPRET"] = "1"
    torch.set_num_threads(1)  # the interpreter is numpy; leave the other core to pytest


def interpreter_env() -> str | None:
    return os.environ.get("TRITON_INTERPRET")


def shrink(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    segment_lists: tuple[Sequence[int], Sequence[int]],
    ranks: torch.Tensor,
    config_fields: dict | None,
) -> torch.Tensor:
    from loraplex.runtime.kernels import sgmv

    config = KernelConfig(**config_fields) if config_fields else None
    segments = LoraSegments.from_lists(*segment_lists)
    return sgmv.sgmv_shrink(x, lora_a, segments, ranks, config=config)


def expand(
    y: torch.Tensor,
    v: torch.Tensor,
    lora_b: torch.Tensor,
    slice_offsets: Sequence[int],
    segment_lists: tuple[Sequence[int], Sequence[int]],
    ranks: torch.Tensor,
    config_fields: dict | None,
) -> torch.Tensor:
    from loraplex.runtime.kernels import sgmv

    config = KernelConfig(**config_fields) if config_fields else None
    segments = LoraSegments.from_lists(*segment_lists)
    sgmv.sgmv_expand(y, v, lora_b, slice_offsets, segments, ranks, config=config)
    return y


def lora_apply(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    slice_offsets: Sequence[int],
    segment_lists: tuple[Sequence[int], Sequence[int]],
    ranks: torch.Tensor,
) -> torch.Tensor:
    from loraplex.runtime.kernels import lora_apply as apply

    segments = LoraSegments.from_lists(*segment_lists)
    apply(y, x, lora_a, lora_b, slice_offsets, segments, ranks, backend="triton")
    return y


def lora_apply_fixed_tiles(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    slice_offsets: Sequence[int],
    row_slots: Sequence[int],
    ranks: torch.Tensor,
    num_sms: int,
    tile_order: Sequence[int] | None,
) -> torch.Tensor:
    """The launch a captured decode step makes: a fixed tile count, unused tiles slot -1.

    The unused tiles are given a row range, as stale tiles of an earlier step would have:
    only their slot -1 may make the kernels skip them.
    """
    from loraplex.runtime.kernels import lora_apply_tiles
    from loraplex.runtime.kernels.configs import FIXED_BLOCK_M, fixed_tile_configs
    from loraplex.runtime.kernels.segments import (
        NO_ADAPTER,
        KernelTiles,
        fixed_tile_lists,
        max_tiles,
    )

    num_rows, num_slots, num_slices, max_rank, d_in = len(row_slots), *lora_a.shape
    num_tiles = max_tiles(num_rows, num_slots, FIXED_BLOCK_M)
    rows, tiles = fixed_tile_lists(row_slots, FIXED_BLOCK_M, num_tiles)
    tile_info = torch.tensor(tiles, dtype=torch.int32).view(num_tiles, 3)
    unused = tile_info[:, 0] == NO_ADAPTER
    tile_info[unused, 2] = min(num_rows, FIXED_BLOCK_M)  # a stale row range: must be ignored
    if tile_order is not None:  # unused tiles between used ones
        tile_info = tile_info[list(tile_order)].contiguous()
    kernel_tiles = KernelTiles(torch.tensor(rows, dtype=torch.int32), tile_info, num_tiles)
    configs = fixed_tile_configs(num_rows, num_tiles, max_rank, d_in, num_slices, num_sms)
    lora_apply_tiles(y, x, lora_a, lora_b, slice_offsets, kernel_tiles, ranks, configs)
    return y


def paged_decode(query, key_cache, value_cache, block_tables, seq_lens, scale,
                 num_splits) -> torch.Tensor:
    from loraplex.runtime.kernels import paged_attention

    return paged_attention.paged_decode(query, key_cache, value_cache, block_tables, seq_lens,
                                        scale, num_splits=num_splits)


def paged_prefill(query, key_cache, value_cache, block_tables, query_starts, query_lens,
                  context_lens, max_query_len, scale) -> torch.Tensor:
    from loraplex.runtime.kernels import paged_attention

    out = torch.zeros_like(query)
    return paged_attention.paged_prefill(query, key_cache, value_cache, block_tables,
                                         query_starts, query_lens, context_lens,
                                         max_query_len, scale, out=out)


def fused_layer(name: str, *args) -> tuple[torch.Tensor, ...]:
    """Runs `fused_layers.<name>`; returns its result, or its in-place arguments."""
    from loraplex.runtime.kernels import fused_layers

    result = getattr(fused_layers, name)(*args)
    return (result,) if result is not None else args


def int4_matmul(x: torch.Tensor, packed: torch.Tensor, scales_and_zeros: torch.Tensor,
                group_size: int, config_fields: dict | None) -> torch.Tensor:
    from loraplex.runtime.kernels.int4_gemm import int4_matmul as matmul

    config = KernelConfig(**config_fields) if config_fields else None
    return matmul(x, packed, scales_and_zeros, group_size, config=config)


def codebook_matmul(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor,
                    codebook: torch.Tensor, group_size: int,
                    config_fields: dict | None) -> torch.Tensor:
    from loraplex.runtime.kernels.int4_gemm import codebook_matmul as matmul

    config = KernelConfig(**config_fields) if config_fields else None
    return matmul(x, packed, scales, codebook, group_size, config=config)


def codebook_layer(weight: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An NF4 weight built as a CUDA device builds it (the Triton kernel), applied to x;
    returns (output, its dequantized weight)."""
    from loraplex.runtime.layers.codebook import CodebookWeight

    nf4 = CodebookWeight.quantize_nf4(weight, kernel="triton")
    return nf4.linear(x), nf4.dequantize()


def int4_counters_left_set() -> int:
    """Arrival counters of split-K launches not back at zero (each launch must reset its own)."""
    from loraplex.runtime.kernels.int4_gemm import _arrival_counters

    return int(_arrival_counters(torch.device("cpu")).count_nonzero())


def int4_linear_with_lora(weight: torch.Tensor, group_size: int, output_sizes: tuple[int, ...],
                          x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
                          segment_lists: tuple[Sequence[int], Sequence[int]],
                          ranks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A fused projection serving an int4 weight through the Triton kernel, then LoRA on
    top as the model adds it; returns (output, the weight the layer's format describes)."""
    from loraplex.runtime.kernels import lora_apply
    from loraplex.runtime.layers.linear import MergedLinear
    from loraplex.runtime.layers.quantized import Int4Weight

    layer = MergedLinear(weight.shape[1], output_sizes, bias=False).to(weight.dtype)
    layer.use_quantized(Int4Weight.quantize(weight, group_size, kernel="triton"))
    layer.release_weight()
    y = layer(x)  # [T, d_out_total]
    segments = LoraSegments.from_lists(*segment_lists)
    lora_apply(y, x, lora_a, lora_b, layer.slice_offsets, segments, ranks, backend="triton")
    return y, layer.quantized.dequantize()
