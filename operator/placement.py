"""Which pods keep which adapters warm: a pure function, so it can be property-tested.

Inputs are the ready pods with their capacity, the adapters with what they need, and the
current placements; the output is the new placements plus, per adapter, how many replicas
could not be placed and why. Rules, in order of precedence:

* never over a pod's capacity: host bytes for weights, device slots for pinned adapters
  (a pod that holds unpinned adapters keeps one device slot free to rotate them through),
  and no adapter whose rank is above the pod's max rank;
* never two replicas of one adapter on one pod;
* existing placements stay where they are (a pod that disappears moves only its own
  adapters), unless they no longer fit; `current` lists each adapter's pods in order of
  preference, so when fewer fit (or fewer are wanted) the first ones stay;
* new replicas go, largest first, to the least-loaded pod (`Spread`) or to the fullest
  pod that still fits (`BinPack`); ties break by pod name, so the result is deterministic;
* what cannot be placed is reported as `InsufficientCapacity`, never raised.

Rebalancing (`rebalance.py`) is a separate step: `place` itself never moves a placement
that fits, so a pod that joins only receives new replicas.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

Strategy = Literal["Spread", "BinPack"]
STRATEGIES: tuple[Strategy, ...] = ("Spread", "BinPack")
INSUFFICIENT_CAPACITY = "InsufficientCapacity"


@dataclass(frozen=True)
class PodCapacity:
    name: str
    host_bytes: int
    device_slots: int
    max_rank: int
    reserved_bytes: int = 0  # held by adapters the operator does not manage
    reserved_slots: int = 0


@dataclass(frozen=True)
class AdapterDemand:
    name: str
    replicas: int
    size_bytes: int
    rank: int | None = None  # None until a pod has read the adapter
    pinned: bool = False


@dataclass(frozen=True)
class Shortfall:
    missing: int
    reason: str
    message: str


@dataclass(frozen=True)
class PlacementPlan:
    placements: Mapping[str, tuple[str, ...]]  # adapter → pod names, sorted
    shortfalls: Mapping[str, Shortfall]  # only adapters with missing replicas


@dataclass
class PodLoad:
    pod: PodCapacity
    used_bytes: int = 0
    pinned: int = 0
    unpinned: int = 0
    adapters: set[str] = field(default_factory=set)

    def free_bytes(self) -> int:
        return self.pod.host_bytes - self.pod.reserved_bytes - self.used_bytes

    def fits(self, adapter: AdapterDemand) -> bool:
        if adapter.name in self.adapters or not self.rank_fits(adapter):
            return False
        if adapter.size_bytes > self.free_bytes():
            return False
        pinned = self.pinned + adapter.pinned
        unpinned = self.unpinned + (not adapter.pinned)
        slots = self.pod.device_slots - self.pod.reserved_slots
        return pinned < slots if unpinned else pinned <= slots

    def rank_fits(self, adapter: AdapterDemand) -> bool:
        return adapter.rank is None or adapter.rank <= self.pod.max_rank

    def add(self, adapter: AdapterDemand) -> None:
        self.adapters.add(adapter.name)
        self.used_bytes += adapter.size_bytes
        if adapter.pinned:
            self.pinned += 1
        else:
            self.unpinned += 1

    def remove(self, adapter: AdapterDemand) -> None:
        self.adapters.discard(adapter.name)
        self.used_bytes -= adapter.size_bytes
        if adapter.pinned:
            self.pinned -= 1
        else:
            self.unpinned -= 1


def place(pods: Iterable[PodCapacity], adapters: Iterable[AdapterDemand],
          current: Mapping[str, Iterable[str]], strategy: Strategy = "Spread") -> PlacementPlan:
    """New placements for `adapters` on `pods`, keeping `current` ones where they fit
    (`current`: adapter → pods, most wanted first)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"placement strategy must be one of {STRATEGIES}, got {strategy!r}")
    loads = {pod.name: PodLoad(pod) for pod in sorted(pods, key=lambda pod: pod.name)}
    demands = sorted(adapters, key=lambda adapter: adapter.name)
    for adapter in demands:
        if adapter.replicas < 0 or adapter.size_bytes < 0:
            raise ValueError(f"adapter {adapter.name!r}: replicas and size must not be negative")
    placed: dict[str, list[str]] = {adapter.name: [] for adapter in demands}

    # Keep what is already placed, pinned adapters first: they are the hardest to move.
    for adapter in sorted(demands, key=lambda adapter: (not adapter.pinned, adapter.name)):
        for pod_name in dict.fromkeys(current.get(adapter.name, ())):
            load = loads.get(pod_name)
            if len(placed[adapter.name]) < adapter.replicas and load and load.fits(adapter):
                load.add(adapter)
                placed[adapter.name].append(pod_name)

    # Then the missing replicas, largest (and pinned) first: first-fit decreasing.
    for adapter in sorted(demands, key=lambda a: (not a.pinned, -a.size_bytes, a.name)):
        while len(placed[adapter.name]) < adapter.replicas:
            candidates = [load for load in loads.values() if load.fits(adapter)]
            if not candidates:
                break
            chosen = min(candidates, key=spread_key if strategy == "Spread" else _binpack_key)
            chosen.add(adapter)
            placed[adapter.name].append(chosen.pod.name)

    # Explained against the final state, so a re-run explains it the same way.
    shortfalls = {
        adapter.name: Shortfall(missing, INSUFFICIENT_CAPACITY,
                                _explain(adapter, loads.values(), missing))
        for adapter in demands
        if (missing := adapter.replicas - len(placed[adapter.name])) > 0
    }

    return PlacementPlan(
        placements={name: tuple(sorted(pods)) for name, pods in placed.items()},
        shortfalls=shortfalls,
    )


def spread_key(load: PodLoad) -> tuple[int, int, str]:
    return (len(load.adapters), load.used_bytes + load.pod.reserved_bytes, load.pod.name)


def _binpack_key(load: PodLoad) -> tuple[int, int, str]:
    return (load.free_bytes(), -len(load.adapters), load.pod.name)


def _explain(adapter: AdapterDemand, loads: Iterable[PodLoad], missing: int) -> str:
    loads = list(loads)
    wanted = f"{missing} of {adapter.replicas} replica(s) unplaced"
    if not loads:
        return f"{wanted}: no ready pods"
    holders = sum(adapter.name in load.adapters for load in loads)
    if holders == len(loads):
        return f"{wanted}: only {len(loads)} ready pod(s), one replica per pod"
    if not any(load.rank_fits(adapter) for load in loads):
        return f"{wanted}: rank {adapter.rank} is above every pod's maxRank"
    most_free = max(load.free_bytes() for load in loads if adapter.name not in load.adapters)
    if adapter.size_bytes > most_free:
        return (f"{wanted}: needs {adapter.size_bytes} bytes of host memory, "
                f"the most free on a pod is {most_free}")
    return f"{wanted}: no free device slot for {'a pinned' if adapter.pinned else 'an'} adapter"
