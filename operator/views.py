"""Snapshots of pods and Adapters as the indexes keep them: just what reconcile reads.

Indexes hold these small frozen values instead of whole bodies, so 1,000 Adapters cost
little memory and a cycle reads a consistent snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from loraplex.operator import naming
from loraplex.operator.models import AdapterSpec, SpecError, parse_spec


@dataclass(frozen=True)
class PodView:
    name: str
    namespace: str
    uid: str
    ip: str
    ready: bool
    restarts: int  # summed over containers: a container restart empties the pod's adapters

    @property
    def incarnation(self) -> tuple[str, int]:
        return (self.uid, self.restarts)

    @property
    def url(self) -> str:
        return naming.pod_url(self.ip)


def pod_view(body: Mapping[str, Any]) -> PodView:
    meta, status = body.get("metadata", {}), body.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    ready = (
        status.get("phase") == "Running"
        and conditions.get("Ready") == "True"
        and bool(status.get("podIP"))
        and not meta.get("deletionTimestamp")
    )
    restarts = sum(int(c.get("restartCount") or 0)
                   for c in status.get("containerStatuses") or [])
    return PodView(name=meta.get("name", ""), namespace=meta.get("namespace", ""),
                   uid=meta.get("uid", ""), ip=status.get("podIP") or "", ready=ready,
                   restarts=restarts)


@dataclass(frozen=True)
class AdapterView:
    name: str
    namespace: str
    uid: str
    generation: int | None
    base_model: str
    spec: AdapterSpec | None  # None when the spec is invalid: see `spec_error`
    spec_error: str | None
    status: Mapping[str, Any]
    deleting: bool

    def reference(self) -> dict[str, Any]:
        """Enough of a body for posting Events about this Adapter."""
        return {"apiVersion": naming.API_VERSION, "kind": naming.ADAPTER_KIND,
                "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid}}


def adapter_view(body: Mapping[str, Any]) -> AdapterView:
    meta, raw_spec = body.get("metadata", {}), body.get("spec") or {}
    try:
        spec, error = parse_spec(AdapterSpec, raw_spec, naming.ADAPTER_KIND), None
    except SpecError as problem:
        spec, error = None, str(problem)
    return AdapterView(
        name=meta.get("name", ""), namespace=meta.get("namespace", ""),
        uid=meta.get("uid", ""), generation=meta.get("generation"),
        base_model=str(raw_spec.get("baseModel") or ""), spec=spec, spec_error=error,
        status=dict(body.get("status") or {}), deleting=bool(meta.get("deletionTimestamp")),
    )
