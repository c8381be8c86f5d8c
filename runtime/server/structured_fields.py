"""Request fields that constrain the output → one `GrammarSpec` (or None: free text).

Three protocols spell structured output differently, and each is read here with its own
rules: LoRAX `parameters.response_format` (`{"type": "json_object", "schema": {...}}` or
the OpenAI-like `{"type": "json_schema", "json_schema": {"schema": {...}}}`; no schema:
any JSON object); OpenAI `response_format` (`text`, `json_object`, `json_schema` with
`json_schema.schema` and `strict`, which is always honoured: the output is made to
match); vLLM's `guided_json` / `guided_regex` / `guided_choice` / `guided_grammar` and its
newer `structured_outputs` object (`json`, `regex`, `choice`, `grammar`, `json_object`).
A request may ask for one constraint only; two are refused rather than one ignored.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from loraplex.runtime.server.errors import ValidationFailed
from loraplex.runtime.server.lorax_protocol import StrictModel
from loraplex.runtime.structured.grammar_spec import GrammarSpec


class StructuredOutputs(StrictModel):
    """vLLM's `structured_outputs` (the successor of its `guided_*` fields)."""

    json_: dict[str, Any] | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    disable_fallback: bool | None = None
    disable_any_whitespace: bool | None = None
    disable_additional_properties: bool | None = None
    whitespace_pattern: str | None = None
    structural_tag: str | None = None


class GuidedFields(StrictModel):
    """vLLM's guided decoding fields, shared by both OpenAI endpoints."""

    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_decoding_backend: str | None = None  # accepted; xgrammar is always used
    guided_whitespace_pattern: str | None = None
    structured_outputs: StructuredOutputs | None = None


def _spec(param: str, build: Any, *args: Any) -> GrammarSpec:
    try:
        return build(*args)
    except ValueError as error:
        raise ValidationFailed(f"{param}: {error}", param=param) from error


def _schema_of(response_format: dict[str, Any], param: str) -> Any:
    """The schema of a `json_schema` response format, in either of its two shapes."""
    nested = response_format.get("json_schema")
    if nested is not None:
        if not isinstance(nested, dict) or "schema" not in nested:
            raise ValidationFailed(f"{param}.json_schema must be an object with a `schema`",
                                   param=param)
        return nested["schema"]
    if "schema" in response_format:
        return response_format["schema"]
    raise ValidationFailed(f"{param} of type json_schema needs json_schema.schema",
                           param=param)


def response_format_spec(response_format: dict[str, Any] | None, param: str = "response_format",
                         schema_in_json_object: bool = False) -> GrammarSpec | None:
    """OpenAI's (and, with `schema_in_json_object`, LoRAX's) `response_format`."""
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        schema = response_format.get("schema") if schema_in_json_object else None
        if schema is not None:
            return _spec(param, GrammarSpec.json_schema, schema)
        return GrammarSpec.json_object()
    if kind == "json_schema":
        return _spec(param, GrammarSpec.json_schema, _schema_of(response_format, param))
    raise ValidationFailed(f"{param}.type must be text, json_object or json_schema, got "
                           f"{kind!r}", param=param)


def lorax_spec(response_format: dict[str, Any] | None) -> GrammarSpec | None:
    return response_format_spec(response_format, schema_in_json_object=True)


def openai_spec(response_format: dict[str, Any] | None,
                guided: GuidedFields) -> GrammarSpec | None:
    """The one constraint of an OpenAI-protocol request (response_format or vLLM's)."""
    asked: list[tuple[str, GrammarSpec]] = []
    spec = response_format_spec(response_format)
    if spec is not None:
        asked.append(("response_format", spec))
    if guided.guided_json is not None:
        asked.append(("guided_json", _spec("guided_json", GrammarSpec.json_schema,
                                           guided.guided_json)))
    if guided.guided_regex is not None:
        asked.append(("guided_regex", _spec("guided_regex", GrammarSpec.regex,
                                            guided.guided_regex)))
    if guided.guided_choice is not None:
        asked.append(("guided_choice", _spec("guided_choice", GrammarSpec.choice,
                                             guided.guided_choice)))
    if guided.guided_grammar is not None:
        asked.append(("guided_grammar", _spec("guided_grammar", GrammarSpec.grammar,
                                              guided.guided_grammar)))
    if guided.structured_outputs is not None:
        asked += _structured_outputs(guided.structured_outputs)
    if len(asked) > 1:
        names = ", ".join(name for name, _ in asked)
        raise ValidationFailed(f"ask for one output constraint only, got: {names}",
                               param=asked[1][0])
    return asked[0][1] if asked else None


def _structured_outputs(fields: StructuredOutputs) -> list[tuple[str, GrammarSpec]]:
    param = "structured_outputs"
    if fields.structural_tag is not None:
        raise ValidationFailed("structured_outputs.structural_tag is not supported",
                               param=param)
    asked = []
    if fields.json_ is not None:
        asked.append((param, _spec(param, GrammarSpec.json_schema, fields.json_)))
    if fields.regex is not None:
        asked.append((param, _spec(param, GrammarSpec.regex, fields.regex)))
    if fields.choice is not None:
        asked.append((param, _spec(param, GrammarSpec.choice, fields.choice)))
    if fields.grammar is not None:
        asked.append((param, _spec(param, GrammarSpec.grammar, fields.grammar)))
    if fields.json_object:
        asked.append((param, GrammarSpec.json_object()))
    if not asked:
        raise ValidationFailed("structured_outputs names no constraint (json, regex, "
                               "choice, grammar or json_object)", param=param)
    return asked
