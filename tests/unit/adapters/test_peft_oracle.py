"""Our reading of PEFT adapters against PEFT itself: module selection, ranks, scalings, deltas.

PEFT is the oracle: for each config we let PEFT wrap a real (tiny) Llama model and compare
which modules it wrapped, at what rank and scaling, and what each LoRA module adds to its
base layer's output, with what we parse from the same files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from loraplex.runtime.adapters.peft_config import plan_lora_modules
from loraplex.runtime.adapters.peft_format import load_peft_adapter
from loraplex.runtime.adapters.synthetic import write_random_adapter
from loraplex.runtime.adapters.target import MODULE_PLACES, LoraTargetShapes

TINY = LlamaConfig(hidden_size=48, intermediate_size=80, num_attention_heads=4,
                   num_key_value_heads=2, num_hidden_layers=3, vocab_size=64)
TINY_TARGET = LoraTargetShapes.from_hf_config(TINY)

SELECTION_CASES = {
    "subset": dict(target_modules=["q_proj", "v_proj"]),
    "regex": dict(target_modules=r".*\.(q|v)_proj"),
    "regex-one-layer": dict(target_modules=r"model\.layers\.1\..*\.(gate|up)_proj"),
    "all-linear": dict(target_modules="all-linear"),
    "all-linear-exclude": dict(target_modules="all-linear", exclude_modules=["k_proj"]),
    "layers-list": dict(target_modules=["o_proj", "down_proj"], layers_to_transform=[1]),
    "layers-int": dict(target_modules=["q_proj"], layers_to_transform=0),
    "layers-pattern": dict(target_modules=["k_proj"], layers_to_transform=[0, 2],
                           layers_pattern="layers"),
    "full-names": dict(target_modules=["model.layers.0.self_attn.q_proj", "v_proj"],
                       layers_to_transform=[1]),
    "superset-names": dict(target_modules=["q_proj", "c_attn", "W_pack"]),
    "patterns": dict(target_modules=["q_proj", "k_proj", "v_proj", "down_proj"], r=4,
                     lora_alpha=12, rank_pattern={"q_proj": 2, r"layers\.1\.mlp\.down_proj": 6},
                     alpha_pattern={"v_proj": 3}),
    "rslora": dict(target_modules=["q_proj", "up_proj"], r=16, lora_alpha=8, use_rslora=True),
}


def peft_wrapped(config: dict) -> dict[tuple[int, str], tuple[int, float]]:
    torch.manual_seed(0)
    model = get_peft_model(LlamaForCausalLM(TINY), LoraConfig(**config))
    wrapped = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            parts = name.split(".")  # base_model.model.model.layers.L.parent.module
            wrapped[(int(parts[4]), parts[6])] = (module.r["default"], module.scaling["default"])
    return wrapped


@pytest.mark.parametrize("case", list(SELECTION_CASES))
def test_module_selection_matches_peft(case: str) -> None:
    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, **SELECTION_CASES[case]}
    expected = peft_wrapped(SELECTION_CASES[case] | {"r": config["r"],
                                                     "lora_alpha": config["lora_alpha"]})
    planned = plan_lora_modules(config, TINY_TARGET, max_rank=64, where="test")
    ours = {(p.layer, p.module): (p.rank, p.scaling) for p in planned}
    assert ours.keys() == expected.keys()
    for key, (rank, scaling) in expected.items():
        assert ours[key][0] == rank
        assert ours[key][1] == pytest.approx(scaling)


@pytest.fixture(scope="module")
def tiny_base() -> LlamaForCausalLM:
    torch.manual_seed(1)
    return LlamaForCausalLM(TINY).eval()


ADAPTER_CASES = {
    "all-modules": dict(rank=8),
    "mixed-ranks": dict(rank=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                "down_proj"],
                        rank_pattern={"k_proj": 2, "down_proj": 5}, alpha_pattern={"o_proj": 3}),
    "rslora-some-layers": dict(rank=6, target_modules=["gate_proj", "up_proj", "v_proj"],
                               use_rslora=True, layers=[0, 2], alpha=4),
    "bf16-regex": dict(rank=4, target_modules=r".*\.(k|o|down)_proj", dtype=torch.bfloat16),
}


@pytest.mark.parametrize("case", list(ADAPTER_CASES))
def test_parsed_deltas_match_peft_modules(case: str, tmp_path: Path,
                                          tiny_base: LlamaForCausalLM) -> None:
    folder = write_random_adapter(tmp_path / case, TINY_TARGET, seed=3, **ADAPTER_CASES[case])
    weights = load_peft_adapter(folder, TINY_TARGET, max_rank=64)
    peft_model = PeftModel.from_pretrained(tiny_base, folder)
    try:
        generator = torch.Generator().manual_seed(0)
        checked = 0
        for layer in range(TINY_TARGET.num_layers):
            for name, (parent, _, _) in MODULE_PLACES.items():
                module = getattr(getattr(peft_model.base_model.model.model.layers[layer],
                                         parent), name)
                x = torch.randn(5, module.in_features, generator=generator)  # [T, d_in]
                parsed = weights.module(layer, name)
                if not hasattr(module, "lora_A"):
                    assert parsed is None
                    continue
                with torch.no_grad():
                    peft_delta = module(x) - module.base_layer(x)  # [T, d_out]
                lora_a, lora_b = parsed
                assert lora_a.shape[0] == module.r["default"]
                torch.testing.assert_close(x @ lora_a.T @ lora_b.T, peft_delta,
                                           rtol=1e-5, atol=1e-5)
                assert peft_delta.abs().max() > 0.1  # a real delta, not PEFT's zero init
                checked += 1
        assert checked == len(weights.module_ranks)
    finally:
        peft_model.unload()


def test_whole_model_logits_match_peft(tmp_path: Path, tiny_base: LlamaForCausalLM) -> None:
    """Adding our parsed deltas to every base linear reproduces PeftModel's logits."""
    case = ADAPTER_CASES["mixed-ranks"]
    folder = write_random_adapter(tmp_path / "adapter", TINY_TARGET, seed=9, **case)
    weights = load_peft_adapter(folder, TINY_TARGET, max_rank=64)
    generator = torch.Generator().manual_seed(2)
    input_ids = torch.randint(0, TINY.vocab_size, (1, 7), generator=generator)
    hooks = []
    for layer in range(TINY_TARGET.num_layers):
        for name, (parent, _, _) in MODULE_PLACES.items():
            parsed = weights.module(layer, name)
            if parsed is None:
                continue
            linear = getattr(getattr(tiny_base.model.layers[layer], parent), name)

            def add_delta(_module, inputs, output, pair=parsed):
                return output + inputs[0] @ pair[0].T @ pair[1].T

            hooks.append(linear.register_forward_hook(add_delta))
    with torch.no_grad():
        ours = tiny_base(input_ids).logits
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        base = tiny_base(input_ids).logits
    peft_model = PeftModel.from_pretrained(tiny_base, folder)
    try:
        with torch.no_grad():
            expected = peft_model(input_ids).logits
    finally:
        peft_model.unload()
    assert (expected - base).abs().max() > 1e-2
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_synthetic_config_is_what_peft_saves(tmp_path: Path) -> None:
    """Every field we write is a LoraConfig field with a value PEFT accepts as-is."""
    folder = write_random_adapter(tmp_path / "a", TINY_TARGET, rank=4, layers=[1])
    written = json.loads((folder / "adapter_config.json").read_text())
    config = LoraConfig.from_pretrained(folder)
    for key, value in written.items():
        if key in ("task_type", "peft_type"):
            assert str(getattr(config, key)).endswith(value)
        elif key == "target_modules":
            assert set(config.target_modules) == set(value)
        else:
            assert getattr(config, key) == value, key
