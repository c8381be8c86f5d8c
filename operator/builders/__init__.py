"""Pure builders: a BaseModelDeployment in, the Kubernetes objects it owns out (as dicts)."""

from __future__ import annotations

from typing import Any

from loraplex.operator.builders.admin_secret import build_admin_secret, read_admin_token
from loraplex.operator.builders.inference_pool import build_inference_pool
from loraplex.operator.builders.meta import Owner
from loraplex.operator.builders.network_policy import build_network_policies
from loraplex.operator.builders.placements import (
    build_placements_configmap,
    placement_table,
    read_placements,
    same_placements,
)
from loraplex.operator.builders.router import build_router_deployment, build_router_service
from loraplex.operator.builders.router_rbac import (
    build_router_role,
    build_router_role_binding,
    build_router_service_account,
)
from loraplex.operator.builders.runtime import (
    build_runtime_deployment,
    build_runtime_pdb,
    build_runtime_service,
)
from loraplex.operator.models import BaseModelDeploymentSpec


def build_children(owner: Owner, spec: BaseModelDeploymentSpec, router_image: str = "",
                   operator_namespace: str = "") -> list[dict[str, Any]]:
    """Every child that reconcile keeps in line with the spec (not the Secret or ConfigMap:
    the token is created once, the table is written from observed state)."""
    return [
        build_runtime_deployment(owner, spec),
        build_runtime_service(owner),
        build_runtime_pdb(owner),
        build_router_service_account(owner),
        build_router_role(owner),
        build_router_role_binding(owner),
        build_router_deployment(owner, spec, router_image),
        build_router_service(owner),
        *build_network_policies(owner, spec, operator_namespace),
        *filter(None, [build_inference_pool(owner, spec)]),
    ]


__all__ = [
    "Owner",
    "build_admin_secret",
    "build_children",
    "build_inference_pool",
    "build_network_policies",
    "build_placements_configmap",
    "build_router_deployment",
    "build_router_role",
    "build_router_role_binding",
    "build_router_service",
    "build_router_service_account",
    "build_runtime_deployment",
    "build_runtime_pdb",
    "build_runtime_service",
    "placement_table",
    "read_admin_token",
    "read_placements",
    "same_placements",
]
