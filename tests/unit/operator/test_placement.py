"""Properties of the pure placement function, checked on random clusters with hypothesis."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loraplex.operator.placement import (
    INSUFFICIENT_CAPACITY,
    AdapterDemand,
    PodCapacity,
    place,
)

MiB = 1 << 20


@st.composite
def clusters(draw):
    pod_count = draw(st.integers(0, 6))
    pods = [
        PodCapacity(
            name=f"pod-{index}",
            host_bytes=draw(st.integers(0, 64)) * MiB,
            device_slots=draw(st.integers(1, 6)),
            max_rank=draw(st.sampled_from([8, 16, 64])),
            reserved_bytes=draw(st.integers(0, 8)) * MiB,
            reserved_slots=draw(st.integers(0, 1)),
        )
        for index in range(pod_count)
    ]
    adapter_count = draw(st.integers(0, 25))
    adapters = [
        AdapterDemand(
            name=f"lora-{index}",
            replicas=draw(st.integers(0, 4)),
            size_bytes=draw(st.integers(0, 16)) * MiB,
            rank=draw(st.sampled_from([None, 4, 8, 16, 32, 128])),
            pinned=draw(st.booleans()),
        )
        for index in range(adapter_count)
    ]
    pod_names = [pod.name for pod in pods] + ["gone-pod"]
    current = {
        adapter.name: draw(st.lists(st.sampled_from(pod_names), max_size=3))
        for adapter in adapters
    }
    strategy = draw(st.sampled_from(["Spread", "BinPack"]))
    return pods, adapters, current, strategy


def check_capacity(pods, adapters, placements):
    by_name = {adapter.name: adapter for adapter in adapters}
    for pod in pods:
        held = [by_name[name] for name, where in placements.items() if pod.name in where]
        if held:
            assert sum(a.size_bytes for a in held) <= pod.host_bytes - pod.reserved_bytes
        pinned = sum(a.pinned for a in held)
        slots = pod.device_slots - pod.reserved_slots
        assert pinned < slots if any(not a.pinned for a in held) else pinned <= slots
        assert all(a.rank is None or a.rank <= pod.max_rank for a in held)


@settings(max_examples=150, deadline=None)
@given(clusters())
def test_never_over_capacity_never_duplicated_and_accounted(cluster):
    pods, adapters, current, strategy = cluster
    plan = place(pods, adapters, current, strategy)
    check_capacity(pods, adapters, plan.placements)
    pod_names = {pod.name for pod in pods}
    for adapter in adapters:
        where = plan.placements[adapter.name]
        assert len(where) == len(set(where)), "two replicas of one adapter on one pod"
        assert set(where) <= pod_names
        missing = plan.shortfalls[adapter.name].missing if adapter.name in plan.shortfalls else 0
        assert len(where) + missing == adapter.replicas
        if missing:
            assert plan.shortfalls[adapter.name].reason == INSUFFICIENT_CAPACITY


@settings(max_examples=100, deadline=None)
@given(clusters())
def test_stable_under_reruns_and_deterministic(cluster):
    pods, adapters, current, strategy = cluster
    first = place(pods, adapters, current, strategy)
    again = place(list(reversed(pods)), list(reversed(adapters)), current, strategy)
    assert again == first
    rerun = place(pods, adapters, first.placements, strategy)
    assert rerun.placements == first.placements
    assert rerun.shortfalls == first.shortfalls


@settings(max_examples=100, deadline=None)
@given(clusters(), st.data())
def test_a_lost_pod_moves_only_its_own_adapters(cluster, data):
    pods, adapters, current, strategy = cluster
    if not pods:
        return
    before = place(pods, adapters, current, strategy).placements
    lost = data.draw(st.sampled_from(pods))
    after = place([p for p in pods if p != lost], adapters, before, strategy).placements
    for name, where in before.items():
        kept = set(where) - {lost.name}
        assert kept <= set(after[name]), f"{name} moved off a pod that is still there"


@settings(max_examples=100, deadline=None)
@given(clusters())
def test_existing_placements_that_fit_are_kept(cluster):
    pods, adapters, current, strategy = cluster
    plan = place(pods, adapters, current, strategy)
    for adapter in adapters:
        kept = set(plan.placements[adapter.name]) & set(current[adapter.name])
        # Placement only adds to what was kept while replicas are missing.
        if len(kept) < len(plan.placements[adapter.name]):
            assert len(kept) < adapter.replicas


def test_spread_and_binpack_differ_as_named():
    pods = [PodCapacity(f"pod-{i}", 100 * MiB, 8, 64) for i in range(3)]
    adapters = [AdapterDemand(f"lora-{i}", 1, 10 * MiB) for i in range(3)]
    spread = place(pods, adapters, {}, "Spread").placements
    binpack = place(pods, adapters, {}, "BinPack").placements
    assert Counter(p for where in spread.values() for p in where) == {
        "pod-0": 1, "pod-1": 1, "pod-2": 1}
    assert Counter(p for where in binpack.values() for p in where) == {"pod-0": 3}


def test_rank_above_max_rank_is_never_placed_and_says_why():
    pods = [PodCapacity("small", 100 * MiB, 8, 16), PodCapacity("big", 100 * MiB, 8, 64)]
    plan = place(pods, [AdapterDemand("wide", 2, MiB, rank=32)], {}, "Spread")
    assert plan.placements["wide"] == ("big",)
    assert plan.shortfalls["wide"].missing == 1
    plan = place(pods, [AdapterDemand("huge", 1, MiB, rank=128)], {"huge": ["big"]})
    assert plan.placements["huge"] == ()
    assert "rank 128" in plan.shortfalls["huge"].message


def test_no_pods_is_a_reason_not_an_exception():
    plan = place([], [AdapterDemand("a", 1, MiB)], {})
    assert plan.placements == {"a": ()}
    assert plan.shortfalls["a"].reason == INSUFFICIENT_CAPACITY
    assert "no ready pods" in plan.shortfalls["a"].message


def test_surplus_replicas_are_dropped_on_scale_down_the_first_listed_kept():
    pods = [PodCapacity(f"pod-{i}", 100 * MiB, 8, 64) for i in range(3)]
    plan = place(pods, [AdapterDemand("a", 1, MiB)], {"a": ["pod-2", "pod-0", "pod-1"]})
    assert plan.placements["a"] == ("pod-2",)


def test_bad_input_is_refused_with_a_message():
    with pytest.raises(ValueError, match="strategy"):
        place([], [], {}, "Random")
    with pytest.raises(ValueError, match="lora-x"):
        place([], [AdapterDemand("lora-x", -1, 0)], {})
