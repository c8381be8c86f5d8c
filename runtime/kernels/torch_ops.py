"""The LoRA ops in plain torch: the engine's path without CUDA, and a readable reference.

Same contract as the Triton kernels in `sgmv.py`. On a CPU the cost is per-op overhead
(several microseconds per small matmul) plus reading the adapters' weights, so:

- `lora_apply` follows a plan built once per step (`torch_plan`): slots with many rows
  are computed one by one, one shrink matmul and one expand matmul per slice on views of
  the slot's own `[:rank]` weights, in place on contiguous rows; slots with a few rows
  each (decode) are computed as ranges of consecutive slots, a handful of batched ops per
  range that read the pools in place (never a gathered copy of the weights);
- a slot computed alone never reads past its rank: a rank-8 slot costs an eighth of a
  rank-64 (a range reads up to its largest rank, where the plan judged that cheaper);
- B is read along whichever dimension of the pool is contiguous: with a rank-major pool
  (`lora_b` a transposed view of [S, R, d_out_total]) a slot's `[:rank]` is one block;
- `lora_apply` goes straight from shrink to expand without the padded `[T, n, R]` buffer.

`sgmv_shrink` and `sgmv_expand` are the two halves on their own (the Triton contract),
grouping rows by slot with one gather and one scatter per call.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .checks import (
    check_expand_args,
    check_lora_args,
    check_rank_values,
    check_shrink_args,
)
from .segments import LoraSegments, RowGrouping
from .torch_plan import DirectSlot, SlotRange, torch_plan


def lora_apply(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    slice_offsets: Sequence[int],
    segments: LoraSegments,
    ranks: torch.Tensor,
    zero_padded: bool = False,
    host_ranks: Sequence[int] | None = None,
) -> None:
    """`y[rows of slot] += x @ A[slot].T @ B[slot].T` per slice, in place.

    `zero_padded`: the pools hold zeros past each slot's rank and only finite values, which
    lets decode slots be computed as ranges read in place (see `torch_plan`).
    `host_ranks`: `ranks` as the host knows them (else they are read from the device).
    """
    check_lora_args(y, x, lora_a, lora_b, slice_offsets, segments, ranks)
    if not segments.has_lora:
        return
    rank_list = list(host_ranks) if host_ranks is not None else ranks.tolist()
    check_rank_values([rank_list[slot] for slot in segments.slot_runs()], lora_a.shape[2])
    plan = torch_plan(segments, rank_list, zero_padded)
    bounds = slice_bounds(slice_offsets)
    for item in plan.direct:
        apply_direct(y, x, lora_a, lora_b, bounds, item)
    # row T of x_padded is the zero row the gathered ranges' padding reads
    x_padded = (torch.cat([x, x.new_zeros(1, x.shape[1])])
                if any(item.first_row is None for item in plan.ranges) else x)
    for item in plan.ranges:
        _apply_range(y, x_padded, lora_a, lora_b, bounds, item)


def apply_direct(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    bounds: Sequence[tuple[int, int]],
    item: DirectSlot,
) -> None:
    """One slot on its own: a shrink and an expand matmul on views of its `[:rank]`."""
    slot_a = lora_a[item.slot, :, : item.rank]  # [n_slices, rank, d_in]
    slot_b_t = lora_b[item.slot, :, : item.rank].t()  # [rank, d_out_total]
    if isinstance(item.rows, slice):
        _expand(y[item.rows], _shrink(x[item.rows], slot_a), slot_b_t, bounds)
    else:
        delta = y.new_zeros(item.rows.shape[0], y.shape[1])  # [m, d_out_total]
        _expand(delta, _shrink(x.index_select(0, item.rows), slot_a), slot_b_t, bounds)
        y.index_add_(0, item.rows, delta)


def sgmv_shrink(
    x: torch.Tensor, lora_a: torch.Tensor, segments: LoraSegments, ranks: torch.Tensor
) -> torch.Tensor:
    """`v[t, s, :rank] = x[t] @ A[slot, s, :rank].T`; zeros elsewhere. Returns fp32 [T, n, R]."""
    check_shrink_args(x, lora_a, segments, ranks)
    _, num_slices, max_rank, _ = lora_a.shape
    v = torch.zeros(x.shape[0], num_slices, max_rank, dtype=torch.float32, device=x.device)
    if not segments.has_lora:
        return v
    grouping = segments.row_grouping()
    group_ranks = _group_ranks(ranks, grouping, max_rank)
    permutation = grouping.permutation
    if permutation is None:
        x_grouped, v_grouped = x, v
    else:
        x_grouped = x.index_select(0, permutation)
        v_grouped = torch.zeros(permutation.shape[0], num_slices, max_rank,
                                dtype=torch.float32, device=x.device)
    for group, rank in zip(grouping.groups, group_ranks, strict=True):
        if rank == 0:
            continue
        rows = slice(group.start, group.end)
        shrunk = _shrink(x_grouped[rows], lora_a[group.slot, :, :rank])
        for index in range(num_slices):
            v_grouped[rows, index, :rank] = shrunk[index]
    if permutation is not None:
        v.index_copy_(0, permutation, v_grouped)
    return v


def sgmv_expand(
    y: torch.Tensor,
    v: torch.Tensor,
    lora_b: torch.Tensor,
    slice_offsets: Sequence[int],
    segments: LoraSegments,
    ranks: torch.Tensor,
) -> None:
    """`y[t, slice s] += v[t, s, :rank] @ B[slot, slice s, :rank].T`, in place."""
    check_expand_args(y, v, lora_b, slice_offsets, segments, ranks)
    if not segments.has_lora:
        return
    grouping = segments.row_grouping()
    group_ranks = _group_ranks(ranks, grouping, lora_b.shape[2])
    bounds = slice_bounds(slice_offsets)
    permutation = grouping.permutation
    if permutation is None:
        v_grouped, y_grouped = v, y
    else:
        v_grouped = v.index_select(0, permutation)  # [T_lora, n_slices, R]
        y_grouped = y.new_zeros(permutation.shape[0], y.shape[1])
    for group, rank in zip(grouping.groups, group_ranks, strict=True):
        if rank == 0:
            continue
        rows = slice(group.start, group.end)
        v_rows = v_grouped[rows, :, :rank].to(y.dtype)  # [m, n_slices, rank]
        _expand(y_grouped[rows], v_rows.unbind(1), lora_b[group.slot, :, :rank].t(), bounds)
    if permutation is not None:
        y.index_add_(0, permutation, y_grouped)


def _shrink(x_rows: torch.Tensor, slot_a: torch.Tensor) -> Sequence[torch.Tensor]:
    """x_rows [m, d_in], slot_a [n_slices, rank, d_in] -> per slice [m, rank]."""
    if slot_a.shape[0] == 1:
        return [torch.mm(x_rows, slot_a[0].t())]
    return torch.matmul(x_rows, slot_a.transpose(1, 2))  # [n_slices, m, rank]


def _expand(
    y_rows: torch.Tensor,
    v_slices: Sequence[torch.Tensor],
    slot_b_t: torch.Tensor,
    bounds: Sequence[tuple[int, int]],
) -> None:
    """y_rows[:, lo:hi] += v_slices[s] @ slot_b_t[:, lo:hi] for each slice s = (lo, hi).

    slot_b_t: [rank, d_out_total], a view of the slot's B.
    """
    if len(bounds) == 1:
        y_rows.addmm_(v_slices[0], slot_b_t)
        return
    for index, (lo, hi) in enumerate(bounds):
        if hi > lo:
            y_rows[:, lo:hi].addmm_(v_slices[index], slot_b_t[:, lo:hi])


def _apply_range(
    y: torch.Tensor,
    x_padded: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    bounds: Sequence[tuple[int, int]],
    item: SlotRange,
) -> None:
    """Slots lo:hi, m rows each, read in place from the pools in a few batched ops.

    x_padded: x [T, d_in], with the zero row T appended when some range gathers rows.
    """
    k, m, rank = item.num_slots, item.rows_per_slot, item.rank
    d_in, d_out = x_padded.shape[1], y.shape[1]
    slot_a = lora_a[item.lo:item.hi, :, :rank]  # [k, n_slices, rank, d_in], a view
    slot_b_t = lora_b[item.lo:item.hi, :, :rank].transpose(1, 2)  # [k, rank, d_out], a view
    if item.first_row is not None:
        rows = slice(item.first_row, item.first_row + k * m)
        v = torch.matmul(x_padded[rows].view(k, 1, m, d_in), slot_a.transpose(-1, -2))
        y_rows = y[rows].view(k, m, d_out)  # a view: added to in place
        for index, (lo, hi) in enumerate(bounds):
            if hi > lo:
                y_rows[:, :, lo:hi] += torch.bmm(v[:, index], slot_b_t[:, :, lo:hi])
        return
    x_rows = x_padded.index_select(0, item.source_rows).view(k, 1, m, d_in)
    v = torch.matmul(x_rows, slot_a.transpose(-1, -2))  # [k, n_slices, m, rank]
    delta = y.new_zeros(k, m, d_out)
    for index, (lo, hi) in enumerate(bounds):
        if hi > lo:
            delta[:, :, lo:hi] = torch.bmm(v[:, index], slot_b_t[:, :, lo:hi])
    y.index_add_(0, item.target_rows, delta.view(k * m, d_out))


def _group_ranks(ranks: torch.Tensor, grouping: RowGrouping, max_rank: int) -> list[int]:
    """The rank of each group's slot (one host read of `ranks` per call)."""
    rank_list = ranks.tolist()
    group_ranks = [rank_list[group.slot] for group in grouping.groups]
    check_rank_values(group_ranks, max_rank)
    return group_ranks


def slice_bounds(slice_offsets: Sequence[int]) -> list[tuple[int, int]]:
    offsets = list(slice_offsets)
    return list(zip(offsets, offsets[1:], strict=False))
