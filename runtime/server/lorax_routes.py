"""LoRAX routes: `POST /` (what `lorax-client` posts to), `/generate`, `/generate_stream`.

A streamed request waits for its first event before answering, so that a refusal the
engine can only make at that point (its adapter failed to load, the request can never
fit) still gets a proper status code; later failures arrive as an SSE `data:{error,
error_type}` event, as LoRAX sends them. Response bodies are built as plain dicts with
exactly LoRAX's keys (the models in `lorax_protocol.py` document them in the schema).
As LoRAX's router does (it is TGI's): `decoder_input_details` alone asks for details, and
`generated_text` keeps the stop sequence that ended it (the OpenAI routes leave it out).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from loraplex.runtime.engine.request import FinishReason, GenerationRequest, TokenEvent
from loraplex.runtime.server.errors import GenerationFailed
from loraplex.runtime.server.generation import GenerationResult
from loraplex.runtime.server.lorax_params import (
    check_best_of,
    refuse_unsupported,
    sampling_params,
    wants_details,
)
from loraplex.runtime.server.lorax_protocol import (
    CompatGenerateRequest,
    ErrorResponse,
    GenerateParameters,
    GenerateRequest,
    GenerateResponse,
    StreamResponse,
)
from loraplex.runtime.server.state import service_of
from loraplex.runtime.server.streaming import (
    EventStream,
    cancel_on_disconnect,
    sse_data,
    stream_failure,
)
from loraplex.runtime.server.structured_fields import lorax_spec
from loraplex.runtime.server.token_json import finish_name, lorax_prefill, lorax_token

router = APIRouter(tags=["lorax"])

ERRORS = {code: {"model": ErrorResponse} for code in (404, 422, 424, 429, 503)}
SSE = {"content": {"text/event-stream": {"schema": StreamResponse.model_json_schema()}}}


def _details(result: GenerationResult, params: GenerateParameters,
             others: list[GenerationResult], prefix: str) -> dict[str, Any]:
    alternatives = bool(params.return_k_alternatives)
    details: dict[str, Any] = {
        "finish_reason": finish_name(result.finish_reason),
        "prompt_tokens": result.num_prompt_tokens,
        "generated_tokens": result.num_generated_tokens,
        "skipped_tokens": 0,
        "seed": result.seed,
        "prefill": lorax_prefill(result.prompt_logprobs),
        "tokens": [lorax_token(event, alternatives) for event in result.tokens],
    }
    if others:
        details["best_of_sequences"] = [{
            "generated_text": prefix + other.text + other.stop_text,
            "finish_reason": finish_name(other.finish_reason),
            "generated_tokens": other.num_generated_tokens,
            "seed": other.seed,
            "prefill": lorax_prefill(other.prompt_logprobs),
            "tokens": [lorax_token(event, alternatives) for event in other.tokens],
        } for other in others]
    return details


async def _prepare(request: Request, body: GenerateRequest, stream: bool
             ) -> tuple[list[GenerationRequest], GenerateParameters]:
    service = service_of(request)
    params = body.parameters or GenerateParameters()
    refuse_unsupported(params)
    best_of = service.check_best_of(check_best_of(params, stream))
    stop = service.check_stop(params.stop or [])
    adapter = service.resolve_adapter(params.adapter_id, params.adapter_source, params.api_token)
    prompt_ids, max_new_tokens = service.fit_prompt(
        await service.tokenize(body.inputs, keep_last=params.truncate), params.max_new_tokens,
        truncate=params.truncate)
    sampling = sampling_params(params, max_new_tokens, stop)
    grammar = await service.compile_grammar(lorax_spec(params.response_format))
    request_id = request.state.record.request_id
    engine_requests = [
        service.make_request(f"{request_id}-{index}", prompt_ids,
                             dataclasses.replace(sampling), adapter, grammar)
        for index in range(best_of)]
    return engine_requests, params


async def _generate(request: Request, body: GenerateRequest, endpoint: str
                    ) -> tuple[dict[str, Any], dict[str, str]]:
    service = service_of(request)
    engine_requests, params = await _prepare(request, body, stream=False)
    record = request.state.record
    with service.admit(len(engine_requests)):
        results = await cancel_on_disconnect(
            request, service.complete_many(engine_requests, record, endpoint))
    best = max(results, key=lambda result: result.cumulative_logprob)
    prefix = body.inputs if params.return_full_text else ""
    answer: dict[str, Any] = {"generated_text": prefix + best.text + best.stop_text}
    if wants_details(params):
        others = [result for result in results if result is not best]
        answer["details"] = _details(best, params, others, prefix)
    headers = {"x-model-id": service.model_id,
               "x-adapter-id": engine_requests[0].adapter or "",
               "x-prompt-tokens": str(best.num_prompt_tokens),
               "x-generated-tokens": str(sum(r.num_generated_tokens for r in results))}
    return answer, headers


async def _stream_body(first: TokenEvent, events: AsyncIterator[TokenEvent],
                       params: GenerateParameters, prefix: str,
                       request: Request) -> AsyncIterator[bytes]:
    """SSE events, one per token; the last carries `generated_text` and `details`."""
    held: TokenEvent | None = None  # sent once we know whether it is the last
    text: list[str] = []
    alternatives = bool(params.return_k_alternatives)
    event: TokenEvent | None = first
    try:
        while event is not None:
            if event.finished and event.finish_reason in (FinishReason.ERROR,
                                                          FinishReason.ABORT):
                raise GenerationFailed(event.error or "generation failed")
            if event.token_id is not None:
                if held is not None:
                    yield sse_data({"token": lorax_token(held, alternatives),
                                    "generated_text": None, "details": None})
                held = event
                if not event.special:
                    text.append(event.text)
            if event.finished:
                break
            event = await anext(events, None)
    except Exception as error:
        failure = stream_failure(request, error)
        yield sse_data({"error": failure.message, "error_type": failure.error_type})
        return
    finally:
        await events.aclose()
    last = held or TokenEvent(first.request_id, 0, "", 0.0, special=True)
    details = None
    if params.details and event is not None:
        details = {"finish_reason": finish_name(event.finish_reason),
                   "prompt_tokens": event.num_prompt_tokens,
                   "generated_tokens": event.num_generated_tokens, "seed": event.seed}
    yield sse_data({"token": lorax_token(last, alternatives),
                    "generated_text": prefix + "".join(text) + (
                        event.stop_text if event is not None else ""),
                    "details": details})


async def _generate_stream(request: Request, body: GenerateRequest, endpoint: str) -> Response:
    service = service_of(request)
    engine_requests, params = await _prepare(request, body, stream=True)
    lease = service.admit(1)
    events = service.stream(engine_requests[0], request.state.record, endpoint)
    try:
        first = await cancel_on_disconnect(request, anext(events))
        if first.finished and first.finish_reason in (FinishReason.ERROR, FinishReason.ABORT):
            raise GenerationFailed(first.error or "generation failed")
    except BaseException:
        await events.aclose()
        lease.release()
        raise
    prefix = body.inputs if params.return_full_text else ""
    return EventStream(_stream_body(first, events, params, prefix, request),
                       on_close=lease.release,
                       headers={"x-model-id": service.model_id,
                                "x-adapter-id": engine_requests[0].adapter or ""})


@router.post("/generate", response_model=GenerateResponse, responses=ERRORS)
async def generate(request: Request, body: GenerateRequest) -> JSONResponse:
    """Generate a completion of `inputs` (LoRAX / TGI)."""
    answer, headers = await _generate(request, body, "generate")
    return JSONResponse(answer, headers=headers)


@router.post("/generate_stream", responses={200: SSE, **ERRORS})
async def generate_stream(request: Request, body: GenerateRequest) -> Response:
    """Generate a completion of `inputs`, one server-sent event per token."""
    return await _generate_stream(request, body, "generate_stream")


@router.post("/", responses={200: {"model": list[GenerateResponse], **SSE}, **ERRORS})
async def compat_generate(request: Request, body: CompatGenerateRequest) -> Response:
    """`lorax-client`'s route: a one-element array, or server-sent events when `stream`."""
    plain = GenerateRequest(inputs=body.inputs, parameters=body.parameters)
    if body.stream:
        return await _generate_stream(request, plain, "generate_stream")
    answer, headers = await _generate(request, plain, "generate")
    return JSONResponse([answer], headers=headers)
