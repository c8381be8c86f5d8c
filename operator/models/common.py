"""Building blocks shared by both CRD models: camelCase fields, quantities, conditions.

The same pydantic classes validate a spec read from the cluster (the emulator in tests
does not enforce the schema, and a real API server cannot check everything) and produce
the OpenAPI schema of the CRD, so the two cannot disagree.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar

from lightkube.utils.quantity import parse_quantity
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
)
from pydantic.alias_generators import to_camel

# Kubernetes resource.Quantity, e.g. 16Gi, 500M, 1e9, 1024.
QUANTITY_PATTERN = r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|[KMGTPE]i|[kMGTPE]|m)?$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def _quantity_text(value: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"a quantity is an integer or a string like '16Gi', got {value!r}")
    if isinstance(value, str):
        try:
            parse_quantity(value)
        except ValueError as error:
            raise ValueError(f"not a Kubernetes quantity: {value!r}") from error
    return value


Quantity = Annotated[
    int | str,
    BeforeValidator(_quantity_text),
    WithJsonSchema({
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": QUANTITY_PATTERN,
        "x-kubernetes-int-or-string": True,
    }),
]


def quantity_bytes(value: int | str) -> int:
    """Whole bytes of a quantity ("16Gi" → 17179869184)."""
    parsed: Decimal | None = parse_quantity(str(value))
    if parsed is None:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return int(parsed)


class CamelModel(BaseModel):
    """Fields are snake_case in Python and camelCase in the cluster."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid",
        validate_default=True,
    )

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class LocalObjectReference(CamelModel):
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN,
                      description="Name of an object in the same namespace.")


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(CamelModel):
    """A kstatus-style condition, so Argo CD and Flux can read health."""

    type: str = Field(min_length=1, max_length=316)
    status: ConditionStatus
    reason: str = Field(default="", max_length=1024)
    message: str = Field(default="", max_length=32768)
    last_transition_time: str | None = None
    observed_generation: int | None = Field(default=None, ge=0)


CONDITIONS_LIST = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


class SpecError(ValueError):
    """A spec the API server let through (or an emulator stored) that the operator refuses."""


SpecModel = TypeVar("SpecModel", bound=BaseModel)


def parse_spec(model: type[SpecModel], spec: Any, kind: str) -> SpecModel:
    """Validate a raw spec; the error names every bad field, for the status message."""
    try:
        return model.model_validate(dict(spec or {}))
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in issue['loc']) or 'spec'}: {issue['msg']}"
            for issue in error.errors()
        )
        raise SpecError(f"invalid {kind} spec: {problems}") from None
