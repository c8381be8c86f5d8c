"""Writes the placement table the routers read: a BMD's adapter → ready pod addresses.

Rewritten whole, with a new generation, only when it changed. A pod is listed for an
adapter only while it reports the adapter loaded (from the source the spec names) and
the plan keeps it there; reconcile writes the table before it unloads anything, so a
router stops choosing a copy before that copy goes (a move's old copy, a copy no longer
wanted), and again after the loads, so new copies are served once confirmed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from loraplex.contracts.adapters import AdapterStatus
from loraplex.contracts.placements import PlacementTable
from loraplex.operator import naming
from loraplex.operator.actions import canonical_source
from loraplex.operator.builders import Owner, placement_table, read_placements, same_placements
from loraplex.operator.cluster import Cluster
from loraplex.operator.placement import PlacementPlan
from loraplex.operator.views import AdapterView


class PlacementTableWriter:
    def __init__(self, owner: Owner, cluster: Cluster) -> None:
        self.owner, self.cluster = owner, cluster
        self.table: PlacementTable | None = None  # last written (or read) table

    async def write(self, plan: PlacementPlan,
                    reports: Mapping[str, Mapping[str, AdapterStatus]],
                    views: Mapping[str, AdapterView], urls: Mapping[str, str]) -> None:
        """`reports`: what each answering pod holds; `urls`: pod name → its address."""
        adapters = {}
        for name, pods in plan.placements.items():
            source = canonical_source(views[name].spec.source)
            adapters[name] = [urls[pod] for pod in pods
                              if (held := reports.get(pod, {}).get(name)) is not None
                              and held.loaded and held.source in (None, source)]
        table = placement_table(self.owner, urls.values(), adapters)
        name = naming.placements_name(self.owner.name)
        if self.table is None:
            self.table = read_placements(
                await self.cluster.get_configmap(self.owner.namespace, name))
        if self.table is not None and same_placements(table, self.table):
            return
        previous = self.table.generation if self.table is not None else 0
        table = replace(table, generation=previous + 1)
        await self.cluster.patch_configmap_data(self.owner.namespace, name,
                                                {naming.PLACEMENTS_KEY: table.to_json()})
        self.table = table
