"""`Adapter`: one LoRA fine-tune, kept warm on `replicas` pods of its base model.

Status is reported from what the pods say (`GET /v1/adapters`), never from what the
operator asked for: a placement is Ready only after the pod confirms the load.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from loraplex.operator.models.common import (
    CONDITIONS_LIST,
    DNS_LABEL_PATTERN,
    CamelModel,
    Condition,
    LocalObjectReference,
)

ADAPTER_SOURCE_PATTERN = (
    r"^(hf://[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9._/-]+)?"
    r"|s3://[a-z0-9][a-z0-9.-]*[a-z0-9](/\S*)?"
    r"|file:///\S*"
    r"|/\S*)$"
)
PARENT_SEGMENT_PATTERN = r"(^|/)\.\.(/|@|$)"
NO_PARENT_SEGMENTS = "source must not contain '..' path segments"

# Unreachable: a pod meant to hold the adapter does not answer (not "still loading")
Phase = Literal["Pending", "Loading", "Ready", "Failed", "Unreachable"]
PlacementState = Literal["Loading", "Ready", "Failed", "Unreachable"]


MIN_ABOVE_MAX = "minReplicas must not be above maxReplicas"


class AutoscaleSpec(CamelModel):
    """Replicas that follow the adapter's load, stabilised like a HorizontalPodAutoscaler."""

    min_replicas: int = Field(1, ge=1, le=64, description="Fewest pods that keep it warm.")
    max_replicas: int = Field(ge=1, le=64, description="Most pods that keep it warm.")
    target_in_flight: float = Field(
        gt=0, le=100000, description="Running requests of this adapter per replica to aim "
        "at: replicas = ceil(in-flight over all pods / target).")
    scale_up_stabilization_seconds: int = Field(
        0, ge=0, le=3600, description="Scale up only as far as every recommendation of this "
        "window allows (0: at once).")
    scale_down_stabilization_seconds: int = Field(
        300, ge=0, le=3600, description="Scale down only as far as every recommendation of "
        "this window allows.")

    model_config = CamelModel.model_config | {
        "json_schema_extra": {"x-kubernetes-validations": [{
            "rule": "!has(self.minReplicas) || self.minReplicas <= self.maxReplicas",
            "message": MIN_ABOVE_MAX,
        }]},
    }

    @model_validator(mode="after")
    def _min_not_above_max(self) -> AutoscaleSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(MIN_ABOVE_MAX)
        return self


class AdapterSpec(CamelModel):
    base_model: str = Field(
        min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN,
        description="Name of the BaseModelDeployment in the same namespace (immutable).",
        json_schema_extra={"x-kubernetes-validations": [
            {"rule": "self == oldSelf", "message": "baseModel is immutable"},
        ]},
    )
    source: str = Field(
        max_length=2048, pattern=ADAPTER_SOURCE_PATTERN,
        description="hf://org/repo[@revision], s3://bucket/prefix, or a path in the pod.",
        json_schema_extra={"x-kubernetes-validations": [
            {"rule": f"!self.matches('{PARENT_SEGMENT_PATTERN}')",
             "message": NO_PARENT_SEGMENTS},
        ]},
    )
    replicas: int = Field(1, ge=0, le=64, description="Pods that keep this adapter warm.")
    pinned: bool = Field(False, description="Keep it on the device: never evicted.")
    autoscale: AutoscaleSpec | None = Field(
        None, description="Set: the replicas follow the adapter's running requests between "
        "minReplicas and maxReplicas, and spec.replicas is not used.")
    credentials_secret_ref: LocalObjectReference | None = Field(
        None, description="Secret (same namespace) with the source's credentials, handed to "
        "the pods for this adapter only. Keys: HF_TOKEN (hf:// sources), AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY (s3:// sources), optional AWS_SESSION_TOKEN. Missing Secret or "
        "keys: phase Pending, reason CredentialsNotFound, until the Secret is fixed.")

    @field_validator("source")
    @classmethod
    def _no_parent_segments(cls, source: str) -> str:
        import re

        if re.search(PARENT_SEGMENT_PATTERN, source):
            raise ValueError(NO_PARENT_SEGMENTS)
        return source


class AdapterPlacement(CamelModel):
    pod: str = Field(description="Runtime pod that holds (or is loading) the adapter.")
    state: PlacementState = Field(description="As the pod reports it.")
    since: str | None = Field(None, description="When the placement entered this state.")
    message: str = Field("", description="The pod's error, when Failed.")


class AdapterStatus(CamelModel):
    phase: Phase | None = Field(None, description="Pending, Loading, Ready, Failed, or "
                                "Unreachable (a pod meant to hold it does not answer).")
    rank: int | None = Field(None, description="LoRA rank, as the pod read it.")
    size_bytes: int | None = Field(None, description="Bytes of adapter weights.")
    digest: str | None = Field(None, description="sha256 of the adapter's files.")
    replicas: int | None = Field(None, description="Placements wanted (spec.replicas, or "
                                 "what autoscale decided).")
    in_flight: int | None = Field(None, description="Running requests of this adapter over "
                                  "all pods (autoscaled adapters only).")
    ready_replicas: int | None = Field(None, description="Pods that confirmed the load.")
    ready: str | None = Field(None, description="readyReplicas/replicas, for kubectl.")
    placements: list[AdapterPlacement] = Field(default_factory=list,
                                               description="One entry per pod.")
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_LIST,
                                        description="Ready, Placed, Degraded with reasons.")
    message: str | None = Field(None, description="Why the adapter is not Ready.")
    observed_generation: int | None = Field(
        None, description="The spec generation this status describes.")
