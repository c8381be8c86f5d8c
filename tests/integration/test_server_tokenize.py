"""`/tokenize` (vLLM's two bodies and LoRAX's), `/detokenize` and `/version`, checked against
the model's own tokenizer and against what a generation request counts."""

from __future__ import annotations

import pytest

from loraplex import __version__
from tests.integration.conftest import MAX_MODEL_LEN

pytestmark = [pytest.mark.model, pytest.mark.timeout(300)]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_vllm_tokenize_a_prompt(http, tokenizer) -> None:
    text = "The capital of France is"
    answer = http.post("/tokenize", json={"model": "", "prompt": text,
                                          "return_token_strs": True}).json()
    expected = tokenizer.encode(text)
    assert answer == {"count": len(expected), "max_model_len": MAX_MODEL_LEN,
                      "tokens": expected,
                      "token_strs": tokenizer.convert_ids_to_tokens(expected)}
    completion = http.post("/v1/completions", json={"prompt": text, "max_tokens": 1}).json()
    assert completion["usage"]["prompt_tokens"] == answer["count"]


def test_vllm_tokenize_chat_messages_counts_as_the_chat_route(http, tokenizer) -> None:
    answer = http.post("/tokenize", json={"messages": QUESTION}).json()
    assert answer["tokens"] == tokenizer.apply_chat_template(
        QUESTION, add_generation_prompt=True, tokenize=True)
    assert answer["token_strs"] is None
    chat = http.post("/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 1})
    assert chat.json()["usage"]["prompt_tokens"] == answer["count"]


def test_detokenize_inverts_tokenize(http) -> None:
    text = "Paris is the capital of France."
    ids = http.post("/tokenize", json={"prompt": text}).json()["tokens"]
    assert http.post("/detokenize", json={"tokens": ids}).json() == {"prompt": text}


def test_lorax_tokenize_lists_tokens_with_offsets(http, tokenizer) -> None:
    text = "Hello world, hello Paris"
    tokens = http.post("/tokenize", json={"inputs": text}).json()
    assert [token["id"] for token in tokens] == tokenizer.encode(text)
    assert "".join(token["text"] for token in tokens) == text
    assert all(text[token["start"]:token["stop"]] == token["text"] for token in tokens)


@pytest.mark.parametrize("path,body,status", [
    ("/tokenize", {"prompt": 5}, 400),
    ("/tokenize", {"model": "no-such-adapter", "prompt": "x"}, 404),
    ("/detokenize", {"tokens": [10**9]}, 400),
    ("/detokenize", {"tokens": "abc"}, 400),
])
def test_bad_tokenizer_requests_are_refused_in_openai_shape(http, path, body, status) -> None:
    response = http.post(path, json=body)
    assert response.status_code == status, response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_version(http) -> None:
    assert http.get("/version").json() == {"version": __version__}
