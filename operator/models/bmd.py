"""`BaseModelDeployment`: one base model served by N runtime pods, plus its router.

Spec fields are what a platform user sets; status is written only by the operator.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from loraplex.operator.models.common import (
    CONDITIONS_LIST,
    DNS_LABEL_PATTERN,
    CamelModel,
    Condition,
    Quantity,
    quantity_bytes,
)
from loraplex.operator.naming import RUNTIME_VOLUMES

DEFAULT_MODEL = "builtin:smollm2-135m-instruct"
# builtin:NAME, hf://org/repo, s3://bucket/prefix, an absolute path, or a bare shape name
# (random weights of a known architecture, only with loadFormat: dummy).
MODEL_SOURCE_PATTERN = (
    r"^(builtin:[a-z0-9][a-z0-9._-]*"
    r"|hf://[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*"
    r"|s3://[a-z0-9][a-z0-9.-]*[a-z0-9](/\S*)?"
    r"|/\S*"
    r"|[a-z0-9][a-z0-9._-]*)$"
)
SHAPE_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
SHAPE_NEEDS_DUMMY = "a bare model name is a dummy shape: set loadFormat: dummy"


class ModelSpec(CamelModel):
    source: str = Field(DEFAULT_MODEL, max_length=1024, pattern=MODEL_SOURCE_PATTERN,
                        description="builtin:NAME, hf://org/repo, s3://bucket/prefix, "
                        "/path/in/pod, or a shape name with loadFormat: dummy.")
    revision: str = Field("", max_length=255, description="Revision of an hf:// model.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Weight dtype (auto: bfloat16 on CUDA).")
    load_format: Literal["auto", "dummy"] = Field(
        "auto", description="dummy: random weights of the named shape, for benchmarks.")

    @model_validator(mode="after")
    def _shape_needs_dummy(self) -> ModelSpec:
        import re

        if re.match(SHAPE_NAME_PATTERN, self.source) and self.load_format != "dummy":
            raise ValueError(SHAPE_NEEDS_DUMMY)
        return self

    model_config = CamelModel.model_config | {
        "json_schema_extra": {"x-kubernetes-validations": [{
            "rule": f"self.loadFormat == 'dummy' || !self.source.matches('{SHAPE_NAME_PATTERN}')",
            "message": SHAPE_NEEDS_DUMMY,
        }]},
    }


class ResourceRequirements(CamelModel):
    """The core/v1 ResourceRequirements of each runtime container (GPUs go in limits)."""

    limits: dict[str, Quantity] = Field(
        default_factory=dict, description="Most a runtime container may use, e.g. "
        "nvidia.com/gpu: 1.")
    requests: dict[str, Quantity] = Field(
        default_factory=dict, description="What the scheduler reserves for a runtime container.")


class Capacity(CamelModel):
    """What one runtime pod can hold; placement never exceeds it."""

    device_slots: int = Field(32, ge=1, le=4096,
                              description="Adapters resident on the device at once.")
    host_bytes: Quantity = Field("16Gi", description="Host RAM for adapter weights.")
    max_rank: int = Field(64, ge=1, le=1024, description="Largest LoRA rank a pod accepts.")

    @property
    def host_bytes_int(self) -> int:
        return quantity_bytes(self.host_bytes)


class PlacementSpec(CamelModel):
    strategy: Literal["Spread", "BinPack"] = Field(
        "Spread", description="Spread: least-loaded pod first. BinPack: fill pods in turn.")


class EngineSpec(CamelModel):
    max_num_seqs: int = Field(256, ge=1, le=65536,
                              description="Most sequences in one batch (--max-num-seqs).")
    max_num_batched_tokens: int = Field(
        8192, ge=1, le=1048576,
        description="Most tokens in one forward pass; prefill is chunked to fit.")
    kv_cache_fraction: float = Field(
        0.85, gt=0, le=1, description="Fraction of free device memory given to the KV cache.")


class RouterSpec(CamelModel):
    replicas: int = Field(2, ge=0, le=100, description="Router pods behind the endpoint.")
    image: str | None = Field(None, min_length=1, max_length=1024,
                              description="Router image (default: the runtime image).")


class NetworkPolicySpec(CamelModel):
    """Ingress of the pods (two NetworkPolicies the operator owns); egress stays open."""

    enabled: bool = Field(True, description="Runtime pods admit only the router, the operator "
                          "and runtimeFrom; the router admits routerFrom. false: no policies.")
    router_from: list[dict[str, Any]] = Field(
        default_factory=list, max_length=32,
        description="core/v1 NetworkPolicyPeers that may call the router (port 8080); "
        "empty: every pod in this namespace.")
    runtime_from: list[dict[str, Any]] = Field(
        default_factory=list, max_length=32,
        description="More NetworkPolicyPeers that may reach the runtime pods' port, e.g. a "
        "Prometheus namespace (the router and the operator always may).")


class EndpointPickerSpec(CamelModel):
    """The endpoint picker (EPP) Service that scores this pool's pods for the gateway."""

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN,
                      description="Service of the endpoint picker, in this namespace.")
    port: int = Field(9002, ge=1, le=65535, description="Its Service port (ext-proc gRPC).")
    failure_mode: Literal["FailClose", "FailOpen"] = Field(
        "FailClose", description="When the picker does not answer: FailClose refuses the "
        "request, FailOpen lets the gateway pick a pod itself.")


class InferencePoolSpec(CamelModel):
    """An InferencePool (Gateway API Inference Extension, inference.networking.k8s.io/v1)
    over the runtime pods, for gateways that route with the extension instead of our router."""

    endpoint_picker: EndpointPickerSpec = Field(
        description="The endpoint picker the gateway consults for this pool.")


OWN_NAMES = ", ".join(RUNTIME_VOLUMES)
OWN_PATHS = ", ".join(RUNTIME_VOLUMES.values())
RESERVED_VOLUME = f"volume names {OWN_NAMES} are the operator's own"
RESERVED_MOUNT = f"mount paths {OWN_PATHS} are the operator's own"
DUPLICATE_VOLUME = "volume names must be unique"
DUPLICATE_MOUNT = "mount paths must be unique"
UNKNOWN_VOLUME = "every volumeMount must name a volume of spec.volumes"
MAX_VOLUMES = 64


def _cel_list(values: object) -> str:
    return "[" + ", ".join(f"'{value}'" for value in values) + "]"


class PodVolume(BaseModel):
    """A core/v1 Volume of the runtime pods: `name` is checked, the rest passed as written."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN,
                      description="Volume name (not cache, tmp or dshm).")


class PodVolumeMount(BaseModel):
    """A core/v1 VolumeMount of the runtime container, of a volume in spec.volumes."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN,
                      description="A volume of spec.volumes.")
    mount_path: str = Field(alias="mountPath", min_length=2, max_length=1024, pattern=r"^/",
                            description="Absolute path in the container.")


class BaseModelDeploymentSpec(CamelModel):
    model: ModelSpec
    image: str = Field(min_length=1, max_length=1024, description="Runtime container image.")
    replicas: int = Field(1, ge=0, le=1000, description="Runtime pods.")
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements,
                                            json_schema_extra={"default": {}})
    capacity: Capacity = Field(default_factory=Capacity, json_schema_extra={"default": {}})
    placement: PlacementSpec = Field(default_factory=PlacementSpec,
                                     json_schema_extra={"default": {}})
    engine: EngineSpec = Field(default_factory=EngineSpec, json_schema_extra={"default": {}})
    router: RouterSpec = Field(default_factory=RouterSpec, json_schema_extra={"default": {}})
    network_policy: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec,
                                              json_schema_extra={"default": {}})
    inference_pool: InferencePoolSpec | None = Field(
        None, description="Set: an InferencePool of the runtime pods is kept in sync (named "
        "after this BaseModelDeployment); unset: none (an earlier one is deleted).")
    env: list[dict[str, Any]] = Field(default_factory=list,
                                      description="core/v1 EnvVar list for the runtime pods.")
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the runtime pods must run on.")
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list, description="core/v1 Tolerations for the runtime pods.")
    volumes: list[PodVolume] = Field(
        default_factory=list, max_length=MAX_VOLUMES,
        description="core/v1 Volumes added to the runtime pods (e.g. a PersistentVolumeClaim "
        f"holding models), after their own ({OWN_NAMES}).",
        json_schema_extra={"x-kubernetes-validations": [
            {"rule": f"self.all(v, !(v.name in {_cel_list(RUNTIME_VOLUMES)}))",
             "message": RESERVED_VOLUME},
            {"rule": "self.all(v, self.exists_one(w, w.name == v.name))",
             "message": DUPLICATE_VOLUME},
        ]})
    volume_mounts: list[PodVolumeMount] = Field(
        default_factory=list, max_length=MAX_VOLUMES,
        description="core/v1 VolumeMounts of the runtime container, each of a volume in "
        "spec.volumes (readOnly: true for shared models).",
        json_schema_extra={"x-kubernetes-validations": [
            {"rule": f"self.all(m, !(m.mountPath in {_cel_list(RUNTIME_VOLUMES.values())}))",
             "message": RESERVED_MOUNT},
            {"rule": "self.all(m, self.exists_one(n, n.mountPath == m.mountPath))",
             "message": DUPLICATE_MOUNT},
        ]})

    model_config = CamelModel.model_config | {
        "json_schema_extra": {"x-kubernetes-validations": [{
            # conditionals, not || and &&: cel-python (the tests' evaluator) does not
            # short-circuit a macro over an absent field; the API server reads both alike
            "rule": "has(self.volumeMounts) ? self.volumeMounts.all(m, has(self.volumes) ? "
                    "self.volumes.exists(v, v.name == m.name) : false) : true",
            "message": UNKNOWN_VOLUME,
        }]},
    }

    @field_validator("volumes")
    @classmethod
    def _own_volume_names(cls, volumes: list[PodVolume]) -> list[PodVolume]:
        names = [volume.name for volume in volumes]
        if set(names) & set(RUNTIME_VOLUMES):
            raise ValueError(RESERVED_VOLUME)
        if len(set(names)) != len(names):
            raise ValueError(DUPLICATE_VOLUME)
        return volumes

    @field_validator("volume_mounts")
    @classmethod
    def _own_mount_paths(cls, mounts: list[PodVolumeMount]) -> list[PodVolumeMount]:
        paths = [mount.mount_path for mount in mounts]
        if set(paths) & set(RUNTIME_VOLUMES.values()):
            raise ValueError(RESERVED_MOUNT)
        if len(set(paths)) != len(paths):
            raise ValueError(DUPLICATE_MOUNT)
        return mounts

    @model_validator(mode="after")
    def _mounts_name_volumes(self) -> BaseModelDeploymentSpec:
        if {mount.name for mount in self.volume_mounts} - {v.name for v in self.volumes}:
            raise ValueError(UNKNOWN_VOLUME)
        return self


class AdapterCounts(CamelModel):
    placed: int = Field(0, description="Adapters with at least one placement.")
    ready: int = Field(0, description="Adapters in phase Ready.")
    pending: int = Field(0, description="Adapters waiting for capacity or a pod.")
    failed: int = Field(0, description="Adapters whose load failed.")


class BmdStatus(CamelModel):
    replicas: int | None = Field(None, description="Runtime pods that exist (the scale "
                                 "subresource's current replicas).")
    ready_replicas: int | None = Field(None, description="Runtime pods that answer /ready.")
    ready: str | None = Field(None, description="readyReplicas/spec.replicas, for kubectl.")
    selector: str | None = Field(None, description="Label selector of the runtime pods, for "
                                 "the scale subresource (HorizontalPodAutoscaler, KEDA).")
    adapters: AdapterCounts | None = Field(None, description="Adapters of this base model.")
    endpoint: str | None = Field(None, description="In-cluster URL of the router.")
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_LIST,
                                        description="Ready, Degraded, ... with reasons.")
    observed_generation: int | None = Field(
        None, description="The spec generation this status describes.")
