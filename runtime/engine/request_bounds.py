"""Everything a request brings, bounded and normalised before it may join a batch.

The engine runs many requests in one step, so a value that only breaks a tensor deep in
the step (a `top_k` past int64, a NaN temperature, a seed torch cannot take) would fail
every request sharing that step. `normalize` is the admission check that keeps such
values out: it refuses what has no meaning (non-finite floats, ids outside the
vocabulary, seeds outside torch's range) with a `ValueError` naming the field, and clamps
what the protocols define as "at most everything" (`top_k` and `logprobs` above the
vocabulary size mean the whole vocabulary). It depends only on the request and the
vocabulary, so every entry point checks the same way.
"""

from __future__ import annotations

import math

from loraplex.runtime.engine.request import GenerationRequest, SamplingParams

SEED_RANGE = (-(1 << 63), (1 << 64) - 1)  # what torch.Generator.manual_seed accepts


def normalize(request: GenerationRequest, vocab_size: int) -> None:
    """Check `request` in place against the model's vocabulary; clamp where allowed."""
    bad = [t for t in request.prompt_token_ids if type(t) is not int or not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"prompt token ids outside the vocabulary [0, {vocab_size}): "
                         f"{bad[:5]}")
    normalize_params(request.params, vocab_size)


def normalize_params(params: SamplingParams, vocab_size: int) -> None:
    for name in ("max_new_tokens", "top_k", "logprobs"):
        value = getattr(params, name)
        if type(value) is not int:
            raise ValueError(f"{name} must be an integer, got {value!r}")
    for name in ("temperature", "top_p", "repetition_penalty"):
        value = getattr(params, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
                value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    seed = params.seed
    if seed is not None and (type(seed) is not int
                             or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]):
        raise ValueError(f"seed must be an integer in [{SEED_RANGE[0]}, {SEED_RANGE[1]}], "
                         f"got {seed!r}")
    params.top_k = min(params.top_k, vocab_size)  # k beyond the vocabulary keeps all of it
    params.logprobs = min(params.logprobs, vocab_size)
