"""Named model shapes for `--load-format dummy`: benchmark big shapes without downloads.

A shape is a Hugging Face config with random weights. `tiny-llama` (2 layers, hidden
64, the SmolLM2 tokenizer) starts in a moment, for tests that need a real server but
not a real model. The big shapes copy the public configs of the models they name.
"""

from __future__ import annotations

from transformers import LlamaConfig, MistralConfig, PretrainedConfig, Qwen2Config

SMOLLM2_TOKENIZER = "smollm2-135m-instruct"  # builtin whose tokenizer dummy shapes use
SMOLLM2_SPECIAL = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}


def _tiny_llama() -> PretrainedConfig:
    return LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=256,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=2048, rope_theta=10000.0,
                       tie_word_embeddings=True, **SMOLLM2_SPECIAL)


def _smollm2_135m() -> PretrainedConfig:
    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                       num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                       max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                       tie_word_embeddings=True, **SMOLLM2_SPECIAL)


def _llama_3_8b() -> PretrainedConfig:
    return LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5,
                       bos_token_id=128000, eos_token_id=128001, tie_word_embeddings=False)


def _llama_2_7b() -> PretrainedConfig:
    return LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                       max_position_embeddings=4096, rms_norm_eps=1e-5,
                       bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)


def _mistral_7b() -> PretrainedConfig:
    return MistralConfig(vocab_size=32768, hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                         max_position_embeddings=32768, rope_theta=1000000.0,
                         sliding_window=None, bos_token_id=1, eos_token_id=2)


def _qwen2_5_7b() -> PretrainedConfig:
    return Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                       num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                       max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                       tie_word_embeddings=False, bos_token_id=151643, eos_token_id=151645)


SHAPES = {
    "tiny-llama": _tiny_llama,
    "smollm2-135m": _smollm2_135m,
    "llama-3-8b": _llama_3_8b,
    "llama-2-7b": _llama_2_7b,
    "mistral-7b": _mistral_7b,
    "qwen2.5-7b": _qwen2_5_7b,
}


def shape_config(name: str) -> PretrainedConfig:
    if name not in SHAPES:
        raise ValueError(f"unknown model shape {name!r}; choose from {', '.join(SHAPES)}, "
                         "or give a folder with a config.json")
    return SHAPES[name]()
