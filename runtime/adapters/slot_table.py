"""Which registration owns each device slot, and which slot a newly wanted adapter gets.

A free slot first; otherwise the least recently used slot whose adapter is idle: ready
(its copy finished), holding no lease, not pinned, and not wanted or used since
`protect_since` (the start of the engine's previous step). Only the engine thread changes
the table (under the manager's lock).

Among free slots, adapters of one rank are kept together: each rank has a home position
in the pool (higher ranks higher, on a log scale) and takes the nearest free slot at or
below it, else the nearest above. The CPU path reads consecutive slots as one range at
the range's largest rank (`kernels/torch_plan.py`), so a pool where rank-8 and rank-64
adapters alternate would read every slot at rank 64; clustered, each run reads its own.
The scale starts at HOME_FLOOR_RANK, not at rank 1: ranks below 8 are rare, and a scale
from 1 put rank 8's home mid-pool, so a full pool of ranks 8-64 filled as 64, 32, 16, 8,
8, 16, 32, 64 (every slot read at rank 64) where it now fills in rank order.
"""

from __future__ import annotations

import math

from loraplex.runtime.adapters.records import AdapterRecord

HOME_FLOOR_RANK = 8  # ranks at or below it share the home slot 0


class SlotTable:
    def __init__(self, num_slots: int) -> None:
        self.owners: list[AdapterRecord | None] = [None] * num_slots

    def ready(self) -> list[AdapterRecord]:
        return [r for r in self.owners if r is not None and r.slot_ready]

    def copying(self) -> list[AdapterRecord]:
        return [r for r in self.owners if r is not None and not r.slot_ready]

    def choose(self, protect_since: float, rank: int, max_rank: int
               ) -> tuple[int, AdapterRecord | None] | None:
        """(slot, adapter to evict from it or None), or None when every slot is busy."""
        free = [slot for slot, owner in enumerate(self.owners) if owner is None]
        if free:
            home = self.home(rank, max_rank)
            below = [slot for slot in free if slot <= home]
            return (max(below) if below else min(free)), None
        idle = [r for r in self.ready()
                if r.refcount == 0 and not r.pinned and r.last_used < protect_since]
        if not idle:
            return None
        victim = min(idle, key=lambda r: r.last_used)
        return victim.slot, victim

    def home(self, rank: int, max_rank: int) -> int:
        """The slot adapters of `rank` gather around: 0 up to HOME_FLOOR_RANK, the last for
        max_rank, log-spaced between."""
        floor = math.log2(HOME_FLOOR_RANK)
        span = math.log2(max_rank) - floor
        if span <= 0:
            return 0
        position = min(max(math.log2(max(rank, 1)) - floor, 0.0) / span, 1.0)
        return round((len(self.owners) - 1) * position)

    def assign(self, slot: int, record: AdapterRecord) -> None:
        self.owners[slot] = record
        record.slot, record.slot_ready, record.slot_copy = slot, False, None

    def free(self, record: AdapterRecord) -> None:
        self.owners[record.slot] = None
        record.slot, record.slot_ready, record.slot_copy = None, False, None
