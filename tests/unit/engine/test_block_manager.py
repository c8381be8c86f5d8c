"""Block accounting: growth by need, all-or-nothing release, reuse before fresh blocks."""

from __future__ import annotations

import pytest

from loraplex.runtime.engine.block_manager import BlockManager


def test_grow_allocates_exactly_the_blocks_needed():
    manager = BlockManager(num_blocks=10, block_size=4)
    table: list[int] = []
    manager.grow(table, 1)
    assert len(table) == 1
    manager.grow(table, 4)  # still one block
    assert len(table) == 1
    manager.grow(table, 9)
    assert len(table) == 3
    assert len(set(table)) == 3
    assert manager.num_free_blocks == 7


def test_release_returns_everything_and_blocks_are_reused_first():
    manager = BlockManager(num_blocks=8, block_size=2)
    first: list[int] = []
    second: list[int] = []
    manager.grow(first, 6)
    manager.grow(second, 2)
    used = set(first)
    manager.release(first)
    assert first == [] and manager.num_free_blocks == 7
    manager.grow(second, 8)  # needs 3 more: all come from the returned ones
    assert set(second[1:]) <= used
    assert manager.num_blocks_ever_used == 4


def test_cannot_grow_past_the_pool():
    manager = BlockManager(num_blocks=3, block_size=4)
    table: list[int] = []
    assert manager.can_grow(table, 12)
    assert not manager.can_grow(table, 13)
    with pytest.raises(RuntimeError, match="out of KV blocks"):
        manager.grow(table, 13)
    assert table == [] and manager.num_free_blocks == 3


@pytest.mark.parametrize("num_blocks, block_size", [(0, 16), (4, 0)])
def test_rejects_empty_pools(num_blocks, block_size):
    with pytest.raises(ValueError, match="positive"):
        BlockManager(num_blocks, block_size)
