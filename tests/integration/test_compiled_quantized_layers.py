"""Decode steps over int4, int8 and NF4 weights (fp32 activations) run the decoder layers in
one compiled call too (`cpu_decoder`), reading each projection in its own format: one layer
of each format equals the same layer over fp32 panels of its dequantized weights, and the
builtin model under `--quantize int4|int8|nf4` gives the layer-by-layer path's tokens and top-3,
logprobs within the SiLU's last bits (the quantized gate|up is gated in the driver), with and
without adapters; from `QUANTIZED_COMPILED_ROWS` rows, where dense products win, and for weights
that reorder or split their inputs (GPTQ's activation order), the steps stay layer by layer.
"""

from __future__ import annotations

import functools

import pytest
import torch

from loraplex.runtime.adapters.synthetic import write_random_adapter
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.kernels import cpu_attention, cpu_decoder, cpu_linear
from loraplex.runtime.layers.codebook import CodebookWeight
from loraplex.runtime.layers.quantized import Int4Weight, Int8Weight
from loraplex.runtime.layers.quantized_parts import PermutedInputs, SideBySide
from loraplex.runtime.models.llama import QUANTIZED_COMPILED_ROWS
from loraplex.runtime.models.loader import load_model
from tests.helpers import CHAT_PROMPTS, builtin_config
from tests.helpers.compiled_steps import Steps, assert_same_steps, generate_steps, requests

pytestmark = [pytest.mark.model, pytest.mark.timeout(600),
              pytest.mark.skipif(not cpu_decoder.available(), reason="no C compiler")]

SHAPE = cpu_decoder.DecoderShape(hidden=64, heads=2, kv_heads=1, head_dim=32, intermediate=64,
                                 eps=1e-5, scale=32 ** -0.5)
FORMATS = {  # name -> a weight [N, K] as that format's Projection and its dequantized weight
    "int4-fp32-tables": lambda w: _int4(Int4Weight.quantize(w, 32)),
    "int4-bf16-tables": lambda w: _int4(Int4Weight.quantize(w.bfloat16(), 32)),
    "int8": lambda w: _int8(Int8Weight.quantize(w)),
    "nf4": lambda w: _nf4(CodebookWeight.quantize_nf4(w)),
}


def _int4(weight: Int4Weight) -> tuple[cpu_decoder.Projection, torch.Tensor]:
    return weight.compiled_projection(), weight.dequantize()


def _int8(weight: Int8Weight) -> tuple[cpu_decoder.Projection, torch.Tensor]:
    return weight.compiled_projection(), weight.dequantize()


def _nf4(weight: CodebookWeight) -> tuple[cpu_decoder.Projection, torch.Tensor]:
    return weight.compiled_projection(), weight.dequantize()


def _layer(projections: list[cpu_decoder.Projection]) -> cpu_decoder.LayerWeights:
    norm = torch.rand(SHAPE.hidden) + 0.5
    qkv, o, gate_up, down = projections
    return cpu_decoder.LayerWeights(norm, qkv, None, o, None, norm.clone(), gate_up, down)


def _run(layer: cpu_decoder.LayerWeights, hidden: torch.Tensor) -> torch.Tensor:
    """hidden [3, d] through the layer, each row a sequence of 5 tokens (4 in the cache)."""
    rows, block_size = hidden.shape[0], 16
    generator = torch.Generator().manual_seed(1)
    caches = [tuple(torch.randn(rows, block_size, SHAPE.kv_heads, SHAPE.head_dim,
                                generator=generator) for _ in range(2))]
    decode = cpu_attention.native_decode(torch.arange(rows)[:, None], [5] * rows, block_size,
                                         rows)
    positions = torch.full((rows, 1, SHAPE.head_dim), 4.0)
    output = hidden.clone()
    cpu_decoder.run_layers(output, [layer], caches, SHAPE, positions.cos().contiguous(),
                           positions.sin().contiguous(),
                           torch.arange(rows) * block_size + 4, decode)
    return output


@pytest.mark.parametrize("name", FORMATS)
def test_each_format_equals_fp32_panels_of_its_dequantized_weights(name):
    torch.manual_seed(0)
    widths = {"qkv": (SHAPE.heads + 2 * SHAPE.kv_heads) * SHAPE.head_dim, "o": SHAPE.hidden,
              "gate_up": 2 * SHAPE.intermediate, "down": SHAPE.hidden}
    inputs = {"qkv": SHAPE.hidden, "o": SHAPE.heads * SHAPE.head_dim,
              "gate_up": SHAPE.hidden, "down": SHAPE.intermediate}
    quantized, dequantized = [], []
    for part, width in widths.items():
        projection, weight = FORMATS[name](torch.randn(width, inputs[part]) * 0.2)
        quantized.append(projection)
        dequantized.append(cpu_decoder.Projection.fp32(cpu_linear.pack(weight)))
    assert {p.format for p in quantized} == {
        "int4-fp32-tables": {cpu_decoder.INT4_FP32_TABLES},
        "int4-bf16-tables": {cpu_decoder.INT4_BF16_TABLES},
        "int8": {cpu_decoder.INT8_PANELS},
        "nf4": {cpu_decoder.CODEBOOK4_PANELS}}[name]
    torch.manual_seed(1)
    layer = _layer(quantized)
    reference = cpu_decoder.LayerWeights(layer.input_norm, dequantized[0], None, dequantized[1],
                                         None, layer.post_norm, dequantized[2], dequantized[3])
    hidden = torch.randn(3, SHAPE.hidden)
    got, want = _run(layer, hidden), _run(reference, hidden)
    assert not torch.equal(got, hidden)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@functools.cache
def quantized_builtin(method: str):
    """The builtin model in fp32 with int4 or int8 weights, loaded once."""
    return load_model(builtin_config(quantize=method))


def generate(loaded, names: list[str | None], adapters: dict[str, str]) -> Steps:
    config = builtin_config(quantize=loaded.quantization, device_slots=8, max_lora_rank=64)
    return generate_steps(config, loaded, requests(8, names), adapters)


@pytest.mark.parametrize("method", ["int4", "int8", "nf4"])
def test_quantized_steps_compile_and_agree_with_the_layer_by_layer_path(method, compiled_calls):
    loaded = quantized_builtin(method)
    model = loaded.model.model
    weights = model.compiled_layer_weights(len(CHAT_PROMPTS))
    assert weights is not None
    assert weights[0].down.format != cpu_decoder.FP32_PANELS
    assert model.compiled_layer_weights(QUANTIZED_COMPILED_ROWS - 1) is not None
    assert model.compiled_layer_weights(QUANTIZED_COMPILED_ROWS) is None
    no_adapters = [None] * len(CHAT_PROMPTS)
    assert_same_steps(model, compiled_calls, lambda: generate(loaded, no_adapters, {}))


def test_quantized_steps_with_adapters_compile_and_agree(compiled_calls, tmp_path):
    loaded = quantized_builtin("int4")
    target = LoraTargetShapes.from_hf_config(loaded.hf_config)
    adapters = {f"a{index}": str(write_random_adapter(
        tmp_path / f"a{index}", target, (8, 16, 32, 64)[index % 4], seed=index))
        for index in range(4)}
    names = [f"a{index % 4}" if index < 8 else None for index in range(len(CHAT_PROMPTS))]
    assert_same_steps(loaded.model.model, compiled_calls, lambda: generate(loaded, names, adapters))


def test_weights_that_reorder_or_split_their_inputs_keep_the_layer_by_layer_path():
    """GPTQ's activation order (`PermutedInputs`) and shards of different orders
    (`SideBySide`) do more than one panel product: the driver would skip that."""
    weight = Int4Weight.quantize(torch.randn(64, 64), 32)
    assert weight.compiled_projection() is not None
    assert PermutedInputs(weight, torch.randperm(64)).compiled_projection() is None
    assert SideBySide([weight, weight]).compiled_projection() is None
    model = quantized_builtin("int4").model.model
    gate_up = model.layers[5].mlp.gate_up_proj
    plain = gate_up.quantized
    try:
        gate_up.quantized = PermutedInputs(plain, torch.arange(plain.in_features))
        assert model.compiled_layer_weights(1) is None
    finally:
        gate_up.quantized = plain
    assert model.compiled_layer_weights(1) is not None
