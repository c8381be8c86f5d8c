"""How the torch path splits a step's slots into ranges read in place and one-by-one work.

On a CPU, the LoRA of a decode batch is bound by reading the adapters' weights: 32
adapters of rank 8-16 are as many bytes per layer as the base layer of a 135M model, while
their arithmetic is tiny. Gathering the slots' weights into a batch first (one
`index_select`) writes and reads them a second and third time. So slots with a few rows
each are computed as *ranges* of consecutive slots: `lora_a[lo:hi, :, :rank]` and the
matching block of B are strided views of the pool that one batched matmul reads in place,
at the largest rank of the range (the pool holds zeros past each slot's rank, so reading
further is exact). A range may contain slots with no rows in this step (their rows read a
zero row, so they add exact zeros); the plan merges neighbouring slots into a range only
while the bytes read for padding and holes cost less than one more range's fixed
overhead. When each slot of a range owns exactly `m` consecutive rows of the batch (the
model runner orders decode rows by slot, so a steady decode batch does), its rows are a
view too and nothing is gathered at all.

Slots with many rows (prefill) are computed one by one on views of the pools. The plan
depends only on the segments and the slots' ranks, so it is built once per step and
cached on the segments object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .segments import LoraSegments

SMALL_ROWS = 8  # a slot with at most this many rows is computed within a range
# fixed cost of one more range, in slot-rank units of weights read (a rank-64 slot is 64)
RANGE_OVERHEAD = 64


@dataclass(frozen=True)
class DirectSlot:
    """A slot computed on its own: rows are a run of the batch (`slice`) or row indices."""

    slot: int
    rank: int
    rows: slice | torch.Tensor  # int64 [m] when not one run


@dataclass(frozen=True)
class SlotRange:
    """Slots `lo:hi` at one rank, `m` rows each, computed as one [hi - lo, m] batch."""

    lo: int
    hi: int
    rank: int  # the largest rank of the range's slots
    rows_per_slot: int  # m
    # first batch row when slot lo + i owns rows first_row + i*m ... + m - 1: no gather
    first_row: int | None
    # else: int64 [k*m] rows of x (num_rows = the zero row) and rows of y to add to (a
    # padding position adds its exact zeros to a real row)
    source_rows: torch.Tensor | None
    target_rows: torch.Tensor | None

    @property
    def num_slots(self) -> int:
        return self.hi - self.lo


@dataclass(frozen=True)
class TorchPlan:
    direct: tuple[DirectSlot, ...]
    ranges: tuple[SlotRange, ...]


def torch_plan(segments: LoraSegments, rank_list: Sequence[int], zero_padded: bool) -> TorchPlan:
    """The plan for these segments and slot ranks (cached per rank layout).

    Ranges read past slots' ranks and read slots no row uses, so they are formed only for
    a `zero_padded` pool: zeros past each slot's rank and finite values everywhere (the
    `DeviceSlotPool` keeps both); otherwise every slot is computed alone.
    """
    key = ("torch_plan", zero_padded, tuple(rank_list[slot] for slot in segments.slot_runs()))
    return segments.memo(key, lambda: _build_plan(segments, rank_list, zero_padded))


def _build_plan(segments: LoraSegments, rank_list: Sequence[int],
                zero_padded: bool) -> TorchPlan:
    device = segments.indptr.device
    direct: list[DirectSlot] = []
    small: dict[int, list[int]] = {}
    for slot, rows in segments.slot_rows().items():
        rank = rank_list[slot]
        if rank == 0:
            continue
        if zero_padded and len(rows) <= SMALL_ROWS:
            small[slot] = rows
        else:
            direct.append(DirectSlot(slot, rank, row_spec(rows, device)))
    ranges: list[SlotRange] = []
    for members in _split_into_ranges(sorted(small), rank_list):
        if len(members) == 1:
            slot = members[0]
            direct.append(DirectSlot(slot, rank_list[slot], row_spec(small[slot], device)))
        else:
            ranges.append(_slot_range(members, small, rank_list, segments.num_rows, device))
    return TorchPlan(direct=tuple(direct), ranges=tuple(ranges))


def _split_into_ranges(slots: list[int], rank_list: Sequence[int]) -> list[list[int]]:
    """Greedy: extend the current range while that reads less than starting a new one."""
    ranges: list[list[int]] = []
    current_rank = 0  # the largest rank of ranges[-1]
    for slot in slots:
        rank = rank_list[slot]
        if ranges:
            current = ranges[-1]
            lo, last = current[0], current[-1]
            merged = (slot - lo + 1) * max(current_rank, rank)
            separate = (last - lo + 1) * current_rank + rank + RANGE_OVERHEAD
            if merged <= separate:
                current.append(slot)
                current_rank = max(current_rank, rank)
                continue
        ranges.append([slot])
        current_rank = rank
    return ranges


def _slot_range(members: list[int], rows_of: dict[int, list[int]], rank_list: Sequence[int],
                num_rows: int, device: torch.device) -> SlotRange:
    lo, hi = members[0], members[-1] + 1
    rank = max(rank_list[slot] for slot in members)
    m = max(len(rows_of[slot]) for slot in members)
    first = rows_of[lo][0]
    in_place = len(members) == hi - lo and all(
        rows_of[slot] == list(range(first + (slot - lo) * m, first + (slot - lo + 1) * m))
        for slot in members)
    if in_place:
        return SlotRange(lo, hi, rank, m, first, None, None)
    source: list[int] = []
    target: list[int] = []
    for slot in range(lo, hi):
        rows = rows_of.get(slot, [])
        padding = m - len(rows)
        source += rows + [num_rows] * padding
        target += rows + [first] * padding
    packed = torch.tensor(source + target, dtype=torch.int64).to(device)  # one copy
    size = len(source)
    return SlotRange(lo, hi, rank, m, None, packed[:size], packed[size:])


def row_spec(rows: list[int], device: torch.device) -> slice | torch.Tensor:
    if rows[-1] - rows[0] == len(rows) - 1:  # rows are sorted: this means one run
        return slice(rows[0], rows[-1] + 1)
    return torch.tensor(rows, dtype=torch.int64).to(device)
