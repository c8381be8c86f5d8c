"""The CRDs in crds/: in sync with the models, structural, and enforcing what they promise.

Validation is checked with jsonschema against the generated openAPIV3Schema (what the API
server enforces besides CEL); the CEL rules are mirrored by the pydantic models, checked too.
"""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from loraplex.operator import naming
from loraplex.operator.crdgen import CrdGenConfig, crd_files, drifted, run
from loraplex.operator.models import AdapterSpec, BaseModelDeploymentSpec, SpecError, parse_spec

CRD_DIR = Path(__file__).resolve().parents[3] / "crds"


def load_crd(plural: str) -> dict:
    return yaml.safe_load((CRD_DIR / f"{naming.GROUP}_{plural}.yaml").read_text())


def validator(plural: str) -> jsonschema.Draft4Validator:
    schema = load_crd(plural)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return jsonschema.Draft4Validator(schema)


GOOD_BMD = {"spec": {"model": {"source": "builtin:smollm2-135m-instruct"},
                     "image": "ghcr.io/x/runtime:1", "replicas": 2,
                     "capacity": {"hostBytes": "16Gi", "deviceSlots": 8}}}
GOOD_ADAPTER = {"spec": {"baseModel": "llama", "source": "hf://org/sql-lora@v2",
                         "replicas": 2, "credentialsSecretRef": {"name": "hf-token"}}}


def test_crds_match_the_models():
    assert drifted(CRD_DIR) == [], "crds/ drifted from the models: run `loraplex crds`"


def test_check_mode_fails_on_drift_and_write_mode_fixes_it(tmp_path, capsys):
    assert run(CrdGenConfig(output_dir=str(tmp_path), check=True)) == 1
    assert "differs from the models" in capsys.readouterr().err
    assert run(CrdGenConfig(output_dir=str(tmp_path))) == 0
    assert run(CrdGenConfig(output_dir=str(tmp_path), check=True)) == 0
    name = next(iter(crd_files()))
    (tmp_path / name).write_text((tmp_path / name).read_text() + "# edited\n")
    assert run(CrdGenConfig(output_dir=str(tmp_path), check=True)) == 1


def walk(node, path="schema"):
    yield path, node
    for key, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def test_the_bmd_scales_like_a_deployment_and_adapters_do_not():
    scale = load_crd(naming.BMD_PLURAL)["spec"]["versions"][0]["subresources"]["scale"]
    schema = load_crd(naming.BMD_PLURAL)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for key in ("specReplicasPath", "statusReplicasPath", "labelSelectorPath"):
        top, field = scale[key].lstrip(".").split(".")
        assert field in schema["properties"][top]["properties"], key
    assert schema["properties"]["status"]["properties"]["selector"]["type"] == "string"
    assert "scale" not in load_crd(naming.ADAPTER_PLURAL)["spec"]["versions"][0]["subresources"]


@pytest.mark.parametrize("plural", [naming.BMD_PLURAL, naming.ADAPTER_PLURAL])
def test_schemas_are_structural(plural):
    crd = load_crd(plural)
    version = crd["spec"]["versions"][0]
    assert version["subresources"]["status"] == {}
    assert crd["spec"]["names"]["categories"] == ["loraplex"]
    for path, node in walk(version["schema"]["openAPIV3Schema"]):
        assert "$ref" not in node and "title" not in node, path
        assert node.get("additionalProperties") is not False, path
        if not node.get("x-kubernetes-int-or-string"):
            assert node.get("type") in {"object", "array", "string", "integer", "number",
                                        "boolean"}, path
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    if plural == naming.ADAPTER_PLURAL:
        assert crd["spec"]["names"]["shortNames"] == ["lora"]
        assert columns == {"Base": ".spec.baseModel", "Phase": ".status.phase",
                           "Ready": ".status.ready", "Rank": ".status.rank",
                           "In-Flight": ".status.inFlight",  # kubectl get -o wide
                           "Age": ".metadata.creationTimestamp"}
    else:
        assert crd["spec"]["names"]["shortNames"] == ["bmd"]
        assert list(columns) == ["Model", "Ready", "Adapters", "Endpoint", "Age"]


def test_good_objects_validate():
    validator(naming.BMD_PLURAL).validate(GOOD_BMD)
    validator(naming.ADAPTER_PLURAL).validate(GOOD_ADAPTER)
    parse_spec(BaseModelDeploymentSpec, GOOD_BMD["spec"], "BaseModelDeployment")
    parse_spec(AdapterSpec, GOOD_ADAPTER["spec"], "Adapter")


BAD_BMDS = [
    ({"image": "x"}, "model"),  # required
    ({"model": {"source": "builtin:a", "dtype": "int3"}, "image": "x"}, "dtype"),
    ({"model": {"source": "builtin:a"}, "image": "x", "replicas": -1}, "replicas"),
    ({"model": {"source": "builtin:a"}, "image": "x",
      "capacity": {"hostBytes": "lots"}}, "hostBytes"),
    ({"model": {"source": "builtin:a"}, "image": "x",
      "placement": {"strategy": "Random"}}, "strategy"),
    ({"model": {"source": "builtin:a"}, "image": "x",
      "engine": {"kvCacheFraction": 0}}, "kvCacheFraction"),
    ({"model": {"source": "ftp://x"}, "image": "x"}, "source"),
]


@pytest.mark.parametrize(("spec", "field"), BAD_BMDS)
def test_bad_bmds_are_refused_by_schema_and_model(spec, field):
    errors = list(validator(naming.BMD_PLURAL).iter_errors({"spec": spec}))
    assert errors, f"schema let {spec} through"
    assert any(field in "/".join(map(str, e.absolute_path)) + e.message for e in errors)
    with pytest.raises(SpecError, match=field):
        parse_spec(BaseModelDeploymentSpec, spec, "BaseModelDeployment")


BAD_ADAPTERS = [
    ({"source": "hf://a/b"}, "baseModel"),
    ({"baseModel": "Not_A_Name", "source": "hf://a/b"}, "baseModel"),
    ({"baseModel": "llama", "source": "http://a/b"}, "source"),
    ({"baseModel": "llama", "source": "hf://a/b", "replicas": 65}, "replicas"),
    ({"baseModel": "llama", "source": "hf://a/b", "credentialsSecretRef": {}}, "name"),
]


@pytest.mark.parametrize(("spec", "field"), BAD_ADAPTERS)
def test_bad_adapters_are_refused_by_schema_and_model(spec, field):
    errors = list(validator(naming.ADAPTER_PLURAL).iter_errors({"spec": spec}))
    assert errors, f"schema let {spec} through"
    with pytest.raises(SpecError, match=field):
        parse_spec(AdapterSpec, spec, "Adapter")


def test_cel_rules_are_mirrored_by_the_models():
    """CEL is enforced by the API server only; the operator refuses the same specs."""
    crd = load_crd(naming.ADAPTER_PLURAL)
    props = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert props["properties"]["baseModel"]["x-kubernetes-validations"][0]["rule"] == \
        "self == oldSelf"
    with pytest.raises(SpecError, match="'..' path segments"):
        parse_spec(AdapterSpec, {"baseModel": "a", "source": "/mnt/adapters/../etc"}, "Adapter")
    with pytest.raises(SpecError, match="loadFormat: dummy"):
        parse_spec(BaseModelDeploymentSpec, {"model": {"source": "tiny-llama"}, "image": "x"},
                   "BaseModelDeployment")
    spec = parse_spec(BaseModelDeploymentSpec,
                      {"model": {"source": "tiny-llama", "loadFormat": "dummy"}, "image": "x"},
                      "BaseModelDeployment")
    assert spec.capacity.host_bytes_int == 16 << 30


def test_defaults_in_schema_equal_model_defaults():
    schema = load_crd(naming.BMD_PLURAL)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    capacity = schema["properties"]["spec"]["properties"]["capacity"]
    model = BaseModelDeploymentSpec.model_validate({"model": {}, "image": "x"})
    assert capacity["default"] == {}
    assert capacity["properties"]["deviceSlots"]["default"] == model.capacity.device_slots
    assert capacity["properties"]["hostBytes"]["default"] == model.capacity.host_bytes
