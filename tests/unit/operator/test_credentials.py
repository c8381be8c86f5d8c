"""Adapter credentials from Secrets: which keys a source needs, what the loads carry, what
is held back and reported, and when a failed load is retried (pure: no API server)."""

from __future__ import annotations

import asyncio
import base64

import pytest

from loraplex.contracts.adapters import AdapterStatus
from loraplex.operator.actions import Load, Unload, plan_actions
from loraplex.operator.credentials import (
    CredentialsNotFound,
    SecretCache,
    attach_credentials,
    changed_secrets,
    credentials_from_secret,
    required_keys,
)
from loraplex.operator.status import CREDENTIALS_NOT_FOUND, PlacementReport, adapter_status
from loraplex.operator.views import adapter_view

T0 = "2026-01-01T00:00:00Z"


def secret(version="1", **values):
    return {"metadata": {"name": "keys", "resourceVersion": version},
            "data": {key: base64.b64encode(value.encode()).decode()
                     for key, value in values.items()}}


def view(name="a", source="s3://bucket/a", ref="keys", replicas=1, status=None):
    spec = {"baseModel": "bmd", "source": source, "replicas": replicas}
    if ref:
        spec["credentialsSecretRef"] = {"name": ref}
    return adapter_view({"metadata": {"name": name, "namespace": "ns", "uid": "u",
                                      "generation": 1},
                         "spec": spec, "status": status or {"observedGeneration": 1}})


class Secrets:
    """The cluster's Secrets as a dict; counts the reads."""

    def __init__(self, **secrets):
        self.secrets, self.reads = secrets, 0

    async def get(self, namespace, name):
        assert namespace == "ns"
        self.reads += 1
        return self.secrets.get(name)


def test_each_scheme_needs_its_own_keys():
    assert required_keys("hf://org/repo@v1") == ("HF_TOKEN",)
    assert required_keys("s3://bucket/p") == ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    assert required_keys("/mnt/adapters/x") == ()


def test_keys_become_the_admin_apis_credentials():
    body = secret(HF_TOKEN="hf_x\n", AWS_ACCESS_KEY_ID="id", AWS_SECRET_ACCESS_KEY="key",
                  AWS_SESSION_TOKEN="session", OTHER="ignored")
    assert credentials_from_secret(body, "keys", "ns", "s3://b/p") == {
        "hf_token": "hf_x", "aws_access_key_id": "id", "aws_secret_access_key": "key",
        "aws_session_token": "session"}  # trailing newline of a --from-file value dropped
    assert credentials_from_secret(secret(), "keys", "ns", "/path") == {}


@pytest.mark.parametrize(("body", "source", "words"), [
    (None, "hf://o/r", "Secret 'keys' (spec.credentialsSecretRef) not found in namespace 'ns'"),
    (secret(AWS_ACCESS_KEY_ID="id"), "s3://b/p", "has no AWS_SECRET_ACCESS_KEY, needed for s3"),
    (secret(AWS_ACCESS_KEY_ID="id", AWS_SECRET_ACCESS_KEY=" "), "s3://b/p",
     "AWS_SECRET_ACCESS_KEY"),
    (secret(token="t"), "hf://o/r", "has no HF_TOKEN, needed for hf:// sources"),
    ({"data": {"HF_TOKEN": "not base64!"}}, "hf://o/r", "has no HF_TOKEN"),
    (None, "/path", "not found"),  # a path needs no key, but the Secret named must exist
])
def test_a_missing_secret_or_key_is_named(body, source, words):
    with pytest.raises(CredentialsNotFound, match=words.replace("(", r"\(").replace(")", r"\)")):
        credentials_from_secret(body, "keys", "ns", source)


def test_loads_carry_credentials_and_loads_without_them_are_held_back():
    views = {"a": view("a"), "b": view("b", ref="absent"), "c": view("c", ref=None),
             "d": view("d")}
    secrets = Secrets(keys=secret("7", AWS_ACCESS_KEY_ID="id", AWS_SECRET_ACCESS_KEY="key"))
    actions = [Load("p1", "a", "s3://bucket/a", False, "host"),
               Load("p2", "a", "s3://bucket/a", False, "host"),
               Load("p1", "b", "s3://bucket/a", False, "host"),
               Load("p1", "c", "s3://bucket/a", False, "host"),
               Unload("p1", "d")]
    kept, withheld, versions = asyncio.run(
        attach_credentials(actions, views, SecretCache(secrets.get)))
    assert kept == [actions[0], actions[1], actions[3], actions[4]]
    assert kept[0].credentials == {"aws_access_key_id": "id", "aws_secret_access_key": "key"}
    assert kept[2].credentials is None
    assert withheld == {"b": "Secret 'absent' (spec.credentialsSecretRef) not found in "
                             "namespace 'ns'"}
    assert versions == {"a": "7"}
    assert secrets.reads == 2  # once per Secret, not per load
    assert "key" not in repr(kept[0]) and kept[0] == actions[0]


def test_a_failed_load_is_retried_once_its_secret_changed():
    views = {"a": view("a"), "b": view("b"), "c": view("c", ref=None)}
    secrets = Secrets(keys=secret("8", AWS_ACCESS_KEY_ID="id", AWS_SECRET_ACCESS_KEY="key"))
    changed = asyncio.run(changed_secrets(["a", "b", "c"], views, {"a": "8", "b": "7"},
                                          SecretCache(secrets.get)))
    assert changed == {"b"}
    failed = AdapterStatus(name="b", state="error", source="s3://bucket/a",
                           error="SignatureDoesNotMatch")
    reports = {"p1": {"b": failed}}
    assert plan_actions({"b": ("p1",)}, reports, views, {}) == []
    assert plan_actions({"b": ("p1",)}, reports, views, {}, retry={"b"}) == [
        Load("p1", "b", "s3://bucket/a", False, "host")]


def test_held_back_adapters_are_pending_with_the_reason():
    status = adapter_status(view(replicas=2), [], None, T0, credentials="Secret 'keys' ...")
    assert (status["phase"], status["message"]) == ("Pending", "Secret 'keys' ...")
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", CREDENTIALS_NOT_FOUND)
    loaded = AdapterStatus(name="a", state="host", source="s3://bucket/a", pinned=False,
                           rank=8, size_bytes=1000, digest="sha256:1")
    status = adapter_status(view(replicas=2), [PlacementReport("p1", loaded)], None, T0,
                            credentials="Secret 'keys' ...")
    assert status["phase"] == "Pending" and status["readyReplicas"] == 1
    assert status["message"] == "Secret 'keys' ...; ready on 1/2 pod(s)"
