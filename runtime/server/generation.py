"""One finished generation, gathered from the engine's stream of `TokenEvent`s.

Both protocols answer a non-streaming request from the same summary (text, tokens with
their logprobs, finish reason, counts), and `best_of` ranks candidates by it, so the
folding of events into a result lives here once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from loraplex.runtime.engine.request import FinishReason, TokenEvent, TokenLogprob
from loraplex.runtime.server.errors import GenerationFailed


@dataclass(slots=True)
class GenerationResult:
    request_id: str
    tokens: list[TokenEvent] = field(default_factory=list)  # events that carry a token
    finish_reason: FinishReason = FinishReason.LENGTH
    num_prompt_tokens: int = 0
    num_generated_tokens: int = 0
    seed: int | None = None
    prompt_logprobs: list[TokenLogprob] | None = None
    stop_text: str = ""  # what a stop sequence cut off (LoRAX's routes put it back)

    @property
    def text(self) -> str:
        """The generated text without special tokens (EOS and friends)."""
        return "".join(event.text for event in self.tokens if not event.special)

    @property
    def cumulative_logprob(self) -> float:
        return sum(event.logprob or 0.0 for event in self.tokens)

    def add(self, event: TokenEvent) -> None:
        """Fold one event in; an engine-side failure becomes `GenerationFailed` (424)."""
        if event.prompt_logprobs is not None:
            self.prompt_logprobs = event.prompt_logprobs
        if event.token_id is not None:
            self.tokens.append(event)
        self.num_prompt_tokens = event.num_prompt_tokens or self.num_prompt_tokens
        self.num_generated_tokens = max(self.num_generated_tokens, event.num_generated_tokens,
                                        len(self.tokens))
        if event.seed is not None:
            self.seed = event.seed
        if event.finished:
            self.stop_text = event.stop_text
            if event.finish_reason is FinishReason.ERROR:
                raise GenerationFailed(event.error or "generation failed")
            if event.finish_reason is FinishReason.ABORT:
                raise GenerationFailed(event.error or "generation was aborted")
            self.finish_reason = event.finish_reason or FinishReason.LENGTH


async def collect(request_id: str, events: AsyncIterator[TokenEvent]) -> GenerationResult:
    result = GenerationResult(request_id)
    async for event in events:
        result.add(event)
    return result
