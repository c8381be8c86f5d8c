"""Structured output through the real `openai` and `lorax-client` packages, with adapters.

Ten JSON schemas of increasing difficulty, each asked of the base model and of two
adapters, all in one concurrent batch (half through each client), with free greedy
requests beside them that must still equal transformers. Then regex and choice (vLLM
fields), streamed output against the plain answer, forced tool calls, and the metrics.
Every constrained output must parse and validate (`jsonschema`, `re.fullmatch`).
"""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import jsonschema
import openai
import pytest
from lorax import AsyncClient

from tests.integration.conftest import CHAT_PROMPT

pytestmark = [pytest.mark.model, pytest.mark.slow, pytest.mark.timeout(600)]

MODELS = ("", "alpha", "beta")  # the base model and two adapters
MAX_TOKENS = 160
NAME = {"type": "string", "minLength": 1, "maxLength": 12}
SMALL_INT = {"type": "integer", "minimum": 0, "maximum": 999}
SCHEMAS = [
    SMALL_INT,
    {"type": "object", "properties": {"name": NAME}, "required": ["name"]},
    {"type": "object", "properties": {"name": NAME, "age": SMALL_INT, "admin": {
        "type": "boolean"}}, "required": ["name", "age", "admin"]},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]},
                                      "size": {"enum": ["S", "M", "L"]}},
     "required": ["color", "size"]},
    {"type": "object", "properties": {"scores": {"type": "array", "items": SMALL_INT,
                                                 "minItems": 1, "maxItems": 3}},
     "required": ["scores"]},
    {"type": "object", "properties": {"owner": {
        "type": "object", "properties": {"name": NAME, "address": {
            "type": "object", "properties": {"city": NAME, "zip": SMALL_INT},
            "required": ["city", "zip"]}}, "required": ["name", "address"]}},
     "required": ["owner"]},
    {"type": "object", "properties": {"value": {"anyOf": [NAME, SMALL_INT]}},
     "required": ["value"]},
    {"type": "object", "properties": {"code": {"type": "string",
                                               "pattern": "^[A-Z]{2}-[0-9]{3}$"}},
     "required": ["code"]},
    {"type": "object", "properties": {"kind": {"const": "order"}, "id": SMALL_INT,
                                      "note": NAME},
     "required": ["kind", "id"]},
    {"type": "object", "properties": {"items": {
        "type": "array", "minItems": 1, "maxItems": 2, "items": {
            "type": "object", "properties": {
                "sku": {"type": "string", "pattern": "^[a-z]{3}[0-9]$"},
                "qty": {"anyOf": [SMALL_INT, {"enum": ["many", "few"]}]},
                "tags": {"type": "array", "items": {"enum": ["new", "sale"]},
                         "maxItems": 2}},
            "required": ["sku", "qty", "tags"]}}}, "required": ["items"]},
]
QUESTION = "Answer with a JSON object describing a customer order."
DATE = r"\d{4}-\d{2}-\d{2}"
CHOICES = ["yes", "no", "maybe"]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"city": NAME, "unit": {
        "enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"]}}}
TIME_TOOL = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {
        "zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"]}}}


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def chat(content: str = QUESTION) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def json_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema,
                                                   "strict": True}}


def test_ten_schemas_by_the_base_and_two_adapters_in_one_batch(server, tokenizer,
                                                               hf_greedy) -> None:
    async def ask_openai(aclient, schema, model):
        answer = await aclient.chat.completions.create(
            model=model, messages=chat(), max_tokens=MAX_TOKENS, temperature=0,
            response_format=json_format(schema))
        return answer.choices[0].message.content, answer.choices[0].finish_reason

    async def ask_lorax(lorax, schema, model):
        answer = await lorax.generate(CHAT_PROMPT.replace("What is the capital of France?",
                                                          QUESTION),
                                      adapter_id=model or None, max_new_tokens=MAX_TOKENS,
                                      response_format={"type": "json_object",
                                                       "schema": schema})
        return answer.generated_text, answer.details.finish_reason.value

    async def free(aclient):
        answer = await aclient.completions.create(
            model="", prompt=CHAT_PROMPT, max_tokens=8, temperature=0,
            extra_body={"ignore_eos_token": True})
        return answer.choices[0].text

    async def run():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused",
                                      max_retries=0, timeout=600) as aclient:
            lorax = AsyncClient(server.url, timeout=600)
            asks = [(ask_openai(aclient, schema, model) if (index + m) % 2 == 0 else
                     ask_lorax(lorax, schema, model))
                    for index, schema in enumerate(SCHEMAS)
                    for m, model in enumerate(MODELS)]
            return await asyncio.gather(free(aclient), *asks, free(aclient))

    free_first, *answers, free_last = asyncio.run(run())
    expected = tokenizer.decode(hf_greedy(tokenizer.encode(CHAT_PROMPT), 8),
                                skip_special_tokens=True)
    assert free_first == free_last == expected
    for (text, finish), (index, model) in zip(
            answers, [(i, m) for i in range(len(SCHEMAS)) for m in MODELS], strict=True):
        assert finish in ("stop", "eos_token"), (index, model, text)
        jsonschema.validate(json.loads(text), SCHEMAS[index])


def test_regex_and_choice_by_the_base_and_adapters(client) -> None:
    for model in MODELS:
        date = client.completions.create(model=model, prompt="Today's date is", max_tokens=20,
                                         temperature=0, extra_body={"guided_regex": DATE})
        assert re.fullmatch(DATE, date.choices[0].text), date.choices[0].text
        choice = client.chat.completions.create(
            model=model, messages=chat("Is Paris in France?"), max_tokens=5, temperature=0,
            extra_body={"structured_outputs": {"choice": CHOICES}})
        assert choice.choices[0].message.content in CHOICES


def test_streamed_output_concatenates_to_the_plain_answer(client) -> None:
    for extra in ({"guided_json": SCHEMAS[5]}, {"guided_regex": DATE},
                  {"guided_choice": CHOICES}):
        plain = client.chat.completions.create(model="alpha", messages=chat(), temperature=0,
                                               max_tokens=MAX_TOKENS, extra_body=extra)
        chunks = client.chat.completions.create(model="alpha", messages=chat(), temperature=0,
                                                max_tokens=MAX_TOKENS, extra_body=extra,
                                                stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks
                       if chunk.choices)
        assert text == plain.choices[0].message.content


def test_a_named_tool_call_has_arguments_that_validate(client) -> None:
    for model in ("", "beta"):
        answer = client.chat.completions.create(
            model=model, messages=chat("What is the weather in Paris?"), temperature=0,
            max_tokens=MAX_TOKENS, tools=[WEATHER_TOOL, TIME_TOOL],
            tool_choice={"type": "function", "function": {"name": "get_weather"}})
        choice = answer.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        (call,) = choice.message.tool_calls
        assert call.type == "function" and call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments),
                            WEATHER_TOOL["function"]["parameters"])


def test_required_tool_call_streams_as_deltas(client) -> None:
    kwargs = dict(model="alpha", messages=chat("What time is it in Berlin?"), temperature=0,
                  max_tokens=MAX_TOKENS, tools=[WEATHER_TOOL, TIME_TOOL],
                  tool_choice="required")
    plain = client.chat.completions.create(**kwargs).choices[0]
    (call,) = plain.message.tool_calls
    tools = {tool["function"]["name"]: tool["function"]["parameters"]
             for tool in (WEATHER_TOOL, TIME_TOOL)}
    jsonschema.validate(json.loads(call.function.arguments), tools[call.function.name])
    deltas = [chunk.choices[0] for chunk in client.chat.completions.create(**kwargs,
                                                                          stream=True)
              if chunk.choices]
    calls = [delta.delta.tool_calls[0] for delta in deltas if delta.delta.tool_calls]
    assert calls[0].id and calls[0].function.name == call.function.name
    assert "".join(item.function.arguments or "" for item in calls) == call.function.arguments
    assert deltas[-1].finish_reason == "tool_calls"


def test_tool_choice_none_ignores_the_tools(client) -> None:
    answer = client.chat.completions.create(model="", messages=chat("Hi"), max_tokens=4,
                                            temperature=0, tools=[WEATHER_TOOL],
                                            tool_choice="none")
    assert answer.choices[0].message.tool_calls is None


def test_metrics_count_constraints_compiles_and_cache_hits(server, client) -> None:
    for _ in range(2):
        client.completions.create(model="", prompt="x", max_tokens=2, temperature=0,
                                  extra_body={"guided_regex": "[ab]+"})
    text = httpx.get(server.url + "/metrics", trust_env=False).text
    assert re.search(r'loraplex_constrained_requests_total\{kind="regex"\} [1-9]', text)
    assert re.search(r'loraplex_grammar_cache_lookups_total\{result="hit"\} [1-9]', text)
    assert re.search(r"loraplex_grammar_compile_seconds_count [1-9]", text)
