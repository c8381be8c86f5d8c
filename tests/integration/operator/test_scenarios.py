"""The operator end to end: emulated API server, real operator, real runtime pods.

The tests run in order and share one cluster (module fixtures): each scenario starts
from the state the previous one left, as an operator's life goes.
"""

from __future__ import annotations

import httpx
import pytest

from loraplex.operator import naming
from tests.integration.operator.conftest import BMD, NAMESPACE
from tests.integration.operator.kube import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CHILDREN = {
    "deployments": [naming.runtime_name(BMD), naming.router_name(BMD)],
    "services": [naming.runtime_name(BMD), naming.router_name(BMD)],
    "poddisruptionbudgets": [naming.runtime_name(BMD)],
    "serviceaccounts": [naming.router_account_name(BMD)],
    "roles": [naming.router_account_name(BMD)],
    "rolebindings": [naming.router_account_name(BMD)],
    "secrets": [naming.admin_secret_name(BMD)],
    "configmaps": [naming.placements_name(BMD)],
}


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


def test_a_bmd_gets_its_children_owned_and_a_status(kube, operator):
    created = kube.create("basemodeldeployments", bmd_body())
    uid = created["metadata"]["uid"]
    for plural, names in CHILDREN.items():
        for name in names:
            child = wait_for(lambda p=plural, n=name: kube.get(p, n), 30, f"{plural}/{name}")
            assert child["metadata"]["ownerReferences"][0]["uid"] == uid
    status = wait_for(lambda: (kube.get("basemodeldeployments", BMD) or {}).get("status"),
                      30, "BMD status")
    assert status["endpoint"] == f"http://{BMD}.{NAMESPACE}.svc"
    assert status["replicas"] == 3 and status["readyReplicas"] == 0
