"""The torch path's plan: which slots form ranges read in place, which are computed alone."""

from __future__ import annotations

from loraplex.runtime.kernels.segments import LoraSegments
from loraplex.runtime.kernels.torch_plan import RANGE_OVERHEAD, SMALL_ROWS, torch_plan

RANKS = [8, 8, 16, 8, 0, 16]


def test_a_steady_decode_batch_is_one_range_with_nothing_gathered() -> None:
    # rows ordered by slot, two rows each: slot i owns rows 2i, 2i+1 (after a base row)
    segments = LoraSegments.from_token_slots([-1, 0, 0, 1, 1, 2, 2, 3, 3])
    plan = torch_plan(segments, RANKS, zero_padded=True)

    assert plan.direct == ()
    (item,) = plan.ranges
    assert (item.lo, item.hi, item.rank, item.rows_per_slot) == (0, 4, 16, 2)
    assert item.first_row == 1
    assert item.source_rows is None and item.target_rows is None


def test_scattered_rows_and_holes_are_gathered_and_padded() -> None:
    segments = LoraSegments.from_token_slots([0, 1, 3, 0, 2, -1, 4, 5, 3])
    plan = torch_plan(segments, RANKS, zero_padded=True)

    (item,) = plan.ranges  # slot 4 has rank 0: no work; slot 5 joins across it
    assert (item.lo, item.hi, item.rank, item.rows_per_slot) == (0, 6, 16, 2)
    assert item.first_row is None
    zero_row = segments.num_rows
    # slot 0: rows 0, 3; slot 1: row 1 + padding; 2: row 4 + pad; 3: rows 2, 8;
    # slot 4 (a hole): two zero rows; slot 5: row 7 + pad
    assert item.source_rows.tolist() == [0, 3, 1, zero_row, 4, zero_row, 2, 8,
                                         zero_row, zero_row, 7, zero_row]
    # padding adds exact zeros to the range's first row
    assert item.target_rows.tolist() == [0, 3, 1, 0, 4, 0, 2, 8, 0, 0, 7, 0]


def test_a_distant_slot_is_not_worth_a_range_of_holes() -> None:
    ranks = [8] * (RANGE_OVERHEAD + 8)
    far = len(ranks) - 1
    segments = LoraSegments.from_token_slots([0, 1, far])
    plan = torch_plan(segments, ranks, zero_padded=True)

    assert [(item.lo, item.hi) for item in plan.ranges] == [(0, 2)]
    assert [(item.slot, item.rows) for item in plan.direct] == [(far, slice(2, 3))]


def test_long_or_lonely_slots_are_computed_on_views() -> None:
    long_run = [2] * (SMALL_ROWS + 1)
    segments = LoraSegments.from_token_slots([0, *long_run, -1, 1, 0])
    plan = torch_plan(segments, RANKS, zero_padded=True)

    direct = {item.slot: item for item in plan.direct}
    assert isinstance(direct[2].rows, slice)
    assert (direct[2].rows.start, direct[2].rows.stop) == (1, 1 + len(long_run))
    assert [(item.lo, item.hi) for item in plan.ranges] == [(0, 2)]


def test_a_lonely_scattered_slot_gathers_its_rows() -> None:
    plan = torch_plan(LoraSegments.from_token_slots([2, -1, 2]), RANKS, zero_padded=True)

    assert plan.ranges == ()
    assert plan.direct[0].rows.tolist() == [0, 2]


def test_plan_is_built_once_per_rank_layout() -> None:
    segments = LoraSegments.from_token_slots([0, 1])

    first = torch_plan(segments, RANKS, zero_padded=True)
    assert torch_plan(segments, RANKS, zero_padded=True) is first
    assert torch_plan(segments, [16, 8, 16, 8, 0, 16], zero_padded=True) is not first


def test_without_zero_padding_every_slot_is_computed_alone() -> None:
    segments = LoraSegments.from_token_slots([0, 0, 1, 1, 2])
    plan = torch_plan(segments, RANKS, zero_padded=False)

    assert plan.ranges == ()
    assert sorted(item.slot for item in plan.direct) == [0, 1, 2]
