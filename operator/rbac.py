"""The operator's RBAC rules, as data: what it calls, and nothing more.

The ship engineer renders these into the ClusterRole of the operator's manifests; an
integration test records every call the operator makes against the emulated API server
and checks that `OPERATOR_RULES` covers them exactly. `GRANTED_RULES` are permissions
the operator never uses itself but must hold to create the router's Role (the API
server refuses a Role granting more than its creator has).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from loraplex.operator import naming
from loraplex.operator.builders import inference_pool
from loraplex.operator.builders.meta import Owner
from loraplex.operator.builders.router_rbac import router_rules

CHILD_VERBS = ["get", "create", "patch"]  # created when missing, patched back on drift

OPERATOR_RULES: list[dict[str, Any]] = [
    # kopf: watch both kinds, add/remove its finalizer and progress annotations.
    {"apiGroups": [naming.GROUP],
     "resources": [naming.BMD_PLURAL, naming.ADAPTER_PLURAL],
     "verbs": ["list", "watch", "patch"]},
    {"apiGroups": [naming.GROUP],
     "resources": [f"{naming.BMD_PLURAL}/status", f"{naming.ADAPTER_PLURAL}/status"],
     "verbs": ["patch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    # The admin token is created once and never rewritten.
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create"]},
    {"apiGroups": [""], "resources": ["configmaps", "services", "serviceaccounts"],
     "verbs": CHILD_VERBS},
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": CHILD_VERBS},
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": CHILD_VERBS},
    {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"],
     "verbs": CHILD_VERBS},
    # Deleted too when spec.networkPolicy.enabled turns false.
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
     "verbs": [*CHILD_VERBS, "delete"]},
    # Only with spec.inferencePool; deleted when it is unset.
    {"apiGroups": [inference_pool.GROUP], "resources": [inference_pool.PLURAL],
     "verbs": [*CHILD_VERBS, "delete"]},
]

# What the router's Role grants, minus resourceNames (unknown until a BMD exists).
GRANTED_RULES: list[dict[str, Any]] = [
    {key: value for key, value in rule.items() if key != "resourceNames"}
    for rule in router_rules(Owner("any", "any", "any"))
]


def expand(rules: Iterable[Mapping[str, Any]]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) triples that the rules allow."""
    return {(group, resource, verb)
            for rule in rules
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]}


def cluster_role_rules() -> list[dict[str, Any]]:
    """Everything the operator's ClusterRole (or per-namespace Role) must grant."""
    return [dict(rule) for rule in OPERATOR_RULES + GRANTED_RULES]
