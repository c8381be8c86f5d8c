"""What both protocols do with a request between parsing it and answering it.

Tokenize (or render the chat template; a prompt too long to fit is refused by its length
in characters before any tokenizing, see `input_cost`), resolve the adapter, check
lengths against the context, admit into the bounded queue, then run the engine while
timing each token for the metrics and the access log. The LoRAX and OpenAI routes differ
only in how they map fields in and results out; everything that decides *whether* and
*how* a request runs is here, so the two protocols cannot drift apart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loraplex.runtime.adapters.errors import AdapterError
from loraplex.runtime.adapters.errors import AdapterNotFound as EngineAdapterNotFound
from loraplex.runtime.engine.request import (
    FinishReason,
    GenerationRequest,
    RequestInterrupted,
    SamplingParams,
    TokenEvent,
)
from loraplex.runtime.heap import release_freed_heap
from loraplex.runtime.server.access_log import RequestRecord
from loraplex.runtime.server.admission import AdmissionGate, Lease
from loraplex.runtime.server.engine_client import EngineClient
from loraplex.runtime.server.errors import (
    AdapterNotFound,
    GenerationFailed,
    GenerationInterrupted,
    ValidationFailed,
)
from loraplex.runtime.server.generation import GenerationResult, collect
from loraplex.runtime.server.input_cost import LARGE_TEXT_CHARS, tail_chars
from loraplex.runtime.server.metrics import ServerMetrics
from loraplex.runtime.server.vllm_metrics import RequestTimes
from loraplex.runtime.structured.grammar_cache import GrammarCache, GrammarError
from loraplex.runtime.structured.grammar_spec import GrammarSpec

if TYPE_CHECKING:
    from xgrammar import CompiledGrammar

CLIENT_MISTAKES = frozenset({"bad_name", "bad_source", "bad_preload"})  # AdapterError reasons
INLINE_TOKENIZE_CHARS = 8192  # longer prompts are tokenized in a worker thread


@dataclass(frozen=True, slots=True)
class Limits:
    max_model_len: int
    max_input_length: int
    max_best_of: int
    max_stop_sequences: int
    max_token_chars: int  # the most characters of text one token covers
    grammar_cache_bytes: int = 256 << 20

    @property
    def max_prompt_chars(self) -> int:
        return self.max_input_length * self.max_token_chars


class InferenceService:
    def __init__(self, engine: EngineClient, model_id: str, limits: Limits, gate: AdmissionGate,
                 metrics: ServerMetrics) -> None:
        self.engine = engine
        self.model_id = model_id
        self.limits = limits
        self.gate = gate
        self.metrics = metrics
        self._grammars: GrammarCache | None = None  # built for the first constraint

    # --- input -----------------------------------------------------------------------

    async def tokenize(self, text: str, add_special_tokens: bool = True,
                       keep_last: int | None = None) -> list[int]:
        """Token ids of `text` (only enough of its end for `keep_last` tokens, if given).

        A text with more characters than any allowed prompt can have is refused before
        tokenizing; long texts are encoded off the event loop, so that one huge prompt
        does not stall every other request's stream.
        """
        limits = self.limits
        if keep_last is not None and keep_last <= limits.max_input_length:
            text = tail_chars(text, keep_last, limits.max_token_chars)
        elif len(text) > limits.max_prompt_chars:
            raise ValidationFailed(
                f"the prompt has {len(text)} characters, more than {limits.max_input_length} "
                f"tokens can hold (at most {limits.max_prompt_chars} characters; LoRAX "
                "requests may set `truncate` to keep only its end)", param="prompt")
        encode = self.engine.tokenizer.encode
        if len(text) <= INLINE_TOKENIZE_CHARS:
            return list(encode(text, add_special_tokens=add_special_tokens))
        try:
            return list(await asyncio.to_thread(encode, text,
                                                add_special_tokens=add_special_tokens))
        finally:
            if len(text) >= LARGE_TEXT_CHARS:
                release_freed_heap()  # so one large prompt does not leave the pod at its peak

    def render_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                    continue_final_message: bool = False,
                    tools: list[dict[str, Any]] | None = None) -> str:
        """The chat template applied to `messages` (and `tools`, for a template that lists
        them), by default ending with the assistant's turn opened."""
        try:
            return self.engine.tokenizer.apply_chat_template(
                messages, tools=tools, tokenize=False,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message)
        except Exception as error:  # jinja raises many kinds; all are the caller's input
            raise ValidationFailed(f"the chat template rejected these messages: {error}",
                                   param="messages") from error

    def resolve_adapter(self, adapter_id: str | None, adapter_source: str | None = None,
                        api_token: str | None = None) -> str | None:
        """The registered adapter name for a request, or None for the base model.

        An adapter whose load already failed is refused here (424) rather than queued.
        """
        if adapter_id in (None, "", self.model_id):
            return None
        manager = self.engine.adapters
        try:
            name = manager.resolve(adapter_id, adapter_source, api_token)
            failure = manager.failed(name)
        except EngineAdapterNotFound as error:
            raise AdapterNotFound(str(error), param="adapter_id") from error
        except AdapterError as error:
            if error.reason in CLIENT_MISTAKES:
                raise ValidationFailed(str(error), param="adapter_id") from error
            raise GenerationFailed(str(error)) from error
        if failure:
            raise GenerationFailed(failure)
        return name

    def fit_prompt(self, prompt_ids: list[int], max_new_tokens: int | None,
                   default_max_new_tokens: int | None = None,
                   truncate: int | None = None) -> tuple[list[int], int]:
        """(prompt ids, max_new_tokens) that fit the context, or `ValidationFailed`.

        `truncate` keeps the prompt's last tokens (LoRAX); without a `max_new_tokens`
        the default (or, without one, the rest of the context) is used.
        """
        if truncate is not None:
            prompt_ids = prompt_ids[-truncate:]
        if not prompt_ids:
            raise ValidationFailed("the prompt is empty: it has no tokens", param="prompt")
        limits = self.limits
        if len(prompt_ids) > limits.max_input_length:
            raise ValidationFailed(
                f"the prompt has {len(prompt_ids)} tokens; at most {limits.max_input_length} "
                "are allowed (LoRAX requests may set `truncate` to keep only its end)",
                param="prompt")
        room = limits.max_model_len - len(prompt_ids)
        if max_new_tokens is None:
            max_new_tokens = min(default_max_new_tokens or room, room)
        if max_new_tokens > room:
            raise ValidationFailed(
                f"the prompt ({len(prompt_ids)} tokens) plus max_new_tokens ({max_new_tokens}) "
                f"exceeds the context length of {limits.max_model_len} tokens",
                param="max_new_tokens")
        return prompt_ids, max_new_tokens

    def check_stop(self, stop: Sequence[str]) -> list[str]:
        if len(stop) > self.limits.max_stop_sequences:
            raise ValidationFailed(f"{len(stop)} stop sequences given; at most "
                                   f"{self.limits.max_stop_sequences} are allowed", param="stop")
        if any(not text for text in stop):
            raise ValidationFailed("stop sequences must not be empty", param="stop")
        return list(stop)

    def check_best_of(self, count: int, name: str = "best_of") -> int:
        if count > self.limits.max_best_of:
            raise ValidationFailed(f"{name} is {count}; at most {self.limits.max_best_of} "
                                   "sequences per request are allowed", param=name)
        return count

    def admit(self, num_sequences: int = 1) -> Lease:
        return self.gate.admit(num_sequences)

    def chat_template_has_tools(self) -> bool:
        template = getattr(self.engine.tokenizer, "chat_template", None) or ""
        return isinstance(template, str) and "tools" in template

    async def compile_grammar(self, spec: GrammarSpec | None) -> CompiledGrammar | None:
        """The compiled constraint (from the cache, or compiled in a worker thread while
        other requests go on); `ValidationFailed` if it cannot compile."""
        if spec is None:
            return None
        if self._grammars is None:
            engine = self.engine
            self._grammars = GrammarCache(engine.tokenizer, engine.vocab_size,
                                          engine.eos_token_ids,
                                          self.limits.grammar_cache_bytes)
        try:
            entry = await self._grammars.get(spec)
        except GrammarError as error:
            raise ValidationFailed(str(error), param="response_format") from error
        metrics = self.metrics
        metrics.constrained_requests.labels(spec.kind.value).inc()
        metrics.grammar_cache.labels("hit" if entry.cached else "miss").inc()
        if not entry.cached:
            metrics.grammar_compile.observe(entry.compile_seconds)
        return entry.grammar

    # --- running ---------------------------------------------------------------------

    def make_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams,
                     adapter: str | None,
                     grammar: CompiledGrammar | None = None) -> GenerationRequest:
        return GenerationRequest(request_id, prompt_ids, params, adapter, grammar)

    async def stream(self, request: GenerationRequest, record: RequestRecord,
                     endpoint: str) -> AsyncIterator[TokenEvent]:
        """The engine's events for `request`, timed into the metrics and `record`.

        Closing this iterator (or cancelling its consumer) closes the engine's, which
        aborts the request and frees its KV blocks.
        """
        started = time.perf_counter()
        series = self.metrics.request_series(endpoint, request.adapter)
        record.adapter = request.adapter
        outcome = "aborted"
        reason: FinishReason | None = FinishReason.ABORT  # vLLM's count: None if it failed
        queued_s: float | None = None
        first_token_at: float | None = None
        last_token_at: float | None = None
        try:
            async with aclosing(self.engine.generate(request)) as events:
                async for event in events:
                    now = time.perf_counter()
                    if event.token_id is not None:
                        if last_token_at is None:
                            first_token_at = now
                            ttft = now - started
                            series.first_token(ttft)
                            if record.ttft_s is None:
                                record.ttft_s = round(ttft, 6)
                        else:
                            series.next_token(now - last_token_at)
                        last_token_at = now
                    queued_s = event.queued_s if event.queued_s is not None else queued_s
                    if event.finished:
                        reason = event.finish_reason or FinishReason.LENGTH
                        outcome = reason.value
                        record.prompt_tokens = max(record.prompt_tokens,
                                                   event.num_prompt_tokens)
                        record.generated_tokens += event.num_generated_tokens
                        record.finish_reason = outcome
                        series.record_tokens(event.num_prompt_tokens,
                                             event.num_generated_tokens)
                    yield event
        except RequestInterrupted as error:
            raise GenerationInterrupted(f"generation stopped before the end: {error}") from None
        except EngineAdapterNotFound as error:
            outcome, reason = "rejected", None
            raise AdapterNotFound(str(error), param="adapter_id") from error
        except AdapterError as error:
            outcome, reason = "error", None
            raise GenerationFailed(str(error)) from error
        except ValueError as error:  # the engine refuses what can never fit
            outcome, reason = "rejected", None
            raise ValidationFailed(str(error)) from error
        finally:
            series.finish(outcome, RequestTimes(
                time.perf_counter() - started, queued_s or 0.0,
                None if first_token_at is None else first_token_at - started,
                None if last_token_at is None else last_token_at - started), reason)

    async def complete(self, request: GenerationRequest, record: RequestRecord,
                       endpoint: str) -> GenerationResult:
        return await collect(request.request_id, self.stream(request, record, endpoint))

    async def complete_many(self, requests: Sequence[GenerationRequest], record: RequestRecord,
                            endpoint: str) -> list[GenerationResult]:
        """Run `requests` side by side (they batch together); cancel all if one fails."""
        tasks = [asyncio.ensure_future(self.complete(request, record, endpoint))
                 for request in requests]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()
