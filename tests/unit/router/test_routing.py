"""The routing policy: affinity first, load second, one home per cold adapter."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loraplex.router.pod import Pod
from loraplex.router.routing import choose_pod, rendezvous_weight

URLS = [f"http://10.0.0.{i}:8080" for i in range(1, 6)]


def pods_with(loads: list[int]) -> list[Pod]:
    return [Pod(url, in_flight=load) for url, load in zip(URLS, loads, strict=False)]


def test_no_candidates_means_no_choice():
    assert choose_pod([], "a", ()) is None


def test_a_placed_adapter_goes_to_its_least_loaded_holder():
    pods = pods_with([0, 3, 2])
    choice = choose_pod(pods, "sql", {URLS[1], URLS[2]}, spill_threshold=8)
    assert (choice.pod, choice.outcome) == (pods[2], "hit")


def test_residency_reported_by_a_pod_counts_like_placement():
    pods = pods_with([0, 1, 1])
    pods[2].report_residency(frozenset({"sql"}))
    pods[1].served.add("chat")
    assert choose_pod(pods, "sql", (), spill_threshold=8).pod is pods[2]
    assert choose_pod(pods, "chat", (), spill_threshold=8).pod is pods[1]


def test_busy_holders_spill_to_the_least_loaded_pod():
    pods = pods_with([1, 12, 5])
    choice = choose_pod(pods, "sql", {URLS[1]}, spill_threshold=8)
    assert (choice.pod, choice.outcome) == (pods[0], "spill")
    assert choose_pod(pods, "sql", {URLS[1]}, spill_threshold=11).outcome == "hit"


def test_requests_from_others_reported_by_the_pod_count_as_load():
    pods = pods_with([2, 3])
    pods[0].report_queue(running=6, waiting=2)  # 2 of them ours: 6 from elsewhere
    pods[1].report_queue(running=3, waiting=0)  # all ours
    assert (pods[0].load, pods[1].load) == (8, 3)
    assert choose_pod(pods, None, ()).pod is pods[1]
    assert choose_pod(pods, "sql", {URLS[0], URLS[1]}).pod is pods[1]


def test_a_cold_adapter_goes_home_while_home_is_not_too_busy():
    pods = pods_with([0, 0, 0, 0])
    home = max(pods, key=lambda pod: rendezvous_weight("cold", pod.url))
    for _ in range(3):
        assert choose_pod(pods, "cold", (), spill_threshold=4) == choose_pod(
            list(reversed(pods)), "cold", (), spill_threshold=4)
        choice = choose_pod(pods, "cold", (), spill_threshold=4)
        assert (choice.pod, choice.outcome) == (home, "miss")
    home.in_flight = 5
    assert choose_pod(pods, "cold", (), spill_threshold=4).pod is not home


def test_homes_spread_over_pods():
    pods = pods_with([0, 0, 0, 0, 0])
    homes = {choose_pod(pods, f"adapter-{i}", (), spill_threshold=4).pod.url for i in range(200)}
    assert homes == set(URLS)


def test_base_requests_balance_across_equally_loaded_pods():
    pods = pods_with([0, 0, 0])
    rng = random.Random(1)
    chosen = {choose_pod(pods, None, (), rng=rng).pod.url for _ in range(60)}
    assert chosen == set(URLS[:3])
    assert choose_pod(pods, None, ()).outcome == "base"


def test_least_loaded_policy_ignores_residency():
    pods = pods_with([3, 0])
    choice = choose_pod(pods, "sql", {URLS[0]}, policy="least-loaded")
    assert (choice.pod, choice.outcome) == (pods[1], "miss")


def test_random_policy_ignores_load_and_residency():
    pods = pods_with([9, 0, 0])
    rng = random.Random(2)
    assert {choose_pod(pods, "sql", {URLS[1]}, policy="random", rng=rng).pod.url
            for _ in range(60)} == set(URLS[:3])


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="unknown routing policy 'fastest'"):
        choose_pod(pods_with([0]), "a", (), policy="fastest")


@settings(max_examples=200, deadline=None)
@given(loads=st.lists(st.integers(0, 20), min_size=1, max_size=5),
       holders=st.sets(st.integers(0, 4)), threshold=st.integers(0, 10))
def test_affinity_invariants(loads, holders, threshold):
    pods = pods_with(loads)
    placed = {URLS[i] for i in holders if i < len(pods)}
    choice = choose_pod(pods, "a", placed, spill_threshold=threshold)
    least = min(loads)
    assert choice.pod.load - least <= threshold  # never more than the threshold above least
    holder_loads = [pod.load for pod in pods if pod.url in placed]
    if holder_loads and min(holder_loads) - least <= threshold:
        assert choice.outcome == "hit" and choice.pod.load == min(holder_loads)
    elif holder_loads:
        assert choice.outcome == "spill" and choice.pod.load == least
    else:
        assert choice.outcome == "miss"
