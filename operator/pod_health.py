"""What reconcile remembers about each runtime pod between cycles: restarts and silences.

A pod whose uid or container restart count changed is a new incarnation with empty
memory: loads it refused before deserve a fresh try. A Ready pod that stops answering its
admin API (a container restarting, a hung process) keeps its placements for
`--pod-grace-s` (they are reported `Unreachable`, not moved), and they move elsewhere
only once the grace has passed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping

from loraplex.operator.sync import PodObservation
from loraplex.operator.views import PodView

logger = logging.getLogger(__name__)


class PodHealth:
    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.incarnations: dict[str, tuple[str, int]] = {}
        self.silent_since: dict[str, float] = {}  # pod → when it stopped answering
        self.observed: Mapping[str, PodObservation] = {}

    def restarted(self, pods: Iterable[PodView]) -> list[str]:
        """Names of the pods that restarted since the last cycle."""
        names = []
        for pod in pods:
            if self.incarnations.get(pod.name, pod.incarnation) != pod.incarnation:
                logger.info("pod %s restarted: refilling it", pod.name)
                names.append(pod.name)
            self.incarnations[pod.name] = pod.incarnation
        return names

    def silent_within_grace(self, observations: Mapping[str, PodObservation]) -> set[str]:
        """Ready pods that stopped answering less than the grace ago: their placements
        are held, not moved, and refilled once they answer again."""
        self.observed = observations
        now = time.monotonic()
        for name, observation in observations.items():
            if observation.adapters is None:
                self.silent_since.setdefault(name, now)
            else:
                self.silent_since.pop(name, None)
        self.silent_since = {n: t for n, t in self.silent_since.items() if n in observations}
        return {name for name, since in self.silent_since.items()
                if now - since < self.grace_s}

    def silence(self, pod: str) -> str | None:
        """Why `pod` said nothing this cycle, or None when it answered."""
        observation = self.observed.get(pod)
        if observation is None or observation.adapters is not None:
            return None
        return f"pod not answering: {observation.error}"
