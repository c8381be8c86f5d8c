"""Tokenizer routes: vLLM's `/tokenize` and `/detokenize`, LoRAX's `/tokenize`, `/version`.

`POST /tokenize` takes vLLM's two bodies (a `prompt`, or chat `messages` rendered by the
chat template) and answers `{count, max_model_len, tokens, token_strs}`; LoRAX's body
(`inputs`, TGI's tokenize request) gets LoRAX's answer, a list of `{id, text, start,
stop}` with character offsets into `inputs`. Both count tokens exactly as a generation
request would, so a client can check a prompt's length before sending it. Errors use the
OpenAI shape (400 for an invalid body).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import Field

from loraplex import __version__
from loraplex.runtime.server.errors import ValidationFailed
from loraplex.runtime.server.lorax_protocol import StrictModel
from loraplex.runtime.server.openai_protocol import ChatMessage
from loraplex.runtime.server.state import service_of

router = APIRouter(tags=["tokenizer"])


class TokenizePrompt(StrictModel):
    """vLLM's completion-style tokenize request."""

    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool = False


class TokenizeChat(StrictModel):
    """vLLM's chat-style tokenize request: the messages as the chat route would render them."""

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    return_token_strs: bool = False


class TokenizeInputs(StrictModel):
    """LoRAX's (TGI's) tokenize request: a generate request's body."""

    inputs: str = Field(min_length=1)
    parameters: dict[str, Any] | None = None


class Detokenize(StrictModel):
    model: str | None = None
    tokens: list[int]


def _lorax_tokens(tokenizer: Any, text: str) -> list[dict[str, Any]]:
    encoded = tokenizer(text, return_offsets_mapping=True)
    return [{"id": token_id, "text": text[start:stop], "start": start, "stop": stop}
            for token_id, (start, stop) in zip(encoded["input_ids"], encoded["offset_mapping"],
                                               strict=True)]


@router.post("/tokenize")
async def tokenize(request: Request, body: TokenizePrompt | TokenizeChat | TokenizeInputs
                   ) -> Any:
    """Token ids of a prompt or of chat messages (vLLM), or LoRAX's token list."""
    service = service_of(request)
    tokenizer = service.engine.tokenizer
    if isinstance(body, TokenizeInputs):
        return _lorax_tokens(tokenizer, body.inputs)
    service.resolve_adapter(body.model)
    if isinstance(body, TokenizeChat):
        if body.continue_final_message and body.add_generation_prompt:
            raise ValidationFailed("continue_final_message and add_generation_prompt cannot "
                                   "both be true", param="continue_final_message")
        text = service.render_chat([message.template_message() for message in body.messages],
                                   add_generation_prompt=body.add_generation_prompt,
                                   continue_final_message=body.continue_final_message)
    else:
        text = body.prompt
    ids = await service.tokenize(text, add_special_tokens=body.add_special_tokens)
    strs = tokenizer.convert_ids_to_tokens(ids) if body.return_token_strs else None
    return {"count": len(ids), "max_model_len": service.limits.max_model_len,
            "tokens": ids, "token_strs": strs}


@router.post("/detokenize")
async def detokenize(request: Request, body: Detokenize) -> dict[str, str]:
    """The text of token ids (vLLM)."""
    service = service_of(request)
    service.resolve_adapter(body.model)
    vocab_size = len(service.engine.tokenizer)
    if any(not 0 <= token < vocab_size for token in body.tokens):
        raise ValidationFailed(f"token ids must be in [0, {vocab_size})", param="tokens")
    return {"prompt": service.engine.tokenizer.decode(body.tokens)}


@router.get("/version")
async def version() -> dict[str, str]:
    return {"version": __version__}
