"""Which placements to move so that `Spread` stays spread as pods join and leave.

`place` never moves a placement that fits, so the pod that becomes Ready second would get
only what arrives after it. This pure function proposes a few moves (adapter, from pod,
to pod) from the most loaded pod to the least loaded one, only while their placement
counts differ by more than `threshold`, at most `max_moves` at a time. Among the
adapters of the fuller pod it moves the one that evens out their host bytes best.

Within one batch a pod either gives or receives, never both, so carrying the moves out
make-before-break (load on the new pod, wait for it to confirm, then unload the old one)
never puts a pod over its capacity: a receiving pod's final load fits by construction and
a giving pod only sheds. With capacity to spare, repeating until no move is proposed
leaves every pod within `threshold` placements of every other (property-tested).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from loraplex.operator.placement import AdapterDemand, PodCapacity, PodLoad, spread_key


@dataclass(frozen=True)
class Move:
    adapter: str
    source: str
    target: str


def rebalance(pods: Iterable[PodCapacity], adapters: Iterable[AdapterDemand],
              placements: Mapping[str, Iterable[str]], *, max_moves: int,
              threshold: int = 1, fixed: Collection[str] = ()) -> tuple[Move, ...]:
    """Moves that bring `placements` (adapter → pods, as they will be once settled) closer
    to balance. `fixed`: adapters that must not move now (failed, loading, held back)."""
    if threshold < 1:
        raise ValueError(f"rebalance threshold must be at least 1 placement, got {threshold}")
    if max_moves < 0:
        raise ValueError(f"max_moves must not be negative, got {max_moves}")
    demands = {adapter.name: adapter for adapter in adapters}
    loads = {pod.name: PodLoad(pod) for pod in sorted(pods, key=lambda pod: pod.name)}
    for name, where in placements.items():
        for pod in where:
            if pod in loads and name in demands:
                loads[pod].add(demands[name])

    moves: list[Move] = []
    gave: set[str] = set()
    received: set[str] = set()
    while len(moves) < max_moves:
        sources = [load for load in loads.values() if load.pod.name not in received]
        targets = [load for load in loads.values() if load.pod.name not in gave]
        if not sources or not targets:
            break
        source = max(sources, key=spread_key)
        move = None
        for target in sorted(targets, key=spread_key):
            if len(source.adapters) - len(target.adapters) <= threshold:
                break
            move = _best_move(source, target, demands, fixed)
            if move is not None:
                break
        if move is None:
            break
        adapter = demands[move.adapter]
        source.remove(adapter)
        loads[move.target].add(adapter)
        gave.add(move.source)
        received.add(move.target)
        moves.append(move)
    return tuple(moves)


def _best_move(source: PodLoad, target: PodLoad, demands: Mapping[str, AdapterDemand],
               fixed: Collection[str]) -> Move | None:
    """The adapter of `source` that fits `target` and leaves their bytes most even."""
    gap = source.used_bytes - target.used_bytes
    movable = [demands[name] for name in source.adapters
               if name not in fixed and target.fits(demands[name])]
    if not movable:
        return None
    best = min(movable, key=lambda adapter: (abs(gap - 2 * adapter.size_bytes), adapter.name))
    return Move(best.name, source.pod.name, target.pod.name)
