"""Names shared by the CRDs, the builders and the reconciler: API group, labels, children.

Every name the operator writes into the cluster is spelled once, here, so the label a
builder puts on a pod is the label the pod index selects on, and the ConfigMap the router
reads is the one reconcile writes.
"""

from __future__ import annotations

GROUP = "loraplex.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "loraplex"

BMD_KIND = "BaseModelDeployment"
BMD_PLURAL = "basemodeldeployments"
BMD_SINGULAR = "basemodeldeployment"
BMD_SHORT_NAMES = ("bmd",)

ADAPTER_KIND = "Adapter"
ADAPTER_PLURAL = "adapters"
ADAPTER_SINGULAR = "adapter"
ADAPTER_SHORT_NAMES = ("lora",)

FINALIZER = f"{GROUP}/finalizer"
ANNOTATION_PREFIX = GROUP
FIELD_MANAGER = "loraplex-operator"

# Labels on every child object; `LABEL_BASE_MODEL` + `LABEL_COMPONENT` select the pods.
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_BASE_MODEL = f"{GROUP}/base-model"
APP_NAME = "loraplex"
MANAGED_BY = "loraplex-operator"
COMPONENT_RUNTIME = "runtime"
COMPONENT_ROUTER = "router"
COMPONENT_OPERATOR = "operator"  # the operator's own pods (manifests/base/deployment.yaml)
LABEL_NAMESPACE_NAME = "kubernetes.io/metadata.name"  # set on every namespace by the API

# The runtime pods' own volumes (emptyDirs) and where the container mounts them: volumes
# a user adds (spec.volumes, spec.volumeMounts) may take neither the names nor the paths.
RUNTIME_VOLUMES = {"cache": "/cache", "tmp": "/tmp", "dshm": "/dev/shm"}

RUNTIME_PORT = 8080
ROUTER_PORT = 8080
PLACEMENTS_KEY = "placements.json"
ADMIN_TOKEN_KEY = "admin-token"
ADMIN_TOKEN_ENV = "LORAPLEX_ADMIN_TOKEN"


def runtime_name(bmd: str) -> str:
    """The runtime Deployment and its (headless) Service."""
    return f"{bmd}-runtime"


def router_name(bmd: str) -> str:
    """The router Deployment and Service: the BMD's own name is its in-cluster endpoint."""
    return bmd


def router_account_name(bmd: str) -> str:
    """ServiceAccount, Role and RoleBinding of the router."""
    return f"{bmd}-router"


def inference_pool_name(bmd: str) -> str:
    """The InferencePool of the runtime pods (Gateway API Inference Extension)."""
    return bmd


def placements_name(bmd: str) -> str:
    return f"{bmd}-placements"


def admin_secret_name(bmd: str) -> str:
    return f"{bmd}-admin-token"


def endpoint_url(bmd: str, namespace: str) -> str:
    return f"http://{router_name(bmd)}.{namespace}.svc"


def pod_url(pod_ip: str, port: int = RUNTIME_PORT) -> str:
    host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
    return f"http://{host}:{port}"


def selector_labels(bmd: str, component: str) -> dict[str, str]:
    """The labels a Deployment selects its pods by (immutable once created)."""
    return {LABEL_INSTANCE: bmd, LABEL_COMPONENT: component, LABEL_BASE_MODEL: bmd}


def runtime_selector(bmd: str) -> str:
    """The runtime pods' label selector as a string (the scale subresource's selector)."""
    return ",".join(f"{key}={value}" for key, value
                    in sorted(selector_labels(bmd, COMPONENT_RUNTIME).items()))


def operator_labels() -> dict[str, str]:
    """Labels of the operator's pods, which network policies admit to the runtime pods."""
    return {LABEL_NAME: APP_NAME, LABEL_COMPONENT: COMPONENT_OPERATOR}


def common_labels(bmd: str, component: str) -> dict[str, str]:
    return {
        LABEL_NAME: APP_NAME,
        LABEL_MANAGED_BY: MANAGED_BY,
        **selector_labels(bmd, component),
    }
