"""Quantized checkpoints (GPTQ, AWQ, bitsandbytes): recognised from config.json, served as
they are stored.

A Hugging Face folder whose config.json has a `quantization_config` of quant_method
"gptq" or "awq" (or, written before transformers knew the formats, AutoGPTQ's
quantize_config.json or AutoAWQ's quant_config.json beside a plain config.json) stores
each quantized linear as `qweight`/`qzeros`/`scales` (and GPTQ's `g_idx`) and everything
else (embeddings, norms, biases, the LM head unless quantized too) in full precision;
quant_method "bitsandbytes" stores them as bitsandbytes.py describes.
`load_quantized_linears` reads the quantized tensors, turns each linear (all shards of a
fused q|k|v or gate|up together) into a quantized weight and gives it to our module
before the plain weights get memory (the model is still on the meta device), so a
quantized checkpoint never takes its full-precision size. The rest of the checkpoint
then loads as usual.

Served: 4 bits, any group size that is a multiple of 32 (or -1), GPTQ symmetric and
asymmetric, with or without `desc_act`, checkpoint_format "gptq" (v1, zero points stored
minus one) and "gptq_v2"; AWQ's GEMM layout with zero points. Anything else is refused
naming the setting (other bit widths, AWQ GEMV/Marlin layouts, GPTQ Marlin/BitBLAS).
bitsandbytes: 4-bit NF4 and FP4 (with or without double quantization) and 8-bit.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import PretrainedConfig

from loraplex.runtime.layers.linear import Linear, MergedLinear
from loraplex.runtime.layers.quantized import QuantizedWeight
from loraplex.runtime.layers.quantized_parts import DenseShard, SideBySide
from loraplex.runtime.models.awq import read_awq
from loraplex.runtime.models.bitsandbytes import (
    BitsAndBytesQuantization,
    CodebookCodes,
    Int8Codes,
)
from loraplex.runtime.models.checkpoint import safetensors_files
from loraplex.runtime.models.gptq import ZERO_OFFSET, read_gptq
from loraplex.runtime.models.int4_codes import LinearCodes, serve_codes
from loraplex.runtime.models.llama import STACKED_PROJECTIONS, LlamaForCausalLM

QUANTIZED_LEAVES = ("qweight", "qzeros", "scales", "g_idx")
# the tools' own files, beside a config.json written before transformers knew the format
SEPARATE_CONFIGS = {"quantize_config.json": "gptq", "quant_config.json": "awq"}
METHODS = ("gptq", "awq", "bitsandbytes")
AWQ_VERSIONS = ("gemm",)


@dataclass(frozen=True)
class CheckpointQuantization:
    method: str  # gptq | awq
    group_size: int  # -1: one group per row (GPTQ)
    checkpoint_format: str = "gptq"  # GPTQ only: gptq (v1) | gptq_v2
    desc_act: bool = False  # GPTQ only: groups in activation order, so each linear has a g_idx

    @classmethod
    def of(cls, method: str, settings: Mapping) -> CheckpointQuantization:
        """From a GPTQ or AWQ `quantization_config`."""
        bits = settings.get("bits", settings.get("w_bit"))
        if bits != 4:
            raise ValueError(f"{method} checkpoint with quantization_config.bits={bits}: only "
                             "4-bit GPTQ/AWQ checkpoints are served")
        group_size = settings.get("group_size", settings.get("q_group_size"))
        if not isinstance(group_size, int) or not (group_size > 0 or group_size == -1):
            raise ValueError(f"quantization_config.group_size {group_size!r} must be a "
                             "positive number of inputs (or -1 for GPTQ)")
        if method == "awq":
            return cls._awq(settings, group_size)
        return cls._gptq(settings, group_size)

    @classmethod
    def _gptq(cls, settings: Mapping, group_size: int) -> CheckpointQuantization:
        checkpoint_format = str(settings.get("checkpoint_format",
                                             settings.get("format", "gptq"))).lower()
        if checkpoint_format not in ZERO_OFFSET:
            raise ValueError(f"GPTQ quantization_config.checkpoint_format "
                             f"{checkpoint_format!r} is not supported (a kernel-specific "
                             f"repacking); served: {', '.join(ZERO_OFFSET)}")
        return cls("gptq", group_size, checkpoint_format, bool(settings.get("desc_act")))

    @classmethod
    def _awq(cls, settings: Mapping, group_size: int) -> CheckpointQuantization:
        version = str(settings.get("version", "gemm")).lower()
        if version not in AWQ_VERSIONS:
            raise ValueError(f"AWQ quantization_config.version {version!r} is not "
                             f"supported: only the GEMM layout ({', '.join(AWQ_VERSIONS)})")
        if not settings.get("zero_point", True):
            raise ValueError("AWQ quantization_config.zero_point false is not supported "
                             "(the GEMM layout stores zero points)")
        if group_size == -1:
            raise ValueError("AWQ quantization_config.group_size must be positive, got -1")
        return cls("awq", group_size)

    def quantized_linears(self, names: Iterable[str]) -> dict[str, set[str]]:
        """Checkpoint linear -> its quantized tensors' leaves, among tensor `names`."""
        found: dict[str, set[str]] = {}
        for name in names:
            linear, _, leaf = name.rpartition(".")
            if leaf in QUANTIZED_LEAVES:
                found.setdefault(linear, set()).add(leaf)
        return found

    def read(self, name: str, tensors: Mapping[str, torch.Tensor]) -> LinearCodes:
        if self.method == "awq":
            if "g_idx" in tensors:
                raise ValueError(f"AWQ linear {name} has a g_idx (a GPTQ tensor)")
            return read_awq(name, tensors, self.group_size)
        if self.desc_act and "g_idx" not in tensors:
            raise ValueError(f"GPTQ linear {name} has no g_idx, but quantization_config.desc_act "
                             "is true (its groups are in activation order)")
        return read_gptq(name, tensors, self.group_size, self.checkpoint_format)

    def serve(self, parts: Sequence[LinearCodes], dtype: torch.dtype) -> QuantizedWeight:
        return serve_codes(parts, self.group_size, dtype)


Quantization = CheckpointQuantization | BitsAndBytesQuantization


def quantization_of(hf_config: PretrainedConfig,
                    folder: Path | None = None) -> Quantization | None:
    """The config's `quantization_config` (or AutoGPTQ's quantize_config.json, AutoAWQ's
    quant_config.json in `folder`), or None for a full-precision checkpoint."""
    settings = _settings(hf_config, folder)
    if settings is None:
        return None
    method = str(settings.get("quant_method", "")).lower()
    if method not in METHODS:
        raise ValueError(f"quantization_config.quant_method {method!r} is not supported; "
                         f"served: gptq, awq (4-bit), bitsandbytes (nf4, fp4, int8)")
    if method == "bitsandbytes":
        return BitsAndBytesQuantization.of(settings)
    return CheckpointQuantization.of(method, settings)


def _settings(hf_config: PretrainedConfig, folder: Path | None) -> Mapping | None:
    settings = getattr(hf_config, "quantization_config", None)
    if settings is not None:
        return settings if isinstance(settings, Mapping) else settings.to_dict()
    for name, method in SEPARATE_CONFIGS.items():
        if folder is not None and (folder / name).is_file():
            return {"quant_method": method, **json.loads((folder / name).read_text())}
    return None


def _tensor_files(folder: Path, device: torch.device) -> dict[str, str]:
    """Checkpoint tensor -> its file."""
    files: dict[str, str] = {}
    for path in safetensors_files(folder):
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            files.update(dict.fromkeys(handle.keys(), str(path)))
    return files


def _quantized_tensors(files: Mapping[str, str],
                       quantization: Quantization) -> dict[str, dict[str, str]]:
    """Checkpoint linear -> leaf -> file of its quantized tensors."""
    return {linear: {leaf: files[f"{linear}.{leaf}"] for leaf in leaves}
            for linear, leaves in quantization.quantized_linears(files).items()}


def _read_tensors(files: Mapping[str, str], linear: str,
                  device: torch.device) -> dict[str, torch.Tensor]:
    tensors = {}
    for leaf, path in files.items():
        with safe_open(path, framework="pt", device=str(device)) as handle:
            tensors[leaf] = handle.get_tensor(f"{linear}.{leaf}")
    return tensors


def _targets(model: LlamaForCausalLM, linears: list[str]) -> dict[str, dict[int, str]]:
    """Our module -> part index -> checkpoint linear (fused shards gathered)."""
    targets: dict[str, dict[int, str]] = {}
    for linear in linears:
        parent, _, projection = linear.rpartition(".")
        target, index = linear, 0
        if projection in STACKED_PROJECTIONS:
            fused, index = STACKED_PROJECTIONS[projection]
            target = f"{parent}.{fused}"
        try:
            module = model.get_submodule(target)
        except AttributeError:
            module = None
        if not isinstance(module, Linear):
            raise ValueError(f"quantized checkpoint linear {linear!r} has no place in the model")
        if module is model.lm_head and model.config.tie_word_embeddings:
            raise ValueError("the checkpoint quantizes lm_head, but the model ties it to the "
                             "embedding (tie_word_embeddings)")
        targets.setdefault(target, {})[index] = linear
    return targets


def _check_part(module: Linear, index: int, name: str, shape: torch.Size) -> None:
    sizes = module.output_sizes if isinstance(module, MergedLinear) else (module.out_features,)
    expected = (sizes[index], module.in_features)
    if tuple(shape) != expected:
        raise ValueError(f"{name}: the checkpoint holds a {shape[0]}x{shape[1]} weight "
                         f"(outputs x inputs), the model expects {expected[0]}x{expected[1]}")


def _shard_name(target: str, index: int) -> str:
    """The checkpoint linear of shard `index` of fused layer `target`."""
    parent, _, fused = target.rpartition(".")
    projection = next(name for name, place in STACKED_PROJECTIONS.items()
                      if place == (fused, index))
    return f"{parent}.{projection}"


def _dense_shard(module: Linear, index: int, name: str, files: Mapping[str, str],
                 device: torch.device) -> DenseShard:
    """Shard `index` of a fused layer, kept in full precision by the checkpoint."""
    if f"{name}.weight" not in files:
        raise ValueError(f"fused layer shard {name} has neither quantized tensors nor a "
                         f"weight in the checkpoint")
    weight = _read_tensors({"weight": files[f"{name}.weight"]}, name, device)["weight"]
    _check_part(module, index, name, weight.shape)
    return DenseShard(weight.to(module.weight.dtype))


def _serve_shards(module: Linear, parts: Mapping[int, str], found: Mapping,
                  files: Mapping[str, str], target: str, device: torch.device,
                  quantization: Quantization) -> tuple[QuantizedWeight, set[str]]:
    """The weight of every shard of `module` in output order: runs of quantized shards
    served together, full-precision ones beside them; and the plain tensors it read."""
    count = len(module.output_sizes) if isinstance(module, MergedLinear) else 1
    served: list[QuantizedWeight] = []
    run: list[LinearCodes | CodebookCodes | Int8Codes] = []  # since the last dense shard
    plain: set[str] = set()
    for index in range(count):
        if index in parts:
            part = quantization.read(parts[index], _read_tensors(
                found[parts[index]], parts[index], device))
            _check_part(module, index, part.name, part.codes.shape)
            run.append(part)
            continue
        if run:
            served.append(quantization.serve(run, module.weight.dtype))
            run = []
        name = _shard_name(target, index)
        served.append(_dense_shard(module, index, name, files, device))
        plain.add(f"{name}.weight")
    if run:
        served.append(quantization.serve(run, module.weight.dtype))
    return (served[0] if len(served) == 1 else SideBySide(served)), plain


def load_quantized_linears(model: LlamaForCausalLM, folder: Path, device: torch.device,
                           quantization: Quantization) -> set[str]:
    """Serve every quantized linear of the checkpoint quantized in `model` (plain weights
    released), beside any shard of the same fused layer the checkpoint keeps in full
    precision; return the checkpoint tensors used, for the plain load to skip."""
    files = _tensor_files(folder, device)
    found = _quantized_tensors(files, quantization)
    if not found:
        raise ValueError(f"config.json says the checkpoint is {quantization.method}-quantized, "
                         f"but no tensor in {folder} is stored that way")
    used = {f"{linear}.{leaf}" for linear, leaves in found.items() for leaf in leaves}
    for target, parts in _targets(model, sorted(found)).items():
        module = model.get_submodule(target)
        weight, plain = _serve_shards(module, parts, found, files, target, device,
                                      quantization)
        module.use_quantized(weight)
        module.release_weight()
        used |= plain
    return used
