"""The pods a router may send to, gathered from its sources, and the choice among them.

Pods come from the static `--pods` list and from the placement table (`pods`); a pod that
leaves both is forgotten (requests already on their way to it finish normally). The pool
owns the mutable `Pod` states; `routing.choose_pod` decides on a snapshot of them.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable

from loraplex.contracts.placements import PlacementTable, normalize_pod_url
from loraplex.router.pod import Pod
from loraplex.router.routing import Choice, choose_pod


class PodPool:
    def __init__(self, static_urls: Iterable[str] = (), *, policy: str = "affinity",
                 spill_threshold: int = 0, rng: random.Random | None = None) -> None:
        self.policy = policy
        self.spill_threshold = spill_threshold
        self._rng = rng or random.Random()
        self._static = tuple(dict.fromkeys(normalize_pod_url(url) for url in static_urls))
        self._table = PlacementTable()
        self._pods: dict[str, Pod] = {}
        self._sync()

    @property
    def table(self) -> PlacementTable:
        return self._table

    @property
    def pods(self) -> list[Pod]:
        return list(self._pods.values())

    def get(self, url: str) -> Pod | None:
        return self._pods.get(url)

    def set_table(self, table: PlacementTable) -> None:
        self._table = table
        self._sync()

    def _sync(self) -> None:
        wanted = dict.fromkeys((*self._static, *self._table.pods))
        self._pods = {url: self._pods.get(url) or Pod(url) for url in wanted}

    def base_models(self) -> set[str]:
        return {pod.base_model for pod in self._pods.values() if pod.base_model}

    def adapter_of(self, requested: str | None) -> str | None:
        """The adapter to route by: None for the base model (no name, or a pod's base id)."""
        if not requested or requested in self.base_models():
            return None
        return requested

    def pick(self, adapter: str | None, exclude: Collection[str] = ()) -> Choice | None:
        """A pod not in `exclude`: among usable ones, or when none is usable among all the
        rest (a pod marked down may be back; the caller bounds its attempts)."""
        others = [pod for pod in self._pods.values() if pod.url not in exclude]
        candidates = [pod for pod in others if pod.usable] or others
        placed = self._table.pods_for(adapter) if adapter is not None else ()
        return choose_pod(candidates, adapter, placed, policy=self.policy,
                          spill_threshold=self.spill_threshold, rng=self._rng)
