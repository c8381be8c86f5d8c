"""LoraSegments: run-length encoding, validation, and the row groupings both paths use."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from loraplex.runtime.kernels.segments import NO_ADAPTER, LoraSegments

token_slot_lists = st.lists(st.integers(min_value=-1, max_value=5), max_size=40)


def decode(segments: LoraSegments) -> list[int]:
    per_row: list[int] = []
    indptr = segments.indptr_list
    for slot, start, end in zip(segments.slot_list, indptr, indptr[1:], strict=False):
        per_row += [slot] * (end - start)
    return per_row


@settings(max_examples=200, deadline=None)
@given(token_slots=token_slot_lists)
def test_from_token_slots_round_trips_and_merges_runs(token_slots: list[int]) -> None:
    segments = LoraSegments.from_token_slots(token_slots, "cpu")

    assert decode(segments) == token_slots
    assert segments.num_rows == len(token_slots)
    assert all(a != b for a, b in itertools.pairwise(segments.slot_list))
    assert all(end > start for start, end in itertools.pairwise(segments.indptr_list))
    assert segments.indptr.dtype == segments.slots.dtype == torch.int32
    assert segments.indptr.tolist() == list(segments.indptr_list)
    assert segments.slots.tolist() == list(segments.slot_list)
    assert segments.has_lora == any(slot != NO_ADAPTER for slot in token_slots)
    counts = [token_slots.count(slot) for slot in set(token_slots) if slot != NO_ADAPTER]
    assert segments.max_rows_per_slot == max(counts, default=0)


@settings(max_examples=200, deadline=None)
@given(token_slots=token_slot_lists)
def test_row_grouping_covers_each_adapter_row_once(token_slots: list[int]) -> None:
    grouping = LoraSegments.from_token_slots(token_slots).row_grouping()

    if grouping.permutation is None:
        order = list(range(len(token_slots)))
    else:
        order = grouping.permutation.tolist()
    seen: list[int] = []
    for group in grouping.groups:
        rows = order[group.start : group.end]
        assert rows and all(token_slots[row] == group.slot for row in rows)
        seen += rows
    assert sorted(seen) == [row for row, slot in enumerate(token_slots) if slot != NO_ADAPTER]
    assert len({group.slot for group in grouping.groups}) == len(grouping.groups)


def test_row_grouping_skips_the_gather_when_each_slot_is_one_run() -> None:
    sorted_batch = LoraSegments.from_token_slots([2, 2, -1, 0, 0, 0, 5])
    decode_batch = LoraSegments.from_token_slots([2, 0, 2, 0])

    assert sorted_batch.row_grouping().permutation is None
    assert decode_batch.row_grouping().permutation.tolist() == [0, 2, 1, 3]


@settings(max_examples=200, deadline=None)
@given(token_slots=token_slot_lists, block_m=st.sampled_from([1, 2, 16]))
def test_kernel_tiles_cover_each_adapter_row_once(token_slots: list[int], block_m: int) -> None:
    tiles = LoraSegments.from_token_slots(token_slots).kernel_tiles(block_m)

    sorted_rows = tiles.sorted_rows.tolist()
    covered: list[int] = []
    for slot, start, end in tiles.tile_info.tolist():
        assert 0 < end - start <= block_m
        rows = sorted_rows[start:end]
        assert all(token_slots[row] == slot for row in rows)
        covered += rows
    assert tiles.num_tiles == tiles.tile_info.shape[0]
    assert sorted(covered) == [row for row, slot in enumerate(token_slots) if slot != NO_ADAPTER]


def test_empty_segments_are_allowed_and_carry_no_rows() -> None:
    segments = LoraSegments.from_lists([0, 0, 2, 2], [3, -1, 1])

    assert segments.num_rows == 2
    assert not segments.has_lora  # slots 3 and 1 own no rows
    assert segments.row_grouping().groups == ()
    assert segments.kernel_tiles(16).num_tiles == 0


@pytest.mark.parametrize(
    ("indptr", "slots", "message"),
    [
        ([0, 2], [0, 1], "needs 3 entries"),
        ([1, 2], [0], "must start at 0"),
        ([0, 3, 2], [0, 1], "must not decrease"),
        ([0, 1], [-2], "must be >= -1"),
    ],
)
def test_invalid_segments_are_refused(indptr, slots, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LoraSegments.from_lists(indptr, slots)


def test_segments_are_built_on_the_requested_device() -> None:
    segments = LoraSegments.from_token_slots([0, 0, 1], device=torch.device("cpu"))
    assert segments.indptr.device.type == "cpu"
    assert segments.kernel_tiles(16).sorted_rows.device.type == "cpu"
