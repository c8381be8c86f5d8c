"""The adapter admin API on a real pod: token guard, register, inspect, serve, remove.

Ranks, sizes and digests are checked against the adapter files themselves (safetensors
headers and their bytes), not against numbers written here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from safetensors import safe_open

from loraplex.runtime.adapters.synthetic import write_random_adapter
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.models.shapes import shape_config
from tests.integration.conftest import ADAPTER_RANKS, CHAT_PROMPT

pytestmark = [pytest.mark.model, pytest.mark.timeout(300)]


def wait_for_state(http, headers, name: str, states: set[str], timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        entry = http.get(f"/v1/adapters/{name}", headers=headers).json()
        if entry.get("state") in states or time.monotonic() > deadline:
            return entry
        time.sleep(0.1)


def file_rank(folder: Path) -> int:
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as tensors:
        return max(tensors.get_slice(key).get_shape()[0] for key in tensors.keys()  # noqa: SIM118
                   if key.endswith("lora_A.weight"))


@pytest.fixture(scope="module")
def gamma(tmp_path_factory) -> Path:
    target = LoraTargetShapes.from_hf_config(shape_config("smollm2-135m"))
    return write_random_adapter(tmp_path_factory.mktemp("gamma") / "gamma", target, rank=4,
                                seed=99)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}])
@pytest.mark.parametrize("method,path", [("GET", "/v1/adapters"), ("GET", "/v1/adapters/alpha"),
                                         ("PUT", "/v1/adapters/x"),
                                         ("DELETE", "/v1/adapters/alpha")])
def test_missing_or_wrong_token_is_401(http, headers, method, path) -> None:
    response = http.request(method, path, headers=headers, json={"source": "/tmp"})
    assert response.status_code == 401
    assert response.json()["error_type"] == "unauthorized"


def test_start_up_adapters_are_listed_with_their_files_facts(http, admin_headers,
                                                             adapter_folders) -> None:
    listed = {entry["name"]: entry for entry in
              http.get("/v1/adapters", headers=admin_headers).json()["adapters"]}
    assert {"alpha", "beta"} <= set(listed)
    assert listed["beta"]["pinned"] is True and listed["alpha"]["pinned"] is False
    for name in ("alpha", "beta"):
        entry = wait_for_state(http, admin_headers, name, {"host", "device"})
        assert entry["rank"] == ADAPTER_RANKS[name] == file_rank(adapter_folders[name])
        assert entry["size_bytes"] > 0
        assert entry["digest"]
        assert entry["error"] is None
        assert entry["tier"] == entry["state"]
        assert entry["source"] == str(adapter_folders[name])


def test_register_use_and_remove_an_adapter(http, admin_headers, gamma) -> None:
    first = http.put("/v1/adapters/team/gamma", headers=admin_headers,
                     json={"source": str(gamma), "preload": "host"})
    assert first.status_code in (200, 202)
    ready = wait_for_state(http, admin_headers, "team/gamma", {"host", "device"})
    assert ready["rank"] == 4 == file_rank(gamma)
    again = http.put("/v1/adapters/team/gamma", headers=admin_headers,
                     json={"source": str(gamma), "preload": "host"})
    assert again.status_code == 200  # idempotent, and now resident
    assert again.json()["digest"] == ready["digest"]
    generated = http.post("/generate", json={"inputs": CHAT_PROMPT, "parameters": {
        "adapter_id": "team/gamma", "max_new_tokens": 3}})
    assert generated.status_code == 200
    assert any(m["id"] == "team/gamma" for m in http.get("/v1/models").json()["data"])
    removed = http.delete("/v1/adapters/team/gamma", headers=admin_headers)
    assert removed.status_code == 200
    assert removed.json()["deleted"] is True
    assert http.get("/v1/adapters/team/gamma", headers=admin_headers).status_code == 404
    gone = http.post("/generate", json={"inputs": CHAT_PROMPT, "parameters": {
        "adapter_id": "team/gamma", "max_new_tokens": 3}})
    assert gone.status_code == 404


def test_credentials_are_taken_but_never_shown(server, http, admin_headers, gamma) -> None:
    secrets = {"hf_token": "hf_never-shown-1", "aws_access_key_id": "AKIDNEVERSHOWN2",
               "aws_secret_access_key": "never-shown-3", "aws_session_token": "never-shown-4"}
    response = http.put("/v1/adapters/with-keys", headers=admin_headers,
                        json={"source": str(gamma), "credentials": secrets})
    assert response.status_code in (200, 202)
    wait_for_state(http, admin_headers, "with-keys", {"host", "device"})
    again = http.put("/v1/adapters/with-keys", headers=admin_headers,
                     json={"source": str(gamma), "credentials": {"hf_token": 1}})
    assert again.status_code == 422
    assert "credentials.hf_token" in again.json()["error"]
    shown = [response.text, again.text,
             http.get("/v1/adapters", headers=admin_headers).text,
             http.get("/v1/adapters/with-keys", headers=admin_headers).text,
             http.get("/info").text, http.get("/metrics").text, http.get("/v1/models").text]
    assert http.delete("/v1/adapters/with-keys", headers=admin_headers).status_code == 200
    shown.append(server.log_text())
    for secret in secrets.values():
        assert not any(secret in text for text in shown), secret


def test_a_broken_adapter_fails_alone(http, admin_headers, tmp_path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (broken / "adapter_model.bin").write_bytes(b"pickle")
    response = http.put("/v1/adapters/broken", headers=admin_headers,
                        json={"source": str(broken)})
    assert response.status_code in (202, 422)
    entry = wait_for_state(http, admin_headers, "broken", {"error"})
    assert entry["state"] == "error"
    assert entry["error"]
    refused = http.post("/generate", json={"inputs": CHAT_PROMPT, "parameters": {
        "adapter_id": "broken", "max_new_tokens": 2}})
    assert refused.status_code == 424
    assert refused.json()["error_type"] == "generation"
    assert http.post("/generate", json={"inputs": CHAT_PROMPT, "parameters": {
        "adapter_id": "alpha", "max_new_tokens": 2}}).status_code == 200
    assert http.delete("/v1/adapters/broken", headers=admin_headers).status_code == 200


@pytest.mark.parametrize("body,mentions", [
    ({}, "source: field required"),
    ({"source": ""}, "source"),
    ({"source": "/x", "preload": "gpu"}, "preload"),
    ({"source": "/x", "extra": 1}, "extra: unknown field"),
    ({"source": "ftp://host/adapter"}, "unsupported adapter source"),
])
def test_bad_registrations_are_422(http, admin_headers, body, mentions) -> None:
    response = http.put("/v1/adapters/bad", headers=admin_headers, json=body)
    assert response.status_code == 422
    assert mentions in response.json()["error"]


def test_bad_names_and_unknown_adapters(http, admin_headers) -> None:
    assert http.put("/v1/adapters/..", headers=admin_headers,
                    json={"source": "/tmp"}).status_code in (404, 422)
    assert http.get("/v1/adapters/nobody", headers=admin_headers).status_code == 404
    assert http.delete("/v1/adapters/nobody", headers=admin_headers).status_code == 404


def test_the_operator_can_quote_slashes(server, admin_headers) -> None:
    response = httpx.get(f"{server.url}/v1/adapters/no%2Fsuch", headers=admin_headers)
    assert response.status_code == 404
    assert "no/such" in response.json()["error"]
