"""GPTQ and AWQ checkpoints load from a folder and generate what their weights say.

A tiny Llama (2 layers, hidden 128) is written here in each format from the formats'
descriptions (tests/helpers/quantized_checkpoints.py), with a `quantization_config` in
its config.json. The engine loads it through `EngineConfig(model=folder)` and its greedy
tokens equal, token for token, those of transformers' `LlamaForCausalLM` holding the
dequantized weights in fp32, and with LoRA adapters those of PEFT on that model (the CPU
int4 kernel reads the activations in bf16, a rounding these fixed seeds stay clear of).
Bad checkpoints are refused at load with a message naming the problem.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

from loraplex.runtime.engine.engine import Engine
from loraplex.runtime.models.loader import load_model
from tests.helpers import builtin_tokenizer
from tests.helpers.checkpoint_oracle import (
    PROMPTS,
    engine_config,
    engine_greedy,
    greedy_with_adapters,
    hf_greedy,
    hf_model,
)
from tests.helpers.quantized_checkpoints import write_quantized_llama
from tests.integration.runtime_servers import runtime_server

pytestmark = [pytest.mark.timeout(300)]

CASES = {  # name -> write_quantized_llama settings
    "gptq-g32-desc_act-split": dict(method="gptq", group_size=32, desc_act=True,
                                    split_order_layer=1),
    "gptq-g128-sym-v2": dict(method="gptq", group_size=128, sym=True,
                             checkpoint_format="gptq_v2"),
    "gptq-g64-sym-desc_act": dict(method="gptq", group_size=64, sym=True, desc_act=True),
    "gptq-per-row": dict(method="gptq", group_size=-1),
    "gptq-qwen2-biases-lm_head": dict(method="gptq", group_size=32, desc_act=True,
                                      model_type="qwen2", quantized_lm_head=True),
    "awq-g64": dict(method="awq", group_size=64),
    "awq-g128": dict(method="awq", group_size=128),
}


@functools.cache
def checkpoint(case: str, root: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    folder = root / case
    dequantized = write_quantized_llama(folder, builtin_tokenizer(), seed=len(case),
                                        **CASES[case])
    return folder, dequantized


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("quantized-checkpoints")


@pytest.mark.parametrize("case", list(CASES))
def test_checkpoint_generates_what_its_dequantized_weights_generate(case, root) -> None:
    folder, dequantized = checkpoint(case, root)
    engine = Engine(engine_config(folder))
    try:
        loaded = engine.loaded
        method = CASES[case]["method"]
        assert loaded.quantization == method
        assert engine.memory_plan.as_dict()["quantization"] == method
        linears = sum(t.numel() for n, t in dequantized.items() if "layers" in n
                      and n.endswith("proj.weight"))
        # a tied LM head, packed, holds a second copy of the table
        head_copy = (dequantized["model.embed_tokens.weight"].numel()
                     if loaded.hf_config.tie_word_embeddings
                     and loaded.model.lm_head.packed_weight is not None else 0)
        assert loaded.weight_bytes < (sum(t.numel() for t in dequantized.values())
                                      - linears * 0.8 + head_copy) * 4  # linears ~4 bits
        quantized_head = CASES[case].get("quantized_lm_head", False)
        assert all(m.weight is None and m.quantized is not None
                   for m in loaded.model.own_linears()
                   if m is not loaded.model.lm_head or quantized_head)
        assert (loaded.model.lm_head.quantized is not None) == quantized_head
        served = engine_greedy(engine, [None])
    finally:
        engine.close()
    assert served == hf_greedy(hf_model(folder, dequantized), PROMPTS)


def test_adapters_on_a_gptq_checkpoint_equal_peft(root) -> None:
    folder, dequantized = checkpoint("gptq-g32-desc_act-split", root)
    served, expected = greedy_with_adapters(folder, dequantized, root)
    assert served == [*expected["r4"], *expected["r16"], *expected["__base__"]]
    assert expected["r4"] != expected["__base__"] != expected["r16"]  # the adapters matter


SEPARATE_CONFIGS = {  # case -> (the tool's own file, its content as that tool writes it)
    "gptq-g64-sym-desc_act": ("quantize_config.json", {"bits": 4, "group_size": 64,
                                                       "desc_act": True, "sym": True}),
    "awq-g64": ("quant_config.json", {"zero_point": True, "q_group_size": 64, "w_bit": 4,
                                      "version": "GEMM"}),
}


@pytest.mark.parametrize("case", list(SEPARATE_CONFIGS))
def test_the_tools_own_config_file_is_read_beside_a_plain_config(case, root,
                                                                 tmp_path) -> None:
    """Checkpoints written before transformers knew the format keep their settings in
    AutoGPTQ's quantize_config.json or AutoAWQ's quant_config.json."""
    folder, dequantized = checkpoint(case, root)
    moved = shutil.copytree(folder, tmp_path / case)
    config = json.loads((moved / "config.json").read_text())
    del config["quantization_config"]
    (moved / "config.json").write_text(json.dumps(config))
    name, settings = SEPARATE_CONFIGS[case]
    (moved / name).write_text(json.dumps(settings))
    engine = Engine(engine_config(moved))
    try:
        assert engine.loaded.quantization == CASES[case]["method"]
        served = engine_greedy(engine, [None])
    finally:
        engine.close()
    assert served == hf_greedy(hf_model(folder, dequantized), PROMPTS)
    (moved / name).unlink()
    with pytest.raises(ValueError, match="a quantized tensor, but config.json has no "
                                         "quantization_config"):
        load_model(engine_config(moved))


@pytest.mark.slow  # a real pod process: about 20 s to start here
def test_a_pod_serving_an_awq_checkpoint_says_so(root) -> None:
    folder, dequantized = checkpoint("awq-g64", root)
    with runtime_server("--model", str(folder), "--device", "cpu", "--dtype", "float32",
                        "--max-model-len", "128", "--kv-cache-bytes", str(16 << 20),
                        "--cache-dir", str(root / "cache"), log_dir=root / "pod") as pod, \
            httpx.Client(base_url=pod.url, timeout=60, trust_env=False) as http:
        info = http.get("/info").json()
        assert info["quantization"] == "awq"
        assert info["memory_plan"]["quantization"] == "awq"
        response = http.post("/generate", json={"inputs": "Hello", "parameters": {
            "max_new_tokens": 4, "ignore_eos_token": True, "details": True}})
        assert response.status_code == 200, response.text
        assert response.json()["details"]["generated_tokens"] == 4


def edited_copy(source: Path, target: Path, settings: dict | None = None,
                tensors=None) -> Path:
    shutil.copytree(source, target)
    if settings is not None:
        config = json.loads((target / "config.json").read_text())
        config["quantization_config"].update(settings)
        (target / "config.json").write_text(json.dumps(config))
    if tensors is not None:
        weights = tensors(load_file(str(target / "model.safetensors")))
        save_file(weights, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target


REFUSALS = {  # name -> (config settings, tensor edit, expected message)
    "bits-8": ({"bits": 8}, None, "bits=8: only 4-bit GPTQ/AWQ checkpoints are served"),
    "marlin": ({"checkpoint_format": "marlin"}, None,
               "checkpoint_format 'marlin' is not supported"),
    "eetq": ({"quant_method": "eetq"}, None, "quant_method 'eetq' is not supported"),
    "bitsandbytes-neither": ({"quant_method": "bitsandbytes"}, None,
                             "exactly one of load_in_4bit and load_in_8bit"),
    "group-16": ({"group_size": 16}, None,
                 r"down_proj.scales: shape \(8, 128\), expected \(16, 128\) .*groups of 16"),
    "no-qzeros": (None, lambda w: {n: t for n, t in w.items()
                                   if n != "model.layers.1.mlp.down_proj.qzeros"},
                  "GPTQ linear model.layers.1.mlp.down_proj has no qzeros"),
    "no-g_idx": (None, lambda w: {n: t for n, t in w.items()
                                  if n != "model.layers.0.self_attn.o_proj.g_idx"},
                 "o_proj has no g_idx, but quantization_config.desc_act is true"),
    "wide-scales": (None, lambda w: {**w, "model.layers.0.self_attn.o_proj.scales":
                                     torch.cat([w["model.layers.0.self_attn.o_proj.scales"]] * 2,
                                               dim=1)},
                    r"o_proj.scales: shape \(4, 256\), expected \(4, 128\)"),
    "shard-missing": (None, lambda w: {n: t for n, t in w.items() if ".k_proj." not in n},
                      "shard model.layers.0.self_attn.k_proj has neither quantized tensors "
                      "nor a weight"),
    "dense-shard-shape": (None, lambda w: {**{n: t for n, t in w.items() if ".k_proj." not in n},
                                           **{n.replace("qweight", "weight"): torch.zeros(32, 128)
                                              for n in w if n.endswith("k_proj.qweight")}},
                          r"k_proj: the checkpoint holds a 32x128 weight .*expects 64x128"),
}


@pytest.mark.parametrize("refusal", list(REFUSALS))
def test_bad_checkpoints_are_refused_naming_the_problem(refusal, root, tmp_path) -> None:
    folder, _ = checkpoint("gptq-g32-desc_act-split", root)
    settings, tensors, message = REFUSALS[refusal]
    bad = edited_copy(folder, tmp_path / refusal, settings, tensors)
    with pytest.raises(ValueError, match=message):
        load_model(engine_config(bad))


def test_awq_gemv_and_requantizing_are_refused(root, tmp_path) -> None:
    folder, _ = checkpoint("awq-g64", root)
    gemv = edited_copy(folder, tmp_path / "gemv", {"version": "gemv"})
    with pytest.raises(ValueError, match="AWQ quantization_config.version 'gemv' is not"):
        load_model(engine_config(gemv))
    with pytest.raises(ValueError, match="already awq-quantized .* --quantize int8"):
        load_model(engine_config(folder, quantize="int8"))
