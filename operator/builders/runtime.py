"""The runtime pods of a BaseModelDeployment: Deployment, headless Service, PodDisruptionBudget.

The container's flags are those of `loraplex serve` (runtime/config.py), derived from
spec.model, spec.engine and spec.capacity, so a pod holds exactly what placement assumes.
The user's volumes and mounts (spec.volumes, spec.volumeMounts: a PVC of models, say) are
added after the pod's own cache, tmp and shared-memory emptyDirs, as written.
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

CACHE_DIR = naming.RUNTIME_VOLUMES["cache"]
# emptyDir of each of the pod's own volumes; the user's (spec.volumes) come after them.
OWN_VOLUMES = {"cache": {}, "tmp": {}, "dshm": {"medium": "Memory"}}
STARTUP_BUDGET_S = 1800  # a large model may take minutes to download and load


def runtime_args(spec: BaseModelDeploymentSpec) -> list[str]:
    """Flags after the image's `loraplex serve` entrypoint."""
    args = [
        "--model", spec.model.source,
        "--dtype", spec.model.dtype,
        "--load-format", spec.model.load_format,
        "--host", "0.0.0.0",
        "--port", str(naming.RUNTIME_PORT),
        "--cache-dir", CACHE_DIR,
        "--max-num-seqs", str(spec.engine.max_num_seqs),
        "--max-num-batched-tokens", str(spec.engine.max_num_batched_tokens),
        "--kv-cache-fraction", str(spec.engine.kv_cache_fraction),
        "--device-slots", str(spec.capacity.device_slots),
        "--host-bytes", str(spec.capacity.host_bytes_int),
        "--max-lora-rank", str(spec.capacity.max_rank),
    ]
    if spec.model.revision:
        args += ["--revision", spec.model.revision]
    return args


def build_runtime_deployment(owner: Owner, spec: BaseModelDeploymentSpec) -> dict[str, Any]:
    name = naming.runtime_name(owner.name)
    container = {
        "name": "runtime",
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "args": runtime_args(spec),
        "ports": [{"name": "http", "containerPort": naming.RUNTIME_PORT, "protocol": "TCP"}],
        "env": [
            secret_env(naming.ADMIN_TOKEN_ENV, naming.admin_secret_name(owner.name),
                       naming.ADMIN_TOKEN_KEY),
            {"name": "LORAPLEX_CACHE", "value": CACHE_DIR},
            {"name": "HOME", "value": "/tmp"},
            *spec.env,
        ],
        "resources": {kind: amounts for kind, amounts in spec.resources.to_json().items()
                      if amounts},
        "startupProbe": http_probe("/health", period_s=10, failures=STARTUP_BUDGET_S // 10),
        "livenessProbe": http_probe("/health", period_s=10, failures=3),
        "readinessProbe": http_probe("/ready", period_s=5, failures=2),
        "securityContext": container_security_context(),
        "volumeMounts": [
            *({"name": name, "mountPath": naming.RUNTIME_VOLUMES[name]} for name in OWN_VOLUMES),
            *(mount.model_dump(by_alias=True, mode="json") for mount in spec.volume_mounts),
        ],
    }
    labels = naming.common_labels(owner.name, naming.COMPONENT_RUNTIME)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": child_metadata(owner, name, naming.COMPONENT_RUNTIME),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": naming.selector_labels(owner.name,
                                                               naming.COMPONENT_RUNTIME)},
            # GPUs are scarce: replace one pod at a time instead of surging.
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": pod_security_context(),
                    "terminationGracePeriodSeconds": 60,
                    "containers": [container],
                    "volumes": [
                        *({"name": name, "emptyDir": dict(empty_dir)}
                          for name, empty_dir in OWN_VOLUMES.items()),
                        *(volume.model_dump(mode="json") for volume in spec.volumes),
                    ],
                    "nodeSelector": dict(spec.node_selector),
                    "tolerations": list(spec.tolerations),
                },
            },
        },
    }


def build_runtime_service(owner: Owner) -> dict[str, Any]:
    """Headless: pods are addressed one by one (the operator and the router pick pods)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(owner, naming.runtime_name(owner.name),
                                   naming.COMPONENT_RUNTIME),
        "spec": {
            "clusterIP": "None",
            "selector": naming.selector_labels(owner.name, naming.COMPONENT_RUNTIME),
            "ports": [{"name": "http", "port": naming.RUNTIME_PORT, "targetPort": "http",
                       "protocol": "TCP"}],
        },
    }


def build_runtime_pdb(owner: Owner) -> dict[str, Any]:
    """Voluntary evictions take one runtime pod at a time; its adapters move meanwhile."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": child_metadata(owner, naming.runtime_name(owner.name),
                                   naming.COMPONENT_RUNTIME),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": naming.selector_labels(owner.name,
                                                               naming.COMPONENT_RUNTIME)},
        },
    }
