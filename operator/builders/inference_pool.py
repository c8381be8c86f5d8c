"""The InferencePool of a BaseModelDeployment, for the Gateway API Inference Extension.

Targets `inference.networking.k8s.io/v1` (the extension's GA API, v1.0 and later): the
pool selects this deployment's runtime pods by their labels, on their one port, and names
the endpoint picker the user runs. The picker then scores our pods from what they already
export (`vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc`, `vllm:lora_requests_info`
for LoRA affinity), so a gateway with the extension can route to them without our router.
"""

from __future__ import annotations

from typing import Any

from loraplex.operator import naming
from loraplex.operator.builders.meta import Owner, child_metadata
from loraplex.operator.models import BaseModelDeploymentSpec

GROUP, VERSION, KIND, PLURAL = "inference.networking.k8s.io", "v1", "InferencePool", \
    "inferencepools"
API_VERSION = f"{GROUP}/{VERSION}"
MISSING_CRD_HINT = ("is the Gateway API Inference Extension installed? Its CRDs provide "
                    f"{PLURAL}.{GROUP}")


def build_inference_pool(owner: Owner, spec: BaseModelDeploymentSpec) -> dict[str, Any] | None:
    """The InferencePool the spec asks for, or None when `spec.inferencePool` is unset."""
    if spec.inference_pool is None:
        return None
    picker = spec.inference_pool.endpoint_picker
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": child_metadata(owner, naming.inference_pool_name(owner.name),
                                   naming.COMPONENT_RUNTIME),
        "spec": {
            "selector": {"matchLabels": naming.selector_labels(owner.name,
                                                               naming.COMPONENT_RUNTIME)},
            "targetPorts": [{"number": naming.RUNTIME_PORT}],
            "endpointPickerRef": {"group": "", "kind": "Service", "name": picker.name,
                                  "port": {"number": picker.port},
                                  "failureMode": picker.failure_mode},
        },
    }
