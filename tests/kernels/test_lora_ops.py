"""Shrink, expand and lora_apply against the fp64 oracle, on both backends.

Odd shapes (d_in 67/129, slices of 33/17/45/97 columns, R = 20 so rank blocks are partly
full), mixed ranks from 0 and 1 up to R, garbage in every padded region, and the segment
layouts that break SGMV kernels: one row, one adapter for all rows, every row its own
adapter, rows without adapter, empty segments, a slot split over several segments, and a
segment longer than a tile.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from loraplex.runtime.kernels import torch_ops
from loraplex.runtime.kernels.segments import NO_ADAPTER
from tests.kernels.backends import TorchBackend
from tests.kernels.problems import LoraProblem, make_problem, segments_of
from tests.kernels.reference import expand_ref, lora_ref, shrink_ref

MAX_RANK = 20
# slot 3 has rank 0: it must change nothing; ranks differ between neighbouring slots, so
# the torch path's slot ranges (on a zero-padded pool) read past most slots' ranks
RANKS = [1, MAX_RANK, 5, 0, 13, 5, 8, 5]

SHAPES = {  # name: (d_in, slice widths)
    "qkv_gqa": (67, [33, 17, 17]),
    "o": (129, [97]),
    "gate_up": (67, [45, 45]),
}

LAYOUTS = {  # name: (indptr, slots)
    "one_row": segments_of([4]),
    "one_adapter": segments_of([1] * 9),
    "every_row_distinct": segments_of([0, 1, 2, 3, 4, 5, 6, 7]),
    "rows_without_adapter": segments_of([-1, 2, 2, -1, -1, 7, 7, 7, -1]),
    "no_adapter_at_all": segments_of([-1] * 5),
    "decode_shuffled": segments_of([5, 1, 5, 7, 1, 1, -1, 5, 7, 0]),
    "empty_segments": ([0, 0, 3, 3, 5, 5], [1, 6, 2, 4, -1]),
    "long_segment": segments_of([1] * 37 + [6]),
    "decode_sorted": segments_of([-1, 0, 0, 1, 1, 2, 2, 4, 4, 5, 5]),
}

# (atol, rtol); values are O(1) by construction (see problems.make_problem)
TOLERANCES = {
    torch.float32: (2e-5, 2e-5),
    torch.float16: (5e-3, 5e-3),
    torch.bfloat16: (3e-2, 2e-2),
}


@dataclass(frozen=True)
class Case:
    layout: str
    shape: str
    dtype: torch.dtype

    def __str__(self) -> str:
        return f"{self.layout}-{self.shape}-{str(self.dtype).removeprefix('torch.')}"


# every layout once in fp32 on the GQA slices, then dtypes and shapes mixed in: the
# interpreter is slow, so the cross product is left to the torch-only test below
CASES = [Case(layout, "qkv_gqa", torch.float32) for layout in LAYOUTS] + [
    Case("decode_shuffled", "qkv_gqa", torch.float16),
    Case("every_row_distinct", "o", torch.float16),
    Case("rows_without_adapter", "gate_up", torch.float16),
    Case("empty_segments", "o", torch.float16),
    Case("long_segment", "o", torch.float32),
    Case("one_adapter", "gate_up", torch.float32),
]


def build(case: Case, seed: int = 0, zero_padded: bool = False) -> LoraProblem:
    d_in, widths = SHAPES[case.shape]
    indptr, slots = LAYOUTS[case.layout]
    return make_problem(
        d_in=d_in,
        slice_widths=widths,
        ranks=RANKS,
        max_rank=MAX_RANK,
        indptr=indptr,
        slots=slots,
        dtype=case.dtype,
        seed=seed,
        zero_padded=zero_padded,
    )


def untouched_rows(problem: LoraProblem) -> list[int]:
    """Rows that must come out bit-identical: no adapter, or an adapter of rank 0."""
    return [
        row
        for row, slot in enumerate(problem.token_slots)
        if slot == NO_ADAPTER or problem.rank_list[slot] == 0
    ]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol)


def assert_applied(y: torch.Tensor, problem: LoraProblem, dtype: torch.dtype) -> None:
    """y is problem.y plus every row's LoRA delta; rows without one are bit-identical."""
    expected = lora_ref(
        problem.y, problem.x, problem.lora_a, problem.lora_b, problem.slice_offsets,
        problem.token_slots, problem.rank_list,
    )  # fmt: skip
    assert_close(y, expected, dtype)
    rows = untouched_rows(problem)
    assert torch.equal(y[rows], problem.y[rows])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_shrink_matches_reference(backend, case: Case) -> None:
    problem = build(case)
    v = backend.shrink(problem.x, problem.lora_a, problem.segments(), problem.ranks)

    expected = shrink_ref(problem.x, problem.lora_a, problem.token_slots, problem.rank_list)
    assert v.dtype == torch.float32
    assert v.shape == expected.shape
    assert_close(v, expected, case.dtype)
    # beyond each row's rank, and on rows without adapter: exactly zero
    assert torch.equal(v[expected == 0], torch.zeros_like(v[expected == 0]))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_expand_matches_reference(backend, case: Case) -> None:
    problem = build(case)
    v = shrink_ref(problem.x, problem.lora_a, problem.token_slots, problem.rank_list).float()
    # expand may read v only within each row's rank: poison everything else
    for row, slot in enumerate(problem.token_slots):
        rank = problem.rank_list[slot] if slot != NO_ADAPTER else 0
        v[row, :, rank:] = float("nan")
    y = problem.y.clone()

    backend.expand(y, v, problem.lora_b, problem.slice_offsets, problem.segments(), problem.ranks)

    expected = expand_ref(
        problem.y, v.nan_to_num(), problem.lora_b, problem.slice_offsets,
        problem.token_slots, problem.rank_list,
    )  # fmt: skip
    assert_close(y, expected, case.dtype)
    rows = untouched_rows(problem)
    assert torch.equal(y[rows], problem.y[rows])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_lora_apply_matches_reference(backend, case: Case) -> None:
    problem = build(case)
    y = problem.y.clone()

    backend.lora_apply(
        y, problem.x, problem.lora_a, problem.lora_b, problem.slice_offsets,
        problem.segments(), problem.ranks,
    )  # fmt: skip

    assert_applied(y, problem, case.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_torch_path_all_layouts_shapes_dtypes(layout: str, shape: str, dtype) -> None:
    problem = build(Case(layout, shape, dtype), seed=1)
    backend = TorchBackend()
    y = problem.y.clone()
    backend.lora_apply(
        y, problem.x, problem.lora_a, problem.lora_b, problem.slice_offsets,
        problem.segments(), problem.ranks,
    )  # fmt: skip
    expected = lora_ref(
        problem.y, problem.x, problem.lora_a, problem.lora_b, problem.slice_offsets,
        problem.token_slots, problem.rank_list,
    )  # fmt: skip
    assert_close(y, expected, dtype)
    v = backend.shrink(problem.x, problem.lora_a, problem.segments(), problem.ranks)
    y_split = problem.y.clone()
    backend.expand(
        y_split, v, problem.lora_b, problem.slice_offsets, problem.segments(), problem.ranks
    )
    assert_close(y_split, expected, dtype)


RANK_MAJOR_CASES = [
    Case("decode_shuffled", "qkv_gqa", torch.float32),
    Case("every_row_distinct", "gate_up", torch.float16),
    Case("long_segment", "o", torch.float32),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", RANK_MAJOR_CASES, ids=str)
def test_rank_major_lora_b_matches_reference(backend, case: Case) -> None:
    """lora_b may be a [S, d_out, R] view of a contiguous [S, R, d_out] buffer."""
    problem = build(case)
    rank_major = problem.lora_b.transpose(1, 2).contiguous().transpose(1, 2)
    assert not rank_major.is_contiguous()
    expected = lora_ref(
        problem.y, problem.x, problem.lora_a, problem.lora_b, problem.slice_offsets,
        problem.token_slots, problem.rank_list,
    )  # fmt: skip

    y = problem.y.clone()
    backend.lora_apply(
        y, problem.x, problem.lora_a, rank_major, problem.slice_offsets, problem.segments(),
        problem.ranks,
    )  # fmt: skip
    assert_close(y, expected, case.dtype)

    v = shrink_ref(problem.x, problem.lora_a, problem.token_slots, problem.rank_list).float()
    y_split = problem.y.clone()
    backend.expand(y_split, v, rank_major, problem.slice_offsets, problem.segments(), problem.ranks)
    assert_close(y_split, expected, case.dtype)


@pytest.mark.parametrize("rank_major", [False, True], ids=["b_contiguous", "b_rank_major"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("shape", SHAPES)
def test_lora_apply_on_a_zero_padded_pool_matches_reference(layout: str, shape: str,
                                                            rank_major: bool) -> None:
    """The torch path's slot ranges read past ranks and unused slots: exact all the same."""
    problem = build(Case(layout, shape, torch.float32), zero_padded=True)
    lora_b = problem.lora_b
    if rank_major:
        lora_b = lora_b.transpose(1, 2).contiguous().transpose(1, 2)
    y = problem.y.clone()

    torch_ops.lora_apply(
        y, problem.x, problem.lora_a, lora_b, problem.slice_offsets,
        problem.segments(), problem.ranks, zero_padded=True,
    )  # fmt: skip

    assert_applied(y, problem, torch.float32)
