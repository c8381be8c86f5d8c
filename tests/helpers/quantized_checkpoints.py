"""GPTQ and AWQ checkpoints written here from the formats' descriptions: the test's oracle.

Everything starts from `GroupedCodes`, the quantization as the formats define it (codes,
per-group scales and zero points, the group of each input), whose `weight()` is the
reference w = (q - zero) * scale. The packers below lay those out bit by bit as AutoGPTQ
(v1: zero points minus one), GPTQModel (v2) and AutoAWQ (GEMM) write them, independently
of the loader's readers; `write_quantized_llama` makes a whole tiny Llama folder of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, PretrainedConfig, Qwen2Config

AWQ_SLOT_OUTPUTS = (0, 2, 4, 6, 1, 3, 5, 7)  # AutoAWQ's pack order within a word
CONFIG_CLASSES = {"llama": LlamaConfig, "qwen2": Qwen2Config}
PROJECTIONS = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
               "mlp": ("gate_proj", "up_proj", "down_proj")}


@dataclass(frozen=True)
class GroupedCodes:
    codes: torch.Tensor  # [N, K] int64 in 0..15
    scales: torch.Tensor  # [G, N] float16
    zeros: torch.Tensor  # [G, N] int64, the zero points themselves
    groups: torch.Tensor  # [K] int64 (g_idx)

    def weight(self) -> torch.Tensor:  # [N, K] float32
        zeros = self.zeros.t()[:, self.groups].float()  # [N, K]
        scales = self.scales.t()[:, self.groups].float()
        return (self.codes.float() - zeros) * scales


def random_groups(in_features: int, group_size: int, desc_act: bool,
                  generator: torch.Generator) -> torch.Tensor:
    """g_idx: k // g, or (desc_act) groups of g taken in a random activation order."""
    size = in_features if group_size == -1 else group_size
    if not desc_act:
        return torch.arange(in_features) // size
    order = torch.randperm(in_features, generator=generator)  # inputs by activation
    groups = torch.empty(in_features, dtype=torch.int64)
    groups[order] = torch.arange(in_features) // size
    return groups


def random_codes(out_features: int, groups: torch.Tensor, sym: bool, zero_range: tuple[int, int],
                 generator: torch.Generator, scale: float = 0.004) -> GroupedCodes:
    count = int(groups.max()) + 1
    codes = torch.randint(0, 16, (out_features, groups.numel()), generator=generator)
    scales = (scale * (0.5 + torch.rand(count, out_features, generator=generator))).half()
    if sym:
        zeros = torch.full((count, out_features), 8)
    else:
        zeros = torch.randint(zero_range[0], zero_range[1] + 1, (count, out_features),
                              generator=generator)
    return GroupedCodes(codes, scales, zeros, groups)


def _words(values: np.ndarray) -> np.ndarray:
    """[..., 8] values in 0..15 -> [...] int32 words, value i in bits 4i..4i+3."""
    word = np.zeros(values.shape[:-1], dtype=np.uint32)
    for slot in range(8):
        word |= (values[..., slot].astype(np.uint32) & 0xF) << np.uint32(4 * slot)
    return word.view(np.int32)


def pack_gptq(codes: GroupedCodes, checkpoint_format: str = "gptq") -> dict[str, torch.Tensor]:
    """qweight [K/8, N] (8 inputs a word), qzeros [G, N/8] (8 outputs a word), scales, g_idx."""
    by_input = codes.codes.t().numpy()  # [K, N]
    k, n = by_input.shape
    qweight = _words(by_input.reshape(k // 8, 8, n).transpose(0, 2, 1))  # [K/8, N]
    stored = codes.zeros.numpy() - (1 if checkpoint_format == "gptq" else 0)
    qzeros = _words(stored.reshape(stored.shape[0], n // 8, 8))  # [G, N/8]
    return {"qweight": torch.from_numpy(qweight.copy()),
            "qzeros": torch.from_numpy(qzeros.copy()),
            "scales": codes.scales.clone(), "g_idx": codes.groups.to(torch.int32)}


def pack_awq(codes: GroupedCodes) -> dict[str, torch.Tensor]:
    """qweight [K, N/8], qzeros [G, N/8]: 8 outputs a word in AWQ's slot order, scales."""
    def pack_outputs(values: np.ndarray) -> np.ndarray:  # [R, N] -> [R, N/8]
        rows, n = values.shape
        eights = values.reshape(rows, n // 8, 8)
        return _words(eights[..., list(AWQ_SLOT_OUTPUTS)])

    return {"qweight": torch.from_numpy(pack_outputs(codes.codes.t().numpy()).copy()),
            "qzeros": torch.from_numpy(pack_outputs(codes.zeros.numpy()).copy()),
            "scales": codes.scales.clone()}


def tiny_quantized_config(method: str, group_size: int, model_type: str = "llama",
                          tie_word_embeddings: bool = True,
                          **settings: object) -> PretrainedConfig:
    config = CONFIG_CLASSES[model_type](
        vocab_size=49152, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        rope_theta=10000.0, tie_word_embeddings=tie_word_embeddings, bos_token_id=1,
        eos_token_id=2, pad_token_id=2)
    config.quantization_config = {"quant_method": method, "bits": 4,
                                  "group_size": group_size, **settings}
    return config


def write_quantized_llama(folder: Path, tokenizer, method: str, group_size: int,
                          seed: int, desc_act: bool = False, sym: bool = False,
                          checkpoint_format: str = "gptq",
                          split_order_layer: int | None = None, model_type: str = "llama",
                          quantized_lm_head: bool = False) -> dict[str, torch.Tensor]:
    """A tiny Llama-family folder quantized as `method`; returns its weights dequantized
    (the Hugging Face names, fp32). The projections reading one input share one g_idx, as
    GPTQ makes them, except in layer `split_order_layer`, where k_proj gets its own. Qwen2
    has q/k/v biases; `quantized_lm_head` unties the LM head and quantizes it too."""
    generator = torch.Generator().manual_seed(seed)
    settings = ({"version": "gemm", "zero_point": True} if method == "awq" else
                {"desc_act": desc_act, "sym": sym, "checkpoint_format": checkpoint_format,
                 "lm_head": quantized_lm_head})
    config = tiny_quantized_config(method, group_size, model_type,
                                   not quantized_lm_head, **settings)
    zero_range = (1, 16) if checkpoint_format == "gptq" and method == "gptq" else (0, 15)
    stored: dict[str, torch.Tensor] = {}
    dequantized: dict[str, torch.Tensor] = {}
    embedding = torch.randn(config.vocab_size, config.hidden_size, generator=generator) * 0.5
    stored["model.embed_tokens.weight"] = dequantized["model.embed_tokens.weight"] = embedding
    stored["model.norm.weight"] = dequantized["model.norm.weight"] = (
        1 + 0.1 * torch.randn(config.hidden_size, generator=generator))
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}"
        for norm in ("input_layernorm", "post_attention_layernorm"):
            weight = 1 + 0.1 * torch.randn(config.hidden_size, generator=generator)
            stored[f"{prefix}.{norm}.weight"] = dequantized[f"{prefix}.{norm}.weight"] = weight
        shared = {width: random_groups(width, group_size, desc_act, generator)
                  for width in (config.hidden_size, config.intermediate_size)}
        for block, projections in PROJECTIONS.items():
            for projection in projections:
                in_features, out_features = _shape(config, projection)
                groups = shared[in_features]
                if layer == split_order_layer and projection == "k_proj":
                    groups = random_groups(in_features, group_size, desc_act, generator)
                codes = random_codes(out_features, groups, sym, zero_range, generator)
                name = f"{prefix}.{block}.{projection}"
                packed = pack_awq(codes) if method == "awq" else pack_gptq(codes,
                                                                           checkpoint_format)
                stored.update({f"{name}.{leaf}": tensor for leaf, tensor in packed.items()})
                dequantized[f"{name}.weight"] = codes.weight()
                if model_type == "qwen2" and projection in ("q_proj", "k_proj", "v_proj"):
                    bias = 0.1 * torch.randn(out_features, generator=generator)
                    stored[f"{name}.bias"] = dequantized[f"{name}.bias"] = bias
    if quantized_lm_head:
        groups = random_groups(config.hidden_size, group_size, desc_act, generator)
        codes = random_codes(config.vocab_size, groups, sym, zero_range, generator, scale=0.02)
        packed = pack_awq(codes) if method == "awq" else pack_gptq(codes, checkpoint_format)
        stored.update({f"lm_head.{leaf}": tensor for leaf, tensor in packed.items()})
        dequantized["lm_head.weight"] = codes.weight()
    folder.mkdir(parents=True, exist_ok=True)
    save_file({name: tensor.contiguous() for name, tensor in stored.items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    tokenizer.save_pretrained(folder)
    return dequantized


def _shape(config: PretrainedConfig, projection: str) -> tuple[int, int]:
    """(inputs, outputs) of a projection."""
    hidden, intermediate = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * hidden // config.num_attention_heads
    return {"q_proj": (hidden, hidden), "k_proj": (hidden, kv), "v_proj": (hidden, kv),
            "o_proj": (hidden, hidden), "gate_proj": (hidden, intermediate),
            "up_proj": (hidden, intermediate), "down_proj": (intermediate, hidden)}[projection]
