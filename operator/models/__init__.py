"""Pydantic models of the two custom resources; the CRD YAML in `crds/` is generated from them."""

from loraplex.operator.models.adapter import AdapterPlacement, AdapterSpec, AdapterStatus
from loraplex.operator.models.bmd import BaseModelDeploymentSpec, BmdStatus
from loraplex.operator.models.common import Condition, SpecError, parse_spec

__all__ = [
    "AdapterPlacement",
    "AdapterSpec",
    "AdapterStatus",
    "BaseModelDeploymentSpec",
    "BmdStatus",
    "Condition",
    "SpecError",
    "parse_spec",
]
