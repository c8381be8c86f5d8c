"""What the handlers of one operator process share: clients, reconcilers and wake-ups.

Handed to kopf as `memo.state`; kopf copies the memo per object, shallowly, so every
handler sees this same object.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from loraplex.operator.cluster import Cluster
from loraplex.operator.config import OperatorConfig
from loraplex.operator.reconcile import BaseModelReconciler

BmdKey = tuple[str, str]  # (namespace, name)


@dataclass
class OperatorState:
    config: OperatorConfig
    reconcilers: dict[BmdKey, BaseModelReconciler] = field(default_factory=dict)
    wakeups: dict[BmdKey, asyncio.Event] = field(default_factory=dict)
    _cluster: Cluster | None = None

    @property
    def cluster(self) -> Cluster:
        """Created on first use, inside the operator's event loop."""
        if self._cluster is None:
            self._cluster = Cluster()
        return self._cluster

    def wakeup(self, key: BmdKey) -> asyncio.Event:
        return self.wakeups.setdefault(key, asyncio.Event())

    def wake(self, key: BmdKey) -> None:
        """Ask the BMD's reconcile loop for a cycle now (a no-op if it has none)."""
        self.wakeup(key).set()

    async def aclose(self) -> None:
        for reconciler in list(self.reconcilers.values()):
            await reconciler.aclose()
        if self._cluster is not None:
            await self._cluster.aclose()
