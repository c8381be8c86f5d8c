"""The torch path's plan: which slots are batched, which are computed one by one."""

from __future__ import annotations

from loraplex.runtime.kernels.segments import LoraSegments
from loraplex.runtime.kernels.torch_plan import SMALL_ROWS, torch_plan

RANKS = [8, 8, 16, 8, 0, 16]


def test_decode_slots_of_one_rank_share_a_batch() -> None:
    segments = LoraSegments.from_token_slots([0, 1, 3, 0, 2, -1, 4, 5, 3])
    plan = torch_plan(segments, RANKS)

    by_rank = {batch.rank: batch for batch in plan.batches}
    assert set(by_rank) == {8, 16}
    rank8 = by_rank[8]
    assert rank8.slots.tolist() == [0, 1, 3]
    assert (rank8.num_slots, rank8.rows_per_slot) == (3, 2)
    zero_row = segments.num_rows
    assert rank8.source_rows.tolist() == [0, 3, 1, zero_row, 2, 8]
    assert rank8.target_rows.tolist() == [0, 3, 1, 1, 2, 8]  # padding adds zeros to row 1
    assert plan.direct == ()  # slot 4 has rank 0: no work at all


def test_long_or_lonely_slots_are_computed_on_views() -> None:
    long_run = [2] * (SMALL_ROWS + 1)
    segments = LoraSegments.from_token_slots([0, *long_run, -1, 1, 0])
    plan = torch_plan(segments, RANKS)

    direct = {item.slot: item for item in plan.direct}
    assert isinstance(direct[2].rows, slice)
    assert (direct[2].rows.start, direct[2].rows.stop) == (1, 1 + len(long_run))
    assert [batch.slots.tolist() for batch in plan.batches] == [[0, 1]]


def test_a_lonely_scattered_slot_gathers_its_rows() -> None:
    plan = torch_plan(LoraSegments.from_token_slots([2, -1, 2]), RANKS)

    assert plan.batches == ()
    assert plan.direct[0].rows.tolist() == [0, 2]


def test_plan_is_built_once_per_rank_layout() -> None:
    segments = LoraSegments.from_token_slots([0, 1])

    first = torch_plan(segments, RANKS)
    assert torch_plan(segments, RANKS) is first
    assert torch_plan(segments, [16, 8, 16, 8, 0, 16]) is not first
