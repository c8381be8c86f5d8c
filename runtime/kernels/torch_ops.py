"""The LoRA ops in plain torch: the engine's path without CUDA, and a readable reference.

Same contract as the Triton kernels in `sgmv.py`. On a CPU the cost of many small matmuls
is dominated by per-op overhead and by reading the adapters' weights, so this path does
as little per call as it can:

- rows are grouped by slot once per step (`LoraSegments.row_grouping`, cached), so each
  distinct slot costs one shrink matmul and one expand matmul per slice, whatever the
  order of the rows; rows of one slot spread over the batch (decode) are gathered once
  and scattered back once per call (`index_select` / `index_add_`), not per segment;
- every matmul works on views of the slot's own `[:rank]` rows/columns, so padded ranks
  are neither read nor computed, and a rank-8 slot costs an eighth of a rank-64 one;
- `lora_apply` goes straight from shrink to expand per slot without materialising the
  padded `[T, n_slices, R]` intermediate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .checks import check_expand_args, check_lora_args, check_rank_values, check_shrink_args
from .segments import LoraSegments, RowGrouping


def lora_apply(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    slice_offsets: Sequence[int],
    segments: LoraSegments,
    ranks: torch.Tensor,
) -> None:
    """`y[rows of slot] += x @ A[slot].T @ B[slot].T` per slice, in place."""
    check_lora_args(y, x, lora_a, lora_b, slice_offsets, segments, ranks)
    if not segments.has_lora:
        return
    grouping = segments.row_grouping()
    group_ranks = _group_ranks(ranks, grouping, lora_a.shape[2])
    bounds = _slice_bounds(slice_offsets)
    permutation = grouping.permutation
    if permutation is None:
        x_grouped, y_grouped = x, y
    else:
        x_grouped = x.index_select(0, permutation)  # [T_lora, d_in]
        y_grouped = y.new_zeros(permutation.shape[0], y.shape[1])  # [T_lora, d_out_total]
    for group, rank in zip(grouping.groups, group_ranks, strict=True):
        if rank == 0:
            continue
        rows = slice(group.start, group.end)
        shrunk = _shrink(x_grouped[rows], lora_a[group.slot, :, :rank])
        _expand(y_grouped[rows], shrunk, lora_b[group.slot, :, :rank].t(), bounds)
    if permutation is not None:
        y.index_add_(0, permutation, y_grouped)


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
        v_grouped = torch.zeros(permutation.shape[0], num_slices, max_rank, device=x.device)
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
    bounds = _slice_bounds(slice_offsets)
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


def _group_ranks(ranks: torch.Tensor, grouping: RowGrouping, max_rank: int) -> list[int]:
    """The rank of each group's slot (one host read of `ranks` per call)."""
    rank_list = ranks.tolist()
    group_ranks = [rank_list[group.slot] for group in grouping.groups]
    check_rank_values(group_ranks, max_rank)
    return group_ranks


def _slice_bounds(slice_offsets: Sequence[int]) -> list[tuple[int, int]]:
    offsets = list(slice_offsets)
    return list(zip(offsets, offsets[1:], strict=False))
