"""ServiceAccount, Role and RoleBinding of the router: read its placement table.

Least privilege: one rule naming the one placement ConfigMap (the router watches it with
a `metadata.name` field selector, which `resourceNames` allows). The table lists the
ready pods too, so the router needs no access to pods.
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
