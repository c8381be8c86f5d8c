"""The router of a BaseModelDeployment: Deployment + Service named like the BMD itself.

The Service is the in-cluster endpoint `http://<name>.<namespace>.svc`. Router pods read
the placement ConfigMap through the API (see router_rbac.py); the table lists the ready
pods as well, so the router needs no other view of the cluster.
"""

from __future__ import annotations

from typing import Any

from loraplex.operator import naming
from loraplex.operator.builders.meta import Owner, child_metadata
from loraplex.operator.builders.security import (
    container_security_context,
    http_probe,
    pod_security_context,
    secret_env,
)
from loraplex.operator.models import BaseModelDeploymentSpec

SERVICE_PORT = 80


def router_args(owner: Owner) -> list[str]:
    """Flags of `loraplex router` (router/config.py): where the table is."""
    return [
        "--host", "0.0.0.0",
        "--port", str(naming.ROUTER_PORT),
        "--namespace", owner.namespace,
        "--placements-configmap", naming.placements_name(owner.name),
    ]


def build_router_deployment(owner: Owner, spec: BaseModelDeploymentSpec,
                            default_image: str = "") -> dict[str, Any]:
    image = spec.router.image or default_image or spec.image
    labels = naming.common_labels(owner.name, naming.COMPONENT_ROUTER)
    container = {
        "name": "router",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["loraplex", "router"],
        "args": router_args(owner),
        "ports": [{"name": "http", "containerPort": naming.ROUTER_PORT, "protocol": "TCP"}],
        "env": [
            secret_env(naming.ADMIN_TOKEN_ENV, naming.admin_secret_name(owner.name),
                       naming.ADMIN_TOKEN_KEY),
        ],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                      "limits": {"memory": "512Mi"}},
        "livenessProbe": http_probe("/health", period_s=10, failures=3),
        "readinessProbe": http_probe("/ready", period_s=5, failures=2),
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": child_metadata(owner, naming.router_name(owner.name),
                                   naming.COMPONENT_ROUTER),
        "spec": {
            "replicas": spec.router.replicas,
            "selector": {"matchLabels": naming.selector_labels(owner.name,
                                                               naming.COMPONENT_ROUTER)},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": naming.router_account_name(owner.name),
                    "enableServiceLinks": False,
                    "securityContext": pod_security_context(),
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def build_router_service(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(owner, naming.router_name(owner.name),
                                   naming.COMPONENT_ROUTER),
        "spec": {
            "type": "ClusterIP",
            "selector": naming.selector_labels(owner.name, naming.COMPONENT_ROUTER),
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http",
                       "protocol": "TCP"}],
        },
    }
