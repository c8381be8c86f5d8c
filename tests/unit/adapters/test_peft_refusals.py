"""Every adapter we cannot run exactly is refused with a reason and a message naming why."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from loraplex.runtime.adapters.errors import AdapterError
from loraplex.runtime.adapters.peft_format import load_peft_adapter
from loraplex.runtime.adapters.synthetic import write_random_adapter
from loraplex.runtime.adapters.target import LoraTargetShapes

Q_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
Q_B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def edit_config(**changes) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        config = json.loads((folder / CONFIG).read_text())
        config.update(changes)
        (folder / CONFIG).write_text(json.dumps(config))
    return apply


def edit_tensors(change: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        tensors = load_file(folder / WEIGHTS)
        change(tensors)
        save_file(tensors, folder / WEIGHTS)
    return apply


def replace_weights(pickle_name: str) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        torch.save(load_file(folder / WEIGHTS), folder / pickle_name)
        (folder / WEIGHTS).unlink()
    return apply


def write_bytes(name: str, cut: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        (folder / name).write_bytes(cut((folder / name).read_bytes()))
    return apply


def add_tensor(key: str, shape: tuple[int, ...], dtype=torch.float32):
    return edit_tensors(lambda t: t.__setitem__(key, torch.ones(shape, dtype=dtype)))


def drop(key: str):
    return edit_tensors(lambda t: t.pop(key))


def put_nan(tensors: dict[str, torch.Tensor]) -> None:
    tensors[Q_B][3, 1] = float("nan")


def remove(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).unlink()


# case: (mutation of a valid q_proj+v_proj rank-8 adapter, reason, words the message must hold)
REFUSALS = {
    "pickle-bin": (replace_weights("adapter_model.bin"), "pickle_weights",
                   ["adapter_model.bin", "convert to safetensors"]),
    "pickle-pt": (replace_weights("adapter_model.pt"), "pickle_weights", ["adapter_model.pt"]),
    "no-weights": (remove(WEIGHTS), "missing_file", [WEIGHTS]),
    "no-config": (remove(CONFIG), "missing_file", [CONFIG]),
    "config-not-json": (write_bytes(CONFIG, lambda b: b[:20]), "bad_config", [CONFIG]),
    "dora": (edit_config(use_dora=True), "dora", ["DoRA"]),
    "bias": (edit_config(bias="lora_only"), "unsupported_bias", ["lora_only"]),
    "lora-bias": (edit_config(lora_bias=True), "unsupported_variant", ["lora_bias"]),
    "modules-to-save": (edit_config(modules_to_save=["lm_head"]), "unsupported_variant",
                        ["modules_to_save"]),
    "not-lora": (edit_config(peft_type="IA3"), "unsupported_peft_type", ["IA3"]),
    "lm-head-target": (edit_config(target_modules=["q_proj", "lm_head"]),
                       "unsupported_module", ["lm_head"]),
    "embedding-target": (edit_config(target_modules=["embed_tokens"]), "unsupported_module",
                         ["embed_tokens"]),
    "no-such-module": (edit_config(target_modules=["c_attn"]), "unknown_module",
                       ["c_attn", "matches no module"]),
    "regex-hits-norm": (edit_config(target_modules=r".*layernorm"), "unsupported_module",
                        ["input_layernorm"]),
    "lm-head-tensor": (add_tensor("base_model.model.lm_head.lora_A.weight", (8, 576)),
                       "unsupported_module", ["lm_head"]),
    "embedding-tensor": (add_tensor("base_model.model.model.embed_tokens.lora_embedding_A",
                                    (8, 64)), "unexpected_tensor", ["lora_embedding_A"]),
    "dora-magnitude-tensor": (
        add_tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector",
                   (576,)), "unexpected_tensor", ["lora_magnitude_vector"]),
    "layer-the-model-lacks": (
        add_tensor("base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight", (8, 576)),
        "unknown_module", ["layers.7", "2 layers"]),
    "untargeted-tensor": (
        add_tensor("base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight", (8, 576)),
        "unexpected_tensor", ["k_proj", "target_modules"]),
    "missing-tensor": (drop(Q_B), "missing_tensor", [Q_B]),
    "shape-of-another-model": (edit_tensors(lambda t: t.__setitem__(Q_A, torch.ones(8, 4096))),
                               "shape_mismatch", [Q_A, "[8, 4096]", "[8, 576]"]),
    "rank-disagrees-with-config": (edit_config(r=4, lora_alpha=8), "shape_mismatch", ["rank 4"]),
    "rank-above-limit": (edit_config(rank_pattern={"v_proj": 32}), "rank_too_large",
                         ["32", "max-lora-rank 16"]),
    "corrupt-weights": (write_bytes(WEIGHTS, lambda b: b"\x10" * 64), "corrupt_weights",
                        [WEIGHTS]),
    "truncated-weights": (write_bytes(WEIGHTS, lambda b: b[: len(b) // 2]), "corrupt_weights",
                          ["truncated"]),
    "layers-out-of-range": (edit_config(layers_to_transform=[0, 5]), "layer_out_of_range",
                            ["[5]", "0..1"]),
    "regex-with-layers": (edit_config(target_modules=".*q_proj", layers_to_transform=[0]),
                          "bad_config", ["layers_to_transform"]),
    "zero-rank": (edit_config(r=0), "bad_config", ["r must be a positive integer"]),
    "nan": (edit_tensors(put_nan), "non_finite", [Q_B]),
    "integer-tensor": (edit_tensors(lambda t: t.__setitem__(Q_A, torch.ones(8, 576,
                                                                           dtype=torch.int32))),
                       "bad_dtype", [Q_A]),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_with_reason(case: str, tmp_path: Path, smol_target: LoraTargetShapes) -> None:
    mutate, reason, words = REFUSALS[case]
    folder = write_random_adapter(tmp_path / case, smol_target, rank=8,
                                  target_modules=["q_proj", "v_proj"])
    load_peft_adapter(folder, smol_target, max_rank=16)  # valid before the mutation
    mutate(folder)
    with pytest.raises(AdapterError) as refused:
        load_peft_adapter(folder, smol_target, max_rank=16, where="adapter 'x'")
    assert refused.value.reason == reason
    message = str(refused.value)
    assert message.startswith("adapter 'x'")
    for word in words:
        assert word in message


def test_adapter_error_is_a_value_error() -> None:
    assert issubclass(AdapterError, ValueError)


def test_adapter_of_another_model_is_refused(tmp_path: Path,
                                             smol_target: LoraTargetShapes) -> None:
    other = LoraTargetShapes(num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2,
                             head_dim=16, intermediate_size=96)
    folder = write_random_adapter(tmp_path / "other", other, rank=4)
    with pytest.raises(AdapterError) as refused:
        load_peft_adapter(folder, smol_target, max_rank=16)
    assert refused.value.reason == "shape_mismatch"
