"""What to ask the pods to do: the difference between the plan and what pods report.

A pure function of (plan, reports, adapters), so it is unit-tested without servers:
load what a planned pod lacks (or holds with an old source, or failed on before the
spec changed), unload what a pod holds but should not. Adapters the operator does not
manage (no Adapter object) are never touched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from loraplex.operator.admin import PodAdapter, Preload
from loraplex.operator.views import AdapterView


@dataclass(frozen=True)
class Load:
    pod: str
    adapter: str
    source: str
    pinned: bool
    preload: Preload
    replace: bool = False  # unload first: the pod holds another version or a failure


@dataclass(frozen=True)
class Unload:
    pod: str
    adapter: str


def spec_changed_since_status(view: AdapterView) -> bool:
    return view.generation is not None and \
        view.status.get("observedGeneration") != view.generation


def plan_actions(placements: Mapping[str, tuple[str, ...]],
                 reports: Mapping[str, Mapping[str, PodAdapter]],
                 adapters: Mapping[str, AdapterView],
                 refused: Mapping[tuple[str, str], int | None]) -> list[Load | Unload]:
    """`reports`: pod → adapters it holds (reachable pods only); `refused`: (adapter, pod)
    → generation at which the pod refused the load (not retried until the spec changes)."""
    actions: list[Load | Unload] = []
    for name, pods in sorted(placements.items()):
        view = adapters[name]
        if view.spec is None:
            continue
        for pod in pods:
            if pod not in reports:
                continue
            if (name, pod) in refused and refused[(name, pod)] == view.generation:
                continue
            held = reports[pod].get(name)
            replace = held is not None and (
                (held.source is not None and held.source != view.spec.source)
                or (held.failed and spec_changed_since_status(view)))
            repin = held is not None and held.pinned is not None \
                and held.pinned != view.spec.pinned and not held.failed
            if held is None or replace or repin:
                actions.append(Load(pod, name, view.spec.source, view.spec.pinned,
                                    "device" if view.spec.pinned else "host", replace))
    for pod, held in sorted(reports.items()):
        for name in sorted(held):
            view = adapters.get(name)
            if view is None or (view.spec is None and not view.deleting):
                continue  # not ours, or frozen until its spec is valid again
            if pod not in placements.get(name, ()):
                actions.append(Unload(pod, name))
    return actions
