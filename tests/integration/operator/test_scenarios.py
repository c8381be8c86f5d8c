"""The operator end to end: emulated API server, real operator, real runtime pods.

The tests run in order and share one cluster (module fixtures): each scenario starts
from the state the previous one left, as in an operator's life. The oracle for "placed"
is always the pods themselves (`GET /v1/adapters` on the real servers), never the
operator's own status.
"""

from __future__ import annotations

import base64
from collections import Counter

import httpx
import pytest

from loraplex.contracts.placements import parse_placements
from loraplex.operator import naming
from loraplex.operator.rbac import GRANTED_RULES, OPERATOR_RULES, expand
from tests.integration.operator.conftest import BMD, NAMESPACE, S3_BUCKET, S3_KEYS
from tests.integration.operator.kube import TEST_AGENT, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

CHILDREN = {
    "deployments": [naming.runtime_name(BMD), naming.router_name(BMD)],
    "services": [naming.runtime_name(BMD), naming.router_name(BMD)],
    "poddisruptionbudgets": [naming.runtime_name(BMD)],
    "serviceaccounts": [naming.router_account_name(BMD)],
    "roles": [naming.router_account_name(BMD)],
    "rolebindings": [naming.router_account_name(BMD)],
    "networkpolicies": [naming.runtime_name(BMD), naming.router_name(BMD)],
    "secrets": [naming.admin_secret_name(BMD)],
    "configmaps": [naming.placements_name(BMD)],
}
FIRST = [f"lora-{i:02d}" for i in range(20)]
REPLICAS = {name: 2 if i % 4 == 0 else 1 for i, name in enumerate(FIRST)}
RANKS = {f"lora-{i:02d}": (4, 8, 16)[i % 3] for i in range(21)}
shared: dict = {}  # state handed from one scenario to the next


def bmd_body(replicas: int = 3) -> dict:
    return {
        "apiVersion": naming.API_VERSION, "kind": naming.BMD_KIND,
        "metadata": {"name": BMD, "namespace": NAMESPACE},
        "spec": {"model": {"source": "tiny-llama", "loadFormat": "dummy"},
                 "image": "loraplex-runtime:test", "replicas": replicas,
                 "capacity": {"deviceSlots": 8, "hostBytes": "1Gi", "maxRank": 64},
                 "engine": {"maxNumSeqs": 4, "maxNumBatchedTokens": 512}},
    }


def adapter_body(name: str, source: str, replicas: int = 1) -> dict:
    return {"apiVersion": naming.API_VERSION, "kind": naming.ADAPTER_KIND,
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"baseModel": BMD, "source": source, "replicas": replicas}}


def holdings(pods) -> dict[str, dict[str, dict]]:
    """What each pod really holds: pod name → adapter name → its entry."""
    headers = {"Authorization": f"Bearer {pods.token()}"}
    result = {}
    for name, pod in pods.pods.items():
        body = httpx.get(f"{pod.server.url}/v1/adapters", headers=headers, timeout=10).json()
        result[name] = {entry["name"]: entry for entry in body["adapters"]}
    return result


def loaded_on(pods) -> dict[str, set[str]]:
    """Adapter → pods that report it loaded (host or device)."""
    where: dict[str, set[str]] = {}
    for pod, held in holdings(pods).items():
        for name, entry in held.items():
            if entry["state"] in ("host", "device"):
                where.setdefault(name, set()).add(pod)
    return where


def status_of(kube, name: str) -> dict:
    return (kube.get("adapters", name) or {}).get("status") or {}


def all_ready(kube, names) -> bool:
    return all(status_of(kube, name).get("phase") == "Ready" for name in names)


def converged(kube, pods, replicas: dict[str, int]) -> bool:
    """Every adapter Ready, on exactly its replicas of pods, as the pods themselves say."""
    where = loaded_on(pods)
    return all_ready(kube, replicas) and all(
        len(where.get(name, ())) == count for name, count in replicas.items())


def per_pod(pods, where: dict[str, set[str]] | None = None) -> dict[str, int]:
    """Loaded placements per pod, from the pods' own reports (pods holding none count 0)."""
    where = loaded_on(pods) if where is None else where
    held = Counter(pod for holders in where.values() for pod in holders)
    return {pod: held[pod] for pod in pods.pods}


def balanced(kube, pods, replicas: dict[str, int], count: int) -> dict[str, int] | None:
    """Per-pod loads once `count` pods hold every adapter within one placement of each
    other (Spread rebalances a pod that joins), else None. One read of the pods: a move
    that ends between two reads would make them disagree."""
    where = loaded_on(pods)
    loads = per_pod(pods, where)
    if len(loads) == count and max(loads.values()) - min(loads.values()) <= 1 \
            and all(len(where.get(name, ())) == n for name, n in replicas.items()) \
            and all_ready(kube, replicas):
        return loads
    return None


def placed_pods(kube, name: str) -> set[str]:
    return {p["pod"] for p in status_of(kube, name).get("placements", [])}


def test_a_bmd_gets_its_children_and_pods_start_with_its_flags(kube, operator, pods):
    uid = kube.create("basemodeldeployments", bmd_body())["metadata"]["uid"]
    for plural, names in CHILDREN.items():
        for name in names:
            child = wait_for(lambda p=plural, n=name: kube.get(p, n), 30, f"{plural}/{name}")
            assert child["metadata"]["ownerReferences"][0]["uid"] == uid
    status = wait_for(lambda: (kube.get("basemodeldeployments", BMD) or {}).get("status"),
                      30, "BMD status")
    assert status["endpoint"] == f"http://{BMD}.{NAMESPACE}.svc"
    assert (status["replicas"], status["ready"]) == (0, "0/3")  # no pod exists yet
    shared["token"] = pods.token()
    pods.add(3)  # real servers, started with the runtime Deployment's own args
    wait_for(lambda: kube.get("basemodeldeployments", BMD)["status"]["readyReplicas"] == 3,
             30, "3 ready pods in the BMD status")


def test_twenty_adapters_are_placed_loaded_and_published(kube, pods, adapter_dirs):
    for name in FIRST:
        kube.create("adapters", adapter_body(name, str(adapter_dirs[name]), REPLICAS[name]))
    wait_for(lambda: converged(kube, pods, REPLICAS), 120, "20 adapters Ready on the pods")
    where = loaded_on(pods)
    for name in FIRST:
        status = status_of(kube, name)
        assert placed_pods(kube, name) == where[name]
        assert status["readyReplicas"] == REPLICAS[name]
        assert status["ready"] == f"{REPLICAS[name]}/{REPLICAS[name]}"
        assert status["rank"] == RANKS[name]  # read from the pod, which read the adapter
        assert status["sizeBytes"] > 0
        assert {c["type"]: c["status"] for c in status["conditions"]} == {
            "Ready": "True", "Placed": "True", "Degraded": "False"}
    per_pod = Counter(pod for holders in where.values() for pod in holders)
    assert sum(per_pod.values()) == sum(REPLICAS.values())
    assert max(per_pod.values()) - min(per_pod.values()) <= 1  # Spread
    table = parse_placements(kube.get("configmaps", naming.placements_name(BMD))
                             ["data"]["placements.json"])
    urls = {name: pod.server.url for name, pod in pods.pods.items()}
    assert sorted(table.pods) == sorted(urls.values())
    for name in FIRST:
        assert set(table.pods_for(name)) == {urls[pod] for pod in where[name]}
    bmd = kube.get("basemodeldeployments", BMD)["status"]
    assert bmd["adapters"] == {"placed": 20, "ready": 20, "pending": 0, "failed": 0}
    ready_events = [e for e in kube.list("events") if e.get("reason") == "Ready"
                    and e["involvedObject"]["kind"] == naming.ADAPTER_KIND]
    assert {e["involvedObject"]["name"] for e in ready_events} >= set(FIRST)


def test_a_deleted_pods_adapters_move_and_nothing_else_does(kube, pods):
    before = loaded_on(pods)
    victim = max(pods.pods, key=lambda pod: sum(pod in h for h in before.values()))
    pods.remove(victim)
    wait_for(lambda: converged(kube, pods, REPLICAS)
             and not any(victim in placed_pods(kube, n) for n in FIRST), 90,
             f"adapters of {victim} moved")
    after = loaded_on(pods)
    for name, holders in before.items():
        assert holders - {victim} <= after[name], f"{name} moved without reason"
    assert all(victim not in holders for holders in after.values())
    pods.add(1)
    wait_for(lambda: kube.get("basemodeldeployments", BMD)["status"]["readyReplicas"] == 3,
             30, "the replacement pod counted ready")
    wait_for(lambda: balanced(kube, pods, REPLICAS, 3), 90, "the replacement given its share")


def test_a_restarted_pod_is_refilled_with_what_it_held(kube, pods):
    before = holdings(pods)
    target = max(before, key=lambda pod: len(before[pod]))
    expected = set(before[target])
    assert expected
    pods.restart(target)  # empty memory, same address, restartCount + 1
    wait_for(lambda: {n for n, e in holdings(pods)[target].items()
                      if e["state"] in ("host", "device")} == expected, 60,
             f"{target} refilled")
    wait_for(lambda: converged(kube, pods, REPLICAS), 60, "all Ready again")


def test_an_adapter_a_pod_forgot_is_given_back(kube, pods):
    name = FIRST[1]
    (pod,) = placed_pods(kube, name)
    headers = {"Authorization": f"Bearer {pods.token()}"}
    url = f"{pods.pods[pod].server.url}/v1/adapters/{name}"
    httpx.delete(url, headers=headers).raise_for_status()
    wait_for(lambda: holdings(pods)[pod].get(name, {}).get("state") in ("host", "device"),
             30, f"{name} reloaded on {pod}")


def test_a_bad_adapter_fails_with_the_pods_message_and_a_fix_recovers(kube, pods,
                                                                     adapter_dirs):
    kube.create("adapters", adapter_body("too-wide", str(adapter_dirs["too-wide"])))
    status = wait_for(lambda: status_of(kube, "too-wide").get("phase") == "Failed"
                      and status_of(kube, "too-wide"), 60, "too-wide Failed")
    assert "rank" in status["message"].lower()  # the pod's own words
    assert status["placements"][0]["state"] == "Failed"
    assert {c["type"]: c["reason"] for c in status["conditions"]}["Ready"] == "LoadFailed"
    warnings = [e for e in kube.list("events") if e["involvedObject"]["name"] == "too-wide"
                and e["type"] == "Warning"]
    assert warnings
    assert all_ready(kube, FIRST), "one bad adapter must not disturb the others"
    kube.patch("adapters", "too-wide", {"spec": {"source": str(adapter_dirs["lora-20"])}})
    wait_for(lambda: status_of(kube, "too-wide").get("phase") == "Ready", 60,
             "too-wide recovered after its source was fixed")
    assert status_of(kube, "too-wide")["rank"] == RANKS["lora-20"]


def secret_data(**values: str) -> dict:
    return {key: base64.b64encode(value.encode()).decode() for key, value in values.items()}


def ready_reason(kube, name: str) -> tuple[str | None, str]:
    status = status_of(kube, name)
    ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
    return ready.get("reason"), status.get("message", "")


def test_an_adapter_waits_for_its_credentials_and_recovers_as_the_secret_is_fixed(
        kube, pods, operator):
    key_id, secret_key = S3_KEYS
    body = adapter_body("keyed", f"s3://{S3_BUCKET}/keyed")
    body["spec"]["credentialsSecretRef"] = {"name": "s3-keys"}
    kube.create("adapters", body)
    wait_for(lambda: ready_reason(kube, "keyed") == (
        "CredentialsNotFound", f"Secret 's3-keys' (spec.credentialsSecretRef) not found in "
        f"namespace '{NAMESPACE}'"), 30, "keyed: Secret not found")
    assert status_of(kube, "keyed")["phase"] == "Pending"
    assert status_of(kube, "keyed")["placements"] == []
    assert not any("keyed" in held for held in holdings(pods).values()), "pushed anyway"

    kube.create("secrets", {"metadata": {"name": "s3-keys"},
                            "data": secret_data(AWS_ACCESS_KEY_ID=key_id)})
    wait_for(lambda: "has no AWS_SECRET_ACCESS_KEY" in ready_reason(kube, "keyed")[1], 30,
             "keyed: a key missing from the Secret")
    assert not any("keyed" in held for held in holdings(pods).values())

    kube.patch("secrets", "s3-keys", {"data": secret_data(AWS_SECRET_ACCESS_KEY="not-it")})
    wait_for(lambda: status_of(kube, "keyed").get("phase") == "Failed", 60,
             "keyed: the bucket refuses a wrong key")
    assert "SignatureDoesNotMatch" in status_of(kube, "keyed")["message"]  # S3's own words

    kube.patch("secrets", "s3-keys", {"data": secret_data(AWS_SECRET_ACCESS_KEY=secret_key)})
    wait_for(lambda: status_of(kube, "keyed").get("phase") == "Ready", 60,
             "keyed: Ready once the Secret holds the right key")
    assert len(loaded_on(pods)["keyed"]) == 1
    shown = str(kube.list("adapters")) + str(kube.list("events")) + operator.logs() \
        + "".join(pod.server.log_text() for pod in pods.pods.values())
    assert secret_key not in shown and "not-it" not in shown
    assert all_ready(kube, FIRST), "waiting for credentials must not disturb the others"


def test_a_deleted_adapter_is_unloaded_before_it_goes(kube, pods):
    name = FIRST[2]
    holders = placed_pods(kube, name)
    kube.delete("adapters", name)
    wait_for(lambda: kube.get("adapters", name) is None, 60, f"{name} finalized")
    assert all(name not in held for held in holdings(pods).values())
    assert holders
    table = parse_placements(kube.get("configmaps", naming.placements_name(BMD))
                             ["data"]["placements.json"])
    assert name not in table.adapters
    FIRST.remove(name)
    REPLICAS.pop(name)
    REPLICAS["too-wide"] = 1


def test_children_drift_is_repaired(kube):
    """Objects built from the spec are put back; the Secret (made once) and the placement
    table (rewritten from observed state) are not spec-built and are left out."""
    built = {plural: names for plural, names in CHILDREN.items()
             if plural not in ("secrets", "configmaps")}
    for plural, names in built.items():
        for name in names:
            kube.patch(plural, name, {"metadata": {"labels": {naming.LABEL_MANAGED_BY: "me"}}})
    for plural, names in built.items():
        for name in names:
            wait_for(lambda p=plural, n=name: kube.get(p, n)["metadata"]["labels"]
                     [naming.LABEL_MANAGED_BY] == naming.MANAGED_BY, 30,
                     f"{plural}/{name} repaired")


def test_network_policies_follow_the_spec(kube, pods):
    names = CHILDREN["networkpolicies"]
    kube.patch("basemodeldeployments", BMD, {"spec": {"networkPolicy": {"enabled": False}}})
    wait_for(lambda: all(kube.get("networkpolicies", n) is None for n in names), 30,
             "network policies deleted")
    assert all_ready(kube, FIRST), "the pods keep serving"
    kube.patch("basemodeldeployments", BMD, {"spec": {"networkPolicy": {
        "enabled": True, "routerFrom": [{"namespaceSelector": {}}]}}})
    router = wait_for(lambda: kube.get("networkpolicies", naming.router_name(BMD)), 30,
                      "network policies back")
    assert router["spec"]["ingress"][0]["from"] == [{"namespaceSelector": {}}]
    assert kube.get("networkpolicies", naming.runtime_name(BMD)) is not None


def bmd_condition(kube, kind: str) -> dict:
    status = kube.get("basemodeldeployments", BMD).get("status") or {}
    return next((c for c in status.get("conditions", []) if c["type"] == kind), {})


def test_a_child_the_api_server_refuses_is_reported_and_a_fix_recovers(kube, pods):
    """A user volume the CRD accepts but Kubernetes does not (a PVC without claimName)
    makes the Deployment invalid: the BMD says so; the running pods keep serving."""
    kube.patch("basemodeldeployments", BMD, {"spec": {"volumes": [
        {"name": "models", "persistentVolumeClaim": {}}]}})
    degraded = wait_for(lambda: bmd_condition(kube, "Degraded").get("reason")
                        == "ChildRejected" and bmd_condition(kube, "Degraded"), 30,
                        "the refusal reported")
    assert degraded["status"] == "True"
    assert "Deployment" in degraded["message"] and "claimName" in degraded["message"]
    ready = bmd_condition(kube, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ChildRejected")
    assert all_ready(kube, FIRST), "the pods of the previous version keep serving"
    kube.patch("basemodeldeployments", BMD, {"spec": {"volumes": []}})
    wait_for(lambda: bmd_condition(kube, "Degraded").get("status") == "False"
             and bmd_condition(kube, "Ready").get("status") == "True", 60, "recovered")


def test_an_inference_pool_follows_the_spec(kube):
    """Created for spec.inferencePool (validated by the emulator against the extension's
    CRD), changed with it, deleted when it is unset; made again for the BMD's deletion."""
    pool_spec = {"endpointPicker": {"name": f"{BMD}-epp"}}
    kube.patch("basemodeldeployments", BMD, {"spec": {"inferencePool": pool_spec}})
    pool = wait_for(lambda: kube.get("inferencepools", BMD), 30, "the InferencePool")
    assert pool["spec"]["selector"]["matchLabels"] == naming.selector_labels(
        BMD, naming.COMPONENT_RUNTIME)
    assert pool["spec"]["targetPorts"] == [{"number": naming.RUNTIME_PORT}]
    bmd_uid = kube.get("basemodeldeployments", BMD)["metadata"]["uid"]
    assert pool["metadata"]["ownerReferences"][0]["uid"] == bmd_uid
    kube.patch("basemodeldeployments", BMD, {"spec": {"inferencePool": {"endpointPicker": {
        "port": 9100, "failureMode": "FailOpen"}}}})
    wait_for(lambda: kube.get("inferencepools", BMD)["spec"]["endpointPickerRef"] == {
        "group": "", "kind": "Service", "name": f"{BMD}-epp", "port": {"number": 9100},
        "failureMode": "FailOpen"}, 30, "the InferencePool updated")
    kube.patch("basemodeldeployments", BMD, {"spec": {"inferencePool": None}})
    wait_for(lambda: kube.get("inferencepools", BMD) is None, 30, "the InferencePool deleted")
    kube.patch("basemodeldeployments", BMD, {"spec": {"inferencePool": pool_spec}})
    wait_for(lambda: kube.get("inferencepools", BMD), 30, "the InferencePool back")
    assert all_ready(kube, FIRST), "the pods keep serving"


def test_an_inference_pool_without_its_crd_is_reported_with_the_fix(kube, emulator):
    """The cluster lacks the extension's CRD: the BMD says which CRD to install, the pods
    keep serving, and installing it is enough."""
    emulator.emulator.uninstall("inferencepools")
    try:
        degraded = wait_for(lambda: bmd_condition(kube, "Degraded").get("reason")
                            == "ChildRejected" and bmd_condition(kube, "Degraded"), 30,
                            "the missing CRD reported")
        assert "InferencePool" in degraded["message"]
        assert "Gateway API Inference Extension installed" in degraded["message"]
        assert all_ready(kube, FIRST), "the pods keep serving"
    finally:
        emulator.emulator.install("inferencepools")
    wait_for(lambda: bmd_condition(kube, "Degraded").get("status") == "False"
             and bmd_condition(kube, "Ready").get("status") == "True", 30, "recovered")
    assert kube.get("inferencepools", BMD) is not None


def test_an_operator_restart_converges_without_duplicates(kube, pods, operator, adapter_dirs):
    operator.stop()
    kube.create("adapters", adapter_body("lora-20", str(adapter_dirs["lora-20"]), 2))
    kube.patch("adapters", FIRST[3], {"spec": {"replicas": 2}})
    REPLICAS.update({"lora-20": 2, FIRST[3]: 2})
    pods.remove(next(iter(pods.pods)))
    pods.add(1)
    operator.start()
    wait_for(lambda: converged(kube, pods, REPLICAS), 120, "converged after the restart")
    for name, count in REPLICAS.items():
        assert len(placed_pods(kube, name)) == count
    assert len(kube.list("deployments")) == 2
    assert sorted(s["metadata"]["name"] for s in kube.list("secrets")) == sorted([
        naming.admin_secret_name(BMD), "s3-keys"])  # one token; the other is the test's
    assert pods.token() == shared["token"], "the admin token must never rotate"


def test_deleting_the_bmd_leaves_its_adapters_pending_not_stuck(kube, pods):
    kube.delete("basemodeldeployments", BMD)
    wait_for(lambda: kube.get("basemodeldeployments", BMD) is None, 30, "BMD finalized")
    for name in REPLICAS:
        status = wait_for(lambda n=name: status_of(kube, n).get("phase") == "Pending"
                          and status_of(kube, n), 30, f"{name} Pending")
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert ready["reason"] == "BaseModelNotFound"
    assert kube.collect_garbage() > 0
    assert kube.list("deployments") == []
    assert kube.list("inferencepools") == []  # owned by the BMD


def test_the_operator_used_exactly_its_rbac_rules(emulator, operator):
    """Every call the operator made is allowed by OPERATOR_RULES, and every rule was used."""
    operator.stop()
    verbs = {"list": "list", "watch": "watch", "fetch": "get", "create": "create",
             "update": "patch", "delete": "delete"}
    used = {(call.group, call.plural + (f"/{call.subresource}" if call.subresource else ""),
             verbs[call.action])
            for call in emulator.calls() if call.user_agent != TEST_AGENT and call.plural}
    assert used <= expand(OPERATOR_RULES), f"calls without a rule: {used - expand(OPERATOR_RULES)}"
    assert expand(OPERATOR_RULES) <= used, f"rules never used: {expand(OPERATOR_RULES) - used}"
    assert not expand(GRANTED_RULES) & used - expand(OPERATOR_RULES)
