"""Reads a PEFT `adapter_config.json` and decides which modules carry LoRA, at what rank.

PEFT decides this by matching `target_modules` (a list of name suffixes, a regex, or
"all-linear"), `exclude_modules`, `layers_to_transform`/`layers_pattern`, and per-module
`rank_pattern`/`alpha_pattern` against the base model's module names. The same rules are
reproduced here over the names a Llama-family model has (tests compare the result with
PEFT itself), so an adapter is served exactly as PEFT would run it, or refused with the
reason: every LoRA variant that changes the forward pass (DoRA, biases, extra trainable
modules, ...) is refused rather than silently ignored. As in PEFT, a listed name the model
lacks is harmless when other names match (recipes list several architectures' names).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from loraplex.runtime.adapters.errors import AdapterError
from loraplex.runtime.adapters.target import MODULE_NAMES, MODULE_PLACES, LoraTargetShapes

# Config fields that, when set, ask for something other than plain LoRA on linear layers.
UNSUPPORTED_FIELDS: dict[str, str] = {
    "use_dora": "DoRA (use_dora) is not supported; merge it or train plain LoRA",
    "lora_bias": "LoRA biases (lora_bias) are not supported",
    "modules_to_save": "modules_to_save (fully trained extra modules) is not supported",
    "trainable_token_indices": "trainable_token_indices is not supported",
    "target_parameters": "target_parameters (LoRA on raw parameters) is not supported",
    "layer_replication": "layer_replication is not supported",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens) is not supported",
    "use_qalora": "QA-LoRA (use_qalora) is not supported",
    "use_bdlora": "block-diagonal LoRA (use_bdlora) is not supported",
    "velora_config": "VeLoRA (velora_config) is not supported",
    "monteclora_config": "MonteCLoRA (monteclora_config) is not supported",
    "arrow_config": "Arrow routing (arrow_config) is not supported",
    "kasa_config": "KaSA (kasa_config) is not supported",
}
ALL_LINEAR = "all-linear"


@dataclass(frozen=True, slots=True)
class PlannedModule:
    layer: int
    module: str
    rank: int
    scaling: float


def model_module_keys(target: LoraTargetShapes) -> list[str]:
    """Every module name of a transformers Llama-family causal LM, as PEFT iterates them."""
    keys = ["", "model", "model.embed_tokens", "model.layers"]
    for layer in range(target.num_layers):
        prefix = f"model.layers.{layer}"
        keys += [prefix, f"{prefix}.self_attn", f"{prefix}.mlp", f"{prefix}.mlp.act_fn",
                 f"{prefix}.input_layernorm", f"{prefix}.post_attention_layernorm"]
        keys += [target.module_key(layer, name) for name in MODULE_NAMES]
    return keys + ["model.norm", "model.rotary_emb", "lm_head"]


def plan_lora_modules(config: dict[str, Any], target: LoraTargetShapes, max_rank: int,
                      where: str) -> list[PlannedModule]:
    """The modules PEFT would wrap with LoRA, with rank and scaling; refuse what we can't run."""
    _check_variant(config, where)
    rank_default = _positive_int(config.get("r", 8), "r", where)
    alpha_default = _number(config.get("lora_alpha", 8), "lora_alpha", where)
    rank_pattern = _pattern(config, "rank_pattern", where)
    alpha_pattern = _pattern(config, "alpha_pattern", where)
    use_rslora = bool(config.get("use_rslora", False))
    layer_filter = _layer_filter(config, target, where)

    planned: list[PlannedModule] = []
    unsupported: list[str] = []
    for key in model_module_keys(target):
        if not _matches(config, key, layer_filter):
            continue
        parts = key.split(".")
        if len(parts) != 5 or parts[4] not in MODULE_PLACES:
            unsupported.append(key or "<root>")
            continue
        layer, module = int(parts[2]), parts[4]
        rank = _positive_int(rank_pattern.get(_pattern_key(rank_pattern, key), rank_default),
                             f"rank_pattern for {key}", where)
        alpha = _number(alpha_pattern.get(_pattern_key(alpha_pattern, key), alpha_default),
                        f"alpha_pattern for {key}", where)
        if rank > max_rank:
            raise AdapterError("rank_too_large", f"{where}: {key} has rank {rank}, above "
                               f"--max-lora-rank {max_rank}")
        scaling = alpha / math.sqrt(rank) if use_rslora else alpha / rank
        planned.append(PlannedModule(layer, module, rank, scaling))
    if unsupported:
        raise AdapterError("unsupported_module", f"{where}: target_modules selects "
                           f"{', '.join(unsupported[:4])}; LoRA is supported only on "
                           f"{', '.join(MODULE_NAMES)}")
    if not planned:
        raise AdapterError("unknown_module", f"{where}: target_modules "
                           f"{config.get('target_modules')!r} matches no module of the base model")
    return planned


def _check_variant(config: dict[str, Any], where: str) -> None:
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise AdapterError("unsupported_peft_type", f"{where}: peft_type is "
                           f"{config.get('peft_type')!r}; only LORA adapters are supported")
    bias = config.get("bias", "none")
    if bias not in (None, "none"):
        raise AdapterError("unsupported_bias", f"{where}: bias={bias!r} is not supported; "
                           "only bias='none'")
    for name, message in UNSUPPORTED_FIELDS.items():
        if config.get(name):
            reason = "dora" if name == "use_dora" else "unsupported_variant"
            raise AdapterError(reason, f"{where}: {message}")
    if config.get("init_lora_weights") == "mica":
        raise AdapterError("unsupported_variant", f"{where}: MiCA LoRA is not supported")
    targets = config.get("target_modules")
    if not targets or not isinstance(targets, (str, list)):
        raise AdapterError("bad_config", f"{where}: target_modules must be a module list, a "
                           f"regex or 'all-linear', got {targets!r}")
    if isinstance(targets, str):
        for name in ("layers_to_transform", "layers_pattern"):
            if config.get(name) not in (None, []):
                raise AdapterError("bad_config", f"{where}: {name} cannot be used when "
                                   "target_modules is a string")


def _matches(config: dict[str, Any], key: str, layer_filter: set[int] | None) -> bool:
    """PEFT's `check_target_module_exists`, for one module name."""
    if _listed(config.get("exclude_modules"), key):
        return False
    targets = config["target_modules"]
    if isinstance(targets, str) and targets.lower() == ALL_LINEAR:
        targets = list(MODULE_NAMES)
    if isinstance(targets, str):
        return re.fullmatch(targets, key) is not None
    if key in targets:
        return True
    if not any(key.endswith(f".{name}") for name in targets):
        return False
    if layer_filter is None:
        return True
    index = _layer_index(config, key)
    return index is not None and index in layer_filter


def _listed(patterns: Any, key: str) -> bool:
    if not patterns:
        return False
    if isinstance(patterns, str):
        return re.fullmatch(patterns, key) is not None
    return key in patterns or any(key.endswith(f".{name}") for name in patterns)


def _layer_index(config: dict[str, Any], key: str) -> int | None:
    layers_pattern = config.get("layers_pattern")
    if not layers_pattern:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
    else:
        patterns = [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern
        match = None
        for pattern in patterns:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", key)
            if match is not None:
                break
    return int(match.group("idx")) if match else None


def _layer_filter(config: dict[str, Any], target: LoraTargetShapes, where: str) -> set[int] | None:
    layers = config.get("layers_to_transform")
    if layers is None or layers == []:
        return None
    indices = [layers] if isinstance(layers, int) else layers
    if not isinstance(indices, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in indices):
        raise AdapterError("bad_config", f"{where}: layers_to_transform must be an integer or "
                           f"a list of integers, got {layers!r}")
    outside = [i for i in indices if not 0 <= i < target.num_layers]
    if outside:
        raise AdapterError("layer_out_of_range", f"{where}: layers_to_transform {outside} is "
                           f"outside the base model's layers 0..{target.num_layers - 1}")
    return set(indices)


def _pattern_key(pattern: dict[str, Any], key: str) -> str:
    """PEFT's `get_pattern_key`: the first pattern that matches the end of `key`."""
    for candidate in pattern:
        if re.match(rf"(.*\.)?({candidate})$", key):
            return candidate
    return key


def _pattern(config: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    value = config.get(name) or {}
    if not isinstance(value, dict):
        raise AdapterError("bad_config", f"{where}: {name} must be an object, got {value!r}")
    return value


def _positive_int(value: Any, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise AdapterError("bad_config", f"{where}: {name} must be a positive integer, "
                           f"got {value!r}")
    return value


def _number(value: Any, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise AdapterError("bad_config", f"{where}: {name} must be a finite number, got {value!r}")
    return float(value)
