"""OpenAI `tools` + `tool_choice` on chat: a forced call is a JSON-schema constraint.

`tool_choice` naming a function constrains the output to that function's arguments
(its `parameters` schema); `"required"` constrains it to `{"name": ..., "arguments":
...}` for one of the tools (an `anyOf`, the name first, so a stream can announce it before
the arguments). The result is returned as OpenAI `tool_calls`, and streamed as its
deltas: the call's id, type and name first, then the arguments as they are generated.
`"auto"` (the default with tools) leaves the choice to the model, in its own tool format:
the tools go into the chat template, the output is free, and calls written the ways chat
templates ask for them (`<tool_call>{...}</tool_call>` blocks as Hermes and Qwen do, or
the whole answer a JSON call or list of calls, `[TOOL_CALLS]` first as Mistral does) are
read back as `tool_calls`; a stream of such an answer sends it whole at its end. For a
chat template with no tool format, `"auto"` is refused with the reason. `"none"` ignores
the tools.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from loraplex.runtime.server.errors import ValidationFailed
from loraplex.runtime.structured.grammar_spec import GrammarSpec

FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
REQUIRED_HEAD = re.compile(r'^\{"name": "([A-Za-z0-9_-]+)", "arguments": ')  # compact JSON
TOOL_CALL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
MISTRAL_PREFIX = "[TOOL_CALLS]"


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """How a request's tools are used: a forced call's constraint, or the model's choice."""

    spec: GrammarSpec | None  # None: "auto", calls are read from free output
    function: str | None  # the named function; None: the output names it
    functions: frozenset[str] = frozenset()

    @property
    def auto(self) -> bool:
        return self.spec is None


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _functions(tools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each tool's parameters schema, by function name (validated)."""
    functions: dict[str, dict[str, Any]] = {}
    for index, tool in enumerate(tools):
        function = tool.get("function")
        if tool.get("type") != "function" or not isinstance(function, dict):
            raise ValidationFailed(f"tools[{index}] must be {{\"type\": \"function\", "
                                   "\"function\": {...}}", param="tools")
        name = function.get("name")
        if not isinstance(name, str) or not FUNCTION_NAME.match(name):
            raise ValidationFailed(f"tools[{index}].function.name must be 1-64 letters, "
                                   "digits, _ or -", param="tools")
        if name in functions:
            raise ValidationFailed(f"two tools are named {name!r}", param="tools")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise ValidationFailed(f"tools[{index}].function.parameters must be a JSON "
                                   "schema object", param="tools")
        functions[name] = parameters
    return functions


def plan_tools(tools: list[dict[str, Any]] | None, tool_choice: str | dict[str, Any] | None,
               template_has_tools: bool) -> ToolPlan | None:
    """The forced call a request asks for, None when its tools are to be ignored."""
    if not tools:
        if tool_choice not in (None, "none", "auto"):
            raise ValidationFailed("tool_choice needs tools", param="tool_choice")
        return None
    functions = _functions(tools)
    if tool_choice == "none":
        return None
    if tool_choice in (None, "auto"):
        if template_has_tools:
            return ToolPlan(None, None, frozenset(functions))
        raise ValidationFailed("tool_choice \"auto\" needs a chat template with a tool "
                               "format, and this model's chat template has no tool format; "
                               "set tool_choice to \"required\" or name a function to force "
                               "a valid call", param="tool_choice")
    if tool_choice == "required":
        options = [{"type": "object",
                    "properties": {"name": {"const": name}, "arguments": parameters},
                    "required": ["name", "arguments"]}
                   for name, parameters in functions.items()]
        schema = options[0] if len(options) == 1 else {"anyOf": options}
        return ToolPlan(GrammarSpec.json_schema(schema), None)
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        if tool_choice.get("type") != "function" or name not in functions:
            raise ValidationFailed("tool_choice must name one of the tools: {\"type\": "
                                   "\"function\", \"function\": {\"name\": ...}}",
                                   param="tool_choice")
        return ToolPlan(GrammarSpec.json_schema(functions[name]), name)
    raise ValidationFailed("tool_choice must be none, auto, required or a named function",
                           param="tool_choice")


def _call(name: str, arguments: Any) -> dict[str, Any]:
    return {"id": new_call_id(), "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)}}


def auto_tool_calls(plan: ToolPlan, text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(content, calls) of a free output: calls only when every one names a known tool."""
    blocks = TOOL_CALL_BLOCK.findall(text)
    content = TOOL_CALL_BLOCK.sub("", text).strip() if blocks else None
    if not blocks:
        blocks = [text.strip().removeprefix(MISTRAL_PREFIX)]
    calls = []
    for block in blocks:
        try:
            value = json.loads(block)
        except json.JSONDecodeError:
            return text, []
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, dict) or item.get("name") not in plan.functions:
                return text, []
            arguments = item.get("arguments", item.get("parameters", {}))
            if isinstance(arguments, str):  # some templates write them as a JSON string
                try:
                    arguments = json.loads(arguments)
                except json.JSONDecodeError:
                    return text, []
            calls.append(_call(item["name"], arguments))
    return content or None, calls


def tool_call(plan: ToolPlan, text: str) -> dict[str, Any] | None:
    """The OpenAI tool call in a complete output, None if it is not one (cut short)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    if plan.function is not None:
        name, arguments = plan.function, value
    elif isinstance(value, dict) and {"name", "arguments"} <= value.keys():
        name, arguments = value["name"], value["arguments"]
    else:
        return None
    return _call(name, arguments)


@dataclass
class ToolCallStream:
    """Turns a forced call's text deltas into OpenAI `tool_calls` deltas."""

    plan: ToolPlan
    call_id: str = field(default_factory=new_call_id)
    _pending: str = ""  # text not sent yet
    started: bool = False  # the call's head (id, name) is sent

    def feed(self, text: str) -> list[dict[str, Any]]:
        """Deltas for the next piece of the output (the name first, then arguments)."""
        self._pending += text
        deltas = []
        if not self.started:
            name = self.plan.function
            if name is None:
                head = REQUIRED_HEAD.match(self._pending)
                if head is None:
                    return []
                name, self._pending = head.group(1), self._pending[head.end():]
            self.started = True
            deltas.append({"index": 0, "id": self.call_id, "type": "function",
                           "function": {"name": name, "arguments": ""}})
        # with "required" the output ends with the wrapper's "}": hold one char back
        keep = 0 if self.plan.function is not None else 1
        ready, self._pending = (self._pending[:len(self._pending) - keep],
                                self._pending[len(self._pending) - keep:])
        if ready:
            deltas.append({"index": 0, "function": {"arguments": ready}})
        return deltas
