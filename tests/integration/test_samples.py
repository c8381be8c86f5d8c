"""The samples, applied as a user applies them, are accepted and get a truthful status.

The operator's integration harness provides the cluster: kmock's emulated API server
(which validates custom resources against `crds/`), the real operator as a subprocess, and
a real `loraplex serve` pod for the CPU sample, started with the flags of the Deployment
the operator built. The samples are rendered by `kubectl kustomize manifests/samples` and
created in one namespace, as `kubectl apply -n NAMESPACE -k manifests/samples` would.

What is true here, and what the statuses must say: the GPU model gets no pods (there is no
GPU), so its adapters wait with `InsufficientCapacity`; the CPU model gets one pod, which
is asked for the demo adapter and refuses it (its path exists only in a custom image), so
that Adapter fails with the pod's own words.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from loraplex.operator import naming
from loraplex.runtime.config import default_cache_dir
from tests.integration.operator.emulator import EmulatorThread
from tests.integration.operator.harness import (
    OperatorProcess,
    RuntimePods,
    running_operator,
)
from tests.integration.operator.kube import Kube, wait_for
from tests.unit.test_manifests import SAMPLES, render, schema_problems

pytestmark = [pytest.mark.slow, pytest.mark.model, pytest.mark.timeout(300)]

NAMESPACE = "llm-serving"
CPU_MODEL, GPU_MODEL = "smollm2", "llama3-8b"
DEMO_ADAPTER = "demo-lora"
PLURALS = {naming.BMD_KIND: naming.BMD_PLURAL, naming.ADAPTER_KIND: naming.ADAPTER_PLURAL}
OPERATOR_FLAGS = ("--resync-interval-s", "2", "--loading-poll-s", "0.3",
                  "--children-resync-s", "3", "--admin-timeout-s", "5")
KV_CACHE_BYTES = 256 << 20  # the sample's kvCacheFraction would take GiBs of this machine


def children(bmd: str) -> dict[str, list[str]]:
    """What the operator creates for one BaseModelDeployment (DESIGN: Operator)."""
    return {
        "deployments": [naming.runtime_name(bmd), naming.router_name(bmd)],
        "services": [naming.runtime_name(bmd), naming.router_name(bmd)],
        "poddisruptionbudgets": [naming.runtime_name(bmd)],
        "serviceaccounts": [naming.router_account_name(bmd)],
        "roles": [naming.router_account_name(bmd)],
        "rolebindings": [naming.router_account_name(bmd)],
        "networkpolicies": [naming.runtime_name(bmd), naming.router_name(bmd)],
        "secrets": [naming.admin_secret_name(bmd)],
        "configmaps": [naming.placements_name(bmd)],
    }


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    thread = EmulatorThread().start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def kube(emulator: EmulatorThread) -> Iterator[Kube]:
    client = Kube(emulator.url, NAMESPACE)
    yield client
    client.close()


@pytest.fixture(scope="module")
def operator(emulator: EmulatorThread,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    with running_operator(emulator.url, NAMESPACE, tmp_path_factory.mktemp("samples-operator"),
                          *OPERATOR_FLAGS) as process:
        yield process


@pytest.fixture(scope="module")
def cpu_pods(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimePods]:
    with pytest.MonkeyPatch.context() as patch:  # pods inherit this process's environment
        patch.setenv("LORAPLEX_KV_CACHE_BYTES", str(KV_CACHE_BYTES))
        pods = RuntimePods(kube, CPU_MODEL, tmp_path_factory.mktemp("samples-pods"),
                         default_cache_dir())
        yield pods
        pods.stop_all()


@pytest.fixture(scope="module")
def applied(kube: Kube, operator: OperatorProcess) -> dict[str, dict]:
    """Every rendered sample created in NAMESPACE: name → object."""
    created = {}
    for obj in render(SAMPLES):
        body = {**obj, "metadata": {**obj["metadata"], "namespace": NAMESPACE}}
        created[obj["metadata"]["name"]] = kube.create(PLURALS[obj["kind"]], body)
    return created


def status_of(kube: Kube, plural: str, name: str) -> dict:
    return (kube.get(plural, name) or {}).get("status") or {}


def conditions(status: dict) -> dict[str, dict]:
    return {condition["type"]: condition for condition in status.get("conditions", [])}


def current(kube: Kube, plural: str, name: str) -> dict:
    """The status once it describes the object's latest spec (kstatus)."""
    obj = kube.get(plural, name) or {}
    status = obj.get("status") or {}
    fresh = status.get("observedGeneration") == obj.get("metadata", {}).get("generation")
    return status if fresh and status.get("conditions") else {}


def test_each_model_gets_valid_children_and_an_endpoint(kube, applied) -> None:
    models = [name for name, obj in applied.items() if obj["kind"] == naming.BMD_KIND]
    assert sorted(models) == sorted([CPU_MODEL, GPU_MODEL])
    for bmd in models:
        uid = applied[bmd]["metadata"]["uid"]
        for plural, names in children(bmd).items():
            for name in names:
                child = wait_for(lambda p=plural, n=name: kube.get(p, n), 30, f"{plural}/{name}")
                assert child["metadata"]["ownerReferences"][0]["uid"] == uid
                assert schema_problems(child) == []
        status = wait_for(lambda b=bmd: current(kube, naming.BMD_PLURAL, b), 30,
                          f"{bmd} status")
        assert status["endpoint"] == f"http://{bmd}.{NAMESPACE}.svc"
        assert status["ready"].endswith(f"/{applied[bmd]['spec']['replicas']}")  # of wanted
        assert status["selector"] == naming.runtime_selector(bmd)  # for the scale subresource


def test_adapters_of_a_model_without_pods_wait_for_capacity(kube, applied) -> None:
    waiting = [name for name, obj in applied.items() if obj["kind"] == naming.ADAPTER_KIND
               and obj["spec"]["baseModel"] == GPU_MODEL]
    assert waiting
    for name in waiting:
        status = wait_for(lambda n=name: current(kube, naming.ADAPTER_PLURAL, n), 30,
                          f"{name} status")
        replicas = applied[name]["spec"]["replicas"]
        assert status["phase"] == "Pending"
        assert status["ready"] == f"0/{replicas}"
        placed = conditions(status)["Placed"]
        assert (placed["status"], placed["reason"]) == ("False", "InsufficientCapacity")
        assert "no ready pods" in placed["message"]
    gpu = conditions(current(kube, naming.BMD_PLURAL, GPU_MODEL))
    assert (gpu["Available"]["status"], gpu["Available"]["reason"]) == ("False", "NoReadyPods")


def test_the_cpu_pod_refuses_the_demo_adapter_and_the_status_says_why(kube, applied,
                                                                     cpu_pods) -> None:
    (pod,) = cpu_pods.add(1)
    status = wait_for(lambda: (s := status_of(kube, naming.ADAPTER_PLURAL, DEMO_ADAPTER))
                      .get("phase") == "Failed" and s, 120, f"{DEMO_ADAPTER} Failed")
    assert [(p["pod"], p["state"]) for p in status["placements"]] == [(pod.name, "Failed")]
    ready = conditions(status)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "LoadFailed")

    # The oracle: the pod's own answer about this adapter, asked directly.
    headers = {"Authorization": f"Bearer {cpu_pods.token()}"}
    url = f"{pod.server.url}/v1/adapters/{DEMO_ADAPTER}"
    held = httpx.get(url, headers=headers, timeout=10)
    if held.status_code == 200:
        refusal = held.json()["error"]
    else:
        source = applied[DEMO_ADAPTER]["spec"]["source"]
        answer = httpx.put(url, headers=headers, json={"source": source}, timeout=10)
        assert answer.status_code == 422, answer.text
        refusal = answer.json()["error"]
    assert refusal and refusal in status["message"]

    cpu = wait_for(lambda: (s := current(kube, naming.BMD_PLURAL, CPU_MODEL))
                   .get("readyReplicas") == 1 and s, 30, f"{CPU_MODEL} with a ready pod")
    assert cpu["adapters"]["failed"] == 1
    assert conditions(cpu)["Available"]["status"] == "True"
    assert (conditions(cpu)["Degraded"]["status"], conditions(cpu)["Degraded"]["reason"]) == \
        ("True", "AdapterFailed")
