"""NetworkPolicies of a BMD: valid Kubernetes, wired to the pods they guard and admit.

Oracles: the Kubernetes OpenAPI schemas (kubernetes-validate, strict) and the labels the
other builders put on the router and runtime pods.
"""

from __future__ import annotations

import kubernetes_validate
import pytest

from loraplex.operator import naming
from loraplex.operator.builders import Owner, build_children
from loraplex.operator.builders.network_policy import (
    build_network_policies,
    network_policy_names,
)
from loraplex.operator.models import BaseModelDeploymentSpec, SpecError, parse_spec

K8S_VERSION = kubernetes_validate.utils.latest_version()
OWNER = Owner("llama", "team-a", "0b8f8a4c-1111-2222-3333-444455556666")
PROMETHEUS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
INGRESS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}},
           "podSelector": {"matchLabels": {"app": "ingress-nginx"}}}


def make_spec(**network_policy) -> BaseModelDeploymentSpec:
    return parse_spec(BaseModelDeploymentSpec, {
        "model": {"source": "builtin:smollm2-135m-instruct"}, "image": "runtime:1",
        "networkPolicy": network_policy}, naming.BMD_KIND)


def pod_labels(children, name: str) -> dict[str, str]:
    deployment = next(c for c in children if c["kind"] == "Deployment"
                      and c["metadata"]["name"] == name)
    return deployment["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict, labels: dict[str, str]) -> bool:
    return selector["matchLabels"].items() <= labels.items()


def policies(children) -> dict[str, dict]:
    return {c["metadata"]["name"]: c["spec"] for c in children if c["kind"] == "NetworkPolicy"}


def test_on_by_default_valid_and_owned_like_every_child():
    children = build_children(OWNER, make_spec(), operator_namespace="loraplex-system")
    found = [c for c in children if c["kind"] == "NetworkPolicy"]
    assert sorted(c["metadata"]["name"] for c in found) == sorted(network_policy_names(OWNER))
    for policy in found:
        kubernetes_validate.validate(policy, K8S_VERSION, strict=True)
        assert policy["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
        assert policy["spec"]["policyTypes"] == ["Ingress"]  # egress stays open


def test_runtime_port_admits_only_this_router_and_the_operator():
    children = build_children(OWNER, make_spec(), operator_namespace="loraplex-system")
    runtime = policies(children)[naming.runtime_name("llama")]
    assert selects(runtime["podSelector"], pod_labels(children, naming.runtime_name("llama")))
    (rule,) = runtime["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": naming.RUNTIME_PORT}]
    router, operator = rule["from"]
    assert set(router) == {"podSelector"}  # this namespace only
    assert selects(router["podSelector"], pod_labels(children, naming.router_name("llama")))
    assert operator["podSelector"]["matchLabels"] == naming.operator_labels()
    assert operator["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "loraplex-system"}}
    other = Owner("other", "team-a", "uid-2")
    assert not selects(router["podSelector"],
                       pod_labels(build_children(other, make_spec()), naming.router_name("other")))


def test_without_its_namespace_the_operator_is_admitted_from_any_namespace():
    (runtime, _) = build_network_policies(OWNER, make_spec())
    operator = runtime["spec"]["ingress"][0]["from"][1]
    assert operator["namespaceSelector"] == {}
    assert operator["podSelector"]["matchLabels"] == naming.operator_labels()


def test_router_admits_its_namespace_or_the_peers_named():
    children = build_children(OWNER, make_spec())
    router = policies(children)[naming.router_name("llama")]
    assert selects(router["podSelector"], pod_labels(children, naming.router_name("llama")))
    assert router["ingress"] == [{"from": [{"podSelector": {}}],
                                  "ports": [{"protocol": "TCP", "port": naming.ROUTER_PORT}]}]
    (runtime, router) = build_network_policies(
        OWNER, make_spec(routerFrom=[INGRESS], runtimeFrom=[PROMETHEUS]))
    assert router["spec"]["ingress"][0]["from"] == [INGRESS]
    assert runtime["spec"]["ingress"][0]["from"][2:] == [PROMETHEUS]
    for policy in (runtime, router):
        kubernetes_validate.validate(policy, K8S_VERSION, strict=True)


def test_disabled_builds_none():
    children = build_children(OWNER, make_spec(enabled=False))
    assert not [c for c in children if c["kind"] == "NetworkPolicy"]
    assert len(children) == len(build_children(OWNER, make_spec())) - 2


def test_peer_lists_are_bounded():
    with pytest.raises(SpecError, match="routerFrom"):
        make_spec(routerFrom=[{"podSelector": {}}] * 33)
