"""Random LoRA problems for the kernel tests: pools, ranks, segments and a batch.

Every slot's padded region (`[rank:]` rows of A, columns of B) and every slot no row uses
is filled with garbage (NaN and 1e30), so a kernel that reads past a slot's rank turns the
result into NaN/inf instead of passing by luck. A `zero_padded` problem is a pool as
`DeviceSlotPool` keeps it instead: zeros past each slot's rank, and the slots no row uses
hold another adapter's (finite) weights that must not leak into any row.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from loraplex.runtime.kernels.segments import LoraSegments

GARBAGE = (float("nan"), 1e30)


@dataclass
class LoraProblem:
    x: torch.Tensor  # [T, d_in]
    y: torch.Tensor  # [T, d_out_total]
    lora_a: torch.Tensor  # [S, n_slices, R, d_in]
    lora_b: torch.Tensor  # [S, d_out_total, R]
    ranks: torch.Tensor  # int32 [S]
    slice_offsets: list[int]
    indptr: list[int]
    slots: list[int]

    @property
    def rank_list(self) -> list[int]:
        return self.ranks.tolist()

    @property
    def token_slots(self) -> list[int]:
        per_row: list[int] = []
        for slot, start, end in zip(self.slots, self.indptr, self.indptr[1:], strict=False):
            per_row += [slot] * (end - start)
        return per_row

    def segments(self, device: torch.device | str = "cpu") -> LoraSegments:
        return LoraSegments.from_lists(self.indptr, self.slots, device)


def make_problem(
    *,
    d_in: int,
    slice_widths: list[int],
    ranks: list[int],
    max_rank: int,
    indptr: list[int],
    slots: list[int],
    dtype: torch.dtype,
    seed: int = 0,
    device: torch.device | str = "cpu",
    zero_padded: bool = False,
) -> LoraProblem:
    """Unit-scale activations and weights: v and the LoRA delta are O(1)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    num_rows, num_slots, num_slices = indptr[-1], len(ranks), len(slice_widths)
    d_out_total = sum(slice_widths)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, device=device)

    lora_a = randn(num_slots, num_slices, max_rank, d_in) / d_in**0.5
    lora_b = randn(num_slots, d_out_total, max_rank)
    for slot, rank in enumerate(ranks):
        lora_b[slot] /= max(rank, 1) ** 0.5
    used = {slot for slot in slots if slot >= 0}
    for slot, rank in enumerate(ranks):
        if zero_padded:
            lora_a[slot, :, rank:] = 0.0
            lora_b[slot, :, rank:] = 0.0
            continue
        rank = rank if slot in used else 0
        # NaN past the rank in A for even slots, in B for odd ones: a kernel that reads
        # either past the rank fails, even where it multiplies what it read by zero
        lora_a[slot, :, rank:] = GARBAGE[slot % 2]
        lora_b[slot, :, rank:] = GARBAGE[(slot + 1) % 2]
    return LoraProblem(
        x=randn(num_rows, d_in).to(dtype),
        y=randn(num_rows, d_out_total).to(dtype),
        lora_a=lora_a.to(dtype),
        lora_b=lora_b.to(dtype),
        ranks=torch.tensor(ranks, dtype=torch.int32, device=device),
        slice_offsets=[0, *itertools.accumulate(slice_widths)],
        indptr=list(indptr),
        slots=list(slots),
    )


def segments_of(token_slots: list[int]) -> tuple[list[int], list[int]]:
    """(indptr, slots) of a per-row slot list, run-length-encoded."""
    indptr, slots = [0], []
    for slot, run in itertools.groupby(token_slots):
        indptr.append(indptr[-1] + len(list(run)))
        slots.append(slot)
    return indptr, slots
