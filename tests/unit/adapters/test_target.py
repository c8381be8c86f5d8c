"""LoraTargetShapes against transformers' own configs and modules."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM, MistralConfig, Qwen2Config

from loraplex.runtime.adapters.target import MODULE_NAMES, LoraTargetShapes
from tests.unit.adapters.conftest import smol_llama_config


@pytest.mark.parametrize("config", [
    smol_llama_config(),
    MistralConfig(hidden_size=96, intermediate_size=160, num_attention_heads=6,
                  num_key_value_heads=2, num_hidden_layers=3, head_dim=32, vocab_size=32),
    Qwen2Config(hidden_size=64, intermediate_size=80, num_attention_heads=4,
                num_key_value_heads=4, num_hidden_layers=2, vocab_size=32),
], ids=["smollm2-llama", "mistral-head-dim", "qwen2-mha"])
def test_module_shapes_match_the_transformers_model(config) -> None:
    target = LoraTargetShapes.from_hf_config(config)
    assert target.num_layers == config.num_hidden_layers
    if isinstance(config, Qwen2Config):
        from transformers import Qwen2ForCausalLM as model_class
    elif isinstance(config, MistralConfig):
        from transformers import MistralForCausalLM as model_class
    else:
        model_class = LlamaForCausalLM
    with torch.device("meta"):
        model = model_class(config)
    modules = dict(model.named_modules())
    for layer in range(target.num_layers):
        for name in MODULE_NAMES:
            linear = modules[target.module_key(layer, name)]
            assert target.module_shape(name) == (linear.in_features, linear.out_features)


def test_groups_stack_slices_at_their_offsets(smol_target: LoraTargetShapes) -> None:
    q_out, kv_out = 9 * 64, 3 * 64
    assert smol_target.slice_offsets("qkv") == (0, q_out, q_out + kv_out, q_out + 2 * kv_out)
    assert smol_target.slice_offsets("gate_up") == (0, 1536, 3072)
    assert smol_target.slice_offsets("o") == (0, 576)
    assert smol_target.group("down").d_in == 1536
    assert smol_target.group("o").d_in == q_out
    assert smol_target.group("qkv").num_slices == 3


def test_bad_shapes_and_names_are_refused(smol_target: LoraTargetShapes) -> None:
    with pytest.raises(ValueError, match="num_kv_heads"):
        LoraTargetShapes(2, 64, num_heads=4, num_kv_heads=3, head_dim=16, intermediate_size=8)
    with pytest.raises(ValueError, match="num_layers must be positive"):
        LoraTargetShapes(0, 64, 4, 4, 16, 8)
    with pytest.raises(ValueError, match="unknown module 'lm_head'"):
        smol_target.module_shape("lm_head")
    with pytest.raises(ValueError, match="unknown projection group"):
        smol_target.slice_offsets("qkvo")
