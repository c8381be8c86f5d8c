"""Which adapter a request names, on each protocol."""

from __future__ import annotations

import json

import pytest

from loraplex.router.request_adapter import requested_adapter


@pytest.mark.parametrize(("path", "body", "adapter"), [
    ("/generate", {"inputs": "x", "parameters": {"adapter_id": "sql"}}, "sql"),
    ("/", {"inputs": "x", "parameters": {"adapter_id": "sql", "adapter_source": "s3"}}, "sql"),
    ("/generate_stream", {"inputs": "x", "parameters": {"adapter_id": None}}, None),
    ("/generate", {"inputs": "x", "parameters": {"adapter_id": ""}}, None),
    ("/generate", {"inputs": "x"}, None),
    ("/generate", {"inputs": "x", "parameters": "junk"}, None),
    ("/generate", {"inputs": "x", "model": "sql"}, None),
    ("/v1/completions", {"model": "sql", "prompt": "x"}, "sql"),
    ("/v1/chat/completions", {"model": "", "messages": []}, None),
    ("/v1/chat/completions", {"model": 3, "messages": []}, None),
    ("/v1/completions", {"prompt": "x", "parameters": {"adapter_id": "sql"}}, None),
])
def test_adapter_by_protocol(path, body, adapter):
    assert requested_adapter(path, json.dumps(body).encode()) == adapter


@pytest.mark.parametrize("body", [b"", b"{", b"[1, 2]", b"\xff\xfe", b'"text"'])
def test_bodies_that_are_no_json_object_name_no_adapter(body):
    assert requested_adapter("/generate", body) is None
