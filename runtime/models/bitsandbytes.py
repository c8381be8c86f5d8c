"""bitsandbytes checkpoints (the bases QLoRA adapters are trained on), served as stored.

A model that transformers loaded with `BitsAndBytesConfig(load_in_4bit=True)` or
`load_in_8bit=True` and saved (the "-bnb-4bit" uploads most QLoRA adapters name as their
base) keeps, for each quantized linear `X` (N outputs, K inputs):
- 4-bit: `X.weight` the codes of the row-major weight, two to a byte with the first in the
  high nibble, in the dtype of `bnb_4bit_quant_storage` (bytes all the same); `X.weight.absmax`
  one scale per block of `blocksize` consecutive weights of the flattened matrix (a block
  may span rows); `X.weight.quant_map` the 16 values the codes name (NF4 or FP4), so
  w = quant_map[q] * absmax[block]; `X.weight.quant_state.bitsandbytes__nf4|fp4` the block
  size and shape as JSON bytes. With double quantization `absmax` holds 8-bit codes into
  `X.weight.nested_quant_map`, each block of `nested_blocksize` of them scaled by its
  `X.weight.nested_absmax`, then shifted by the JSON's `nested_offset`.
- 8-bit (LLM.int8): `X.weight` int8 [N, K], `X.SCB` the absmax of each row, w = q * SCB / 127,
  and `X.weight_format` its layout (0: row-major, the only one saved since bitsandbytes 0.45).
Everything else (embeddings, norms, the LM head, `llm_int8_skip_modules`) is plain.

4-bit weights become `CodebookWeight`s (the `--quantize nf4` kernels): a block spanning
rows gives each of its row segments its scale, as groups of gcd(K, blocksize) inputs,
which is exact. 8-bit weights become `Int8Weight`s, multiplied by full-precision
activations (bitsandbytes also rounds the activations to int8, so its outputs differ from
these in the last digits; the weights are the same).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from loraplex.runtime.layers.codebook import CodebookWeight
from loraplex.runtime.layers.quantized import Int8Weight, QuantizedWeight
from loraplex.runtime.layers.quantized_parts import SideBySide

QUANT_STATE = "weight.quant_state.bitsandbytes__"  # + nf4 | fp4: the 4-bit linear's marker
FOUR_BIT_LEAVES = ("weight", "weight.absmax", "weight.quant_map", "weight.nested_absmax",
                   "weight.nested_quant_map")
EIGHT_BIT_LEAVES = ("weight", "SCB", "weight_format")
ROW_MAJOR = 0  # weight_format of a row-major int8 weight
FOUR_BIT_TYPES = ("nf4", "fp4")
GROUP_MULTIPLE = 32  # the codebook panels read groups of a multiple of 32 inputs


@dataclass(frozen=True)
class CodebookCodes:
    name: str  # the checkpoint's linear, for messages
    codes: torch.Tensor  # [N, K] uint8 in 0..15
    scales: torch.Tensor  # [N, K / group_size] fp32
    codebook: torch.Tensor  # [16] fp32
    group_size: int


@dataclass(frozen=True)
class Int8Codes:
    name: str
    codes: torch.Tensor  # [N, K] int8
    scales: torch.Tensor  # [N] fp32: w = q * scale


@dataclass(frozen=True)
class BitsAndBytesQuantization:
    bits: int  # 4 | 8
    quant_type: str  # nf4 | fp4 | int8

    @property
    def method(self) -> str:
        return f"bitsandbytes-{self.quant_type}"

    @classmethod
    def of(cls, settings: Mapping) -> BitsAndBytesQuantization:
        """From a `quant_method: bitsandbytes` quantization_config."""
        four_bit = bool(settings.get("load_in_4bit", settings.get("_load_in_4bit")))
        eight_bit = bool(settings.get("load_in_8bit", settings.get("_load_in_8bit")))
        if four_bit == eight_bit:
            raise ValueError("a bitsandbytes quantization_config must set exactly one of "
                             f"load_in_4bit and load_in_8bit (got {four_bit}, {eight_bit})")
        if eight_bit:
            return cls(8, "int8")
        quant_type = str(settings.get("bnb_4bit_quant_type", "fp4")).lower()
        if quant_type not in FOUR_BIT_TYPES:
            raise ValueError(f"bitsandbytes bnb_4bit_quant_type {quant_type!r} is not "
                             f"supported; served: {', '.join(FOUR_BIT_TYPES)}")
        return cls(4, quant_type)

    def quantized_linears(self, names: Iterable[str]) -> dict[str, set[str]]:
        """Checkpoint linear -> its quantized tensors' leaves, among tensor `names`."""
        names = set(names)
        linears: dict[str, Sequence[str]] = {}
        for name in names:
            if self.bits == 8 and name.endswith(".SCB"):
                linears[name.removesuffix(".SCB")] = EIGHT_BIT_LEAVES
            linear, marker, kind = name.partition(f".{QUANT_STATE}")
            if self.bits == 4 and marker:
                linears[linear] = (*FOUR_BIT_LEAVES, QUANT_STATE + kind)
        return {linear: {leaf for leaf in leaves if f"{linear}.{leaf}" in names}
                for linear, leaves in linears.items()}

    def read(self, name: str, tensors: Mapping[str, torch.Tensor]) -> CodebookCodes | Int8Codes:
        if self.bits == 8:
            return _read_int8(name, tensors)
        return _read_four_bit(name, tensors)

    def serve(self, parts: Sequence[CodebookCodes | Int8Codes],
              dtype: torch.dtype) -> QuantizedWeight:
        """The weight of `parts` side by side on outputs (one part: a plain linear)."""
        if self.bits == 8:
            return Int8Weight(torch.cat([p.codes for p in parts]),
                              torch.cat([p.scales for p in parts]), dtype)
        first = parts[0]
        if all(p.group_size == first.group_size and torch.equal(p.codebook, first.codebook)
               for p in parts):
            return CodebookWeight(torch.cat([p.codes for p in parts]),
                                  torch.cat([p.scales for p in parts]), first.codebook,
                                  first.group_size)
        return SideBySide([CodebookWeight(p.codes, p.scales, p.codebook, p.group_size)
                           for p in parts])


def _require(name: str, tensors: Mapping[str, torch.Tensor], leaves: Sequence[str]) -> None:
    for leaf in leaves:
        if leaf not in tensors:
            raise ValueError(f"bitsandbytes linear {name} has no {leaf} (it has "
                             f"{', '.join(sorted(tensors))})")


def _quant_state(name: str, tensors: Mapping[str, torch.Tensor]) -> dict:
    leaf = next(leaf for leaf in tensors if leaf.startswith(QUANT_STATE))
    try:
        state = json.loads(bytes(tensors[leaf].flatten().to(torch.uint8).tolist()))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{name}.{leaf} is not bitsandbytes' JSON quant state: {error}") \
            from error
    quant_type = leaf.removeprefix(QUANT_STATE)
    if quant_type not in FOUR_BIT_TYPES or state.get("quant_type", quant_type) != quant_type:
        raise ValueError(f"{name}.{leaf}: quant type {state.get('quant_type', quant_type)!r} "
                         f"is not served; served: {', '.join(FOUR_BIT_TYPES)}")
    shape, blocksize = state.get("shape"), state.get("blocksize")
    if not (isinstance(shape, list) and len(shape) == 2 and all(
            isinstance(size, int) and size > 0 for size in shape)
            and isinstance(blocksize, int) and blocksize > 0):
        raise ValueError(f"{name}.{leaf}: expected a 2-dimensional shape and a positive "
                         f"blocksize, got shape {shape!r}, blocksize {blocksize!r}")
    return state


def _block_scales(name: str, tensors: Mapping[str, torch.Tensor], state: dict,
                  blocks: int) -> torch.Tensor:
    """absmax of each block [blocks] fp32, its double quantization undone."""
    absmax = tensors["weight.absmax"].flatten()
    if absmax.numel() != blocks:
        raise ValueError(f"{name}.weight.absmax holds {absmax.numel()} scales; "
                         f"{state['shape']} in blocks of {state['blocksize']} needs {blocks}")
    if "weight.nested_absmax" not in tensors:
        return absmax.float()
    _require(name, tensors, ("weight.nested_quant_map",))
    nested_blocksize, offset = state.get("nested_blocksize"), state.get("nested_offset")
    nested_map, nested_absmax = (tensors["weight.nested_quant_map"].float(),
                                 tensors["weight.nested_absmax"].float().flatten())
    if not isinstance(nested_blocksize, int) or nested_blocksize <= 0 or \
            not isinstance(offset, float | int) or nested_map.numel() != 256 or \
            nested_absmax.numel() != -(-blocks // nested_blocksize):
        raise ValueError(f"{name}: double-quantized absmax needs nested_blocksize, "
                         f"nested_offset, 256 nested_quant_map values and a nested_absmax "
                         f"per {nested_blocksize} scales")
    block_of_scale = torch.arange(blocks, device=absmax.device) // nested_blocksize
    return nested_map[absmax.long()] * nested_absmax[block_of_scale] + offset


def _read_four_bit(name: str, tensors: Mapping[str, torch.Tensor]) -> CodebookCodes:
    _require(name, tensors, ("weight", "weight.absmax", "weight.quant_map"))
    state = _quant_state(name, tensors)
    (out_features, in_features), blocksize = state["shape"], state["blocksize"]
    count = out_features * in_features
    packed = tensors["weight"].contiguous().flatten().view(torch.uint8)  # any storage dtype
    if packed.numel() != -(-count // 2):
        raise ValueError(f"{name}.weight holds {packed.numel()} bytes; {out_features}x"
                         f"{in_features} 4-bit codes take {-(-count // 2)}")
    codes = torch.stack([packed >> 4, packed & 15], dim=-1).flatten()[:count]
    codebook = tensors["weight.quant_map"].float().flatten()
    if codebook.numel() != 16:
        raise ValueError(f"{name}.weight.quant_map holds {codebook.numel()} values, not 16")
    scales = _block_scales(name, tensors, state, -(-count // blocksize))
    group_size = math.gcd(in_features, blocksize)  # a block's segment of a row, or a divisor
    if group_size % GROUP_MULTIPLE:
        raise ValueError(f"{name}: blocks of {blocksize} over rows of {in_features} inputs "
                         f"make groups of {group_size}; served: multiples of "
                         f"{GROUP_MULTIPLE}")
    rows = torch.arange(out_features, device=packed.device)[:, None] * in_features
    starts = rows + torch.arange(0, in_features, group_size, device=packed.device)  # [N, K/g]
    return CodebookCodes(name, codes.view(out_features, in_features),
                         scales[starts // blocksize].contiguous(), codebook, group_size)


def _read_int8(name: str, tensors: Mapping[str, torch.Tensor]) -> Int8Codes:
    _require(name, tensors, ("weight", "SCB"))
    codes, row_absmax = tensors["weight"], tensors["SCB"].float().flatten()
    if codes.dtype != torch.int8 or codes.dim() != 2 or row_absmax.numel() != codes.shape[0]:
        raise ValueError(f"{name}: an 8-bit bitsandbytes linear holds an int8 [N, K] weight "
                         f"and N SCB values; got {codes.dtype} {tuple(codes.shape)} and "
                         f"{row_absmax.numel()}")
    if "weight_format" in tensors and int(tensors["weight_format"]) != ROW_MAJOR:
        raise ValueError(f"{name}.weight_format {int(tensors['weight_format'])} is a GPU "
                         "tile layout; served: row-major (0)")
    return Int8Codes(name, codes, row_absmax / 127)
