"""How the torch path splits a step's slots into batched and one-by-one work.

On a CPU, a small matmul costs several microseconds of Python and dispatch before any
arithmetic, so a decode batch of 32 adapters with two rows each spent most of its LoRA time
on overhead. Slots that share a rank and have few rows are therefore computed together:
their `[:rank]` weights are gathered with one `index_select` per pool (the padding past a
slot's rank is never read), their rows are gathered into a [k, m, d_in] block (a slot with
fewer than m rows reads a zero row instead), then one batched matmul per slice, and one
`index_add_` per slice back into y. Slots with many rows (prefill), or alone at their rank,
are computed one by one on views of the pools, with no copy at all.

The plan depends only on the segments and the slots' ranks, so it is built once per step
and cached on the segments object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .segments import LoraSegments

SMALL_ROWS = 8  # a slot with at most this many rows is batched with others of its rank


@dataclass(frozen=True)
class DirectSlot:
    """A slot computed on its own: rows are a run of the batch (`slice`) or row indices."""

    slot: int
    rank: int
    rows: slice | torch.Tensor  # int64 [m] when not one run


@dataclass(frozen=True)
class SlotBatch:
    """Slots of one rank with a few rows each, computed as one [k, m] batch."""

    rank: int
    num_slots: int  # k
    rows_per_slot: int  # m: the most rows of any of the k slots
    slots: torch.Tensor  # int64 [k]
    source_rows: torch.Tensor  # int64 [k*m] rows of x; num_rows = an extra zero row
    # int64 [k*m] rows of y; a padding position adds its exact zeros to its slot's first row
    target_rows: torch.Tensor


@dataclass(frozen=True)
class TorchPlan:
    direct: tuple[DirectSlot, ...]
    batches: tuple[SlotBatch, ...]


def torch_plan(segments: LoraSegments, rank_list: Sequence[int]) -> TorchPlan:
    """The plan for these segments and slot ranks (cached per rank layout)."""
    key = ("torch_plan", tuple(rank_list[slot] for slot in segments.slot_runs()))
    return segments.memo(key, lambda: _build_plan(segments, rank_list))


def _build_plan(segments: LoraSegments, rank_list: Sequence[int]) -> TorchPlan:
    device = segments.indptr.device
    direct: list[DirectSlot] = []
    small_by_rank: dict[int, list[tuple[int, list[int]]]] = {}
    for slot, rows in segments.slot_rows().items():
        rank = rank_list[slot]
        if rank == 0:
            continue
        if len(rows) <= SMALL_ROWS:
            small_by_rank.setdefault(rank, []).append((slot, rows))
        else:
            direct.append(DirectSlot(slot, rank, _row_spec(rows, device)))
    batches: list[SlotBatch] = []
    for rank, members in small_by_rank.items():
        if len(members) == 1:
            slot, rows = members[0]
            direct.append(DirectSlot(slot, rank, _row_spec(rows, device)))
            continue
        rows_per_slot = max(len(rows) for _, rows in members)
        source: list[int] = []
        target: list[int] = []
        for _, rows in members:
            padding = rows_per_slot - len(rows)
            source += rows + [segments.num_rows] * padding
            target += rows + [rows[0]] * padding
        slots = [slot for slot, _ in members]
        # one host->device copy for the three index lists
        packed = torch.tensor(source + target + slots, dtype=torch.int64).to(device)
        size = len(source)
        batches.append(
            SlotBatch(
                rank=rank,
                num_slots=len(members),
                rows_per_slot=rows_per_slot,
                slots=packed[2 * size :],
                source_rows=packed[:size],
                target_rows=packed[size : 2 * size],
            )
        )
    return TorchPlan(direct=tuple(direct), batches=tuple(batches))


def _row_spec(rows: list[int], device: torch.device) -> slice | torch.Tensor:
    if rows[-1] - rows[0] == len(rows) - 1:  # rows are sorted: this means one run
        return slice(rows[0], rows[-1] + 1)
    return torch.tensor(rows, dtype=torch.int64).to(device)
