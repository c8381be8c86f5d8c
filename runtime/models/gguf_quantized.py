"""Serve a GGUF model's own 4-bit blocks (`--quantize gguf`) instead of a dequantized copy.

A GGUF Q4_1 block is 32 weights w = q * d + m (q in 0..15, d and m fp16) and a Q4_0 block
w = (q - 8) * d: both are exactly the int4 layout of `Int4Weight` with groups of 32, so the
codes are moved over as they are and nothing is rounded twice. Any other tensor type
(Q8_0 has one scale per 32 weights, which the int8 kernel's per-channel scale cannot
express; the K-quants have sub-blocks) keeps the dequantized weights of the converted
folder, with a warning naming it. llama.cpp stores q and k with their rotary halves
interleaved per head; the rows are put back in Hugging Face's order as transformers does
when it converts the same file. A token embedding stored as Q8_0 (32 int8 codes and one fp16
scale per block) is exactly `QuantizedEmbedding`'s format and is served from its blocks too.
"""

from __future__ import annotations

import logging
from pathlib import Path

import gguf
import numpy as np
import torch

from loraplex.runtime.layers.linear import Linear, MergedLinear
from loraplex.runtime.layers.quantized import Int4Weight
from loraplex.runtime.layers.quantized_embedding import GROUP, QuantizedEmbedding
from loraplex.runtime.models.llama import LlamaForCausalLM

logger = logging.getLogger(__name__)

BLOCK = 32  # weights per Q4_0 / Q4_1 block
Q4_TYPES = (gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q4_1)
# fused module -> its parts' names in a Hugging Face checkpoint, in column order
FUSED_PARTS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"),
               "gate_up_proj": ("gate_proj", "up_proj")}

Q4Codes = tuple[np.ndarray, np.ndarray, np.ndarray]  # codes [N, K], scales, offsets [N, K/32]


def q4_codes(tensor: gguf.ReaderTensor) -> Q4Codes:
    """Codes, scales and offsets (w = q * scale + offset) of a Q4_0 or Q4_1 tensor."""
    raw = np.asarray(tensor.data, dtype=np.uint8)  # [N, bytes per row]
    rows = raw.shape[0]
    if tensor.tensor_type == gguf.GGMLQuantizationType.Q4_1:
        blocks = raw.reshape(rows, -1, 20)  # d: fp16, m: fp16, 16 bytes of codes
        scales = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
        offsets = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        packed = blocks[..., 4:]
    elif tensor.tensor_type == gguf.GGMLQuantizationType.Q4_0:
        blocks = raw.reshape(rows, -1, 18)  # d: fp16, 16 bytes of codes
        scales = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
        offsets = -8.0 * scales
        packed = blocks[..., 2:]
    else:
        raise ValueError(f"{tensor.name}: {tensor.tensor_type.name} is not a 4-bit block type")
    # byte j holds weight j (low nibble) and weight j + 16 (high nibble) of its block
    codes = np.concatenate([packed & 15, packed >> 4], axis=-1).reshape(rows, -1)
    return codes, scales, offsets


def q8_0_embedding(tensor: gguf.ReaderTensor, dtype: torch.dtype) -> QuantizedEmbedding:
    """A Q8_0 token embedding's own codes and scales (w = q * d per block of 32)."""
    if tensor.tensor_type != gguf.GGMLQuantizationType.Q8_0:
        raise ValueError(f"{tensor.name}: {tensor.tensor_type.name} is not Q8_0")
    raw = np.asarray(tensor.data, dtype=np.uint8)  # [V, bytes per row]
    blocks = raw.reshape(raw.shape[0], -1, 2 + GROUP)  # d: fp16, 32 int8 codes
    scales = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    codes = blocks[..., 2:].copy().view(np.int8).reshape(raw.shape[0], -1)
    return QuantizedEmbedding(torch.from_numpy(codes), torch.from_numpy(scales), dtype)


def unpermute_rows(array: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's per-head interleaving of rotary halves, undone (rows of q or k)."""
    half = array.shape[0] // heads // 2
    return array.reshape(heads, half, 2, *array.shape[1:]).swapaxes(1, 2).reshape(array.shape)


def _part_codes(tensors: dict[str, gguf.ReaderTensor], name_map: gguf.TensorNameMap,
                hf_name: str, config) -> Q4Codes | None:
    gguf_name = name_map.get_name(hf_name)
    tensor = tensors.get(f"{gguf_name}.weight") if gguf_name else None
    if tensor is None or tensor.tensor_type not in Q4_TYPES:
        return None
    parts = q4_codes(tensor)
    heads = {"q_proj": config.num_attention_heads,
             "k_proj": getattr(config, "num_key_value_heads", None) or config.num_attention_heads}
    projection = hf_name.rsplit(".", 1)[-1]
    if projection in heads:
        parts = tuple(unpermute_rows(array, heads[projection]) for array in parts)
    return parts


def layer_codes(tensors: dict[str, gguf.ReaderTensor], name_map: gguf.TensorNameMap,
                name: str, module: Linear, config) -> Q4Codes | None:
    """The 4-bit codes of one of our (possibly fused) linears, or None where any part of
    it is stored in another type."""
    parent, _, leaf = name.rpartition(".")
    hf_names = ([f"{parent}.{part}" for part in FUSED_PARTS[leaf]]
                if isinstance(module, MergedLinear) else [name])
    parts = [_part_codes(tensors, name_map, hf_name, config) for hf_name in hf_names]
    if any(part is None for part in parts):
        return None
    return tuple(np.concatenate(arrays, axis=0) for arrays in zip(*parts, strict=True))


def use_gguf_blocks(model: LlamaForCausalLM, gguf_path: Path) -> tuple[int, list[str]]:
    """Give every decoder linear stored as Q4_0/Q4_1 in `gguf_path` those codes (its plain
    weight released), and the token embedding its Q8_0 blocks (any other type: rounded to
    int8 rows from the converted weights); (layers served 4-bit, names left dequantized)."""
    reader = gguf.GGUFReader(gguf_path)
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    architectures = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}
    arch = architectures[reader.fields["general.architecture"].contents()]
    name_map = gguf.get_tensor_name_map(arch, model.config.num_hidden_layers)
    served, dequantized = 0, []
    for name, module in model.named_modules():
        if not isinstance(module, Linear) or module is model.lm_head:
            continue
        found = layer_codes(tensors, name_map, name, module, model.config)
        if found is None:
            dequantized.append(name)
            continue
        codes, scales, offsets = (torch.from_numpy(array).to(module.weight.device)
                                  for array in found)
        module.use_quantized(Int4Weight.from_codes(codes, scales, offsets, BLOCK,
                                                   module.weight.dtype))
        module.release_weight()
        served += 1
    if dequantized:
        logger.warning("%s: %d linear layers are not in a 4-bit block type and stay "
                       "dequantized, e.g. %s", gguf_path.name, len(dequantized),
                       ", ".join(dequantized[:3]))
    embedding = tensors.get(f"{name_map.get_name('model.embed_tokens')}.weight")
    model.quantize_embedding(
        q8_0_embedding(embedding, model.lm_head.weight.dtype) if embedding is not None
        and embedding.tensor_type == gguf.GGMLQuantizationType.Q8_0 else None)
    return served, dequantized
