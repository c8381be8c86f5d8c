"""`POST /v1/completions`: OpenAI's (legacy) text completion, any number of prompts.

`prompt` may be a string, a list of strings, token ids or lists of token ids; each
prompt gets `n` choices, numbered prompt-major as OpenAI does. `echo` prepends the
prompt to each choice (with its token logprobs when `logprobs` is asked for).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from loraplex.runtime.engine.request import GenerationRequest, TokenEvent, TokenLogprob
from loraplex.runtime.server.errors import ValidationFailed
from loraplex.runtime.server.inference import InferenceService
from loraplex.runtime.server.openai_common import (
    DONE,
    ChunkUsage,
    choice_counts,
    new_id,
    now,
    pick_best,
    raise_if_failed,
    sampling_params,
    sse_error,
    start_stream,
    stop_list,
    usage,
)
from loraplex.runtime.server.openai_protocol import CompletionRequest, refuse_unsupported
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

router = APIRouter(tags=["openai"])
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint


async def _prompts(service: InferenceService, prompt: Any) -> list[tuple[list[int], str]]:
    """(token ids, text) of each prompt in the request."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise ValidationFailed("prompt must not be an empty list", param="prompt")
    if isinstance(prompt[0], int):
        prompt = [prompt]
    vocab_size = len(service.engine.tokenizer)
    prompts = []
    for item in prompt:
        if isinstance(item, str):
            prompts.append((await service.tokenize(item), item))
            continue
        if any(not 0 <= token < vocab_size for token in item):
            raise ValidationFailed(f"prompt token ids must be in [0, {vocab_size})",
                                   param="prompt")
        prompts.append((list(item), service.engine.tokenizer.decode(item)))
    return prompts


def _top(text: str, logprob: float | None, top: list[TokenLogprob]) -> dict[str, float]:
    """A position's `top_logprobs` entry: its alternatives and always the token itself
    (so `logprobs: 0` still names the sampled token, as vLLM and OpenAI do)."""
    entry = {alt.text: finite_logprob(alt.logprob) for alt in top}
    entry.setdefault(text, finite_logprob(logprob))
    return entry


def _logprobs(events: list[TokenEvent], prompt: list[TokenLogprob] | None,
              offset: int, num_top: int = 0) -> dict[str, Any]:
    """OpenAI's legacy logprobs block for (echoed prompt tokens +) generated tokens; only
    the first prompt token has no logprob (nothing precedes it)."""
    entries: list[tuple[str, float | None, dict[str, float] | None]] = [
        (item.text, None, None) if index == 0
        else (item.text, finite_logprob(item.logprob),
              _top(item.text, item.logprob, item.top[:num_top]))
        for index, item in enumerate(prompt or [])]
    entries += [(event.text, finite_logprob(event.logprob),
                 _top(event.text, event.logprob, event.top_logprobs)) for event in events]
    text_offset = []
    for text, _, _ in entries:
        text_offset.append(offset)
        offset += len(text)
    return {
        "tokens": [text for text, _, _ in entries],
        "token_logprobs": [logprob for _, logprob, _ in entries],
        "top_logprobs": [top for _, _, top in entries],
        "text_offset": text_offset,
    }


async def _plan(request: Request, body: CompletionRequest
          ) -> tuple[list[list[GenerationRequest]], list[str], int]:
    """Engine requests per prompt (best_of each), the prompts' texts, and n."""
    service = service_of(request)
    refuse_unsupported(body)
    n, best_of = choice_counts(body.n, body.best_of, bool(body.stream))
    service.check_best_of(best_of, "best_of" if body.best_of else "n")
    adapter = service.resolve_adapter(body.model, body.adapter_source, body.api_token)
    stop = service.check_stop(stop_list(body.stop))
    grammar = await service.compile_grammar(openai_spec(body.response_format, body))
    request_id = request.state.record.request_id
    plans, texts = [], []
    for prompt_index, (ids, text) in enumerate(await _prompts(service, body.prompt)):
        ids, max_new = service.fit_prompt(ids, body.max_tokens, DEFAULT_MAX_TOKENS)
        echo_logprobs = bool(body.echo and body.logprobs is not None)
        params = sampling_params(body, max_new, stop, logprobs=body.logprobs or 0,
                                 prompt_logprobs=echo_logprobs,
                                 prompt_top_logprobs=body.logprobs if echo_logprobs else 0,
                                 vocab_size=len(service.engine.tokenizer))
        plans.append([service.make_request(f"{request_id}-{prompt_index}-{index}", ids,
                                           params, adapter, grammar)
                      for index in range(best_of)])
        texts.append(text)
    return plans, texts, n


async def _complete(request: Request, body: CompletionRequest) -> JSONResponse:
    service = service_of(request)
    plans, texts, n = await _plan(request, body)
    flat = [engine_request for plan in plans for engine_request in plan]
    with service.admit(len(flat)):
        results = await cancel_on_disconnect(
            request, service.complete_many(flat, request.state.record, "completions"))
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for prompt_index, plan in enumerate(plans):
        candidates = results[prompt_index * len(plan):(prompt_index + 1) * len(plan)]
        prompt_tokens += candidates[0].num_prompt_tokens
        completion_tokens += sum(result.num_generated_tokens for result in candidates)
        prefix = texts[prompt_index] if body.echo else ""
        for index, result in enumerate(pick_best(candidates, n)):
            choices.append({
                "index": prompt_index * n + index,
                "text": prefix + result.text,
                "logprobs": None if body.logprobs is None else _logprobs(
                    result.tokens, result.prompt_logprobs if body.echo else None, 0,
                    body.logprobs),
                "finish_reason": openai_finish_name(result.finish_reason),
                "prompt_logprobs": vllm_prompt_logprobs(result.prompt_logprobs,
                                                        body.prompt_logprobs),
            })
    return JSONResponse({"id": new_id("cmpl"), "object": "text_completion", "created": now(),
                         "model": body.model or service.model_id, "choices": choices,
                         "usage": usage(prompt_tokens, completion_tokens),
                         "system_fingerprint": None})


async def _stream_body(request: Request, body: CompletionRequest, texts: list[str],
                       prompt_sizes: list[int], n: int, first: tuple[int, TokenEvent],
                       events: AsyncIterator[tuple[int, TokenEvent]]) -> AsyncIterator[bytes]:
    service = service_of(request)
    head = {"id": new_id("cmpl"), "object": "text_completion", "created": now(),
            "model": body.model or service.model_id, "system_fingerprint": None}
    chunk_usage = ChunkUsage(body)
    prompt_tokens: dict[int, int] = {}
    generated: dict[int, int] = {}
    offsets: dict[int, int] = {}
    try:
        if body.echo:
            for index in range(len(texts) * n):
                yield sse_data({**head, "choices": [{"index": index, "text": texts[index // n],
                                                     "logprobs": None, "finish_reason": None}],
                                **chunk_usage.of(prompt_sizes[index // n], 0)})
        item: tuple[int, TokenEvent] | None = first
        while item is not None:
            index, event = item
            raise_if_failed(event)
            if event.token_id is not None or event.finished:
                logprobs = None
                if body.logprobs is not None and event.token_id is not None:
                    logprobs = _logprobs([event], None, offsets.get(index, 0))
                    offsets[index] = offsets.get(index, 0) + len(event.text)
                finish = openai_finish_name(event.finish_reason) if event.finished else None
                text = "" if event.special else event.text
                yield sse_data({**head, "choices": [{"index": index, "text": text,
                                                     "logprobs": logprobs,
                                                     "finish_reason": finish}],
                                **chunk_usage.of(event.num_prompt_tokens,
                                                 event.num_generated_tokens)})
            if event.finished:
                prompt_tokens[index // n] = event.num_prompt_tokens
                generated[index] = event.num_generated_tokens
            item = await anext(events, None)
    except Exception as error:
        yield sse_error(stream_failure(request, error))
        return
    finally:
        await events.aclose()
    if chunk_usage.include:
        yield sse_data({**head, "choices": [],
                        "usage": usage(sum(prompt_tokens.values()), sum(generated.values()))})
    yield DONE


async def _complete_stream(request: Request, body: CompletionRequest) -> Response:
    service = service_of(request)
    plans, texts, n = await _plan(request, body)
    flat = [engine_request for plan in plans for engine_request in plan]
    lease, first, events = await start_stream(request, service, flat, "completions")
    prompt_sizes = [len(plan[0].prompt_token_ids) for plan in plans]
    return EventStream(_stream_body(request, body, texts, prompt_sizes, n, first, events),
                       on_close=lease.release)


@router.post("/v1/completions")
async def completions(request: Request, body: CompletionRequest) -> Response:
    """OpenAI text completion; `model` names an adapter (the base model id or "": none)."""
    if body.stream:
        return await _complete_stream(request, body)
    return await _complete(request, body)
