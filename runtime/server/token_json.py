"""Engine tokens → the JSON both protocols put on the wire.

JSON has no infinities or NaN, and strict parsers (pydantic in `lorax-client`) reject
`null` where a float is required, so every logprob passes through `finite_logprob`:
a token the engine gave probability zero is reported at `LOGPROB_FLOOR` instead.
"""

from __future__ import annotations

import math
from typing import Any

from loraplex.runtime.engine.request import FinishReason, TokenEvent, TokenLogprob

LOGPROB_FLOOR = -9999.0


def finite_logprob(logprob: float | None) -> float:
    if logprob is None or math.isnan(logprob):
        return LOGPROB_FLOOR
    return max(float(logprob), LOGPROB_FLOOR)


def finish_name(reason: FinishReason | None) -> str:
    """LoRAX's name: `length`, `eos_token` or `stop_sequence`."""
    if reason in (FinishReason.EOS, FinishReason.STOP):
        return reason.value
    return FinishReason.LENGTH.value


def openai_finish_name(reason: FinishReason | None) -> str:
    """OpenAI's name: `length`, or `stop` for an end token or a stop sequence."""
    return "stop" if reason in (FinishReason.EOS, FinishReason.STOP) else "length"


def lorax_token(event: TokenEvent, alternatives: bool) -> dict[str, Any]:
    token: dict[str, Any] = {"id": event.token_id, "text": event.text,
                             "logprob": finite_logprob(event.logprob),
                             "special": event.special, "skipped": False}
    if alternatives:
        token["alternative_tokens"] = [
            {"id": alt.token_id, "text": alt.text, "logprob": finite_logprob(alt.logprob)}
            for alt in event.top_logprobs]
    return token


def lorax_prefill(prompt_logprobs: list[TokenLogprob] | None) -> list[dict[str, Any]]:
    """Prompt tokens with their logprobs; the first has none (nothing precedes it)."""
    if not prompt_logprobs:
        return []
    return [{"id": item.token_id, "text": item.text,
             "logprob": None if index == 0 or item.logprob is None
             or math.isnan(item.logprob) else finite_logprob(item.logprob)}
            for index, item in enumerate(prompt_logprobs)]


def vllm_prompt_logprobs(prompt_logprobs: list[TokenLogprob] | None, num_top: int | None
                         ) -> list[dict[str, dict[str, Any]] | None] | None:
    """vLLM's `prompt_logprobs`: null for the first prompt token, then per position the
    token itself and its `num_top` likeliest, by token id, each with logprob, rank (1: the
    likeliest) and text. None when not asked for."""
    if num_top is None or prompt_logprobs is None:
        return None
    positions: list[dict[str, dict[str, Any]] | None] = [None]
    for item in prompt_logprobs[1:]:
        entry = {str(item.token_id): _vllm_logprob(item)}
        for alternative in item.top[:num_top]:
            entry.setdefault(str(alternative.token_id), _vllm_logprob(alternative))
        positions.append(entry)
    return positions


def _vllm_logprob(item: TokenLogprob) -> dict[str, Any]:
    return {"logprob": finite_logprob(item.logprob), "rank": item.rank,
            "decoded_token": item.text}
