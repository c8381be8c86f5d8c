"""The fp64 oracle: LoRA applied one row at a time, straight from the definition.

Deliberately naive (a loop over rows and slices, no grouping, no views of the pools
beyond each slot's own `[:rank]`), so that it shares no code or trick with the paths under
test.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def shrink_ref(
    x: torch.Tensor, lora_a: torch.Tensor, token_slots: Sequence[int], ranks: Sequence[int]
) -> torch.Tensor:
    """fp64 [T, n_slices, R]: x[t] @ A[slot, s, :rank].T, zeros elsewhere."""
    num_slices, max_rank = lora_a.shape[1], lora_a.shape[2]
    v = torch.zeros(x.shape[0], num_slices, max_rank, dtype=torch.float64, device=x.device)
    for row, slot in enumerate(token_slots):
        if slot < 0:
            continue
        rank = ranks[slot]
        for s in range(num_slices):
            v[row, s, :rank] = lora_a[slot, s, :rank].double() @ x[row].double()
    return v


def expand_ref(
    y: torch.Tensor,
    v: torch.Tensor,
    lora_b: torch.Tensor,
    slice_offsets: Sequence[int],
    token_slots: Sequence[int],
    ranks: Sequence[int],
) -> torch.Tensor:
    """fp64 copy of y with y[t, slice s] += v[t, s, :rank] @ B[slot, slice s, :rank].T."""
    out = y.double().clone()
    for row, slot in enumerate(token_slots):
        if slot < 0:
            continue
        rank = ranks[slot]
        for s, (lo, hi) in enumerate(zip(slice_offsets, slice_offsets[1:], strict=False)):
            out[row, lo:hi] += lora_b[slot, lo:hi, :rank].double() @ v[row, s, :rank].double()
    return out


def lora_ref(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    slice_offsets: Sequence[int],
    token_slots: Sequence[int],
    ranks: Sequence[int],
) -> torch.Tensor:
    v = shrink_ref(x, lora_a, token_slots, ranks)
    return expand_ref(y, v, lora_b, slice_offsets, token_slots, ranks)
