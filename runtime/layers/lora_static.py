"""The LoRA part of a captured decode step: fixed-size kernel tiles in persistent buffers.

The eager `LoraBatch` cuts each step's rows into kernel tiles on the host and the Triton
launchers size their grids from the tile count; a CUDA graph can do neither. Here every
projection group owns, for a bucket of B rows, `sorted_rows` int32 [B] and `tile_info`
int32 [max_tiles(B), 3] at fixed addresses of one persistent buffer. Each step refills
them (unused tiles carry slot -1, on which the kernels exit at once) and the graph's
launches, sized by the bucket alone, read them. A group that no row's adapter targets
gets only unused tiles, as do the rows of adapters that do not target it.

The weights are read by slot index from the slot pool's stacked buffers and `ranks`.
`DeviceSlotPool` allocates those once, when it is built, and afterwards only writes into
them in place (`write` and `clear` copy into or zero slices, ranks are set per element),
so a graph captured once sees every adapter loaded into a slot later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from loraplex.runtime.adapters.slots import DeviceSlotPool
from loraplex.runtime.adapters.target import GROUP_NAMES
from loraplex.runtime.kernels import NO_ADAPTER, lora_apply_tiles
from loraplex.runtime.kernels.configs import (
    FIXED_BLOCK_M,
    KernelConfig,
    fixed_tile_configs,
    num_sms,
)
from loraplex.runtime.kernels.segments import KernelTiles, fixed_tile_lists, max_tiles
from loraplex.runtime.layers.static_buffer import StaticBuffer


@dataclass(frozen=True, slots=True)
class GroupTiles:
    tiles: KernelTiles  # views into the persistent buffer
    configs: tuple[KernelConfig, KernelConfig]  # (shrink, expand)
    slice_offsets: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class StaticLoraBatch:
    """`ForwardBatch.lora` of a captured decode step (Triton kernels on fixed tiles)."""

    pool: DeviceSlotPool
    groups: dict[str, GroupTiles]

    def apply(self, y: torch.Tensor, x: torch.Tensor, layer: int, group: str) -> None:
        """y [B, d_out_total] += each row's adapter delta of `group` for x [B, d_in]."""
        tiles = self.groups[group]
        lora_a, lora_b = self.pool.group(layer, group)
        lora_apply_tiles(y, x, lora_a, lora_b, tiles.slice_offsets, tiles.tiles,
                         self.pool.ranks, tiles.configs)

    def compiled_groups(self, groups: Sequence[str]) -> None:
        """None: a captured step's LoRA is its tiles' Triton launches, not the compiled CPU
        layers' kernel (`LoraBatch.compiled_groups`), so its layers run one by one."""
        return None


class StaticLoraTiles:
    """The persistent tile buffer of every projection group, for up to `max_rows` rows.

    For a bucket of B rows the buffer starts with, per group in `GROUP_NAMES` order,
    sorted_rows [B] then tile_info [max_tiles(B) * 3], so one copy refills a step.
    """

    def __init__(self, pool: DeviceSlotPool, max_rows: int) -> None:
        self.pool = pool
        self.buffer = StaticBuffer(len(GROUP_NAMES) * self._group_size(max_rows),
                                   torch.int32, pool.device)

    def batch(self, num_rows: int) -> StaticLoraBatch:
        """The views a bucket of `num_rows` rows reads (the same tensors every call)."""
        num_tiles = self._num_tiles(num_rows)
        target = self.pool.target
        groups: dict[str, GroupTiles] = {}
        for index, name in enumerate(GROUP_NAMES):
            start = index * self._group_size(num_rows)
            sorted_rows = self.buffer.data[start:start + num_rows]
            tile_info = self.buffer.data[start + num_rows:start + self._group_size(num_rows)]
            shape = target.group(name)
            configs = fixed_tile_configs(num_rows, num_tiles, self.pool.max_rank, shape.d_in,
                                         shape.num_slices, num_sms(self.pool.device))
            groups[name] = GroupTiles(KernelTiles(sorted_rows, tile_info.view(num_tiles, 3),
                                                  num_tiles),
                                      configs, target.slice_offsets(name))
        return StaticLoraBatch(self.pool, groups)

    def fill(self, row_slots: Sequence[int], num_rows: int) -> None:
        """Tiles of a step whose rows use `row_slots` (-1: none), padded to `num_rows`."""
        padded = [*row_slots, *[NO_ADAPTER] * (num_rows - len(row_slots))]
        num_tiles = self._num_tiles(num_rows)
        values: list[int] = []
        for name in GROUP_NAMES:
            group_slots = [slot if slot != NO_ADAPTER and name in self.pool.groups_host[slot]
                           else NO_ADAPTER for slot in padded]
            rows, tiles = fixed_tile_lists(group_slots, FIXED_BLOCK_M, num_tiles)
            values += rows
            values += tiles
        self.buffer.fill(values)

    def _num_tiles(self, num_rows: int) -> int:
        return max_tiles(num_rows, self.pool.num_slots, FIXED_BLOCK_M)

    def _group_size(self, num_rows: int) -> int:
        return num_rows + 3 * self._num_tiles(num_rows)
