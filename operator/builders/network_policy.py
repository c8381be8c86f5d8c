"""NetworkPolicies of a BaseModelDeployment: who may open a connection to its pods.

The runtime pods' one port serves inference and the admin API (guarded by a token, and
by this policy too): only the BMD's router pods, the operator's pods and the peers in
`spec.networkPolicy.runtimeFrom` may reach it. The router's port is open to every pod of
the namespace, or to the peers in `spec.networkPolicy.routerFrom`. Only ingress is
restricted: pods still reach model hubs, buckets and the API server. Kubelet probes are
not subject to network policies. With `enabled: false` none are built, and reconcile
deletes the ones it made earlier (`network_policy_names`).
"""

from __future__ import annotations

from typing import Any

from loraplex.operator import naming
from loraplex.operator.builders.meta import Owner, child_metadata
from loraplex.operator.models import BaseModelDeploymentSpec

API_VERSION, KIND = "networking.k8s.io/v1", "NetworkPolicy"


def operator_peer(operator_namespace: str) -> dict[str, Any]:
    """The operator's pods: in its own namespace when known, else in any namespace."""
    namespaces = ({"matchLabels": {naming.LABEL_NAMESPACE_NAME: operator_namespace}}
                  if operator_namespace else {})
    return {"namespaceSelector": namespaces,
            "podSelector": {"matchLabels": naming.operator_labels()}}


def _policy(owner: Owner, name: str, component: str, peers: list[dict[str, Any]],
            port: int) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": child_metadata(owner, name, component),
        "spec": {
            "podSelector": {"matchLabels": naming.selector_labels(owner.name, component)},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": peers, "ports": [{"protocol": "TCP", "port": port}]}],
        },
    }


def build_runtime_network_policy(owner: Owner, spec: BaseModelDeploymentSpec,
                                 operator_namespace: str = "") -> dict[str, Any]:
    router = {"podSelector": {"matchLabels": naming.selector_labels(
        owner.name, naming.COMPONENT_ROUTER)}}
    peers = [router, operator_peer(operator_namespace), *spec.network_policy.runtime_from]
    return _policy(owner, naming.runtime_name(owner.name), naming.COMPONENT_RUNTIME, peers,
                   naming.RUNTIME_PORT)


def build_router_network_policy(owner: Owner, spec: BaseModelDeploymentSpec) -> dict[str, Any]:
    peers = list(spec.network_policy.router_from) or [{"podSelector": {}}]
    return _policy(owner, naming.router_name(owner.name), naming.COMPONENT_ROUTER, peers,
                   naming.ROUTER_PORT)


def build_network_policies(owner: Owner, spec: BaseModelDeploymentSpec,
                           operator_namespace: str = "") -> list[dict[str, Any]]:
    if not spec.network_policy.enabled:
        return []
    return [build_runtime_network_policy(owner, spec, operator_namespace),
            build_router_network_policy(owner, spec)]


def network_policy_names(owner: Owner) -> list[str]:
    """Names of the policies `build_network_policies` makes when enabled."""
    return [naming.runtime_name(owner.name), naming.router_name(owner.name)]
