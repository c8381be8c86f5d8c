"""vLLM's runtime LoRA API driven as vLLM documents it (`curl -X POST .../v1/load_lora_adapter
-d '{"lora_name": ..., "lora_path": ...}'`), with vLLM's status codes and messages, acting
on the same adapters and behind the same admin guard as `/v1/adapters`."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraplex.runtime.adapters.synthetic import write_random_adapter
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.models.shapes import shape_config

pytestmark = [pytest.mark.model, pytest.mark.timeout(300)]
LOAD, UNLOAD = "/v1/load_lora_adapter", "/v1/unload_lora_adapter"


@pytest.fixture(scope="module")
def delta(tmp_path_factory) -> Path:
    target = LoraTargetShapes.from_hf_config(shape_config("smollm2-135m"))
    return write_random_adapter(tmp_path_factory.mktemp("delta") / "delta", target, rank=4,
                                seed=41)


def vllm_error(response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == (kind, status)
    return error["message"]


def served_models(http) -> set[str]:
    return {model["id"] for model in http.get("/v1/models").json()["data"]}


def test_load_serve_unload_as_vllm_documents(http, admin_headers, delta) -> None:
    body = {"lora_name": "delta", "lora_path": str(delta)}
    loaded = http.post(LOAD, json=body, headers=admin_headers)
    assert loaded.status_code == 200, loaded.text
    assert loaded.text == "Success: LoRA adapter 'delta' added successfully."
    assert "delta" in served_models(http)
    state = http.get("/v1/adapters/delta", headers=admin_headers).json()["state"]
    assert state in ("disk", "host", "device")  # loaded by the time the answer came
    completion = http.post("/v1/completions", json={"model": "delta", "prompt": "Hello",
                                                    "max_tokens": 2, "temperature": 0})
    assert completion.status_code == 200, completion.text

    again = http.post(LOAD, json=body, headers=admin_headers)
    assert vllm_error(again, 400, "InvalidUserInput") == \
        "The lora adapter 'delta' has already been loaded."

    unloaded = http.post(UNLOAD, json={"lora_name": "delta"}, headers=admin_headers)
    assert unloaded.status_code == 200, unloaded.text
    assert unloaded.text == "Success: LoRA adapter 'delta' removed successfully."
    assert "delta" not in served_models(http)
    gone = http.post(UNLOAD, json={"lora_name": "delta"}, headers=admin_headers)
    assert vllm_error(gone, 404, "NotFoundError") == \
        "The lora adapter 'delta' cannot be found."
    refused = http.post("/v1/completions", json={"model": "delta", "prompt": "Hello"})
    assert refused.status_code == 404


@pytest.mark.parametrize("body", [{"lora_name": "x"}, {"lora_path": "/tmp"},
                                  {"lora_name": "", "lora_path": ""}])
def test_missing_fields_are_400(http, admin_headers, body) -> None:
    assert vllm_error(http.post(LOAD, json=body, headers=admin_headers), 400,
                      "InvalidUserInput") == "Both 'lora_name' and 'lora_path' must be provided."


def test_unload_needs_a_name(http, admin_headers) -> None:
    assert "needs to be provided" in vllm_error(
        http.post(UNLOAD, json={}, headers=admin_headers), 400, "InvalidUserInput")


def test_a_path_without_an_adapter_is_404(http, admin_headers, tmp_path) -> None:
    body = {"lora_name": "ghost", "lora_path": str(tmp_path / "nothing-here")}
    message = vllm_error(http.post(LOAD, json=body, headers=admin_headers), 404,
                         "NotFoundError")
    assert "No adapter found" in message
    assert "ghost" not in served_models(http)


def test_an_adapter_that_cannot_load_is_400_and_not_kept(http, admin_headers,
                                                        tmp_path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{not json")
    body = {"lora_name": "broken", "lora_path": str(broken)}
    message = vllm_error(http.post(LOAD, json=body, headers=admin_headers), 400,
                         "BadRequestError")
    assert "adapter_model.safetensors" in message
    assert "broken" not in served_models(http)
    # the pod goes on serving
    assert http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 1}).status_code \
        == 200


def test_the_admin_guard_applies(http, delta) -> None:
    response = http.post(LOAD, json={"lora_name": "delta", "lora_path": str(delta)})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
