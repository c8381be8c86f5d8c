"""User volumes of the runtime pods: merged after the operator's own, refused when they
would collide with them (by the models and by the CRD's schema and CEL rules)."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from loraplex.operator import naming
from loraplex.operator.builders import Owner, build_runtime_deployment
from loraplex.operator.models import BaseModelDeploymentSpec, SpecError, parse_spec

K8S_VERSION = kubernetes_validate.utils.latest_version()
OWNER = Owner("llama", "team-a", "0b8f8a4c-1111-2222-3333-444455556666")
CRD = Path(__file__).resolve().parents[3] / "crds" / f"{naming.GROUP}_{naming.BMD_PLURAL}.yaml"
MODELS = {"name": "models", "persistentVolumeClaim": {"claimName": "llama-weights",
                                                     "readOnly": True}}
MODELS_MOUNT = {"name": "models", "mountPath": "/mnt/models", "readOnly": True}


def raw_spec(volumes=(), mounts=()) -> dict:
    return {"model": {"source": "/mnt/models/llama"}, "image": "runtime:1",
            "volumes": list(volumes), "volumeMounts": list(mounts)}


def spec_schema() -> dict:
    crd = yaml.safe_load(CRD.read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def test_user_volumes_come_after_the_pods_own_and_pass_through_as_written():
    secret = {"name": "tokens", "secret": {"secretName": "hf", "defaultMode": 0o440}}
    spec = parse_spec(BaseModelDeploymentSpec, raw_spec(
        [MODELS, secret], [MODELS_MOUNT, {"name": "tokens", "mountPath": "/etc/tokens",
                                          "subPath": "x"}]), naming.BMD_KIND)
    deployment = build_runtime_deployment(OWNER, spec)
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    pod = deployment["spec"]["template"]["spec"]
    own = list(naming.RUNTIME_VOLUMES)
    assert [v["name"] for v in pod["volumes"]] == [*own, "models", "tokens"]
    assert pod["volumes"][-2:] == [MODELS, secret]
    mounts = pod["containers"][0]["volumeMounts"]
    assert [m["mountPath"] for m in mounts[:len(own)]] == list(naming.RUNTIME_VOLUMES.values())
    assert mounts[len(own):] == [MODELS_MOUNT, {"name": "tokens", "mountPath": "/etc/tokens",
                                                "subPath": "x"}]


def test_without_user_volumes_the_pod_is_unchanged():
    spec = parse_spec(BaseModelDeploymentSpec, raw_spec(), naming.BMD_KIND)
    pod = build_runtime_deployment(OWNER, spec)["spec"]["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == list(naming.RUNTIME_VOLUMES)
    assert all("emptyDir" in v for v in pod["volumes"])


@pytest.mark.parametrize(("volumes", "mounts", "problem"), [
    ([{"name": "cache", "emptyDir": {}}], [], "operator's own"),
    ([{"name": "dshm", "hostPath": {"path": "/dev/shm"}}], [], "operator's own"),
    ([MODELS, MODELS], [], "unique"),
    ([MODELS], [{**MODELS_MOUNT, "mountPath": "/tmp"}], "operator's own"),
    ([MODELS], [MODELS_MOUNT, MODELS_MOUNT], "unique"),
    ([MODELS], [{**MODELS_MOUNT, "name": "elsewhere"}], "name a volume of spec.volumes"),
    ([], [MODELS_MOUNT], "name a volume of spec.volumes"),
])
def test_collisions_are_refused_by_the_model_and_its_cel_rules_say_so(volumes, mounts, problem):
    with pytest.raises(SpecError, match=problem):
        parse_spec(BaseModelDeploymentSpec, raw_spec(volumes, mounts), naming.BMD_KIND)
    schema = spec_schema()
    messages = [rule["message"] for node in (schema, schema["properties"]["volumes"],
                                             schema["properties"]["volumeMounts"])
                for rule in node.get("x-kubernetes-validations", [])]
    assert any(problem in message for message in messages)  # the API server refuses too


@pytest.mark.parametrize(("volumes", "mounts"), [
    ([{"persistentVolumeClaim": {"claimName": "x"}}], []),  # no name
    ([{"name": "Not_A_Name"}], []),
    ([MODELS], [{"name": "models"}]),  # no mountPath
    ([MODELS], [{"name": "models", "mountPath": "relative"}]),
    ([{"name": f"v{i}", "emptyDir": {}} for i in range(65)], []),
])
def test_malformed_items_are_refused_by_schema_and_model(volumes, mounts):
    errors = list(jsonschema.Draft4Validator(spec_schema()).iter_errors(raw_spec(volumes,
                                                                                  mounts)))
    assert errors
    with pytest.raises(SpecError):
        parse_spec(BaseModelDeploymentSpec, raw_spec(volumes, mounts), naming.BMD_KIND)
