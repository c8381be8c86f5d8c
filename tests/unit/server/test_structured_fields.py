"""Protocol fields → one output constraint: every shape each protocol sends, and refusals."""

from __future__ import annotations

import json

import pytest

from loraplex.runtime.server.errors import ValidationFailed
from loraplex.runtime.server.openai_protocol import ChatCompletionRequest, CompletionRequest
from loraplex.runtime.server.structured_fields import GuidedFields, lorax_spec, openai_spec
from loraplex.runtime.structured.grammar_spec import GrammarKind, GrammarSpec

SCHEMA = {"type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "string"}}}


def test_lorax_response_format_in_both_shapes() -> None:
    expected = GrammarSpec.json_schema(SCHEMA)
    assert lorax_spec({"type": "json_object", "schema": SCHEMA}) == expected
    assert lorax_spec({"type": "json_schema", "json_schema": {"name": "x",
                                                              "schema": SCHEMA}}) == expected
    assert lorax_spec({"type": "json_object"}) == GrammarSpec.json_object()
    assert lorax_spec({"type": "text"}) is None and lorax_spec(None) is None


def test_schema_keys_keep_their_order() -> None:
    # property order is the order of the output's keys: never sorted away
    assert list(json.loads(GrammarSpec.json_schema(SCHEMA).source)["properties"]) == ["b", "a"]


def test_openai_response_format() -> None:
    none = GuidedFields()
    assert openai_spec({"type": "json_object"}, none) == GrammarSpec.json_object()
    strict = {"type": "json_schema", "json_schema": {"name": "x", "strict": True,
                                                     "schema": SCHEMA}}
    assert openai_spec(strict, none) == GrammarSpec.json_schema(SCHEMA)
    assert openai_spec({"type": "text"}, none) is None


@pytest.mark.parametrize(("fields", "kind"), [
    ({"guided_json": SCHEMA}, GrammarKind.JSON_SCHEMA),
    ({"guided_json": json.dumps(SCHEMA)}, GrammarKind.JSON_SCHEMA),
    ({"guided_regex": "[a-z]+"}, GrammarKind.REGEX),
    ({"guided_choice": ["a", "b"]}, GrammarKind.CHOICE),
    ({"guided_grammar": 'root ::= "x"'}, GrammarKind.GRAMMAR),
    ({"structured_outputs": {"json": SCHEMA}}, GrammarKind.JSON_SCHEMA),
    ({"structured_outputs": {"regex": "a+"}}, GrammarKind.REGEX),
    ({"structured_outputs": {"choice": ["a"]}}, GrammarKind.CHOICE),
    ({"structured_outputs": {"grammar": 'root ::= "x"'}}, GrammarKind.GRAMMAR),
    ({"structured_outputs": {"json_object": True}}, GrammarKind.JSON_OBJECT),
])
def test_vllm_fields_on_both_endpoints(fields, kind) -> None:
    completion = CompletionRequest.model_validate({"prompt": "hi", **fields})
    chat = ChatCompletionRequest.model_validate({"messages": [{"role": "user",
                                                               "content": "hi"}], **fields})
    for body in (completion, chat):
        assert openai_spec(body.response_format, body).kind is kind


@pytest.mark.parametrize(("response_format", "fields", "mentions"), [
    ({"type": "json_object"}, {"guided_regex": "a"}, "one output constraint"),
    (None, {"guided_regex": "a", "guided_choice": ["a"]}, "one output constraint"),
    (None, {"structured_outputs": {"regex": "a", "choice": ["a"]}}, "one output constraint"),
    (None, {"structured_outputs": {}}, "names no constraint"),
    (None, {"structured_outputs": {"structural_tag": "{}"}}, "structural_tag"),
    (None, {"guided_choice": []}, "choices"),
    (None, {"guided_regex": ""}, "regex is empty"),
    (None, {"guided_json": "{bad"}, "not valid JSON"),
    ({"type": "yaml"}, {}, "response_format.type"),
    ({"type": "json_schema"}, {}, "json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, {}, "with a `schema`"),
])
def test_bad_constraints_are_refused_by_name(response_format, fields, mentions) -> None:
    body = CompletionRequest.model_validate({"prompt": "hi", **fields})
    with pytest.raises(ValidationFailed, match=mentions):
        openai_spec(response_format, body)
