"""Writes the Adapter statuses a reconcile cycle computed: several at once, only changes.

kopf's index shows this operator's own status writes seconds late when thousands of
Adapters change together, so a cycle that compared with the index alone would write the
same status (and post the same Event) again. The writer remembers, per Adapter, the
status it last wrote and the one the index showed then: while the index still shows
that older one, the written one is the Adapter's status; once the index shows anything
else (caught up, or someone else wrote), the index wins again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from loraplex.operator.cluster import Cluster
from loraplex.operator.conditions import merge_patch_for
from loraplex.operator.views import AdapterView

EventSink = Callable[[Mapping[str, Any], str, str, str], None]  # ref, type, reason, message


class AdapterStatusWriter:
    def __init__(self, cluster: Cluster, events: EventSink) -> None:
        self.cluster, self.events = cluster, events
        # adapter → (status the index showed when we wrote, status we wrote)
        self.written: dict[str, tuple[Mapping[str, Any], dict[str, Any]]] = {}

    def latest(self, view: AdapterView) -> AdapterView:
        """`view` with the status it has now, as far as this writer knows."""
        record = self.written.get(view.name)
        if record is None:
            return view
        shown, wrote = record
        if view.status == shown:  # the index has not seen our write yet
            return replace(view, status=wrote)
        del self.written[view.name]
        return view

    async def write(self, changes: list[tuple[AdapterView, AdapterView, dict[str, Any]]]
                    ) -> None:
        """`changes`: (the index's view, its latest view, the new status) per Adapter."""
        # one at a time, 10,000 Adapters' statuses took minutes
        limit = asyncio.Semaphore(self.cluster.status_writes_in_flight)

        async def one(indexed: AdapterView, latest: AdapterView,
                      status: dict[str, Any]) -> None:
            async with limit:
                await self.cluster.patch_adapter_status(
                    latest.namespace, latest.name, merge_patch_for(latest.status, status))
            self.written[latest.name] = (indexed.status, status)
            self._announce(latest, status)

        await asyncio.gather(*(one(*change) for change in changes))

    def forget(self, names: set[str]) -> None:
        """Drop the records of Adapters that are gone."""
        for name in [name for name in self.written if name not in names]:
            del self.written[name]

    def _announce(self, view: AdapterView, status: Mapping[str, Any]) -> None:
        before, after = view.status.get("phase"), status["phase"]
        if before == after or after == "Loading":
            return
        warning = after in ("Failed", "Unreachable") or (after == "Pending"
                                                          and before is not None)
        self.events(view.reference(), "Warning" if warning else "Normal", after,
                    status.get("message") or after)
