"""The LoRA part of one forward pass: which rows use which slot, and the slot pool to read.

Built once per step by the model runner and carried in `ForwardBatch.lora` (None when no
row of the step has an adapter, so a base-only step does no LoRA work at all). The model
calls `apply(y, x, layer, group)` right after each projection group's base GEMM.

A group that none of the step's adapters targets (an adapter of q and v only touches no
MLP) is skipped for the whole step; for a group some adapters target, rows of the other
adapters are masked to "no adapter" so they cost nothing. Each group's `LoraSegments` is
built once per step and shared by every layer, so its row grouping and kernel plan are
computed once, not once per layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from loraplex.runtime.adapters.slots import DeviceSlotPool
from loraplex.runtime.adapters.target import GROUP_NAMES
from loraplex.runtime.kernels import (
    NO_ADAPTER,
    LoraSegments,
    cpu_lora,
    lora_apply,
    resolve_backend,
)


@dataclass(frozen=True, slots=True)
class LoraBatch:
    pool: DeviceSlotPool
    segments: dict[str, LoraSegments]  # per projection group some row's adapter targets
    slice_offsets: dict[str, tuple[int, ...]]
    backend: str
    host_ranks: tuple[int, ...]  # the pool's slot ranks at build time (no device read)
    native: dict[str, cpu_lora.BoundLora]  # groups the compiled CPU kernel runs, bound once

    @classmethod
    def build(cls, pool: DeviceSlotPool, row_slots: Sequence[int], backend: str,
              device: torch.device) -> LoraBatch | None:
        """From each row's slot (-1: no adapter); None when no row has an adapter."""
        slots = set(row_slots)
        slots.discard(NO_ADAPTER)
        if not slots:
            return None
        segments: dict[str, LoraSegments] = {}
        built: dict[frozenset[int], LoraSegments] = {}  # groups with the same slots share
        for group in GROUP_NAMES:
            targeting = frozenset(slot for slot in slots if group in pool.groups_host[slot])
            if not targeting:
                continue
            if targeting not in built:
                group_slots = [slot if slot in targeting else NO_ADAPTER for slot in row_slots]
                built[targeting] = LoraSegments.from_token_slots(group_slots, device)
            segments[group] = built[targeting]
        offsets = {group: pool.target.slice_offsets(group) for group in segments}
        native: dict[str, cpu_lora.BoundLora] = {}
        if resolve_backend(backend, device) == "cpu":
            for group, group_segments in segments.items():
                bound = cpu_lora.bind(pool.lora_a[group], pool.lora_b[group].transpose(2, 3),
                                      offsets[group], group_segments, pool.ranks,
                                      pool.ranks_host)
                if bound is not None:
                    native[group] = bound
        return cls(pool, segments, offsets, backend, tuple(pool.ranks_host), native)

    def apply(self, y: torch.Tensor, x: torch.Tensor, layer: int, group: str) -> None:
        """y [T, d_out_total] += each row's adapter delta of `group` for x [T, d_in]."""
        native = self.native.get(group)
        if native is not None:
            native.apply(y, x, layer)
            return
        segments = self.segments.get(group)
        if segments is None:
            return
        lora_a, lora_b = self.pool.group(layer, group)
        # the pool keeps zeros past each slot's rank and refuses non-finite adapters
        lora_apply(y, x, lora_a, lora_b, self.slice_offsets[group], segments, self.pool.ranks,
                   self.backend, zero_padded=True, host_ranks=self.host_ranks)

    def compiled_groups(self, groups: Sequence[str]) -> list[cpu_lora.BoundLora | None] | None:
        """For a compiled caller (`cpu_decoder`): each named group's bound kernel, None for a
        group no row's adapter targets; None in all where a targeted group is not on the
        kernel this step (another dtype, or a slot with rows for torch's matmuls)."""
        bound: list[cpu_lora.BoundLora | None] = []
        for group in groups:
            native = self.native.get(group)
            if group in self.segments and (native is None or native.plan.direct):
                return None
            bound.append(native if group in self.segments else None)
        return bound
