"""Adapter and BMD status from pod reports: phases, conditions, kept timestamps."""

from __future__ import annotations

from loraplex.contracts.adapters import AdapterStatus
from loraplex.operator.conditions import merge_patch_for, set_condition
from loraplex.operator.placement import Shortfall
from loraplex.operator.status import PlacementReport, adapter_status, bmd_status, pending_status
from loraplex.operator.views import adapter_view

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def view(replicas=2, status=None, generation=3):
    return adapter_view({
        "metadata": {"name": "a", "namespace": "ns", "uid": "u", "generation": generation},
        "spec": {"baseModel": "b", "source": "/x", "replicas": replicas},
        "status": status or {}})


def loaded(rank=8):
    return AdapterStatus(name="a", state="host", source="/x", pinned=False, rank=rank,
                         size_bytes=1000, digest="sha256:1")


def test_ready_only_when_pods_confirm_and_facts_come_from_the_pod():
    status = adapter_status(view(), [PlacementReport("p1", loaded()),
                                     PlacementReport("p2", None)], None, T0)
    assert status["phase"] == "Loading" and status["ready"] == "1/2"
    assert (status["rank"], status["sizeBytes"], status["digest"]) == (8, 1000, "sha256:1")
    assert [p["state"] for p in status["placements"]] == ["Ready", "Loading"]
    status = adapter_status(view(status=status), [PlacementReport("p1", loaded()),
                                                  PlacementReport("p2", loaded())], None, T1)
    assert status["phase"] == "Ready" and status["observedGeneration"] == 3
    assert status["placements"][0]["since"] == T0  # unchanged state keeps its time
    assert status["placements"][1]["since"] == T1


def test_failures_carry_the_pods_message():
    error = AdapterStatus(name="a", state="error", source="/x",
                          error="rank 128 above --max-lora-rank 64")
    status = adapter_status(view(replicas=1), [PlacementReport("p1", error)], None, T0)
    assert status["phase"] == "Failed" and "rank 128" in status["message"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["reason"] == "LoadFailed"
    assert conditions["Degraded"]["status"] == "True"
    refused = adapter_status(view(replicas=1), [PlacementReport("p1", None, "HTTP 422: bad")],
                             None, T0)
    assert refused["phase"] == "Failed" and "HTTP 422" in refused["message"]


def test_a_pod_not_answering_is_its_own_phase_not_loading():
    silent = PlacementReport("p2", None, unreachable="pod not answering: connection refused")
    status = adapter_status(view(), [PlacementReport("p1", loaded()), silent], None, T0)
    assert status["phase"] == "Unreachable" and status["ready"] == "1/2"
    assert [p["state"] for p in status["placements"]] == ["Ready", "Unreachable"]
    assert "p2: pod not answering: connection refused" in status["message"]
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "PodNotAnswering")
    loading = adapter_status(view(), [PlacementReport("p1", None), silent], None, T0)
    assert loading["phase"] == "Loading"  # a load still in flight elsewhere says so
    assert bmd_status({}, replicas=1, ready_pods=1, adapter_phases=["Unreachable"], placed=1,
                      endpoint="e", generation=1, problem=None, now=T0)["adapters"][
        "pending"] == 1


def test_unplaceable_adapters_are_pending_with_the_reason():
    shortfall = Shortfall(2, "InsufficientCapacity", "2 of 2 replica(s) unplaced: no ready pods")
    status = adapter_status(view(), [], shortfall, T0)
    assert status["phase"] == "Pending" and "no ready pods" in status["message"]
    placed = {c["type"]: c for c in status["conditions"]}["Placed"]
    assert placed["status"] == "False" and placed["reason"] == "InsufficientCapacity"
    orphan = pending_status(view(), "BaseModelNotFound", "gone", T0)
    assert orphan["phase"] == "Pending" and orphan["placements"] == []


def test_bmd_status_counts_and_conditions():
    status = bmd_status({}, replicas=3, ready_pods=2, adapter_phases=["Ready", "Loading",
                                                                       "Failed", "Pending"],
                        placed=3, endpoint="http://b.ns.svc", generation=4, problem=None, now=T0)
    assert status["adapters"] == {"placed": 3, "ready": 1, "pending": 2, "failed": 1}
    assert status["ready"] == "2/3" and status["observedGeneration"] == 4
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {"Available": "True", "Ready": "False", "Degraded": "True"}


def test_conditions_keep_transition_time_and_patches_drop_stale_keys():
    first = set_condition([], "Ready", False, "Loading", "", 1, T0)
    same = set_condition(first, "Ready", False, "Loading", "still", 2, T1)
    flipped = set_condition(same, "Ready", True, "Loaded", "", 2, T1)
    assert same[0]["lastTransitionTime"] == T0 and flipped[0]["lastTransitionTime"] == T1
    assert merge_patch_for({"message": "x", "phase": "A"}, {"phase": "B"}) == {
        "message": None, "phase": "B"}
