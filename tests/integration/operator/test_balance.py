"""Spread that keeps its promise, end to end: emulated API server, real operator, real pods.

Pods become Ready a second apart, a third joins, one stops answering and is replaced:
each time the adapters end within one placement of balance, as the pods themselves
report, and moves never leave an adapter with fewer ready copies than it wants. A scale
of the BaseModelDeployment (through its `scale` subresource, as `kubectl scale` and a
HorizontalPodAutoscaler do) reaches the runtime Deployment at once.

Each test first brings the cluster to the state it starts from (`fleet`): run in order,
the state the previous test left already is that state and nothing is redone; run alone
(`-k`), a test builds it.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from loraplex.contracts.placements import PlacementTable, parse_placements
from loraplex.operator import naming
from tests.integration.operator.conftest import BMD, NAMESPACE
from tests.integration.operator.harness import running_operator
from tests.integration.operator.kube import wait_for
from tests.integration.operator.test_scenarios import (
    adapter_body,
    bmd_body,
    loaded_on,
    per_pod,
    status_of,
)
from tests.integration.operator.test_scenarios import balanced as balanced_on

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

TWELVE = [f"lora-{i:02d}" for i in range(12)]
REPLICAS = dict.fromkeys(TWELVE, 1)
# A long resync: what happens quickly here happens because an event, or a poll of the
# pods' adapter lists, woke the operator.
RESYNC_S, POLL_S = 10, 0.3
FLAGS = ("--resync-interval-s", str(RESYNC_S), "--loading-poll-s", str(POLL_S),
         "--children-resync-s", "60", "--autoscale-interval-s", "0.5",
         "--unload-timeout-s", "30", "--admin-timeout-s", "5", "--pod-grace-s", "60",
         "--log-level", "info")


@pytest.fixture(scope="module")
def operator(emulator, tmp_path_factory):
    with running_operator(emulator.url, NAMESPACE, tmp_path_factory.mktemp("operator"),
                          *FLAGS) as process:
        yield process


def balanced(kube, pods, count: int) -> dict[str, int] | None:
    return balanced_on(kube, pods, REPLICAS, count)


def fleet(kube, pods, adapter_dirs, count: int) -> None:
    """The BMD with `count` ready pods holding TWELVE, balanced, and no other Adapter."""
    if kube.get("basemodeldeployments", BMD) is None:
        kube.create("basemodeldeployments", bmd_body(replicas=count))
        wait_for(lambda: kube.get("secrets", naming.admin_secret_name(BMD)), 30,
                 "the runtime pods' admin token")
    elif kube.get("basemodeldeployments", BMD)["spec"]["replicas"] != count:
        kube.patch("basemodeldeployments", BMD, {"spec": {"replicas": count}})
    extra = [a["metadata"]["name"] for a in kube.list("adapters")
             if a["metadata"]["name"] not in REPLICAS]
    for name in extra:
        kube.delete("adapters", name)
    for name in extra:
        wait_for(lambda n=name: kube.get("adapters", n) is None, 60, f"{name} finalized")
    for name in REPLICAS:
        if kube.get("adapters", name) is None:
            kube.create("adapters", adapter_body(name, str(adapter_dirs[name])))
    for name in sorted(pods.pods)[count:]:
        pods.remove(name)
    if len(pods.pods) < count:
        pods.add(count - len(pods.pods))
    wait_for(lambda: balanced(kube, pods, count), 120, f"12 adapters balanced on {count} pods")


def test_two_pods_ready_a_second_apart_share_twelve_adapters(kube, operator, pods,
                                                              adapter_dirs):
    if kube.get("basemodeldeployments", BMD) is None:
        kube.create("basemodeldeployments", bmd_body(replicas=2))
        wait_for(lambda: kube.get("secrets", naming.admin_secret_name(BMD)), 30,
                 "the runtime pods' admin token")
    for name in list(pods.pods):
        pods.remove(name)
    for name in TWELVE:
        if kube.get("adapters", name) is None:
            kube.create("adapters", adapter_body(name, str(adapter_dirs[name])))
    pods.add(2, gap_s=1.0)
    loads = wait_for(lambda: balanced(kube, pods, 2), 120, "12 adapters balanced on 2 pods")
    assert sorted(loads.values()) == [6, 6]
    logs = operator.logs()
    for line in ("placing lora-", "confirmed by the pod"):
        assert line in logs, f"no log line with {line!r}"


def test_a_scale_of_the_bmd_reaches_the_deployment_within_two_seconds(kube, operator, pods,
                                                                       adapter_dirs):
    fleet(kube, pods, adapter_dirs, 2)
    scale = kube.get("basemodeldeployments", BMD, sub="scale")
    assert scale["kind"] == "Scale"
    assert (scale["spec"]["replicas"], scale["status"]["replicas"]) == (2, 2)
    assert scale["status"]["selector"] == naming.runtime_selector(BMD)
    runtime = naming.runtime_name(BMD)
    kube.patch("basemodeldeployments", BMD, {"spec": {"replicas": 3}}, sub="scale")
    started = time.monotonic()
    wait_for(lambda: kube.get("deployments", runtime)["spec"]["replicas"] == 3, 2,
             "the runtime Deployment scaled to 3", interval_s=0.05)
    elapsed = time.monotonic() - started
    generation = kube.get("basemodeldeployments", BMD)["metadata"]["generation"]

    def logged() -> str | None:
        text = operator.logs()
        return text if f"{BMD} generation {generation}" in text else None

    logs = wait_for(logged, 5, "the change logged as the user's")
    assert f"Deployment {NAMESPACE}/{runtime}: it drifted" not in logs, "a scale is no drift"
    print(f"replicas change reached the Deployment in {elapsed:.2f} s")


def both_passes(pods) -> dict[str, set[str]]:
    """Where adapters are loaded, in either of two reads of every pod: a move that finishes
    between reading its target and its source would otherwise look like a lost copy."""
    first, second = loaded_on(pods), loaded_on(pods)
    return {name: first.get(name, set()) | second.get(name, set())
            for name in first.keys() | second.keys()}


def routed_to_missing_copies(kube, pods) -> dict[str, list[str]]:
    """Adapter → pods the placement table sends it to that do not hold it loaded, read
    between two reads of the same table generation (nothing when it changed meanwhile)."""
    def table() -> PlacementTable:
        configmap = kube.get("configmaps", naming.placements_name(BMD))
        return parse_placements(configmap["data"][naming.PLACEMENTS_KEY])

    before, where, after = table(), loaded_on(pods), table()
    if before.generation != after.generation:
        return {}
    names = {pod.server.url: name for name, pod in pods.pods.items()}
    missing = {adapter: [names.get(url, url) for url in before.pods_for(adapter)
                         if names.get(url) not in where.get(adapter, ())]
               for adapter in before.adapters}
    return {adapter: pods for adapter, pods in missing.items() if pods}


def test_a_third_pod_gets_its_share_and_no_adapter_drops_below_its_replicas(kube, operator,
                                                                            pods, adapter_dirs):
    fleet(kube, pods, adapter_dirs, 2)
    pods.add(1)
    deadline, samples = time.monotonic() + 120, 0
    while not (loads := balanced(kube, pods, 3)):
        where = both_passes(pods)
        short = {name: sorted(where.get(name, ())) for name, count in REPLICAS.items()
                 if len(where.get(name, ())) < count}
        assert not short, f"fewer ready copies than wanted during the moves: {short}"
        stale = routed_to_missing_copies(kube, pods)
        assert not stale, f"the routers were sent to copies already gone: {stale}"
        samples += 1
        assert time.monotonic() < deadline, f"not balanced on 3 pods: {per_pod(pods)}"
        time.sleep(0.2)
    assert sorted(loads.values()) == [4, 4, 4]
    assert samples > 0
    logs = operator.logs()
    for line in (": rebalance", "done: the new copy is ready"):
        assert line in logs, f"no log line with {line!r}"


def ready_reason(kube, name: str) -> str | None:
    conditions = status_of(kube, name).get("conditions", [])
    return next((c["reason"] for c in conditions if c["type"] == "Ready"), None)


def test_a_pod_not_answering_is_said_so_and_its_replacement_ends_balanced(kube, operator,
                                                                          pods, adapter_dirs):
    fleet(kube, pods, adapter_dirs, 3)
    victim = sorted(pods.pods)[0]
    held = sorted(name for name, holders in loaded_on(pods).items() if victim in holders)
    assert held
    pods.pods[victim].server.stop()  # the Pod object still says Ready
    wait_for(lambda: all(status_of(kube, name).get("phase") == "Unreachable"
                         and ready_reason(kube, name) == "PodNotAnswering" for name in held),
             60, f"adapters of {victim} reported Unreachable")
    placement = next(p for p in status_of(kube, held[0])["placements"] if p["pod"] == victim)
    assert placement["state"] == "Unreachable" and "not answering" in placement["message"]
    pods.remove(victim)
    pods.add(1)
    loads = wait_for(lambda: balanced(kube, pods, 3), 120, "balanced again after the loss")
    assert sorted(loads.values()) == [4, 4, 4]
    logs = operator.logs()
    for line in ("replacing the copy on", "did not answer"):
        assert line in logs, f"no log line with {line!r}"


def test_a_deletion_is_logged_as_a_wait_not_an_error(kube, operator, pods, adapter_dirs):
    fleet(kube, pods, adapter_dirs, 3)
    name = TWELVE[0]
    kube.delete("adapters", name)
    wait_for(lambda: kube.get("adapters", name) is None, 60, f"{name} finalized")
    assert name not in loaded_on(pods)
    logs = operator.logs()
    assert " ERROR " not in logs, [line for line in logs.splitlines() if " ERROR " in line]
    assert f"waiting for the pods of {BMD} to unload {name}" in logs


def test_an_adapter_a_pod_dropped_is_seen_at_the_next_poll(kube, operator, pods,
                                                            adapter_dirs):
    """No Kubernetes event tells of it: the operator's poll of the pods' lists does, and
    the status stops saying Ready there long before the resync."""
    fleet(kube, pods, adapter_dirs, 3)
    name = TWELVE[1]
    (pod,) = loaded_on(pods)[name]

    def since() -> str:
        return next(p["since"] for p in status_of(kube, name)["placements"] if p["pod"] == pod)

    ready_since = since()
    time.sleep(1.1)  # `since` has whole seconds: a new state now gets a new one
    headers = {"Authorization": f"Bearer {pods.token()}"}
    httpx.delete(f"{pods.pods[pod].server.url}/v1/adapters/{name}",
                 headers=headers).raise_for_status()
    dropped = time.monotonic()
    wait_for(lambda: since() != ready_since, RESYNC_S, f"the status of {name} on {pod} "
             "to leave its Ready", interval_s=0.05)
    noticed = time.monotonic() - dropped
    assert noticed < RESYNC_S / 3, f"noticed after {noticed:.1f} s: the resync, not a poll"
    wait_for(lambda: pod in loaded_on(pods).get(name, ())
             and status_of(kube, name).get("phase") == "Ready", 30, f"{name} back on {pod}")


def drive(url: str, adapter: str, stop: threading.Event) -> None:
    """One client that keeps a long request of `adapter` running until `stop`."""
    body = {"model": adapter, "prompt": "load", "max_tokens": 256, "ignore_eos_token": True}
    with httpx.Client(timeout=120) as client:
        while not stop.is_set():
            client.post(f"{url}/v1/completions", json=body)


def test_an_autoscaled_adapter_follows_its_load_up_and_back_down(kube, operator, pods,
                                                                 adapter_dirs):
    fleet(kube, pods, adapter_dirs, 3)
    body = adapter_body("hot", str(adapter_dirs["lora-20"]))
    body["spec"]["autoscale"] = {"minReplicas": 1, "maxReplicas": 3, "targetInFlight": 1,
                                 "scaleDownStabilizationSeconds": 3}
    kube.create("adapters", body)
    wait_for(lambda: status_of(kube, "hot").get("phase") == "Ready", 60, "hot Ready")
    assert status_of(kube, "hot")["replicas"] == 1 and status_of(kube, "hot")["inFlight"] == 0
    (holder,) = loaded_on(pods)["hot"]
    stop = threading.Event()
    clients = [threading.Thread(target=drive, args=(pods.pods[holder].server.url, "hot", stop))
               for _ in range(3)]
    for client in clients:
        client.start()
    try:
        # the pods load first; the status says Ready once the operator has confirmed them
        wait_for(lambda: len(loaded_on(pods).get("hot", ())) == 3
                 and status_of(kube, "hot").get("replicas") == 3
                 and status_of(kube, "hot").get("phase") == "Ready", 90,
                 "hot on 3 pods under load, Ready")
    finally:
        stop.set()
        for client in clients:
            client.join(150)
    wait_for(lambda: len(loaded_on(pods).get("hot", ())) == 1
             and status_of(kube, "hot").get("replicas") == 1, 60, "hot back to 1 pod")
    assert status_of(kube, "hot")["inFlight"] == 0
