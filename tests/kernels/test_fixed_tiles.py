"""Fixed-size tile lists (the LoRA metadata of a captured decode step) against the oracle.

A captured decode step launches the kernels on persistent tile buffers sized by its batch
bucket: the tiles a step needs come first, the rest carry slot -1 and must change nothing.
Under the Triton interpreter, that launch must equal the regular host-sized launch and the
fp64 oracle, including padding rows (slot -1), rows of one slot spread over several
tiles, split-K (the tile sizes chosen for a 132-SM GPU) and unused tiles in between.
"""

from __future__ import annotations

import random

import pytest
import torch

from loraplex.runtime.kernels.configs import FIXED_BLOCK_M
from loraplex.runtime.kernels.segments import (
    NO_ADAPTER,
    LoraSegments,
    fixed_tile_lists,
    max_tiles,
)
from tests.kernels import interpreter_worker
from tests.kernels.backends import InterpretedTritonBackend
from tests.kernels.problems import LoraProblem, make_problem, segments_of
from tests.kernels.reference import lora_ref
from tests.kernels.test_lora_ops import MAX_RANK, RANKS, SHAPES, assert_close

PAD = [NO_ADAPTER] * 3  # padding rows of a batch bucket
LAYOUTS = {  # per-row slots of a decode step padded to its bucket
    "base_rows_only": [NO_ADAPTER] * 5 + PAD,
    "mixed_with_base_rows": [5, 1, -1, 5, 7, 1, 1, -1, 5, 7, 0, 3] + PAD + [-1],
    "one_slot_over_two_tiles": [2] * (FIXED_BLOCK_M + 5) + [6] * 3 + PAD,
}


def build(layout: str, shape: str, dtype: torch.dtype) -> LoraProblem:
    d_in, widths = SHAPES[shape]
    indptr, slots = segments_of(LAYOUTS[layout])
    return make_problem(d_in=d_in, slice_widths=widths, ranks=RANKS, max_rank=MAX_RANK,
                        indptr=indptr, slots=slots, dtype=dtype, seed=7)


def test_fixed_lists_hold_the_regular_tiles_then_unused_ones():
    row_slots = LAYOUTS["mixed_with_base_rows"]
    num_tiles = max_tiles(len(row_slots), len(RANKS), FIXED_BLOCK_M)
    rows, tiles = fixed_tile_lists(row_slots, FIXED_BLOCK_M, num_tiles)

    regular = LoraSegments.from_token_slots(row_slots).kernel_tiles(FIXED_BLOCK_M)
    used = regular.num_tiles
    assert len(rows) == len(row_slots) and len(tiles) == 3 * num_tiles
    assert rows[:len(regular.sorted_rows)] == regular.sorted_rows.tolist()
    assert tiles[:3 * used] == regular.tile_info.flatten().tolist()
    assert tiles[3 * used:] == [NO_ADAPTER, 0, 0] * (num_tiles - used)


def test_max_tiles_bounds_every_batch():
    generator = random.Random(0)
    for _ in range(300):
        num_rows, num_slots = generator.randint(1, 200), generator.randint(1, 40)
        row_slots = [generator.randrange(-1, num_slots) for _ in range(num_rows)]
        needed = LoraSegments.from_token_slots(row_slots).kernel_tiles(FIXED_BLOCK_M).num_tiles
        assert needed <= max_tiles(num_rows, num_slots, FIXED_BLOCK_M)


def test_too_few_tiles_is_refused():
    with pytest.raises(ValueError, match="do not fit"):
        fixed_tile_lists([0, 1, 2], FIXED_BLOCK_M, num_tiles=2)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("num_sms", [1, 132])  # 132: split-K as on an H100
@pytest.mark.parametrize(("layout", "shape", "dtype"), [
    ("base_rows_only", "qkv_gqa", torch.float32),
    ("mixed_with_base_rows", "qkv_gqa", torch.float32),
    ("mixed_with_base_rows", "gate_up", torch.float16),
    ("one_slot_over_two_tiles", "o", torch.float32),
])
def test_fixed_tile_launch_equals_regular_launch_and_reference(
        interpreter_executor, layout, shape, dtype, num_sms):
    problem = build(layout, shape, dtype)
    row_slots = problem.token_slots
    expected = lora_ref(problem.y, problem.x, problem.lora_a, problem.lora_b,
                        problem.slice_offsets, row_slots, problem.rank_list)
    regular = problem.y.clone()
    InterpretedTritonBackend(interpreter_executor).lora_apply(
        regular, problem.x, problem.lora_a, problem.lora_b, problem.slice_offsets,
        problem.segments(), problem.ranks)

    num_tiles = max_tiles(len(row_slots), len(RANKS), FIXED_BLOCK_M)
    shuffled = random.Random(1).sample(range(num_tiles), num_tiles)
    for order in (None, shuffled):
        fixed = interpreter_executor.submit(
            interpreter_worker.lora_apply_fixed_tiles, problem.y.clone(), problem.x,
            problem.lora_a, problem.lora_b, problem.slice_offsets, row_slots, problem.ranks,
            num_sms, order).result(timeout=120)
        assert_close(fixed, expected, dtype)
        assert_close(fixed, regular, dtype)
        base_rows = [row for row, slot in enumerate(row_slots)
                     if slot == NO_ADAPTER or RANKS[slot] == 0]
        assert torch.equal(fixed[base_rows], problem.y[base_rows])  # bit-identical
