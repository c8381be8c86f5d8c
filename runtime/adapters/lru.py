"""Byte-budgeted least-recently-used bookkeeping, shared by the disk and host tiers.

It only decides; the tier that owns the bytes frees them. Entries the owner says must stay
(pinned, in use, being read) are skipped, so the budget can be exceeded while everything
resident is protected: a pinned adapter is a promise, the budget is a target.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)


class LruBudget(Generic[Key]):
    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes < 0:
            raise ValueError(f"budget must not be negative, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self._sizes: OrderedDict[Key, int] = OrderedDict()  # least recently used first
        self.used_bytes = 0

    def __contains__(self, key: Key) -> bool:
        return key in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def keys(self) -> list[Key]:
        return list(self._sizes)

    def add(self, key: Key, size_bytes: int) -> None:
        """Insert or resize `key`, and mark it most recently used."""
        self.remove(key)
        self._sizes[key] = size_bytes
        self.used_bytes += size_bytes

    def touch(self, key: Key) -> None:
        if key in self._sizes:
            self._sizes.move_to_end(key)

    def remove(self, key: Key) -> None:
        size = self._sizes.pop(key, None)
        if size is not None:
            self.used_bytes -= size

    def victims(self, can_evict: Callable[[Key], bool]) -> list[Key]:
        """Least recently used evictable keys whose removal brings usage within budget.

        Removes them from the bookkeeping; the caller frees what they hold.
        """
        chosen: list[Key] = []
        excess = self.used_bytes - self.budget_bytes
        for key, size in list(self._sizes.items()):
            if excess <= 0:
                break
            if can_evict(key):
                chosen.append(key)
                excess -= size
        for key in chosen:
            self.remove(key)
        return chosen
