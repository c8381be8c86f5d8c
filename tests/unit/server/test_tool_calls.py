"""Forced tool calls: the constraint each tool_choice makes, the answer, the stream deltas."""

from __future__ import annotations

import json

import pytest

from loraplex.runtime.server.errors import ValidationFailed
from loraplex.runtime.server.tool_calls import (
    ToolCallStream,
    auto_tool_calls,
    plan_tools,
    tool_call,
)
from loraplex.runtime.structured.grammar_spec import GrammarKind

PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": PARAMS}},
         {"type": "function", "function": {"name": "time"}}]
NAMED = {"type": "function", "function": {"name": "weather"}}


def test_a_named_function_constrains_to_its_parameters() -> None:
    plan = plan_tools(TOOLS, NAMED, template_has_tools=False)
    assert plan.function == "weather" and plan.spec.kind is GrammarKind.JSON_SCHEMA
    assert json.loads(plan.spec.source) == PARAMS
    call = tool_call(plan, '{"city": "Paris"}')
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "weather", "arguments": '{"city": "Paris"}'}
    assert tool_call(plan, '{"city": "Par') is None  # cut short by max_tokens


def test_required_constrains_to_any_tool_name_first() -> None:
    plan = plan_tools(TOOLS, "required", template_has_tools=False)
    options = json.loads(plan.spec.source)["anyOf"]
    assert [option["properties"]["name"]["const"] for option in options] == ["weather", "time"]
    assert all(list(option["properties"]) == ["name", "arguments"] for option in options)
    call = tool_call(plan, '{"name": "time", "arguments": {}}')
    assert call["function"] == {"name": "time", "arguments": "{}"}


def test_none_and_no_tools_ignore_them_and_auto_says_why() -> None:
    assert plan_tools(TOOLS, "none", template_has_tools=False) is None
    assert plan_tools(None, None, template_has_tools=False) is None
    with pytest.raises(ValidationFailed, match="no tool format"):
        plan_tools(TOOLS, "auto", template_has_tools=False)
    auto = plan_tools(TOOLS, None, template_has_tools=True)
    assert auto.auto and auto.functions == {"weather", "time"}


@pytest.mark.parametrize(("tools", "choice", "mentions"), [
    (None, "required", "needs tools"),
    (TOOLS, {"type": "function", "function": {"name": "nope"}}, "one of the tools"),
    (TOOLS, "sometimes", "tool_choice must be"),
    ([{"type": "retrieval"}], "required", "tools\\[0\\]"),
    ([{"type": "function", "function": {"name": "a b"}}], "required", "letters"),
    ([TOOLS[1], TOOLS[1]], "required", "two tools"),
    ([{"type": "function", "function": {"name": "f", "parameters": [1]}}], "required",
     "parameters"),
])
def test_bad_tools_are_refused_by_name(tools, choice, mentions) -> None:
    with pytest.raises(ValidationFailed, match=mentions):
        plan_tools(tools, choice, template_has_tools=False)


def feed_all(stream: ToolCallStream, pieces: list[str]) -> list[dict]:
    return [delta for piece in pieces for delta in stream.feed(piece)]


def test_a_required_call_streams_its_name_then_its_arguments() -> None:
    stream = ToolCallStream(plan_tools(TOOLS, "required", template_has_tools=False))
    text = '{"name": "weather", "arguments": {"city": "Paris"}}'
    deltas = feed_all(stream, [text[i:i + 3] for i in range(0, len(text), 3)])
    head, *rest = deltas
    assert head == {"index": 0, "id": stream.call_id, "type": "function",
                    "function": {"name": "weather", "arguments": ""}}
    assert "".join(delta["function"]["arguments"] for delta in rest) == '{"city": "Paris"}'


def test_a_named_call_streams_every_piece_as_arguments() -> None:
    stream = ToolCallStream(plan_tools(TOOLS, NAMED, template_has_tools=False))
    deltas = feed_all(stream, ['{"ci', 'ty": "Rome"}'])
    assert deltas[0]["function"]["name"] == "weather" and stream.started
    assert "".join(delta["function"]["arguments"] for delta in deltas) == '{"city": "Rome"}'


AUTO = plan_tools(TOOLS, "auto", template_has_tools=True)


@pytest.mark.parametrize(("text", "content", "names"), [
    ('<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo"}}\n</tool_call>',
     None, ["weather"]),
    ('Let me check.<tool_call>{"name": "weather", "arguments": {"city": "Oslo"}}</tool_call>'
     '<tool_call>{"name": "time", "arguments": {}}</tool_call>', "Let me check.",
     ["weather", "time"]),
    ('{"name": "weather", "parameters": {"city": "Oslo"}}', None, ["weather"]),
    ('[TOOL_CALLS] [{"name": "time", "arguments": "{}"}]', None, ["time"]),
])
def test_auto_reads_calls_in_the_formats_templates_ask_for(text, content, names) -> None:
    found_content, calls = auto_tool_calls(AUTO, text)
    assert found_content == content
    assert [call["function"]["name"] for call in calls] == names
    assert all(isinstance(json.loads(call["function"]["arguments"]), dict) for call in calls)


@pytest.mark.parametrize("text", [
    "The weather is fine.", '{"name": "unknown", "arguments": {}}',
    '<tool_call>{"name": "weather", "argu</tool_call>', '{"city": "Oslo"}',
])
def test_auto_leaves_anything_else_as_content(text) -> None:
    assert auto_tool_calls(AUTO, text) == (text, [])
