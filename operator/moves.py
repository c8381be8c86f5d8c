"""Rebalancing moves in flight, carried out make-before-break across reconcile cycles.

A move (adapter, source, target) first adds the target to the adapter's placements (one
replica more than wanted while it lasts); once the target pod confirms the load, the
source is dropped from the plan and so unloaded. An adapter therefore never has fewer
ready copies than before the move. A move whose target stops answering, refuses or fails
the load is abandoned (the source copy never left); one whose source pod is gone simply
becomes an ordinary replica on the target.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping, Sequence

from loraplex.contracts.adapters import AdapterStatus
from loraplex.operator.rebalance import Move

logger = logging.getLogger(__name__)


class MovesInFlight:
    def __init__(self) -> None:
        self.moves: dict[str, Move] = {}  # adapter → its move in flight
        self.settled: set[tuple[str, str]] = set()  # (adapter, pod) of moves the last review ended

    def __bool__(self) -> bool:
        return bool(self.moves)

    def review(self, reports: Mapping[str, Mapping[str, AdapterStatus]],
               refused: Collection[tuple[str, str]], source_of: Mapping[str, str],
               adapters: Collection[str]) -> set[tuple[str, str]]:
        """Settle the moves the pods' reports decide; returns the (adapter, pod) pairs to drop
        from the adapter's current placements (a finished move's source, an abandoned
        move's target). `source_of`: adapter → the source it must load from, as pods
        report it; `adapters`: the adapters that still exist."""
        dropped, self.settled = set(), set()
        for name, move in list(self.moves.items()):
            held = reports.get(move.target, {}).get(name)
            outcome, drop = None, None
            if name not in adapters:
                outcome = "adapter deleted"
            elif move.target not in reports:
                outcome, drop = f"abandoned: {move.target} is not answering", move.target
            elif (name, move.target) in refused or (held is not None and held.failed):
                outcome, drop = f"abandoned: {move.target} failed the load", move.target
            elif move.source not in reports:
                outcome, drop = f"{move.source} is gone: kept as a replica", None
            elif held is not None and held.loaded and held.source in (None, source_of[name]):
                outcome, drop = "done: the new copy is ready", move.source
            if outcome is None:
                continue
            del self.moves[name]
            self.settled |= {(name, move.source), (name, move.target)}
            if name in adapters and drop is not None:
                dropped.add((name, drop))
            logger.info("move of %s from %s to %s %s", name, move.source, move.target,
                        outcome)
        return dropped

    def pairs(self) -> set[tuple[str, str]]:
        """(adapter, pod) pairs that moves in flight or just ended added or drop."""
        return self.settled | {(name, pod) for name, move in self.moves.items()
                               for pod in (move.source, move.target)}

    def wanted_extra(self, name: str) -> int:
        """Replicas an adapter is given above its spec while its move runs."""
        return int(name in self.moves)

    def order(self, name: str, pods: Iterable[str]) -> list[str]:
        """`pods` in order of preference with a moving adapter's target last, so that when
        room is short the copy that is already ready stays."""
        move = self.moves.get(name)
        pods = list(dict.fromkeys(pods))
        if move is None or move.target not in pods:
            return pods
        return [pod for pod in pods if pod != move.target] + [move.target]

    def start(self, moves: Sequence[Move],
              placements: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        """Record new moves; returns the placements with each move's target added."""
        result = dict(placements)
        for move in moves:
            self.moves[move.adapter] = move
            result[move.adapter] = tuple(sorted({*result[move.adapter], move.target}))
            logger.info("moving %s from %s to %s: rebalance", move.adapter, move.source,
                        move.target)
        return result
