"""The InferencePool the operator builds is one the Gateway API Inference Extension accepts.

Checked against the extension's own CRD (tests/data, its source named there): the
OpenAPI schema with jsonschema and its CEL rules with cel-python, defaults filled in
first as the API server does.
"""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from loraplex.operator import naming
from loraplex.operator.builders import Owner, build_children, build_inference_pool
from loraplex.operator.builders.inference_pool import API_VERSION, KIND
from loraplex.operator.models import BaseModelDeploymentSpec, SpecError, parse_spec
from loraplex.operator.rbac import OPERATOR_RULES, expand
from tests.unit.operator.test_cel_rules import violations, with_defaults

CRD = Path(__file__).resolve().parents[2] / "data/gateway-api-inference-extension" \
    / "inferencepools.yaml"
OWNER = Owner("llama", "serving", "uid-1")


def extension_schema() -> dict:
    crd = yaml.safe_load(CRD.read_text(encoding="utf-8"))
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    assert f"{crd['spec']['group']}/{version['name']}" == API_VERSION
    assert crd["spec"]["names"]["kind"] == KIND
    return version["schema"]["openAPIV3Schema"]


def spec(**pool) -> BaseModelDeploymentSpec:
    body = {"model": {"source": "builtin:smollm2-135m-instruct"}, "image": "runtime:1"}
    if pool:
        body["inferencePool"] = pool
    return parse_spec(BaseModelDeploymentSpec, body, naming.BMD_KIND)


def problems(obj: dict) -> list[str]:
    schema = extension_schema()
    found = [error.message for error in jsonschema.Draft4Validator(schema).iter_errors(obj)]
    return found + violations(with_defaults(obj, schema), schema)


@pytest.mark.parametrize("picker", [{"name": "llama-epp"},
                                    {"name": "epp", "port": 9100, "failureMode": "FailOpen"}])
def test_the_pool_validates_against_the_extensions_crd(picker):
    pool = build_inference_pool(OWNER, spec(endpointPicker=picker))
    assert problems(pool) == []
    assert pool["spec"]["selector"]["matchLabels"] == naming.selector_labels(
        "llama", naming.COMPONENT_RUNTIME)
    assert pool["spec"]["targetPorts"] == [{"number": naming.RUNTIME_PORT}]
    ref = pool["spec"]["endpointPickerRef"]
    assert (ref["name"], ref["port"]["number"]) == (picker["name"], picker.get("port", 9002))
    assert pool["metadata"]["ownerReferences"][0]["uid"] == "uid-1"  # deleted with the BMD


def test_the_check_can_fail():
    pool = build_inference_pool(OWNER, spec(endpointPicker={"name": "epp"}))
    pool["spec"]["targetPorts"] = [{"number": 8080}, {"number": 8080}]
    del pool["spec"]["endpointPickerRef"]["port"]
    assert any("unique" in p for p in problems(pool))
    assert any("port is required" in p for p in problems(pool))


def test_no_pool_unless_asked_and_a_bad_picker_is_refused_by_name():
    assert build_inference_pool(OWNER, spec()) is None
    assert all(child["kind"] != KIND for child in build_children(OWNER, spec()))
    with pytest.raises(SpecError, match="name"):
        spec(endpointPicker={"name": "Not_A_Service"})
    with pytest.raises(SpecError, match="port"):
        spec(endpointPicker={"name": "epp", "port": 0})


def test_the_operator_may_keep_the_pool_in_sync():
    group = API_VERSION.partition("/")[0]
    assert {(group, "inferencepools", verb) for verb in ("get", "create", "patch", "delete")} \
        <= expand(OPERATOR_RULES)
