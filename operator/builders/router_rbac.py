"""ServiceAccount, Role and RoleBinding of the router: read its placement table, list pods.

Least privilege: the ConfigMap rule names the one placement ConfigMap (the router must
watch it with a `metadata.name` field selector); pods are read-only.
"""

from __future__ import annotations

from typing import Any

from loraplex.operator import naming
from loraplex.operator.builders.meta import Owner, child_metadata


def router_rules(owner: Owner) -> list[dict[str, Any]]:
    return [
        {"apiGroups": [""], "resources": ["configmaps"],
         "resourceNames": [naming.placements_name(owner.name)],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    ]


def build_router_service_account(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": child_metadata(owner, naming.router_account_name(owner.name),
                                   naming.COMPONENT_ROUTER),
    }


def build_router_role(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": child_metadata(owner, naming.router_account_name(owner.name),
                                   naming.COMPONENT_ROUTER),
        "rules": router_rules(owner),
    }


def build_router_role_binding(owner: Owner) -> dict[str, Any]:
    name = naming.router_account_name(owner.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": child_metadata(owner, name, naming.COMPONENT_ROUTER),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": owner.namespace}],
    }
