"""Adapter autoscale: replicas from running requests, stabilised as the HPA does."""

from __future__ import annotations

import pytest

from loraplex.contracts.adapters import AdapterState, AdapterStatus
from loraplex.operator import naming
from loraplex.operator.autoscale import Autoscaler, recommend
from loraplex.operator.models import AdapterSpec, SpecError, parse_spec
from loraplex.operator.models.adapter import AutoscaleSpec
from loraplex.operator.views import adapter_view


def autoscale(**fields) -> AutoscaleSpec:
    return AutoscaleSpec.model_validate({"maxReplicas": 3, "targetInFlight": 2, **fields})


def test_recommendation_is_ceil_of_load_over_target_within_bounds():
    spec = autoscale(minReplicas=1, maxReplicas=4)
    assert [recommend(load, 1, spec) for load in (0, 1, 2, 3, 5, 100)] == [1, 1, 1, 2, 3, 4]
    assert recommend(4, 2, spec) == 2  # exactly on target
    assert recommend(17, 8, autoscale(maxReplicas=10, targetInFlight=2)) == 8  # within 10%
    assert recommend(19, 8, autoscale(maxReplicas=10, targetInFlight=2)) == 10


def test_up_at_once_down_only_after_the_window():
    scaler, spec = Autoscaler(), autoscale(scaleDownStabilizationSeconds=30)
    assert scaler.decide("a", spec, 0, now=0.0, last=None).replicas == 1
    assert scaler.decide("a", spec, 6, now=1.0, last=None).replicas == 3  # up at once
    assert scaler.decide("a", spec, 0, now=2.0, last=None).replicas == 3  # lull: held
    assert scaler.decide("a", spec, 0, now=20.0, last=None).replicas == 3
    assert scaler.decide("a", spec, 0, now=31.5, last=None).replicas == 1  # window passed


def test_a_burst_shorter_than_the_up_window_does_not_scale_up():
    scaler, spec = Autoscaler(), autoscale(scaleUpStabilizationSeconds=10,
                                           scaleDownStabilizationSeconds=0)
    assert scaler.decide("a", spec, 0, now=0.0, last=None).replicas == 1
    assert scaler.decide("a", spec, 6, now=5.0, last=None).replicas == 1
    assert scaler.decide("a", spec, 6, now=10.5, last=None).replicas == 3  # sustained


def test_a_restarted_operator_starts_from_the_replicas_in_status():
    scaler, spec = Autoscaler(), autoscale(scaleDownStabilizationSeconds=60)
    assert scaler.decide("a", spec, 0, now=0.0, last=3).replicas == 3


def view(name, autoscale_spec, status=None):
    spec = {"baseModel": "b", "source": "/x", "replicas": 1}
    if autoscale_spec is not None:
        spec["autoscale"] = autoscale_spec
    return adapter_view({"metadata": {"name": name, "namespace": "n", "generation": 1},
                         "spec": spec, "status": status or {}})


def test_load_is_summed_over_the_pods_and_plain_adapters_are_left_alone():
    views = {"hot": view("hot", {"maxReplicas": 4, "targetInFlight": 1}),
             "plain": view("plain", None)}
    reports = {pod: {"hot": AdapterStatus(name="hot", state=AdapterState.HOST, in_use=n),
                     "plain": AdapterStatus(name="plain", state=AdapterState.HOST, in_use=9)}
               for pod, n in (("p1", 2), ("p2", 1))}
    decisions = Autoscaler().replicas(views, reports, now=0.0)
    assert list(decisions) == ["hot"]
    assert (decisions["hot"].in_flight, decisions["hot"].replicas) == (3, 3)


def test_min_above_max_is_refused_with_a_message():
    with pytest.raises(SpecError, match="minReplicas must not be above maxReplicas"):
        parse_spec(AdapterSpec, {"baseModel": "b", "source": "/x", "autoscale": {
            "minReplicas": 3, "maxReplicas": 2, "targetInFlight": 1}}, naming.ADAPTER_KIND)
    with pytest.raises(SpecError, match="targetInFlight"):
        parse_spec(AdapterSpec, {"baseModel": "b", "source": "/x", "autoscale": {
            "maxReplicas": 2, "targetInFlight": 0}}, naming.ADAPTER_KIND)
