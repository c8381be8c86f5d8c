"""OpenAI wire format: `/v1/completions` and `/v1/chat/completions` request bodies.

Every field of OpenAI's API is declared, so the `openai` package works unchanged with
any documented argument; unknown top-level fields are refused (as in `lorax_protocol.py`).
Fields that only label a request (`user`, `metadata`, `store`, ...) are accepted and
ignored; fields asking for something loraplex cannot do (legacy `functions`, audio,
...) are refused with a 400 naming them unless they hold their neutral value (see
`refuse_unsupported`). What vLLM accepts beyond OpenAI is accepted as vLLM does: a
missing `model` (the base model), any message `role` and extra keys inside a message
(both handed to the chat template), and vLLM's sampling extensions (`min_tokens`,
`allowed_token_ids`, `prompt_logprobs`). LoRAX's extensions (`top_k`,
`repetition_penalty`, `ignore_eos_token`, `adapter_source`, `api_token`) are accepted too.
Output constraints (`response_format`, vLLM's `guided_*` and `structured_outputs`, forced
tool calls) are read by `structured_fields.py` and `tool_calls.py`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from loraplex.runtime.server.errors import ValidationFailed
from loraplex.runtime.server.lorax_protocol import StrictModel
from loraplex.runtime.server.structured_fields import GuidedFields

MAX_TOP_LOGPROBS = 20
SEED_RANGE = {"ge": -(2**63), "le": 2**63 - 1}  # vLLM's: a signed 64-bit integer


class StreamOptions(StrictModel):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None
    continuous_usage_stats: bool | None = None


class SamplingFields(GuidedFields):
    """What both OpenAI endpoints share (vLLM's guided decoding fields included)."""

    model: str | None = Field(None, description="an adapter name; the base model id, \"\" "
                              "or none at all for the base model")
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    max_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1)
    seed: int | None = Field(None, **SEED_RANGE)
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    user: str | None = None
    # vLLM extensions
    min_tokens: int | None = Field(None, ge=0)
    allowed_token_ids: list[int] | None = Field(None, min_length=1)
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS, description=(
        "each prompt token's logprob and rank, with this many likeliest tokens per position"))
    # LoRAX extensions
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0)
    ignore_eos_token: bool | None = None
    adapter_source: str | None = None
    api_token: str | None = None


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    best_of: int | None = Field(None, ge=1)
    echo: bool | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    suffix: str | None = None
    response_format: dict[str, Any] | None = None  # vLLM takes it on completions too


class TextPart(StrictModel):
    type: Literal["text"]
    text: str


class OtherPart(StrictModel):
    """Image, audio and file parts: declared so that they are refused by name."""

    type: Literal["image_url", "input_audio", "file", "refusal"]
    image_url: dict[str, Any] | None = None
    input_audio: dict[str, Any] | None = None
    file: dict[str, Any] | None = None
    refusal: str | None = None


class ChatMessage(StrictModel):
    """One message; keys beyond OpenAI's go to the chat template as they are (vLLM)."""

    model_config = ConfigDict(extra="allow")

    role: str = Field(min_length=1)
    content: str | list[TextPart | OtherPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None

    def template_message(self) -> dict[str, Any]:
        """The message as the chat template takes it: text parts joined into one string."""
        content = self.content
        if isinstance(content, list):
            kinds = sorted({part.type for part in content if isinstance(part, OtherPart)})
            if kinds:
                raise ValidationFailed(f"content parts of type {', '.join(kinds)} are not "
                                       "supported: this model reads text only",
                                       param="messages")
            content = "\n".join(part.text for part in content if isinstance(part, TextPart))
        message: dict[str, Any] = {**(self.model_extra or {}), "role": self.role,
                                   "content": content or ""}
        if self.name is not None:
            message["name"] = self.name
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    modalities: list[str] | None = None
    prediction: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    web_search_options: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None


def refuse_unsupported(body: SamplingFields) -> None:
    """422 for any field that asks for a feature loraplex does not have."""
    refused: list[tuple[str, bool]] = []
    if isinstance(body, CompletionRequest):
        refused.append(("suffix", bool(body.suffix)))
    if isinstance(body, ChatCompletionRequest):
        refused += [
            ("functions", bool(body.functions)),
            ("function_call", body.function_call not in (None, "none", "auto")),
            ("audio", body.audio is not None),
            ("modalities", body.modalities not in (None, ["text"])),
            ("prediction", body.prediction is not None),
            ("reasoning_effort", body.reasoning_effort is not None),
            ("web_search_options", body.web_search_options is not None),
        ]
    for name, is_set in refused:
        if is_set:
            raise ValidationFailed(f"{name} is not supported by this server", param=name)
    if body.prompt_logprobs and body.stream:  # vLLM's rule: 0 is accepted, and not sent
        raise ValidationFailed("prompt_logprobs are not available when stream is true",
                               param="prompt_logprobs")
    if body.stream_options is not None and not body.stream:
        raise ValidationFailed("stream_options can only be given when stream is true",
                               param="stream_options")
