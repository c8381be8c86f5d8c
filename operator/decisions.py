"""One info-level log line per placement decision, confirmed load and recovery.

What a person reading `kubectl logs` of the operator needs to follow an adapter: where it
was placed and why, when the pod confirmed it, and when a pod lost it and it is given
back. Lines name the adapter, the pod and the reason; moves are logged by `moves.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping

from loraplex.contracts.adapters import AdapterStatus

logger = logging.getLogger(__name__)


class DecisionLog:
    def __init__(self) -> None:
        self.confirmed: set[tuple[str, str]] = set()  # (adapter, pod) seen loaded

    def placements(self, before: Mapping[str, tuple[str, ...]],
                   after: Mapping[str, tuple[str, ...]], answering: Collection[str],
                   moving: Collection[tuple[str, str]]) -> None:
        """`before`/`after`: adapter → pods of the last and this plan; `moving`: (adapter,
        pod) pairs that moves added or dropped (logged as moves)."""
        for name, pods in sorted(after.items()):
            old = before.get(name, ())
            lost = [pod for pod in old if pod not in pods and pod not in answering]
            for pod in pods:
                if pod in old or (name, pod) in moving:
                    continue
                reason = (f"replacing the copy on {lost[0]} (pod gone)" if lost
                          else "not placed yet" if not old else "more replicas wanted")
                logger.info("placing %s on %s: %s", name, pod, reason)
            for pod in old:
                if pod in pods or (name, pod) in moving:
                    continue
                reason = "pod gone" if pod not in answering else "fewer replicas wanted"
                logger.info("unplacing %s from %s: %s", name, pod, reason)

    def loads(self, planned: Mapping[str, tuple[str, ...]],
              reports: Mapping[str, Mapping[str, AdapterStatus]]) -> None:
        """Log loads the pods confirmed since the last cycle, and copies they lost."""
        confirmed = set()
        for name, pods in sorted(planned.items()):
            for pod in pods:
                if pod not in reports:
                    continue
                held = reports[pod].get(name)
                if held is not None and held.loaded:
                    confirmed.add((name, pod))
                    if (name, pod) not in self.confirmed:
                        logger.info("loaded %s on %s: confirmed by the pod (%s)", name, pod,
                                    held.state)
                elif (name, pod) in self.confirmed:
                    logger.info("recovering %s on %s: the pod no longer holds it, loading "
                                "it again", name, pod)
        self.confirmed = confirmed
