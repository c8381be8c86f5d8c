"""LoRAX wire format: the request and response bodies `lorax-client` sends and parses.

Field names, defaults and response keys follow LoRAX's router (`router/src/lib.rs`), so
`lorax.Client` and `lorax.AsyncClient` work unchanged. Requests are validated strictly:
wrong JSON types are refused rather than coerced, and unknown fields are refused (LoRAX
ignores them, which turns a misspelt `max_new_token` into a silent default). Every field
LoRAX defines is accepted; those loraplex does not implement are refused with a 422 that
says so when set to anything but their neutral value (see `lorax_params.py`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_SEED = 2**64 - 1


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class GenerateParameters(StrictModel):
    adapter_id: str | None = Field(None, description="registered adapter name; none: base")
    adapter_source: Literal["hub", "local", "s3", "pbase"] | None = None
    merged_adapters: dict[str, Any] | None = Field(None, description="not supported")
    api_token: str | None = None
    best_of: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    top_k: int | None = Field(None, gt=0)
    top_p: float | None = Field(None, gt=0, le=1)
    typical_p: float | None = Field(None, gt=0, le=1)
    do_sample: bool | None = None
    max_new_tokens: int | None = Field(None, ge=1)
    ignore_eos_token: bool | None = None
    return_full_text: bool | None = None
    stop: list[str] | None = None
    truncate: int | None = Field(None, ge=1)
    watermark: bool | None = None
    details: bool | None = None
    decoder_input_details: bool | None = None
    return_k_alternatives: int | None = Field(None, ge=1)
    apply_chat_template: bool | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    response_format: dict[str, Any] | None = None


class GenerateRequest(StrictModel):
    inputs: str = Field(min_length=1)
    parameters: GenerateParameters | None = None


class CompatGenerateRequest(GenerateRequest):
    """The body of `POST /`, the route `lorax-client` posts to."""

    stream: bool = False


class PrefillToken(BaseModel):
    id: int
    text: str
    logprob: float | None


class AlternativeToken(BaseModel):
    id: int
    text: str
    logprob: float


class Token(BaseModel):
    id: int
    text: str
    logprob: float
    special: bool
    skipped: bool = False
    alternative_tokens: list[AlternativeToken] | None = None


FinishReasonName = Literal["length", "eos_token", "stop_sequence"]


class BestOfSequence(BaseModel):
    generated_text: str
    finish_reason: FinishReasonName
    generated_tokens: int
    seed: int | None
    prefill: list[PrefillToken]
    tokens: list[Token]


class Details(BaseModel):
    finish_reason: FinishReasonName
    prompt_tokens: int
    generated_tokens: int
    skipped_tokens: int = 0
    seed: int | None
    prefill: list[PrefillToken]
    tokens: list[Token]
    best_of_sequences: list[BestOfSequence] | None = None


class GenerateResponse(BaseModel):
    generated_text: str
    details: Details | None = None


class StreamDetails(BaseModel):
    finish_reason: FinishReasonName
    prompt_tokens: int
    generated_tokens: int
    seed: int | None


class StreamResponse(BaseModel):
    token: Token
    generated_text: str | None
    details: StreamDetails | None


class ErrorResponse(BaseModel):
    error: str
    error_type: str
