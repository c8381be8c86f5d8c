"""Shared test helpers: the builtin model, its Hugging Face oracle, prompts, engine configs.

Plain functions (no fixtures) so every suite can use them; the expensive ones are cached
for the whole test process, so the builtin model is converted, loaded and run through
transformers once however many tests use it. The cache folder is the user's normal one
(`LORAPLEX_CACHE`, default ~/.cache/loraplex): the builtin is dequantized once per machine.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from loraplex.runtime.config import EngineConfig, default_cache_dir

BUILTIN_MODEL = "builtin:smollm2-135m-instruct"

# varied chat prompts: short, long, lists, code, non-English, multi-turn
CHAT_PROMPTS: tuple[tuple[dict[str, str], ...], ...] = (
    ({"role": "user", "content": "What is the capital of France?"},),
    ({"role": "user", "content": "hi"},),
    ({"role": "user", "content": "Write a haiku about the sea."},),
    ({"role": "user", "content": "List three primary colors."},),
    ({"role": "user", "content": "Explain photosynthesis in one paragraph, mentioning "
                                 "chlorophyll, sunlight, water, carbon dioxide, glucose and "
                                 "oxygen, and why it matters for life on Earth."},),
    ({"role": "user", "content": "Write a Python function that reverses a string."},),
    ({"role": "system", "content": "You are a terse assistant. Answer in one word."},
     {"role": "user", "content": "Opposite of hot?"}),
    ({"role": "user", "content": "Quelle est la couleur du ciel ?"},),
    ({"role": "user", "content": "What is 12 times 12?"},
     {"role": "assistant", "content": "12 times 12 is 144."},
     {"role": "user", "content": "And 13 times 13?"}),
    ({"role": "user", "content": "Give me a short motivational quote about learning."},),
)


def cache_dir() -> str:
    return default_cache_dir()


def builtin_config(**overrides: object) -> EngineConfig:
    """The builtin model in fp32 on the CPU, with a small KV cache unless overridden."""
    values: dict[str, object] = {"model": BUILTIN_MODEL, "cache_dir": cache_dir(),
                                 "device": "cpu", "dtype": "float32",
                                 "kv_cache_bytes": 128 << 20}
    values.update(overrides)
    return EngineConfig(**values)


@functools.cache
def builtin_folder() -> Path:
    from loraplex.runtime.models.loader import resolve_builtin

    return resolve_builtin(BUILTIN_MODEL, cache_dir())


@functools.cache
def builtin_loaded():
    """The builtin model loaded once (fp32, CPU); engines may share it."""
    from loraplex.runtime.models.loader import load_model

    return load_model(builtin_config())


@functools.cache
def builtin_tokenizer():
    """The builtin's tokenizer (needs no dequantized weights)."""
    from transformers import AutoTokenizer

    from loraplex.runtime.models.builtin import resolve_builtin_tokenizer

    return AutoTokenizer.from_pretrained(resolve_builtin_tokenizer(BUILTIN_MODEL, cache_dir()))


def tiny_llama_config(**overrides: object) -> EngineConfig:
    """`tiny-llama` with random weights in fp32: a real engine that starts in a moment."""
    values: dict[str, object] = {"model": "tiny-llama", "load_format": "dummy",
                                 "cache_dir": cache_dir(), "device": "cpu", "dtype": "float32",
                                 "kv_cache_bytes": 16 << 20}
    values.update(overrides)
    return EngineConfig(**values)


@functools.cache
def hf_builtin_model():
    """transformers' own model from the builtin folder: the oracle."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(builtin_folder(), dtype=torch.float32).eval()


def chat_prompt_ids(messages: tuple[dict[str, str], ...]) -> list[int]:
    return list(builtin_tokenizer().apply_chat_template(list(messages),
                                                        add_generation_prompt=True))


@functools.cache
def hf_greedy(prompt_ids: tuple[int, ...], max_new_tokens: int) -> tuple[int, ...]:
    """transformers `generate` greedy continuation (stops at EOS like the engine)."""
    model = hf_builtin_model()
    with torch.inference_mode():
        output = model.generate(torch.tensor([prompt_ids]),
                                attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                                max_new_tokens=max_new_tokens, do_sample=False)
    return tuple(output[0, len(prompt_ids):].tolist())


def peft_greedy(model, prompts: list[list[int]], adapter_names: list[str],
                num_tokens: int) -> list[tuple[int, ...]]:
    """Greedy continuations, one row per (prompt, adapter) ("__base__": none), from PEFT's
    mixed-adapter batches (`adapter_names=`) and the model's KV cache; prompts of one length.
    """
    ids = torch.tensor(prompts)  # [rows, prompt]
    past = None
    generated: list[list[int]] = [[] for _ in adapter_names]
    with torch.inference_mode():
        for _ in range(num_tokens):
            output = model(input_ids=ids, past_key_values=past, use_cache=True,
                           adapter_names=adapter_names)
            past = output.past_key_values
            next_ids = output.logits[:, -1].argmax(dim=-1)  # [rows]
            for row, token in enumerate(next_ids.tolist()):
                generated[row].append(token)
            ids = next_ids[:, None]
    return [tuple(row) for row in generated]
