"""Tile-size heuristics: what each batch shape gets, without a GPU."""

from __future__ import annotations

import pytest

from loraplex.runtime.kernels.configs import expand_config, row_block, shrink_config
from loraplex.runtime.kernels.segments import LoraSegments

H100_SMS = 132


def batch(rows: int, adapters: int) -> LoraSegments:
    return LoraSegments.from_token_slots(sorted(row % adapters for row in range(rows)))


def test_small_decode_batch_splits_k_to_fill_the_gpu() -> None:
    config = shrink_config(batch(8, 8), max_rank=16, d_in=4096, num_slices=3, num_sms=H100_SMS)
    assert config.block_m == 16
    assert config.split_k > 1
    assert config.split_k * config.block_k <= 4096 + config.block_k  # no split is empty


def test_long_prefill_uses_big_row_tiles_and_short_k_blocks() -> None:
    config = shrink_config(batch(1024, 2), max_rank=64, d_in=4096, num_slices=1, num_sms=132)
    assert (config.block_m, config.block_k) == (64, 64)


def test_a_single_program_device_never_splits() -> None:
    config = shrink_config(batch(4, 4), max_rank=64, d_in=4096, num_slices=3, num_sms=1)
    assert config.split_k == 1


@pytest.mark.parametrize(("max_rank", "block_k"), [(1, 16), (8, 16), (20, 32), (64, 64), (128, 64)])
def test_expand_reads_the_rank_in_one_step_up_to_64(max_rank: int, block_k: int) -> None:
    assert expand_config(batch(4, 2), max_rank, num_slices=1).block_k == block_k


@pytest.mark.parametrize(("rows", "block_m"), [(1, 16), (16, 16), (17, 32), (40, 64), (900, 64)])
def test_row_tiles_fit_the_busiest_slot(rows: int, block_m: int) -> None:
    segments = LoraSegments.from_token_slots([0] * rows + [1, -1])
    assert row_block(segments) == block_m
