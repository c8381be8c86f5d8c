"""Which registration owns each device slot, and which slot a newly wanted adapter gets.

A free slot first; otherwise the least recently used slot whose adapter is idle: ready
(its copy finished), holding no lease, not pinned, and not wanted or used since
`protect_since` (the start of the engine's previous step). Only the engine thread changes
the table (under the manager's lock).
"""

from __future__ import annotations

from loraplex.runtime.adapters.records import AdapterRecord


class SlotTable:
    def __init__(self, num_slots: int) -> None:
        self.owners: list[AdapterRecord | None] = [None] * num_slots

    def ready(self) -> list[AdapterRecord]:
        return [r for r in self.owners if r is not None and r.slot_ready]

    def copying(self) -> list[AdapterRecord]:
        return [r for r in self.owners if r is not None and not r.slot_ready]

    def choose(self, protect_since: float) -> tuple[int, AdapterRecord | None] | None:
        """(slot, adapter to evict from it or None), or None when every slot is busy."""
        for slot, owner in enumerate(self.owners):
            if owner is None:
                return slot, None
        idle = [r for r in self.ready()
                if r.refcount == 0 and not r.pinned and r.last_used < protect_since]
        if not idle:
            return None
        victim = min(idle, key=lambda r: r.last_used)
        return victim.slot, victim

    def assign(self, slot: int, record: AdapterRecord) -> None:
        self.owners[slot] = record
        record.slot, record.slot_ready, record.slot_copy = slot, False, None

    def free(self, record: AdapterRecord) -> None:
        self.owners[record.slot] = None
        record.slot, record.slot_ready, record.slot_copy = None, False, None
