"""bitsandbytes checkpoints, made here by transformers and bitsandbytes themselves, load and
generate what their weights say.

A tiny Llama (2 layers, hidden 128, the builtin's tokenizer) is saved in full precision,
loaded by transformers with a `BitsAndBytesConfig` on the CPU (4-bit NF4 with double
quantization, 4-bit FP4, 8-bit) and saved again with `save_pretrained`: the files a
"-bnb-4bit" upload holds. The engine serves each folder in fp32, and its greedy tokens equal
those of transformers' `LlamaForCausalLM` holding bitsandbytes' own dequantization of the
saved weights in fp32; with adapters on the NF4 base (QLoRA's case), those of PEFT on that
model. One case leaves single projections of fused layers in full precision
(`llm_int8_skip_modules`), served beside their quantized partners. (transformers'
bitsandbytes model is not the oracle: on the CPU, without the `kernels` package, its 4-bit
products round to bf16, 0.03 off an fp32 product here, and its 8-bit ones round the
activations to int8.)
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from loraplex.runtime.engine.engine import Engine
from loraplex.runtime.layers.quantized_parts import DenseShard
from loraplex.runtime.models.loader import load_model
from tests.helpers import builtin_tokenizer
from tests.helpers.checkpoint_oracle import (
    NEW_TOKENS,
    PROMPTS,
    engine_config,
    engine_greedy,
    greedy_with_adapters,
    hf_greedy,
    hf_model,
)
from tests.helpers.quantized_checkpoints import tiny_quantized_config

bitsandbytes = pytest.importorskip("bitsandbytes")

pytestmark = [pytest.mark.timeout(300)]

CASES = {  # name -> BitsAndBytesConfig settings
    "nf4-double-quant": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                             bnb_4bit_use_double_quant=True),
    "fp4": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4"),
    "int8": dict(load_in_8bit=True),
    # modules left in full precision, as some published "dynamic" 4-bit bases do: gate_proj
    # and k_proj beside their quantized partners of gate|up and q|k|v
    "nf4-skipping-shards": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                llm_int8_skip_modules=["lm_head", "gate_proj", "k_proj"]),
}
METHODS = {"nf4-double-quant": "bitsandbytes-nf4", "fp4": "bitsandbytes-fp4",
           "int8": "bitsandbytes-int8", "nf4-skipping-shards": "bitsandbytes-nf4"}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bitsandbytes-checkpoints")


@functools.cache
def full_precision(root: Path) -> Path:
    """A tiny Llama in fp32, weights drawn wide enough that greedy tokens vary."""
    folder = root / "full-precision"
    config = tiny_quantized_config("none", 32)
    del config.quantization_config
    config.initializer_range = 0.2
    torch.manual_seed(7)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    builtin_tokenizer().save_pretrained(folder)
    return folder


def dequantized_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every weight of the saved checkpoint in fp32, its quantized ones as bitsandbytes reads
    and dequantizes them (`QuantState.from_dict`, blocks of 64 within rows, where its CPU
    dequantization is right). The loaded bitsandbytes model holds its 4-bit weights in a
    CPU layout of its own, so the saved files are the common ground."""
    functional = bitsandbytes.functional
    saved = load_file(str(folder / "model.safetensors"))
    weights, used = {}, set()
    for name in saved:
        linear, marker, _ = name.partition(".weight.quant_state.")
        if marker:
            leaves = {key.removeprefix(f"{linear}.weight."): tensor
                      for key, tensor in saved.items() if key.startswith(f"{linear}.weight.")}
            used.update(f"{linear}.weight.{leaf}" for leaf in leaves)  # from_dict pops some
            state = functional.QuantState.from_dict(leaves, device=torch.device("cpu"))
            weights[f"{linear}.weight"] = functional.dequantize_4bit(
                saved[f"{linear}.weight"], state).float()
        elif name.endswith(".SCB"):
            linear = name.removesuffix(".SCB")
            weights[f"{linear}.weight"] = functional.int8_vectorwise_dequant(
                saved[f"{linear}.weight"], saved[name])
            used.update({name, f"{linear}.weight_format"})
    weights.update({name: tensor.float() for name, tensor in saved.items()
                    if name not in weights and name not in used})
    return weights


@functools.cache
def checkpoint(case: str, root: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """(the saved folder, its weights dequantized)."""
    source = full_precision(root)
    quantized = AutoModelForCausalLM.from_pretrained(
        source, quantization_config=BitsAndBytesConfig(
            **CASES[case], bnb_4bit_compute_dtype=torch.float32),
        dtype=torch.float32, device_map="cpu")
    folder = root / case
    quantized.save_pretrained(folder)
    builtin_tokenizer().save_pretrained(folder)
    return folder, dequantized_weights(folder)


@pytest.mark.parametrize("case", list(CASES))
def test_checkpoint_generates_what_bitsandbytes_weights_generate(case, root) -> None:
    folder, dequantized = checkpoint(case, root)
    engine = Engine(engine_config(folder))
    try:
        loaded = engine.loaded
        assert loaded.quantization == METHODS[case]
        assert engine.memory_plan.as_dict()["quantization"] == METHODS[case]
        layers = [m for m in loaded.model.own_linears() if m is not loaded.model.lm_head]
        assert layers and all(m.weight is None and m.quantized is not None for m in layers)
        skipped = CASES[case].get("llm_int8_skip_modules", [])
        dense_shards = [p for m in layers for p in getattr(m.quantized, "parts", ())
                        if isinstance(p, DenseShard)]
        assert len(dense_shards) == 2 * len(loaded.model.model.layers) * (len(skipped) > 0)
        dense = sum(p.weight.numel() for p in dense_shards)  # fp32
        quantized = sum(t.numel() for n, t in dequantized.items()
                        if n.endswith("proj.weight")) - dense
        bits = 4 if CASES[case].get("load_in_4bit") else 8
        linear_bytes = sum(m.weight_bytes for m in layers)
        assert linear_bytes < quantized * (bits + 1) / 8 + dense * 4  # codes, their scales
        served = engine_greedy(engine, [None])
    finally:
        engine.close()
    expected = hf_greedy(hf_model(folder, dequantized), PROMPTS)
    assert served == expected
    assert len({tokens for row in expected for tokens in row}) > NEW_TOKENS  # tokens vary


def test_adapters_on_an_nf4_checkpoint_equal_peft(root) -> None:
    """QLoRA's case: adapters trained over the NF4 base, served over the same base."""
    folder, dequantized = checkpoint("nf4-double-quant", root)
    served, expected = greedy_with_adapters(folder, dequantized, root)
    assert served == [*expected["r4"], *expected["r16"], *expected["__base__"]]
    assert expected["r4"] != expected["__base__"] != expected["r16"]  # the adapters matter


def test_a_bitsandbytes_checkpoint_is_not_quantized_again(root) -> None:
    folder, _ = checkpoint("fp4", root)
    with pytest.raises(ValueError, match="already bitsandbytes-fp4-quantized .* --quantize nf4"):
        load_model(engine_config(folder, quantize="nf4"))
