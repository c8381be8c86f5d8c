"""Properties of rebalancing: bounded churn, capacity kept, and balance after any history."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loraplex.operator.placement import AdapterDemand, PodCapacity, place
from loraplex.operator.rebalance import Move, rebalance
from tests.unit.operator.test_placement import MiB, check_capacity, clusters


def apply(placements, moves):
    after = {name: list(where) for name, where in placements.items()}
    for move in moves:
        after[move.adapter].remove(move.source)
        after[move.adapter].append(move.target)
    return after


def counts(pods, placements):
    held = Counter(pod for where in placements.values() for pod in where)
    return [held[pod.name] for pod in pods]


@settings(max_examples=150, deadline=None)
@given(clusters(), st.integers(0, 5), st.integers(1, 3))
def test_moves_are_few_fit_and_each_pod_only_gives_or_receives(cluster, max_moves, threshold):
    pods, adapters, current, strategy = cluster
    placements = place(pods, adapters, current, strategy).placements
    moves = rebalance(pods, adapters, placements, max_moves=max_moves, threshold=threshold)
    assert len(moves) <= max_moves
    sources, targets = {m.source for m in moves}, {m.target for m in moves}
    assert not sources & targets
    for move in moves:
        assert move.source in placements[move.adapter]
        assert move.target not in placements[move.adapter]
    after = apply(placements, moves)
    check_capacity(pods, adapters, after)
    for where in after.values():
        assert len(where) == len(set(where))
    # The pods' loads while the moves run: the old copies are still there.
    during = {name: list(placements[name]) + [m.target for m in moves if m.adapter == name]
              for name in placements}
    check_capacity(pods, adapters, during)
    if moves:  # each batch narrows the gap it was made for
        before, later = counts(pods, placements), counts(pods, after)
        assert max(later) - min(later) <= max(before) - min(before)


@st.composite
def histories(draw):
    """Adapters of mixed sizes on roomy pods, then pods joining and leaving."""
    adapters = [AdapterDemand(f"lora-{i}", draw(st.integers(1, 2)),
                              draw(st.integers(1, 8)) * MiB, pinned=draw(st.booleans()))
                for i in range(draw(st.integers(0, 30)))]
    steps = draw(st.lists(st.one_of(st.just("join"), st.integers(0, 9)), min_size=1,
                          max_size=8))
    return adapters, steps


@settings(max_examples=80, deadline=None)
@given(histories(), st.integers(1, 4))
def test_balanced_within_threshold_after_any_joins_and_losses(history, max_moves):
    adapters, steps = history
    pods = [PodCapacity("pod-0", 1 << 40, 1024, 64), PodCapacity("pod-1", 1 << 40, 1024, 64)]
    joined, placements = 2, {}
    for step in steps:
        if step == "join":
            pods.append(PodCapacity(f"pod-{joined}", 1 << 40, 1024, 64))
            joined += 1
        elif len(pods) > 1:
            pods.pop(step % len(pods))
        placements = place(pods, adapters, placements, "Spread").placements
        for _ in range(1000):  # reconcile cycles until no move is proposed
            moves = rebalance(pods, adapters, placements, max_moves=max_moves)
            if not moves:
                break
            placements = apply(placements, moves)
        loads = counts(pods, placements)
        assert max(loads) - min(loads) <= 1, f"unbalanced after {step}: {loads}"


def test_a_second_pod_gets_half_of_twelve():
    first = [PodCapacity("pod-a", 1 << 30, 32, 64)]
    adapters = [AdapterDemand(f"lora-{i:02d}", 1, 4 * MiB) for i in range(12)]
    placements = place(first, adapters, {}).placements
    both = first + [PodCapacity("pod-b", 1 << 30, 32, 64)]
    moves = rebalance(both, adapters, placements, max_moves=4)
    assert len(moves) == 4 and all(m.source == "pod-a" and m.target == "pod-b"
                                   for m in moves)
    placements = apply(placements, moves)
    moves = rebalance(both, adapters, placements, max_moves=4)
    assert [m.target for m in moves] == ["pod-b", "pod-b"]  # 8/4 → 6/6, then nothing
    assert rebalance(both, adapters, apply(placements, moves), max_moves=4) == ()


def test_the_move_evens_out_bytes_and_fixed_adapters_stay():
    pods = [PodCapacity("pod-a", 1 << 30, 32, 64), PodCapacity("pod-b", 1 << 30, 32, 64)]
    adapters = [AdapterDemand("big", 1, 40 * MiB), AdapterDemand("mid", 1, 20 * MiB),
                AdapterDemand("small", 1, MiB)]
    placements = {"big": ["pod-a"], "mid": ["pod-a"], "small": ["pod-a"]}
    # 61 MiB against 0: moving `big` leaves 21 against 40, `mid` 41 against 20
    assert rebalance(pods, adapters, placements, max_moves=1) == (
        Move("big", "pod-a", "pod-b"),)
    assert rebalance(pods, adapters, placements, max_moves=1, fixed={"big"}) == (
        Move("mid", "pod-a", "pod-b"),)


def test_no_move_within_the_threshold_or_without_room():
    pods = [PodCapacity("pod-a", 1 << 30, 32, 64), PodCapacity("pod-b", 5 * MiB, 32, 64)]
    adapters = [AdapterDemand(f"lora-{i}", 1, 8 * MiB) for i in range(3)]
    placements = {a.name: ["pod-a"] for a in adapters}
    assert rebalance(pods, adapters, placements, max_moves=3) == ()  # pod-b too small
    roomy = [pods[0], PodCapacity("pod-b", 1 << 30, 32, 64)]
    assert rebalance(roomy, adapters, placements, max_moves=3, threshold=3) == ()
    assert len(rebalance(roomy, adapters, placements, max_moves=3, threshold=1)) == 1


def test_bad_settings_are_refused_with_a_message():
    with pytest.raises(ValueError, match="threshold"):
        rebalance([], [], {}, max_moves=1, threshold=0)
    with pytest.raises(ValueError, match="max_moves"):
        rebalance([], [], {}, max_moves=-1)
