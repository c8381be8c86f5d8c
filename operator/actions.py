"""What to ask the pods to do: the difference between the plan and what pods report.

A pure function of (plan, reports, adapters), so it is unit-tested without servers:
load what a planned pod lacks (or holds with an old source, or failed on before the
spec changed), unload what a pod holds but should not. Adapters the operator does not
manage (no Adapter object) are never touched. A `PUT` with a new source makes the pod
retire the old weights, and a `PUT` of a failed adapter retries it, so no action needs
an unload first. A failed load is also retried for adapters named in `retry` (their
credentials Secret changed since the failed push).
"""

from __future__ import annotations

import posixpath
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from loraplex.contracts.adapters import AdapterStatus, Preload
from loraplex.operator.views import AdapterView


@dataclass(frozen=True)
class Load:
    pod: str
    adapter: str
    source: str
    pinned: bool
    preload: Preload
    # Sent with the load, for the source's fetch (credentials.py); secrets, so never shown.
    credentials: Mapping[str, str] | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Unload:
    pod: str
    adapter: str


def canonical_source(source: str) -> str:
    """The spelling a pod reports a source in (`file:///x/` → `/x`, `hf://a//b` → `hf://a/b`)."""
    source = source.strip()
    for scheme in ("hf://", "s3://"):
        if source.startswith(scheme):
            body, at, revision = source[len(scheme):].partition("@")
            return scheme + "/".join(s for s in body.split("/") if s) + at + revision
    if source.startswith("file://"):
        source = source[len("file://"):]
    return posixpath.normpath(source)


def spec_changed_since_status(view: AdapterView) -> bool:
    return view.generation is not None and \
        view.status.get("observedGeneration") != view.generation


def plan_actions(placements: Mapping[str, tuple[str, ...]],
                 reports: Mapping[str, Mapping[str, AdapterStatus]],
                 adapters: Mapping[str, AdapterView],
                 refused: Mapping[tuple[str, str], int | None],
                 retry: Collection[str] = ()) -> list[Load | Unload]:
    """`reports`: pod → adapters it holds (reachable pods only); `refused`: (adapter, pod)
    → generation at which the pod refused the load (not retried until the spec changes);
    `retry`: adapters whose failed loads are retried anyway."""
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
            stale = held is not None and (
                (held.source is not None
                 and held.source != canonical_source(view.spec.source))
                or (held.failed and (spec_changed_since_status(view) or name in retry))
                or (held.pinned is not None and held.pinned != view.spec.pinned
                    and not held.failed))
            if held is None or stale:
                actions.append(Load(pod, name, view.spec.source, view.spec.pinned,
                                    Preload.DEVICE if view.spec.pinned else Preload.HOST))
    for pod, held in sorted(reports.items()):
        for name in sorted(held):
            view = adapters.get(name)
            if view is None or (view.spec is None and not view.deleting):
                continue  # not ours, or frozen until its spec is valid again
            if pod not in placements.get(name, ()):
                actions.append(Unload(pod, name))
    return actions
