"""`POST /v1/chat/completions`: messages through the tokenizer's chat template.

The rendered template is tokenized without adding special tokens (the template already
holds them). A stream sends, per choice, a first chunk with the assistant role, one
chunk per token, then a chunk with the finish reason; with
`stream_options.include_usage`, a last chunk with no choices carries the usage (and with
`continuous_usage_stats` each chunk carries its choice's counts so far).

Output constraints (`response_format`, vLLM's `guided_*`) are compiled before the request
runs; a tool call (forced by `tool_choice` "required" or a named function, or chosen by
the model under "auto") comes back as `tool_calls` with finish reason `tool_calls`, and
streams as `tool_calls` deltas (see `tool_calls.py`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from loraplex.runtime.engine.request import GenerationRequest, TokenEvent
from loraplex.runtime.server.errors import ValidationFailed
from loraplex.runtime.server.openai_common import (
    DONE,
    ChunkUsage,
    choice_counts,
    new_id,
    now,
    raise_if_failed,
    sampling_params,
    sse_error,
    start_stream,
    stop_list,
    usage,
)
from loraplex.runtime.server.openai_protocol import ChatCompletionRequest, refuse_unsupported
from loraplex.runtime.server.state import service_of
from loraplex.runtime.server.streaming import (
    EventStream,
    cancel_on_disconnect,
    sse_data,
    stream_failure,
)
from loraplex.runtime.server.structured_fields import openai_spec
from loraplex.runtime.server.token_json import (
    finite_logprob,
    openai_finish_name,
    vllm_prompt_logprobs,
)
from loraplex.runtime.server.tool_calls import (
    ToolCallStream,
    ToolPlan,
    auto_tool_calls,
    plan_tools,
    tool_call,
)

router = APIRouter(tags=["openai"])


def _token_logprob(text: str, logprob: float | None) -> dict[str, Any]:
    return {"token": text, "logprob": finite_logprob(logprob), "bytes": list(text.encode())}


def _logprobs(events: list[TokenEvent], top: int) -> dict[str, Any]:
    return {"content": [{**_token_logprob(event.text, event.logprob),
                         "top_logprobs": [_token_logprob(alt.text, alt.logprob)
                                          for alt in event.top_logprobs[:top]]}
                        for event in events]}


def _message(result_text: str, finish: str, plan: ToolPlan | None
             ) -> tuple[dict[str, Any], str]:
    """The assistant message and finish reason of one choice."""
    content, calls = result_text, []
    if plan is not None and plan.auto:
        content, calls = auto_tool_calls(plan, result_text)
    elif plan is not None:
        call = tool_call(plan, result_text)
        content, calls = (None, [call]) if call is not None else (result_text, [])
    if not calls:
        return {"role": "assistant", "content": result_text}, finish
    return {"role": "assistant", "content": content, "tool_calls": calls}, "tool_calls"


async def _plan(request: Request, body: ChatCompletionRequest
                ) -> tuple[list[GenerationRequest], int, ToolPlan | None]:
    service = service_of(request)
    refuse_unsupported(body)
    if body.top_logprobs and not body.logprobs:
        raise ValidationFailed("top_logprobs needs logprobs: true", param="top_logprobs")
    n, _ = choice_counts(body.n, None, bool(body.stream))
    service.check_best_of(n, "n")
    adapter = service.resolve_adapter(body.model, body.adapter_source, body.api_token)
    stop = service.check_stop(stop_list(body.stop))
    tools = plan_tools(body.tools, body.tool_choice, service.chat_template_has_tools())
    spec = openai_spec(body.response_format, body)
    if tools is not None and spec is not None:
        raise ValidationFailed("tools and an output format cannot be combined (set "
                               "tool_choice to \"none\" to ignore the tools)",
                               param="tool_choice")
    grammar = await service.compile_grammar(tools.spec if tools is not None else spec)
    prompt = service.render_chat([message.template_message() for message in body.messages],
                                 tools=body.tools if tools is not None else None)
    ids, max_new = service.fit_prompt(await service.tokenize(prompt, add_special_tokens=False),
                                      body.max_completion_tokens or body.max_tokens)
    top = (body.top_logprobs or 0) if body.logprobs else 0
    params = sampling_params(body, max_new, stop, logprobs=top,
                             vocab_size=len(service.engine.tokenizer))
    request_id = request.state.record.request_id
    return [service.make_request(f"{request_id}-{index}", ids, params, adapter, grammar)
            for index in range(n)], n, tools


async def _complete(request: Request, body: ChatCompletionRequest) -> JSONResponse:
    service = service_of(request)
    engine_requests, _, tools = await _plan(request, body)
    with service.admit(len(engine_requests)):
        results = await cancel_on_disconnect(
            request, service.complete_many(engine_requests, request.state.record, "chat"))
    top = body.top_logprobs or 0
    choices = []
    for index, result in enumerate(results):
        message, finish = _message(result.text, openai_finish_name(result.finish_reason),
                                   tools)
        choices.append({"index": index, "message": message,
                        "logprobs": _logprobs(result.tokens, top) if body.logprobs else None,
                        "finish_reason": finish})
    return JSONResponse({
        "id": new_id("chatcmpl"), "object": "chat.completion", "created": now(),
        "model": body.model or service.model_id, "choices": choices,
        "usage": usage(results[0].num_prompt_tokens,
                       sum(result.num_generated_tokens for result in results)),
        "system_fingerprint": None,
        "prompt_logprobs": vllm_prompt_logprobs(results[0].prompt_logprobs,
                                                body.prompt_logprobs)})


async def _stream_body(request: Request, body: ChatCompletionRequest, n: int,
                       tools: ToolPlan | None, prompt_size: int, first: tuple[int, TokenEvent],
                       events: AsyncIterator[tuple[int, TokenEvent]]) -> AsyncIterator[bytes]:
    service = service_of(request)
    head = {"id": new_id("chatcmpl"), "object": "chat.completion.chunk", "created": now(),
            "model": body.model or service.model_id, "system_fingerprint": None}
    chunk_usage = ChunkUsage(body)
    top = body.top_logprobs or 0
    generated: dict[int, int] = {}
    forced, auto = tools is not None and not tools.auto, tools is not None and tools.auto
    calls = {index: ToolCallStream(tools) for index in range(n)} if forced else {}
    held: dict[int, list[str]] = {index: [] for index in range(n)} if auto else {}

    def chunk(index: int, delta: dict[str, Any], logprobs: Any = None,
              finish: str | None = None) -> bytes:
        return sse_data({**head, "choices": [{"index": index, "delta": delta,
                                              "logprobs": logprobs, "finish_reason": finish}],
                         **chunk_usage.of(prompt_size, generated.get(index, 0))})

    try:
        for index in range(n):
            yield chunk(index, {"role": "assistant", "content": ""})
        item: tuple[int, TokenEvent] | None = first
        while item is not None:
            index, event = item
            raise_if_failed(event)
            generated[index] = max(generated.get(index, 0), event.num_generated_tokens)
            if event.token_id is not None and not event.special and event.text:
                logprobs = _logprobs([event], top) if body.logprobs else None
                if index in calls:
                    deltas = calls[index].feed(event.text)
                    if deltas:
                        yield chunk(index, {"tool_calls": deltas}, logprobs)
                elif index in held:  # "auto": the answer is read whole at its end
                    held[index].append(event.text)
                else:
                    yield chunk(index, {"content": event.text}, logprobs)
            if event.finished:
                finish = openai_finish_name(event.finish_reason)
                if index in calls and calls[index].started and finish == "stop":
                    finish = "tool_calls"
                if index in held:
                    message, finish = _message("".join(held[index]), finish, tools)
                    del message["role"]
                    if message.get("tool_calls"):
                        message["tool_calls"] = [{"index": number, **call} for number, call
                                                 in enumerate(message["tool_calls"])]
                    yield chunk(index, message)
                yield chunk(index, {}, None, finish)
            item = await anext(events, None)
    except Exception as error:
        yield sse_error(stream_failure(request, error))
        return
    finally:
        await events.aclose()
    if chunk_usage.include:
        yield sse_data({**head, "choices": [],
                        "usage": usage(prompt_size, sum(generated.values()))})
    yield DONE


async def _complete_stream(request: Request, body: ChatCompletionRequest) -> Response:
    service = service_of(request)
    engine_requests, n, tools = await _plan(request, body)
    lease, first, events = await start_stream(request, service, engine_requests, "chat")
    prompt_size = len(engine_requests[0].prompt_token_ids)
    return EventStream(_stream_body(request, body, n, tools, prompt_size, first, events),
                       on_close=lease.release)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, body: ChatCompletionRequest) -> Response:
    """OpenAI chat completion; `model` names an adapter (the base model id or "": none)."""
    if body.stream:
        return await _complete_stream(request, body)
    return await _complete(request, body)
