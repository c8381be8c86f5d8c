"""Adapter and BaseModelDeployment status, computed from what the pods report.

Pure functions: the same observations always give the same status (timestamps are kept
while a state holds), so reconcile writes status only when something really changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from loraplex.contracts.adapters import AdapterStatus
from loraplex.operator.conditions import set_condition
from loraplex.operator.placement import Shortfall
from loraplex.operator.views import AdapterView

BASE_MODEL_NOT_FOUND = "BaseModelNotFound"
INVALID_SPEC = "InvalidSpec"
CREDENTIALS_NOT_FOUND = "CredentialsNotFound"
POD_NOT_ANSWERING = "PodNotAnswering"


@dataclass(frozen=True)
class PlacementReport:
    """One planned pod of an adapter: what that pod says, or why it said nothing."""

    pod: str
    held: AdapterStatus | None
    refusal: str | None = None  # the pod refused the load with this message
    unreachable: str | None = None


def _placement_state(report: PlacementReport) -> tuple[str, str]:
    if report.refusal:
        return "Failed", report.refusal
    if report.held is None:
        if report.unreachable:
            return "Unreachable", report.unreachable
        return "Loading", "load requested"
    if report.held.failed:
        return "Failed", report.held.error or "the pod reports a load error"
    if report.held.loaded:
        return "Ready", f"loaded ({report.held.state})"
    return "Loading", report.held.state or "loading"


def adapter_status(view: AdapterView, reports: Sequence[PlacementReport],
                   shortfall: Shortfall | None, now: str,
                   credentials: str | None = None, replicas: int | None = None,
                   in_flight: int | None = None) -> dict[str, Any]:
    """Status of an Adapter with a valid spec whose base model exists. `credentials`: why
    its credentials could not be read, so that no pod was asked to load it (`Pending`);
    `replicas`: the placements wanted when autoscale decides them, with the `in_flight`
    requests it decided on (default: spec.replicas)."""
    if view.spec is None:
        raise ValueError(f"adapter {view.name!r} has an invalid spec: use invalid_status")
    previous = {p.get("pod"): p for p in view.status.get("placements") or []}
    placements, facts = [], dict.fromkeys(("rank", "sizeBytes", "digest"))
    for report in sorted(reports, key=lambda r: r.pod):
        state, message = _placement_state(report)
        before = previous.get(report.pod) or {}
        since = before.get("since") if before.get("state") == state else None
        placements.append({"pod": report.pod, "state": state, "since": since or now,
                           "message": message})
        held = report.held
        if held is not None and (held.loaded or held.rank is not None):
            for key, value in (("rank", held.rank), ("sizeBytes", held.size_bytes),
                               ("digest", held.digest)):
                facts[key] = facts[key] if value is None else value
    for key in facts:  # keep what an earlier pod reported while none holds it now
        if facts[key] is None:
            facts[key] = view.status.get(key)

    replicas = view.spec.replicas if replicas is None else replicas
    ready = sum(p["state"] == "Ready" for p in placements)
    failed = [p for p in placements if p["state"] == "Failed"]
    loading = [p for p in placements if p["state"] == "Loading"]
    silent = [p for p in placements if p["state"] == "Unreachable"]
    if credentials is not None:
        phase, reason = "Pending", CREDENTIALS_NOT_FOUND
        message = f"{credentials}; ready on {ready}/{replicas} pod(s)" if ready else credentials
    elif ready >= replicas:
        phase, reason, message = "Ready", "Loaded", f"ready on {ready}/{replicas} pod(s)"
    elif failed and not loading and not ready and not silent:
        phase, reason, message = "Failed", "LoadFailed", f"{failed[0]['pod']}: " \
            f"{failed[0]['message']}"
    elif silent and not loading:  # not "still loading": the pod does not answer at all
        phase, reason = "Unreachable", POD_NOT_ANSWERING
        message = (f"ready on {ready}/{replicas} pod(s); {silent[0]['pod']}: "
                   f"{silent[0]['message']}")
    elif placements:
        phase, reason = "Loading", "Loading"
        message = f"ready on {ready}/{replicas} pod(s)"
        if failed:
            message += f"; {failed[0]['pod']}: {failed[0]['message']}"
    else:
        phase, reason = "Pending", shortfall.reason if shortfall else "Pending"
        message = shortfall.message if shortfall else "waiting for placement"
    if shortfall and phase != "Pending":
        message += f"; {shortfall.message}"

    conditions = view.status.get("conditions") or []
    generation = view.generation
    conditions = set_condition(conditions, "Ready", phase == "Ready", reason, message,
                               generation, now)
    placed_ok = shortfall is None
    conditions = set_condition(
        conditions, "Placed", placed_ok, "Placed" if placed_ok else shortfall.reason,
        f"{len(placements)}/{replicas} replica(s) placed" if placed_ok else shortfall.message,
        generation, now)
    degraded = bool(failed) or (shortfall is not None and bool(placements))
    conditions = set_condition(
        conditions, "Degraded", degraded,
        "LoadFailed" if failed else (shortfall.reason if degraded and shortfall
                                     else "AsExpected"),
        (f"{failed[0]['pod']}: {failed[0]['message']}" if failed
         else shortfall.message if degraded and shortfall else ""),
        generation, now)
    status = {
        "phase": phase,
        "replicas": replicas,
        "readyReplicas": ready,
        "ready": f"{ready}/{replicas}",
        "placements": placements,
        "conditions": conditions,
        "message": message,
        **{key: value for key, value in facts.items() if value is not None},
    }
    if in_flight is not None:
        status["inFlight"] = in_flight
    if generation is not None:
        status["observedGeneration"] = generation
    return status


def pending_status(view: AdapterView, reason: str, message: str, now: str) -> dict[str, Any]:
    """Status of an Adapter the operator cannot place: no base model, or a bad spec."""
    phase = "Failed" if reason == INVALID_SPEC else "Pending"
    replicas = view.spec.replicas if view.spec else None
    conditions = view.status.get("conditions") or []
    conditions = set_condition(conditions, "Ready", False, reason, message, view.generation, now)
    conditions = set_condition(conditions, "Placed", False, reason, message, view.generation,
                               now)
    status: dict[str, Any] = {
        "phase": phase, "readyReplicas": 0, "placements": [], "conditions": conditions,
        "message": message,
    }
    if replicas is not None:
        status.update(replicas=replicas, ready=f"0/{replicas}")
    for key in ("rank", "sizeBytes", "digest"):
        if view.status.get(key) is not None:
            status[key] = view.status[key]
    if view.generation is not None:
        status["observedGeneration"] = view.generation
    return status


def bmd_status(previous: Mapping[str, Any], *, replicas: int, ready_pods: int,
               adapter_phases: Sequence[str], placed: int, endpoint: str,
               generation: int | None, problem: str | None, now: str,
               rejected: str | None = None, pods: int | None = None,
               selector: str | None = None) -> dict[str, Any]:
    """`replicas`: pods wanted; `pods`: runtime pods that exist (status.replicas, what the
    scale subresource reports; default `ready_pods`); `selector`: their label selector.
    `problem`: the spec cannot be read; `rejected`: the API server refused a child
    object (the pods of the previous version may still serve, so Available is theirs)."""
    counts = {
        "placed": placed,
        "ready": sum(phase == "Ready" for phase in adapter_phases),
        "pending": sum(phase in ("Pending", "Loading", "Unreachable")
                       for phase in adapter_phases),
        "failed": sum(phase == "Failed" for phase in adapter_phases),
    }
    conditions = previous.get("conditions") or []
    available = ready_pods > 0 and problem is None
    conditions = set_condition(
        conditions, "Available", available,
        "PodsReady" if available else ("ReconcileError" if problem else "NoReadyPods"),
        problem or f"{ready_pods}/{replicas} runtime pod(s) ready", generation, now)
    all_ready = (problem is None and rejected is None and ready_pods >= replicas
                 and counts["ready"] == len(adapter_phases))
    not_ready_reason = ("ReconcileError" if problem else
                        "ChildRejected" if rejected else "Progressing")
    conditions = set_condition(
        conditions, "Ready", all_ready, "AllReady" if all_ready else not_ready_reason,
        problem or rejected or f"{ready_pods}/{replicas} pod(s), "
        f"{counts['ready']}/{len(adapter_phases)} adapter(s) ready", generation, now)
    failures = [rejected] if rejected else []
    if counts["failed"]:
        failures.append(f"{counts['failed']} adapter(s) failed")
    conditions = set_condition(
        conditions, "Degraded", bool(failures),
        "ChildRejected" if rejected else "AdapterFailed" if failures else "AsExpected",
        "; ".join(failures), generation, now)
    status = {
        "replicas": ready_pods if pods is None else pods,
        "readyReplicas": ready_pods,
        "ready": f"{ready_pods}/{replicas}",
        "adapters": counts,
        "endpoint": endpoint,
        "conditions": conditions,
    }
    if selector is not None:
        status["selector"] = selector
    if generation is not None:
        status["observedGeneration"] = generation
    return status
