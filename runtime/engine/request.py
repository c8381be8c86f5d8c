"""What a caller hands the engine and what it gets back, one token at a time.

These types are the contract between the HTTP layer and the engine: the server builds a
`GenerationRequest`, the engine streams `TokenEvent`s for it. Validation that needs no
model (ranges, types) happens here in `__post_init__`, so every entry point refuses bad
input the same way with a `ValueError` that names the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xgrammar import CompiledGrammar


class FinishReason(str, Enum):
    LENGTH = "length"  # max_new_tokens reached (or the context is full)
    EOS = "eos_token"
    STOP = "stop_sequence"
    ABORT = "abort"  # cancelled by the caller or the client went away
    ERROR = "error"  # e.g. its adapter failed to load; `TokenEvent.error` says why


@dataclass(slots=True)
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    repetition_penalty: float = 1.0  # 1: off; prompt and generated tokens (Hugging Face)
    frequency_penalty: float = 0.0  # 0: off; times generated, subtracted (OpenAI)
    presence_penalty: float = 0.0  # 0: off; subtracted once a token was generated (OpenAI)
    seed: int | None = None  # fixed seed: reproducible sampling for this request
    stop: list[str] = field(default_factory=list)  # stop sequences (not included in output)
    ignore_eos: bool = False
    logprobs: int = 0  # alternatives per generated token to report (0: only the chosen one)
    prompt_logprobs: bool = False  # report a logprob (and its rank) for each prompt token
    prompt_top_logprobs: int = 0  # ... and this many of each position's likeliest tokens
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to logit
    min_tokens: int = 0  # end tokens are blocked until this many tokens were generated
    allowed_token_ids: list[int] | None = None  # only these may be sampled; None: any

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must not be negative, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must not be negative, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be positive, got "
                             f"{self.repetition_penalty}")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise ValueError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        for name in ("logprobs", "prompt_top_logprobs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        self._check_token_choices()

    def _check_token_choices(self) -> None:
        """What may be generated: stop sequences, end-token hold-off, biases, allow-list."""
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop sequences must be non-empty strings")
        if not 0 <= self.min_tokens <= self.max_new_tokens:
            raise ValueError(f"min_tokens must be in [0, max_new_tokens], got {self.min_tokens}")
        if any(token < 0 for token in self.logit_bias) or any(
                not -100 <= bias <= 100 for bias in self.logit_bias.values()):
            raise ValueError("logit_bias maps token ids (>= 0) to values in [-100, 100]")
        if self.allowed_token_ids is not None and (
                not self.allowed_token_ids or min(self.allowed_token_ids) < 0):
            raise ValueError("allowed_token_ids must name at least one token id (>= 0)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


@dataclass(slots=True)
class GenerationRequest:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    adapter: str | None = None  # registered adapter name; None: the base model
    grammar: CompiledGrammar | None = None  # output constraint (structured output); None: free

    def __post_init__(self) -> None:
        if not self.prompt_token_ids:
            raise ValueError("the prompt is empty")


class RequestInterrupted(Exception):
    """Raised into a request's event stream when the server ends it from outside (shutdown)."""


@dataclass(slots=True)
class TokenLogprob:
    token_id: int
    text: str
    logprob: float
    rank: int | None = None  # 1: the likeliest token at its position; None: not computed
    top: list[TokenLogprob] = field(default_factory=list)  # a prompt position's likeliest


@dataclass(slots=True)
class TokenEvent:
    """One generated token of one request (or the request's end, when `finished`).

    `text` is the new, valid UTF-8 text this token completes (may be "" while a multi-byte
    character is still incomplete, and never contains a stop sequence).
    """

    request_id: str
    token_id: int | None  # None only for an event that carries just an end or an error
    text: str
    logprob: float | None = None
    special: bool = False
    top_logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] | None = None  # on the first event when asked for
    finished: bool = False
    finish_reason: FinishReason | None = None
    error: str | None = None
    num_prompt_tokens: int = 0
    num_generated_tokens: int = 0
    seed: int | None = None  # the seed sampling used (reported back to lorax clients)
    queued_s: float | None = None  # seconds the request waited before its first step
    stop_text: str = ""  # on a stop-sequence finish: the text cut from the stop's start on
