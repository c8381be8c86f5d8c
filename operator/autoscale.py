"""How many pods keep an autoscaled Adapter warm: its load, the way the HPA decides.

An Adapter with `spec.autoscale` gets `ceil(in-flight / targetInFlight)` replicas, where
in-flight is the sum of the adapter's running requests over every pod (`in_use` in each
pod's `GET /v1/adapters`, read by reconcile anyway: no extra calls), within
`minReplicas..maxReplicas`. Changes smaller than the tolerance are ignored, and the
recommendation is stabilised like the HorizontalPodAutoscaler's: scaling up follows the
lowest recommendation of the last `scaleUpStabilizationSeconds`, scaling down the highest
of the last `scaleDownStabilizationSeconds`, so a burst or a lull does not thrash
placements. Pure apart from the clock passed in.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from loraplex.contracts.adapters import AdapterStatus
from loraplex.operator.models.adapter import AutoscaleSpec
from loraplex.operator.views import AdapterView

logger = logging.getLogger(__name__)

TOLERANCE = 0.1  # as the HPA: a load within 10% of the target changes nothing


@dataclass(frozen=True)
class Decision:
    replicas: int
    in_flight: int
    recommended: int  # before stabilisation


def recommend(in_flight: int, current: int, spec: AutoscaleSpec) -> int:
    """Replicas for `in_flight` running requests, before stabilisation."""
    if current > 0 and abs(in_flight / (current * spec.target_in_flight) - 1) <= TOLERANCE:
        wanted = current
    else:
        wanted = math.ceil(in_flight / spec.target_in_flight)
    return min(spec.max_replicas, max(spec.min_replicas, wanted))


class Autoscaler:
    """Recommendation history per adapter, kept between reconcile cycles."""

    def __init__(self) -> None:
        self.history: dict[str, deque[tuple[float, int, bool]]] = {}  # (time, replicas, seed)
        self.current: dict[str, int] = {}

    def decide(self, name: str, spec: AutoscaleSpec, in_flight: int, now: float,
               last: int | None) -> Decision:
        """`last`: the replicas last reported in status (after an operator restart)."""
        current = self.current.get(name)
        if current is None:
            current = min(spec.max_replicas, max(spec.min_replicas, last or 0))
        recommended = recommend(in_flight, current, spec)
        # first sight (a new adapter, or a restarted operator): the replicas it has count as
        # a recommendation for scaling down, so a restart does not drop them at once
        history = self.history.setdefault(name, deque([(now, current, True)]))
        history.append((now, recommended, False))
        horizon = max(spec.scale_up_stabilization_seconds,
                      spec.scale_down_stabilization_seconds)
        while history and history[0][0] < now - horizon:
            history.popleft()
        up = min(r for t, r, seeded in history
                 if t >= now - spec.scale_up_stabilization_seconds and not seeded)
        down = max(r for t, r, _ in history
                   if t >= now - spec.scale_down_stabilization_seconds)
        replicas = current
        if replicas < up:
            replicas = up
        if replicas > down:
            replicas = down
        replicas = min(spec.max_replicas, max(spec.min_replicas, replicas))
        self.current[name] = replicas
        return Decision(replicas, in_flight, recommended)

    def replicas(self, views: Mapping[str, AdapterView],
                 reports: Mapping[str, Mapping[str, AdapterStatus]],
                 now: float) -> dict[str, Decision]:
        """Decisions for the autoscaled adapters of `views` (the others are forgotten)."""
        decisions = {}
        for name, view in views.items():
            if view.spec is None or view.spec.autoscale is None or view.deleting:
                continue
            in_flight = sum(held[name].in_use for held in reports.values() if name in held)
            before = self.current.get(name)
            decision = self.decide(name, view.spec.autoscale, in_flight, now,
                                   view.status.get("replicas"))
            if before is not None and decision.replicas != before:
                logger.info("autoscaling %s from %d to %d replica(s): %d request(s) in "
                            "flight, target %g per replica", name, before, decision.replicas,
                            in_flight, view.spec.autoscale.target_in_flight)
            decisions[name] = decision
        for name in [n for n in self.current if n not in decisions]:
            self.current.pop(name, None)
            self.history.pop(name, None)
        return decisions
