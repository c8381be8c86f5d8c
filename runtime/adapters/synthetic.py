"""Random but valid PEFT LoRA adapters, for tests and benchmarks that may not download any.

The folder is what `PeftModel.save_pretrained` writes: an `adapter_config.json` with
PEFT's fields and an `adapter_model.safetensors` with PEFT's tensor names. Unlike a
freshly initialised PEFT adapter (B = 0, a no-op), both A and B are non-zero and the
delta is large enough to change a small model's greedy output: A has std 1/sqrt(d_in), so
A·x keeps x's scale, and B is sized so that scaling·B·A·x has about `strength` times
that scale, whatever the rank and alpha.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from loraplex.runtime.adapters.peft_config import plan_lora_modules
from loraplex.runtime.adapters.peft_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from loraplex.runtime.adapters.target import MODULE_NAMES, LoraTargetShapes


def peft_lora_config(rank: int, target_modules: Sequence[str] | str, alpha: float,
                     use_rslora: bool = False, layers: Sequence[int] | None = None,
                     rank_pattern: dict[str, int] | None = None,
                     alpha_pattern: dict[str, float] | None = None,
                     base_model: str = "") -> dict:
    """An adapter_config.json body with the fields PEFT's LoraConfig saves."""
    return {
        "alpha_pattern": dict(alpha_pattern or {}),
        "auto_mapping": None,
        "base_model_name_or_path": base_model or None,
        "bias": "none",
        "exclude_modules": None,
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layer_replication": None,
        "layers_pattern": None,
        "layers_to_transform": list(layers) if layers is not None else None,
        "loftq_config": {},
        "lora_alpha": alpha,
        "lora_bias": False,
        "lora_dropout": 0.0,
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": rank,
        "rank_pattern": dict(rank_pattern or {}),
        "revision": None,
        "target_modules": target_modules if isinstance(target_modules, str)
        else list(target_modules),
        "task_type": "CAUSAL_LM",
        "use_dora": False,
        "use_rslora": use_rslora,
    }


def write_random_adapter(
    folder: str | Path,
    target: LoraTargetShapes,
    rank: int,
    target_modules: Sequence[str] | str = MODULE_NAMES,
    seed: int = 0,
    alpha: float | None = None,
    use_rslora: bool = False,
    dtype: torch.dtype = torch.float32,
    layers: Sequence[int] | None = None,
    rank_pattern: dict[str, int] | None = None,
    alpha_pattern: dict[str, float] | None = None,
    strength: float = 1.0,
    base_model: str = "",
) -> Path:
    """Write a PEFT LoRA adapter with random weights into `folder` (created); return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = peft_lora_config(rank, target_modules, float(alpha if alpha is not None else 2 * rank),
                              use_rslora, layers, rank_pattern, alpha_pattern, base_model)
    planned = plan_lora_modules(config, target, max_rank=1 << 30, where=str(folder))
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for plan in planned:
        d_in, d_out = target.module_shape(plan.module)
        lora_a = torch.randn(plan.rank, d_in, generator=generator) / math.sqrt(d_in)
        lora_b = torch.randn(d_out, plan.rank, generator=generator)
        lora_b *= strength / (math.sqrt(plan.rank) * plan.scaling)
        prefix = f"base_model.model.{target.module_key(plan.layer, plan.module)}"
        tensors[f"{prefix}.lora_A.weight"] = lora_a.to(dtype).contiguous()
        tensors[f"{prefix}.lora_B.weight"] = lora_b.to(dtype).contiguous()
    save_file(tensors, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder
