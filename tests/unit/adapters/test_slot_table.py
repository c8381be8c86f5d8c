"""Slot choice: free slots keep adapters of one rank together; busy slots are never taken."""

from __future__ import annotations

import itertools

from loraplex.runtime.adapters.records import AdapterRecord
from loraplex.runtime.adapters.slot_table import SlotTable
from loraplex.runtime.adapters.source import parse_source


def record(name: str, rank: int) -> AdapterRecord:
    return AdapterRecord(name, parse_source(f"/adapters/{name}"), None, pinned=False,
                         preload=None, dynamic=False, rank=rank)


def fill(table: SlotTable, ranks: list[int], max_rank: int) -> dict[int, list[int]]:
    """Assign adapters of `ranks` in turn; the slots each rank got, in slot order."""
    slots: dict[int, list[int]] = {}
    for index, rank in enumerate(ranks):
        slot, victim = table.choose(protect_since=0.0, rank=rank, max_rank=max_rank)
        assert victim is None
        table.assign(slot, record(f"a{index}", rank))
        slots.setdefault(rank, []).append(slot)
    return {rank: sorted(found) for rank, found in slots.items()}


def runs(slots: list[int]) -> int:
    """How many runs of consecutive slots."""
    return 1 + sum(b != a + 1 for a, b in itertools.pairwise(slots))


def test_alternating_ranks_land_in_one_run_per_rank() -> None:
    table = SlotTable(32)
    placed = fill(table, [8, 64] * 8, max_rank=64)

    assert runs(placed[8]) == 1 and runs(placed[64]) == 1
    assert max(placed[8]) < min(placed[64])  # lower ranks lower in the pool


def test_a_full_pool_uses_every_slot_once() -> None:
    table = SlotTable(12)
    placed = fill(table, [4, 16, 64, 8] * 3, max_rank=64)

    assert sorted(itertools.chain(*placed.values())) == list(range(12))
    assert table.choose(protect_since=0.0, rank=8, max_rank=64) is None  # all just used


def test_a_full_pool_evicts_the_least_recently_used_idle_adapter() -> None:
    table = SlotTable(3)
    fill(table, [8, 8, 8], max_rank=64)
    owners = list(table.owners)
    for index, owner in enumerate(owners):
        owner.slot_ready = True
        owner.last_used = 10.0 + index
    owners[0].refcount = 1  # leased: never a victim

    slot, victim = table.choose(protect_since=100.0, rank=64, max_rank=64)
    assert victim is owners[1] and slot == owners[1].slot
    assert table.choose(protect_since=11.0, rank=64, max_rank=64) is None  # used since


def test_a_pool_just_big_enough_for_ranks_8_to_64_fills_in_rank_order() -> None:
    # registered in turn (8, 16, 32, 64, 8, ...): a scale from rank 1 filled 8 slots as
    # 64, 32, 16, 8, 8, 16, 32, 64, which the CPU path reads as one range at rank 64
    for size in (8, 9, 16):
        table = SlotTable(size)
        fill(table, [8, 16, 32, 64] * 2, max_rank=64)

        layout = [owner.rank for owner in table.owners if owner is not None]
        assert layout == [8, 8, 16, 16, 32, 32, 64, 64], size


def test_ranks_at_or_below_the_floor_share_the_first_home() -> None:
    table = SlotTable(16)
    assert table.home(1, 64) == table.home(8, 64) == 0
    assert table.home(64, 64) == table.home(128, 64) == 15
    assert SlotTable(4).home(8, 8) == 0  # a pool whose largest rank is the floor
