"""The CRDs' CEL rules, compiled and evaluated by cel-python (the emulator does not run them).

Every `x-kubernetes-validations` rule in `crds/` must compile; every sample in
`manifests/samples` must pass every rule on its path (with `oldSelf` equal to `self`, an
unchanged update); each bad object below must fail exactly the rule that names its
problem, with that rule's message. As the API server does, the schema's defaults are
filled in before the rules run.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
ENV = celpy.Environment()


def crd_schemas() -> dict[str, dict]:
    """kind -> openAPIV3Schema of its stored version."""
    schemas = {}
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        if not crd or crd.get("kind") != "CustomResourceDefinition":
            continue
        (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
        schemas[crd["spec"]["names"]["kind"]] = version["schema"]["openAPIV3Schema"]
    return schemas


SCHEMAS = crd_schemas()


def rules(schema: dict, path: str = "") -> Iterator[tuple[str, dict]]:
    for rule in schema.get("x-kubernetes-validations", []):
        yield path, rule
    for name, child in schema.get("properties", {}).items():
        yield from rules(child, f"{path}.{name}")
    if "items" in schema:
        yield from rules(schema["items"], f"{path}[]")


def with_defaults(value: Any, schema: dict) -> Any:
    if isinstance(value, dict):
        filled = dict(value)
        for name, child in schema.get("properties", {}).items():
            if name not in filled and "default" in child:
                filled[name] = copy.deepcopy(child["default"])
            if name in filled:
                filled[name] = with_defaults(filled[name], child)
        return filled
    if isinstance(value, list) and "items" in schema:
        return [with_defaults(item, schema["items"]) for item in value]
    return value


def violations(value: Any, schema: dict, old: Any = None) -> list[str]:
    """Messages of the rules `value` breaks (old: the previous object, for oldSelf)."""
    value = with_defaults(value, schema)
    old = with_defaults(old, schema) if old is not None else None
    return _violations(value, schema, old, "")


def _violations(value: Any, schema: dict, old: Any, path: str) -> list[str]:
    found = []
    for rule in schema.get("x-kubernetes-validations", []):
        uses_old = "oldSelf" in rule["rule"]
        if uses_old and old is None:
            continue  # a transition rule: only on updates
        activation = {"self": celpy.json_to_cel(value)}
        if uses_old:
            activation["oldSelf"] = celpy.json_to_cel(old)
        result = ENV.program(ENV.compile(rule["rule"])).evaluate(activation)
        if isinstance(result, Exception) or not bool(result):
            found.append(f"{path}: {rule['message']}")
    if isinstance(value, dict):
        for name, child in schema.get("properties", {}).items():
            if name in value:
                child_old = old.get(name) if isinstance(old, dict) else None
                found += _violations(value[name], child, child_old, f"{path}.{name}")
    if isinstance(value, list) and "items" in schema:
        for item in value:
            found += _violations(item, schema["items"], None, f"{path}[]")
    return found


def samples() -> list[dict]:
    objects = []
    for path in sorted((ROOT / "manifests" / "samples").rglob("*.yaml")):
        objects += [doc for doc in yaml.safe_load_all(path.read_text())
                    if doc and doc.get("kind") in SCHEMAS]
    return objects


def test_both_crds_have_rules_and_every_rule_compiles() -> None:
    assert set(SCHEMAS) == {"Adapter", "BaseModelDeployment"}
    for kind, schema in SCHEMAS.items():
        found = list(rules(schema))
        assert found, kind
        for path, rule in found:
            ENV.compile(rule["rule"])  # raises on a syntax error
            assert rule.get("message"), (kind, path)


@pytest.mark.parametrize("obj", samples(), ids=lambda obj: obj["metadata"]["name"])
def test_samples_pass_every_rule(obj: dict) -> None:
    assert violations(obj, SCHEMAS[obj["kind"]], old=obj) == []


def sample(kind: str) -> dict:
    return copy.deepcopy(next(obj for obj in samples() if obj["kind"] == kind))


def broken_adapter_source() -> dict:
    adapter = sample("Adapter")
    adapter["spec"]["source"] = "hf://org/repo@main/../../etc"
    return adapter


def volumes_named(*names: str) -> dict:
    bmd = sample("BaseModelDeployment")
    bmd["spec"]["volumes"] = [{"name": name, "emptyDir": {}} for name in names]
    return bmd


def mount_without_volume() -> dict:
    bmd = volumes_named("models")
    bmd["spec"]["volumeMounts"] = [{"name": "weights", "mountPath": "/models"}]
    return bmd


def mount_on_the_cache() -> dict:
    bmd = volumes_named("models")
    bmd["spec"]["volumeMounts"] = [{"name": "models", "mountPath": "/cache"}]
    return bmd


def autoscale_min_above_max() -> dict:
    adapter = sample("Adapter")
    adapter["spec"]["autoscale"] = {"minReplicas": 3, "maxReplicas": 2, "targetInFlight": 4}
    return adapter


@pytest.mark.parametrize(("build", "message"), [
    (broken_adapter_source, "'..'"),
    (autoscale_min_above_max, "minReplicas must not be above maxReplicas"),
    (lambda: volumes_named("models", "models"), "unique"),
    (lambda: volumes_named("cache"), "cache"),
    (mount_without_volume, "volume"),
    (mount_on_the_cache, "/cache"),
], ids=["dotdot-source", "autoscale-bounds", "duplicate-volume", "reserved-volume",
        "mount-without-volume", "reserved-mount"])
def test_bad_objects_break_the_rule_that_says_so(build, message: str) -> None:
    obj = build()
    (problem,) = violations(obj, SCHEMAS[obj["kind"]])
    assert message in problem


def test_base_model_cannot_change_on_update() -> None:
    old = sample("Adapter")
    new = copy.deepcopy(old)
    new["spec"]["baseModel"] = old["spec"]["baseModel"] + "-other"

    (problem,) = violations(new, SCHEMAS["Adapter"], old=old)
    assert "immutable" in problem
    assert violations(old, SCHEMAS["Adapter"], old=old) == []
