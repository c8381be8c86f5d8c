"""LoRAX `parameters` → the engine's `SamplingParams`, with LoRAX's rules.

Sampling follows LoRAX: greedy unless `do_sample` is true or a sampling knob
(`temperature`, `top_k`, `top_p`) is given; `temperature: 0` is always greedy.
Features LoRAX has and loraplex does not (adapter merging, typical decoding,
watermarking, frequency/presence penalties, `apply_chat_template`) are refused with a 422
that names them, never silently ignored. `response_format` is read by
`structured_fields.py`.
"""

from __future__ import annotations

from loraplex.runtime.engine.request import SamplingParams
from loraplex.runtime.server.errors import ValidationFailed
from loraplex.runtime.server.lorax_protocol import GenerateParameters

MAX_ALTERNATIVES = 20


def refuse_unsupported(params: GenerateParameters) -> None:
    if params.merged_adapters is not None:
        raise ValidationFailed("merged_adapters is not supported: name one adapter in "
                               "adapter_id", param="merged_adapters")
    if params.typical_p is not None and params.typical_p < 1:
        raise ValidationFailed("typical_p < 1 (typical decoding) is not supported",
                               param="typical_p")
    if params.watermark:
        raise ValidationFailed("watermark is not supported", param="watermark")
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(params, name) not in (None, 0):
            raise ValidationFailed(f"{name} is not supported; use repetition_penalty",
                                   param=name)
    if params.apply_chat_template:
        raise ValidationFailed("apply_chat_template is not supported here; send messages to "
                               "/v1/chat/completions", param="apply_chat_template")
    if (params.return_k_alternatives or 0) > MAX_ALTERNATIVES:
        raise ValidationFailed(f"return_k_alternatives is {params.return_k_alternatives}; at "
                               f"most {MAX_ALTERNATIVES} are allowed",
                               param="return_k_alternatives")


def wants_sampling(params: GenerateParameters) -> bool:
    if params.temperature == 0:
        return False
    return bool(params.do_sample) or any(
        value is not None for value in (params.temperature, params.top_k, params.top_p))


def wants_details(params: GenerateParameters) -> bool:
    """LoRAX's router (TGI's) answers with details when either flag asks for them."""
    return bool(params.details or params.decoder_input_details)


def check_best_of(params: GenerateParameters, stream: bool) -> int:
    """The number of candidates to generate; refuses what LoRAX refuses."""
    best_of = params.best_of or 1
    if best_of > 1:
        if stream:
            raise ValidationFailed("best_of > 1 is not supported when streaming",
                                   param="best_of")
        if params.seed is not None:
            raise ValidationFailed("seed must not be set when best_of > 1 (each candidate "
                                   "needs its own seed)", param="seed")
        if not wants_sampling(params):
            raise ValidationFailed("best_of > 1 needs sampling: set do_sample, temperature, "
                                   "top_k or top_p", param="best_of")
    if stream and params.decoder_input_details:
        raise ValidationFailed("decoder_input_details is not supported when streaming",
                               param="decoder_input_details")
    return best_of


def sampling_params(params: GenerateParameters, max_new_tokens: int,
                    stop: list[str]) -> SamplingParams:
    sampling = wants_sampling(params)
    return SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=(params.temperature if params.temperature is not None else 1.0)
        if sampling else 0.0,
        top_k=(params.top_k or 0) if sampling else 0,
        top_p=(params.top_p if params.top_p is not None else 1.0) if sampling else 1.0,
        repetition_penalty=params.repetition_penalty or 1.0,
        seed=params.seed,
        stop=stop,
        ignore_eos=bool(params.ignore_eos_token),
        logprobs=params.return_k_alternatives or 0,
        prompt_logprobs=bool(params.decoder_input_details),
    )
