"""What `/v1/completions` and `/v1/chat/completions` share: sampling, choices, streams.

OpenAI semantics differ from LoRAX's in small ways that matter: sampling is on by
default (`temperature` 1) and `temperature: 0` is greedy; `n` choices are independent
samples of one prompt, numbered by `index`; `best_of` keeps the `n` with the highest
cumulative logprob; a stream interleaves its choices and ends with `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import Request

from loraplex.runtime.engine.request import (
    FinishReason,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
)
from loraplex.runtime.server.admission import Lease
from loraplex.runtime.server.errors import GenerationFailed, ValidationFailed
from loraplex.runtime.server.generation import GenerationResult
from loraplex.runtime.server.inference import InferenceService
from loraplex.runtime.server.openai_protocol import SamplingFields
from loraplex.runtime.server.streaming import cancel_on_disconnect, sse_data

SEED_MASK = 2**64 - 1
DONE = b"data: [DONE]\n\n"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def stop_list(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def token_choice_fields(body: SamplingFields, vocab_size: int,
                        max_new_tokens: int) -> dict[str, Any]:
    """`logit_bias` (OpenAI: token id strings to [-100, 100]), vLLM's `min_tokens` and
    `allowed_token_ids`, checked against the vocabulary -> `SamplingParams` fields."""
    bias: dict[int, float] = {}
    for key, value in (body.logit_bias or {}).items():
        if not key.isdigit() or int(key) >= vocab_size:
            raise ValidationFailed(f"logit_bias keys must be token ids in [0, {vocab_size}), "
                                   f"got {key!r}", param="logit_bias")
        bias[int(key)] = value
    allowed = body.allowed_token_ids
    if allowed is not None and any(not 0 <= token < vocab_size for token in allowed):
        raise ValidationFailed(f"allowed_token_ids must be token ids in [0, {vocab_size})",
                               param="allowed_token_ids")
    min_tokens = body.min_tokens or 0
    if min_tokens > max_new_tokens:
        raise ValidationFailed(f"min_tokens ({min_tokens}) must not exceed max_tokens "
                               f"({max_new_tokens})", param="min_tokens")
    return {"logit_bias": bias, "min_tokens": min_tokens, "allowed_token_ids": allowed}


def sampling_params(body: SamplingFields, max_new_tokens: int, stop: list[str],
                    *, vocab_size: int, logprobs: int = 0, prompt_logprobs: bool = False,
                    prompt_top_logprobs: int = 0) -> SamplingParams:
    """The engine's parameters; prompt logprobs when the caller asks (an echo with
    logprobs) or the body does (vLLM's `prompt_logprobs: k`)."""
    temperature = 1.0 if body.temperature is None else body.temperature
    return SamplingParams(
        **token_choice_fields(body, vocab_size, max_new_tokens),
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=body.top_k or 0,
        top_p=1.0 if body.top_p is None else body.top_p,
        repetition_penalty=body.repetition_penalty or 1.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        presence_penalty=body.presence_penalty or 0.0,
        seed=None if body.seed is None else body.seed & SEED_MASK,
        stop=stop,
        ignore_eos=bool(body.ignore_eos_token),
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs or body.prompt_logprobs is not None,
        prompt_top_logprobs=max(prompt_top_logprobs, body.prompt_logprobs or 0),
    )


def choice_counts(n: int | None, best_of: int | None, stream: bool) -> tuple[int, int]:
    """(n, best_of): how many choices to return and how many candidates to generate."""
    n = n or 1
    best_of = best_of or n
    if best_of < n:
        raise ValidationFailed(f"best_of ({best_of}) must be at least n ({n})", param="best_of")
    if stream and best_of != n:
        raise ValidationFailed("best_of cannot be used when streaming", param="best_of")
    return n, best_of


def pick_best(results: Sequence[GenerationResult], n: int) -> list[GenerationResult]:
    """The `n` candidates with the highest cumulative logprob (all of them, in order, when
    no selection is needed)."""
    if len(results) == n:
        return list(results)
    return sorted(results, key=lambda result: result.cumulative_logprob, reverse=True)[:n]


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class ChunkUsage:
    """The `usage` key of each stream chunk, as `stream_options` asks: absent; null until a
    last chunk that carries the totals (`include_usage`); or, with
    `continuous_usage_stats` too, the counts so far of the chunk's choice (vLLM)."""

    def __init__(self, body: SamplingFields) -> None:
        options = body.stream_options
        self.include = bool(options and options.include_usage)
        self.continuous = self.include and bool(options and options.continuous_usage_stats)

    def of(self, prompt_tokens: int, generated_tokens: int) -> dict[str, Any]:
        if self.continuous:
            return {"usage": usage(prompt_tokens, generated_tokens)}
        return {"usage": None} if self.include else {}


def raise_if_failed(event: TokenEvent) -> None:
    if event.finished and event.finish_reason in (FinishReason.ERROR, FinishReason.ABORT):
        raise GenerationFailed(event.error or "generation failed")


async def merge_streams(streams: Sequence[AsyncIterator[TokenEvent]]
                        ) -> AsyncIterator[tuple[int, TokenEvent]]:
    """(choice index, event) from several streams as events arrive; closing this closes all."""
    if len(streams) == 1:
        try:
            async for event in streams[0]:
                yield 0, event
        finally:
            await streams[0].aclose()
        return
    queue: asyncio.Queue[tuple[int, TokenEvent | None, BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[TokenEvent]) -> None:
        try:
            async for event in stream:
                await queue.put((index, event, None))
            await queue.put((index, None, None))
        except Exception as error:
            await queue.put((index, None, error))

    tasks = [asyncio.ensure_future(pump(index, stream)) for index, stream in enumerate(streams)]
    try:
        open_streams = len(streams)
        while open_streams:
            index, event, error = await queue.get()
            if error is not None:
                raise error
            if event is None:
                open_streams -= 1
                continue
            yield index, event
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for stream in streams:
            await stream.aclose()


def sse_error(error: Any) -> bytes:
    """An in-stream error in OpenAI's shape (the `openai` package raises `APIError`)."""
    return sse_data({"error": {"message": error.message, "type": error.openai_type,
                               "param": error.param, "code": error.error_type}})


async def start_stream(request: Request, service: InferenceService,
                       engine_requests: Sequence[GenerationRequest], endpoint: str
                       ) -> tuple[Lease, tuple[int, TokenEvent],
                                  AsyncIterator[tuple[int, TokenEvent]]]:
    """Admit and start the requests, and wait for the first event, all before any header
    is sent, so that a refusal still gets its status code."""
    lease = service.admit(len(engine_requests))
    record = request.state.record
    events = merge_streams([service.stream(engine_request, record, endpoint)
                            for engine_request in engine_requests])
    try:
        first = await cancel_on_disconnect(request, anext(events, None))
        if first is None:
            raise GenerationFailed("the engine ended the request without any output")
        raise_if_failed(first[1])
    except BaseException:
        await events.aclose()
        lease.release()
        raise
    return lease, first, events
