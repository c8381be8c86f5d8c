"""Which pod gets a request: the routing policy as a pure function of pod states.

`affinity` (the default) sends an adapter's requests to the least-loaded pod that holds it
(placement table or the pod's own report), unless that pod carries more than
`spill_threshold` requests above the least-loaded pod: then the request spills there and
the adapter gains a pod. An adapter that no pod holds goes to its rendezvous-hash "home",
the first pod in a per-adapter order that every router replica computes alike, as long as
that pod is within `spill_threshold` of the least load: repeated misses for one cold adapter
then land on one pod (one cold load, not one per pod). With `spill_threshold=0` a miss
goes to a least-loaded pod, ties broken by that order. Base-model requests go to a
least-loaded pod, ties broken at random. `least-loaded` ignores adapters; `random` ignores
everything (a baseline for benchmarks).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

from loraplex.router.pod import Pod

Outcome = Literal["base", "hit", "miss", "spill"]


@dataclass(frozen=True)
class Choice:
    pod: Pod
    outcome: Outcome  # base: no adapter; hit: pod holds it; miss: none holds it; spill: busy


def rendezvous_weight(adapter: str, url: str) -> int:
    """Highest-random-weight hash: stable across processes (unlike `hash`)."""
    digest = hashlib.blake2b(f"{adapter}\0{url}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def choose_pod(pods: Sequence[Pod], adapter: str | None, placed: Collection[str], *,
               policy: str = "affinity", spill_threshold: int = 0,
               rng: random.Random | None = None) -> Choice | None:
    """The pod for one request among `pods` (the candidates: usable, not yet tried), or None
    when there is none. `placed` holds the URLs the placement table lists for `adapter`."""
    if not pods:
        return None
    rng = rng or random.Random()

    def holds(pod: Pod) -> bool:
        return adapter is not None and (pod.url in placed or pod.holds(adapter))

    def outcome_of(pod: Pod) -> Outcome:
        if adapter is None:
            return "base"
        return "hit" if holds(pod) else "miss"

    if policy == "random":
        pod = rng.choice(pods)
        return Choice(pod, outcome_of(pod))
    least = min(pod.load for pod in pods)
    if adapter is None or policy == "least-loaded":
        pod = rng.choice([pod for pod in pods if pod.load == least])
        return Choice(pod, outcome_of(pod))
    if policy != "affinity":
        raise ValueError(f"unknown routing policy {policy!r}")
    return _affinity_choice(pods, adapter, [pod for pod in pods if holds(pod)], least,
                            spill_threshold)


def _affinity_choice(pods: Sequence[Pod], adapter: str, holders: list[Pod], least: int,
                     spill_threshold: int) -> Choice:
    """The least-loaded holder unless it is busier than the least-loaded pod by more than
    `spill_threshold` (then a non-holder: a spill); without holders, the adapter's home."""

    def home_order(pod: Pod) -> int:
        return -rendezvous_weight(adapter, pod.url)

    if holders:
        best = min(holders, key=lambda pod: (pod.load, home_order(pod)))
        if best.load - least <= spill_threshold:
            return Choice(best, "hit")
        # The least-loaded pod is not a holder here (else `best` would be it).
        spill = min((pod for pod in pods if pod not in holders),
                    key=lambda pod: (pod.load, home_order(pod)))
        return Choice(spill, "spill")
    # The least-loaded pod always qualifies, so `next` finds one.
    home = next(pod for pod in sorted(pods, key=home_order) if pod.load - least <= spill_threshold)
    return Choice(home, "miss")
