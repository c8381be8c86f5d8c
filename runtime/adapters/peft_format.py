"""Loads a PEFT LoRA adapter folder into `AdapterWeights`, or refuses it with the reason.

A folder holds `adapter_config.json` and `adapter_model.safetensors`. Pickle weights
(`.bin`, `.pt`, `.pth`) are never opened: unpickling runs arbitrary code. Everything else
that could make the served adapter differ from what PEFT would run — variants, modules the
model lacks, missing or extra tensors, shapes of another base model, ranks above the
server's limit, corrupt files, non-finite values — raises `AdapterError` with a `reason`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from loraplex.runtime.adapters.digest import content_digest
from loraplex.runtime.adapters.errors import AdapterError
from loraplex.runtime.adapters.peft_config import PlannedModule, plan_lora_modules
from loraplex.runtime.adapters.target import MODULE_PLACES, LoraTargetShapes
from loraplex.runtime.adapters.weights import AdapterWeights, GroupWeights

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
_TENSOR_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<side>[AB])\.weight")
_MODULE_KEY = re.compile(r"model\.layers\.(?P<layer>\d+)\.(?P<parent>\w+)\.(?P<name>\w+)")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_adapter_files(names: Iterable[str], where: str) -> None:
    """Refuse a folder (by its file names) that lacks the config or has only pickle weights."""
    names = set(names)
    if ADAPTER_CONFIG not in names:
        raise AdapterError("missing_file", f"{where}: no {ADAPTER_CONFIG} (is this a PEFT "
                           "LoRA adapter?)")
    if ADAPTER_WEIGHTS not in names:
        pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise AdapterError("pickle_weights", f"{where}: weights are in {', '.join(pickles)}; "
                               "pickle files are refused because loading them can run code; "
                               "convert to safetensors (adapter_model.safetensors)")
        raise AdapterError("missing_file", f"{where}: no {ADAPTER_WEIGHTS}")


def load_peft_adapter(folder: str | Path, target: LoraTargetShapes, max_rank: int,
                      where: str | None = None, dtype: torch.dtype = torch.float32,
                      pin_memory: bool = False) -> AdapterWeights:
    """Read, validate and pack one adapter folder; `where` names it in error messages.

    The packed weights are in `dtype` (the serving dtype: scaling is applied in fp32
    first), allocated page-locked when `pin_memory` so they go to a device slot by DMA
    without an intermediate copy.
    """
    folder = Path(folder)
    where = where or str(folder)
    if not folder.is_dir():
        raise AdapterError("missing_file", f"{where}: adapter folder {folder} does not exist")
    check_adapter_files((p.name for p in folder.iterdir()), where)
    config_bytes = _read_bytes(folder / ADAPTER_CONFIG, where)
    config = parse_adapter_config(config_bytes, where)
    planned = plan_lora_modules(config, target, max_rank, where)
    weights_path = folder / ADAPTER_WEIGHTS
    try:
        digest = content_digest([(ADAPTER_CONFIG, config_bytes), (ADAPTER_WEIGHTS, weights_path)])
    except OSError as error:
        raise AdapterError("missing_file", f"{where}: cannot read {ADAPTER_WEIGHTS}: "
                           f"{error}") from None
    tensors = _read_tensors(weights_path, planned, target, where)
    groups = _pack(planned, tensors, target, dtype, pin_memory)
    extra = {"base_model_name_or_path": str(config.get("base_model_name_or_path") or "")}
    return AdapterWeights(
        target=target,
        groups=groups,
        module_ranks={(p.layer, p.module): p.rank for p in planned},
        module_scalings={(p.layer, p.module): p.scaling for p in planned},
        digest=digest,
        extra=extra,
    )


def _read_bytes(path: Path, where: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise AdapterError("missing_file", f"{where}: cannot read {path.name}: {error}") from None


def parse_adapter_config(data: bytes, where: str) -> dict[str, Any]:
    try:
        config = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AdapterError("bad_config",
                           f"{where}: cannot read {ADAPTER_CONFIG}: {error}") from None
    if not isinstance(config, dict):
        raise AdapterError("bad_config", f"{where}: {ADAPTER_CONFIG} must hold a JSON object")
    return config


def _read_tensors(path: Path, planned: list[PlannedModule], target: LoraTargetShapes,
                  where: str) -> dict[tuple[int, str, str], torch.Tensor]:
    """(layer, module, "A"|"B") → float32 tensor, checked against the plan and the shapes."""
    wanted = {(p.layer, p.module): p for p in planned}
    tensors: dict[tuple[int, str, str], torch.Tensor] = {}
    try:
        with safe_open(path, framework="pt") as handle:
            keys = list(handle.keys())
            for key in keys:
                place = _tensor_place(key, target, where)
                if place[:2] not in wanted:
                    raise AdapterError("unexpected_tensor", f"{where}: tensor {key} is not "
                                       "selected by target_modules in adapter_config.json")
                tensors[place] = handle.get_tensor(key)
    except (SafetensorError, OSError) as error:
        raise AdapterError("corrupt_weights", f"{where}: {ADAPTER_WEIGHTS} is corrupt or "
                           f"truncated: {error}") from None
    for (layer, module), plan in wanted.items():
        for side in "AB":
            tensor = tensors.get((layer, module, side))
            key = f"base_model.model.{target.module_key(layer, module)}.lora_{side}.weight"
            if tensor is None:
                raise AdapterError("missing_tensor", f"{where}: tensor {key} is missing")
            tensors[(layer, module, side)] = _checked(tensor, key, plan, side, target, where)
    return tensors


def _tensor_place(key: str, target: LoraTargetShapes, where: str) -> tuple[int, str, str]:
    match = _TENSOR_KEY.fullmatch(key)
    if match is None:
        raise AdapterError("unexpected_tensor", f"{where}: tensor {key} is not a LoRA A/B "
                           "weight (DoRA magnitudes, biases and embeddings are not supported)")
    module = _MODULE_KEY.fullmatch(match["module"])
    if module is None or MODULE_PLACES.get(module["name"], ("",))[0] != module["parent"]:
        raise AdapterError("unsupported_module", f"{where}: tensor {key} adapts "
                           f"{match['module']}; LoRA is supported only on "
                           f"{', '.join(MODULE_PLACES)}")
    layer = int(module["layer"])
    if layer >= target.num_layers:
        raise AdapterError("unknown_module", f"{where}: tensor {key} is for layer {layer}, but "
                           f"the base model has {target.num_layers} layers")
    return layer, module["name"], match["side"]


def _checked(tensor: torch.Tensor, key: str, plan: PlannedModule, side: str,
             target: LoraTargetShapes, where: str) -> torch.Tensor:
    d_in, d_out = target.module_shape(plan.module)
    expected = (plan.rank, d_in) if side == "A" else (d_out, plan.rank)
    if tuple(tensor.shape) != expected:
        raise AdapterError("shape_mismatch", f"{where}: tensor {key} has shape "
                           f"{list(tensor.shape)} but rank {plan.rank} on this base model needs "
                           f"{list(expected)} (adapter for another base model?)")
    if tensor.dtype not in _FLOAT_DTYPES:
        raise AdapterError("bad_dtype", f"{where}: tensor {key} has dtype {tensor.dtype}; "
                           "expected a floating-point dtype")
    tensor = tensor.to(torch.float32)
    if not bool(torch.isfinite(tensor).all()):
        raise AdapterError("non_finite", f"{where}: tensor {key} holds NaN or infinite values")
    return tensor * plan.scaling if side == "B" else tensor


def _pack(planned: list[PlannedModule], tensors: dict[tuple[int, str, str], torch.Tensor],
          target: LoraTargetShapes, dtype: torch.dtype,
          pin_memory: bool) -> dict[str, GroupWeights]:
    group_ranks: dict[str, int] = {}
    for plan in planned:
        group_name = MODULE_PLACES[plan.module][1]
        group_ranks[group_name] = max(group_ranks.get(group_name, 0), plan.rank)
    groups: dict[str, GroupWeights] = {}
    for group_name, rank in group_ranks.items():
        group = target.group(group_name)
        lora_a = torch.zeros(target.num_layers, group.num_slices, rank, group.d_in,
                             dtype=dtype, pin_memory=pin_memory)
        # B is stored rank-major, like the slot pool, so a slot copy is one contiguous read
        lora_b = torch.zeros(target.num_layers, rank, group.d_out, dtype=dtype,
                             pin_memory=pin_memory)
        groups[group_name] = GroupWeights(lora_a, lora_b.transpose(1, 2))
    for plan in planned:
        _, group_name, index = MODULE_PLACES[plan.module]
        offsets = target.group(group_name).offsets
        packed = groups[group_name]
        packed.a[plan.layer, index, :plan.rank] = tensors[(plan.layer, plan.module, "A")]
        packed.b[plan.layer, offsets[index]:offsets[index + 1], :plan.rank] = (
            tensors[(plan.layer, plan.module, "B")])
    return groups
