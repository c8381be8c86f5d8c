"""Hand-written bad requests: each gets a 4xx whose message names the problem, in the
body shape of its protocol, and the server goes on serving everyone else."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.integration.conftest import CHAT_PROMPT, MAX_MODEL_LEN

pytestmark = [pytest.mark.model, pytest.mark.timeout(300)]

LORAX_JSON = {"Content-Type": "application/json"}


def lorax_error(response: httpx.Response, status: int = 422) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type"}
    return body["error"]


def openai_error(response: httpx.Response, status: int = 400) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize("path", ["/", "/generate", "/generate_stream"])
@pytest.mark.parametrize("raw,mentions", [
    (b'{"inputs": "hi", ', "malformed JSON"),
    (b"not json at all", "malformed JSON"),
    (b'{"inputs": "\xff\xfe"}', "UTF-8"),
    (b"[1, 2, 3]", "valid dictionary"),
])
def test_unparseable_bodies_are_422(http, path, raw, mentions) -> None:
    response = http.post(path, content=raw, headers=LORAX_JSON)
    assert mentions in lorax_error(response)
    assert response.json()["error_type"] == "validation"


@pytest.mark.parametrize("body,mentions", [
    ({"inputs": 5}, "inputs"),
    ({"inputs": "hi", "parameters": {"max_new_tokens": "5"}}, "max_new_tokens"),
    ({"inputs": "hi", "parameters": {"max_new_tokens": 2.5}}, "max_new_tokens"),
    ({"inputs": "hi", "parameters": {"do_sample": "yes"}}, "do_sample"),
    ({"inputs": "hi", "parameters": {"stop": "x"}}, "stop"),
    ({"inputs": "hi", "parameters": []}, "parameters"),
    ({"parameters": {}}, "inputs: field required"),
    ({"inputs": "hi", "parameters": {"max_new_tokens": 0}}, "max_new_tokens"),
    ({"inputs": "hi", "parameters": {"max_new_tokens": -3}}, "max_new_tokens"),
    ({"inputs": "hi", "parameters": {"max_new_tokens": 10**30}}, "context length"),
    ({"inputs": "hi", "parameters": {"top_p": 1.5}}, "top_p"),
    ({"inputs": "hi", "parameters": {"temperature": -1}}, "temperature"),
    ({"inputs": "", "parameters": {}}, "inputs"),
    ({"inputs": "hi", "surprise": 1}, "surprise: unknown field"),
    ({"inputs": "hi", "parameters": {"max_new_token": 4}}, "max_new_token: unknown field"),
    ({"inputs": "hi", "parameters": {"best_of": 10**6, "do_sample": True}}, "best_of"),
    ({"inputs": "hi", "parameters": {"best_of": 2}}, "sampling"),
    ({"inputs": "hi", "parameters": {"merged_adapters": {"ids": ["a"]}}}, "merged_adapters"),
    ({"inputs": "hi", "parameters": {"response_format": {"type": "xml"}}},
     "response_format.type"),
    ({"inputs": "hi", "parameters": {"response_format": {"type": "json_schema"}}},
     "json_schema.schema"),
    ({"inputs": "hi", "parameters": {"response_format": {
        "type": "json_object", "schema": {"type": "objekt"}}}}, "cannot be compiled"),
    ({"inputs": "hi", "parameters": {"stop": ["a"] * 100}}, "stop sequences"),
    ({"inputs": "hi", "parameters": {"return_k_alternatives": 1000}}, "return_k_alternatives"),
])
def test_invalid_lorax_requests_are_422_naming_the_field(http, body, mentions) -> None:
    assert mentions in lorax_error(http.post("/generate", json=body))


def test_nan_is_refused(http) -> None:
    raw = b'{"inputs": "hi", "parameters": {"temperature": NaN, "do_sample": true}}'
    assert "temperature" in lorax_error(http.post("/generate", content=raw,
                                                  headers=LORAX_JSON))


def test_oversize_prompt_is_refused_unless_truncated(http) -> None:
    huge = "hello " * (MAX_MODEL_LEN * 2)
    message = lorax_error(http.post("/generate", json={"inputs": huge}))
    assert "tokens" in message and "truncate" in message
    response = http.post("/generate", json={"inputs": huge, "parameters": {
        "truncate": 16, "max_new_tokens": 2, "details": True}})
    assert response.status_code == 200
    assert response.json()["details"]["prompt_tokens"] == 16


@pytest.mark.parametrize("path,body,mentions", [
    ("/v1/completions", {"model": "", "prompt": ""}, "prompt"),
    ("/v1/completions", {"model": "", "prompt": []}, "prompt"),
    ("/v1/completions", {"model": "", "prompt": "hi", "n": 10**6}, "n"),
    ("/v1/completions", {"model": "", "prompt": "hi", "n": 2, "best_of": 1}, "best_of"),
    ("/v1/completions", {"model": "", "prompt": [10**9]}, "token ids"),
    ("/v1/completions", {"model": "", "prompt": "hi", "max_tokens": -1}, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "seed": 2**63}, "seed"),
    ("/v1/completions", {"prompt": "hi", "stream_options": {"include_usage": True}},
     "stream_options"),
    ("/v1/chat/completions", {"model": "", "messages": []}, "messages"),
    ("/v1/chat/completions", {"model": "", "messages": [{"role": "", "content": "x"}]},
     "role"),
    ("/v1/chat/completions", {"model": "", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}]}, "image_url"),
    ("/v1/chat/completions", {"model": "", "messages": [{"role": "user", "content": "x"}],
                              "top_logprobs": 3}, "top_logprobs"),
    ("/v1/chat/completions", {"model": "", "messages": [{"role": "user", "content": "x"}],
                              "frobnicate": True}, "frobnicate: unknown field"),
    ("/v1/chat/completions", {"model": "", "messages": [{"role": "user", "content": "x"}],
                              "response_format": {"type": "json_schema", "json_schema": {
                                  "name": "x", "schema": {"type": "objekt"}}}},
     "Unsupported type"),
    ("/v1/completions", {"prompt": "hi", "guided_regex": "(a"}, "cannot be compiled"),
    ("/v1/completions", {"prompt": "hi", "guided_regex": "a", "guided_choice": ["a"]},
     "one output constraint"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                              "tools": [{"type": "function", "function": {"name": "f"}}]},
     "no tool format"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                              "tools": [{"type": "function", "function": {"name": "f"}}],
                              "tool_choice": {"type": "function", "function": {"name": "g"}}},
     "must name one of the tools"),
])
def test_invalid_openai_requests_are_400_in_openai_shape(http, path, body, mentions) -> None:
    assert mentions in openai_error(http.post(path, json=body))["message"]


def test_openai_malformed_json_and_bad_utf8(http) -> None:
    assert "malformed JSON" in openai_error(http.post(
        "/v1/chat/completions", content=b"{", headers=LORAX_JSON))["message"]
    assert "UTF-8" in openai_error(http.post(
        "/v1/completions", content=b'{"model": "", "prompt": "\xc3\x28"}',
        headers=LORAX_JSON))["message"]


def test_a_body_beyond_16_mib_is_413_unread(http) -> None:
    raw = b'{"inputs": "' + b"a" * (17 << 20) + b'"}'
    assert http.post("/generate", content=raw, headers=LORAX_JSON).status_code == 413


def test_unknown_routes_and_methods_are_4xx(http) -> None:
    assert http.get("/no/such/route").status_code == 404
    assert http.get("/generate").status_code == 405
    assert http.delete("/v1/completions").status_code == 405


def test_server_still_answers_correctly_after_bad_input(http) -> None:
    for raw in (b"{", b'{"inputs": "\xff"}', json.dumps({"inputs": 1}).encode()):
        http.post("/generate", content=raw, headers=LORAX_JSON)
    response = http.post("/generate", json={"inputs": CHAT_PROMPT,
                                            "parameters": {"max_new_tokens": 3}})
    assert response.status_code == 200
    assert response.json()["generated_text"]
    assert http.get("/health").status_code == 200
    assert http.get("/ready").status_code == 200
