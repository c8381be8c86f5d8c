"""Builders: objects valid for the Kubernetes API, hardened, owned, and wired to each other.

Oracles: the Kubernetes OpenAPI schemas (kubernetes-validate, strict), the runtime's own
flag parser (`loraplex serve` settings), and the CRD schema for the sample spec.
"""

from __future__ import annotations

import argparse

import kubernetes_validate
import pytest

from loraplex.contracts.placements import parse_placements
from loraplex.operator import naming
from loraplex.operator.builders import (
    Owner,
    build_admin_secret,
    build_children,
    build_placements_configmap,
    build_runtime_deployment,
    read_admin_token,
    read_placements,
)
from loraplex.operator.builders.placements import placement_table, same_placements
from loraplex.operator.builders.router import router_args
from loraplex.operator.builders.runtime import runtime_args
from loraplex.operator.models import BaseModelDeploymentSpec
from loraplex.router.config import RouterConfig
from loraplex.runtime.config import EngineConfig, ServerConfig
from loraplex.settings import add_settings_arguments, settings_from_namespace

K8S_VERSION = kubernetes_validate.utils.latest_version()
OWNER = Owner("llama", "team-a", "0b8f8a4c-1111-2222-3333-444455556666")


def make_spec(**overrides) -> BaseModelDeploymentSpec:
    raw = {
        "model": {"source": "hf://meta-llama/Llama-3.1-8B", "revision": "main",
                  "dtype": "bfloat16"},
        "image": "ghcr.io/example/loraplex-runtime:1.0",
        "replicas": 3,
        "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "64Gi"}},
        "capacity": {"deviceSlots": 16, "hostBytes": "8Gi", "maxRank": 32},
        "engine": {"maxNumSeqs": 128, "maxNumBatchedTokens": 4096, "kvCacheFraction": 0.9},
        "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}],
        "nodeSelector": {"gpu": "h100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                         "effect": "NoSchedule"}],
        **overrides,
    }
    return BaseModelDeploymentSpec.model_validate(raw)


@pytest.fixture(scope="module")
def children():
    return build_children(OWNER, make_spec()) + [
        build_admin_secret(OWNER),
        build_placements_configmap(OWNER, placement_table(
            OWNER, ["http://10.0.0.2:8080"], {"b": ["http://10.0.0.2:8080"], "a": []})),
    ]


def test_every_child_is_valid_for_the_kubernetes_api(children):
    for child in children:
        kubernetes_validate.validate(child, K8S_VERSION, strict=True)


def test_every_child_is_owned_by_the_bmd_and_labelled(children):
    for child in children:
        meta = child["metadata"]
        assert meta["namespace"] == OWNER.namespace
        (reference,) = meta["ownerReferences"]
        assert reference == {"apiVersion": "loraplex.dev/v1alpha1",
                             "kind": "BaseModelDeployment", "name": "llama",
                             "uid": OWNER.uid, "controller": True, "blockOwnerDeletion": True}
        assert meta["labels"][naming.LABEL_BASE_MODEL] == "llama"
        assert meta["labels"][naming.LABEL_MANAGED_BY] == naming.MANAGED_BY


def test_names_follow_the_design(children):
    names = {(c["kind"], c["metadata"]["name"]) for c in children}
    assert ("Service", "llama") in names  # the endpoint http://llama.team-a.svc
    assert ("Deployment", "llama") in names
    assert ("ConfigMap", "llama-placements") in names
    assert naming.endpoint_url("llama", "team-a") == "http://llama.team-a.svc"


def test_pods_are_hardened(children):
    for child in children:
        if child["kind"] != "Deployment":
            continue
        pod = child["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True
            assert security["capabilities"] == {"drop": ["ALL"]}
            # every writable path is an emptyDir volume
            volumes = {v["name"]: v for v in pod["volumes"]}
            for mount in container["volumeMounts"]:
                assert "emptyDir" in volumes[mount["name"]]


def test_runtime_pod_probes_resources_token_and_scheduling():
    deployment = build_runtime_deployment(OWNER, make_spec())
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["resources"] == {"limits": {"nvidia.com/gpu": 1, "memory": "64Gi"}}
    token = next(e for e in container["env"] if e["name"] == "LORAPLEX_ADMIN_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "llama-admin-token",
                                                  "key": "admin-token"}
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in container["env"]
    assert any(m["mountPath"] == "/cache" for m in container["volumeMounts"])
    assert pod["nodeSelector"] == {"gpu": "h100"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert deployment["spec"]["replicas"] == 3
    labels = pod and deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_runtime_args_are_understood_by_loraplex_serve():
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, EngineConfig)
    add_settings_arguments(parser, ServerConfig)
    namespace = parser.parse_args(runtime_args(make_spec()))
    engine = settings_from_namespace(EngineConfig, namespace, environ={})
    server = settings_from_namespace(ServerConfig, namespace, environ={})
    assert engine.model == "hf://meta-llama/Llama-3.1-8B"
    assert engine.revision == "main"
    assert engine.dtype == "bfloat16"
    assert engine.device_slots == 16
    assert engine.host_bytes == 8 << 30
    assert engine.max_lora_rank == 32
    assert engine.max_num_seqs == 128
    assert engine.max_num_batched_tokens == 4096
    assert engine.kv_cache_fraction == 0.9
    assert server.port == naming.RUNTIME_PORT


def test_router_args_are_understood_by_loraplex_router():
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, RouterConfig)
    config = settings_from_namespace(RouterConfig, parser.parse_args(router_args(OWNER)),
                                     environ={})
    assert config.placements_configmap == "llama-placements"
    assert config.namespace == "team-a"
    assert config.port == naming.ROUTER_PORT


def test_router_reads_its_table_and_nothing_else(children):
    router = next(c for c in children if c["kind"] == "Deployment" and
                  c["metadata"]["name"] == "llama")
    pod = router["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "llama-router"
    assert pod["containers"][0]["command"] == ["loraplex", "router"]
    (rule,) = next(c for c in children if c["kind"] == "Role")["rules"]
    assert rule == {"apiGroups": [""], "resources": ["configmaps"],
                    "resourceNames": ["llama-placements"], "verbs": ["get", "list", "watch"]}
    binding = next(c for c in children if c["kind"] == "RoleBinding")
    assert binding["roleRef"]["name"] == "llama-router"
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]
    service = next(c for c in children if c["kind"] == "Service"
                   and c["metadata"]["name"] == "llama")
    assert service["spec"]["selector"] == router["spec"]["selector"]["matchLabels"]


def test_admin_token_is_random_and_readable_back():
    first, second = build_admin_secret(OWNER), build_admin_secret(OWNER)
    assert read_admin_token(first) != read_admin_token(second)
    assert len(read_admin_token(first)) >= 32
    with pytest.raises(ValueError, match="admin-token"):
        read_admin_token({"metadata": {"name": "x"}, "data": {}})


def test_placement_table_is_what_the_router_parses():
    pods = ["http://10.0.0.3:8080", "http://10.0.0.2:8080"]
    table = placement_table(OWNER, pods, {"b": pods, "a": [], "c": ["http://10.9.9.9:8080"]},
                            generation=7)
    configmap = build_placements_configmap(OWNER, table)
    parsed = parse_placements(configmap["data"]["placements.json"])
    assert parsed.generation == 7 and parsed.base_model == "llama"
    assert sorted(parsed.pods) == sorted(pods)
    assert sorted(parsed.pods_for("b")) == sorted(pods)
    assert parsed.pods_for("a") == () and parsed.pods_for("c") == ()  # c's pod is not ready
    assert read_placements(configmap) == parsed
    assert read_placements({"data": {"placements.json": "not json"}}) is None
    reordered = placement_table(OWNER, pods[::-1], {"c": [], "a": [], "b": pods[::-1]})
    assert same_placements(reordered, table)
    assert not same_placements(placement_table(OWNER, pods[:1], {}), table)


def test_owner_needs_a_uid():
    with pytest.raises(ValueError, match="uid"):
        Owner.from_body({"metadata": {"name": "a", "namespace": "b"}})
