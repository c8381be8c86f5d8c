"""Weight-only quantized linears equal the matmul with their own dequantized weight.

`dequantize()` is the reference: every format (round-to-nearest int8/int4, GGUF blocks)
goes through it, so a product that agrees with it within the activation dtype's tolerance
is the product of the weights the format describes. The engine test at the end runs a
whole model with adapters: quantized layers, LoRA on top, against the same model whose
layers hold the dequantized weights in full precision.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from loraplex.runtime.adapters.synthetic import write_random_adapter
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.engine.engine import Engine
from loraplex.runtime.engine.request import GenerationRequest, SamplingParams
from loraplex.runtime.layers.linear import Linear, MergedLinear
from loraplex.runtime.layers.quantized import (
    Int4Weight,
    Int8Weight,
    quantize_weight,
)
from tests.helpers import tiny_llama_config
from tests.helpers.quantized_products import assert_close, reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 7, 16, 33])
def test_int8_product_equals_its_dequantized_weight(dtype, rows) -> None:
    generator = torch.Generator().manual_seed(rows)
    weight = torch.randn(80, 96, generator=generator)
    quantized = Int8Weight.quantize(weight.to(dtype))
    x = torch.randn(rows, 96, generator=generator).to(dtype)
    assert_close(quantized.linear(x), reference(x, quantized.dequantize()), dtype)
    steps = quantized.channel_scales()[:, None] / 2  # round to nearest: half a step at most
    assert ((quantized.dequantize() - weight.to(dtype).float()).abs() <= steps + 1e-6).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_product_equals_its_dequantized_weight(dtype, group_size) -> None:
    generator = torch.Generator().manual_seed(group_size)
    weight = torch.randn(48, 256, generator=generator)
    quantized = Int4Weight.quantize(weight.to(dtype), group_size)
    x = torch.randn(5, 256, generator=generator).to(dtype)
    assert_close(quantized.linear(x), reference(x.float(), quantized.dequantize()), dtype)


def test_int4_codes_survive_packing_and_give_the_format_weights() -> None:
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (32, 64), generator=generator)
    scales = torch.rand(32, 2, generator=generator) + 0.1
    offsets = torch.randn(32, 2, generator=generator)
    quantized = Int4Weight.from_codes(codes, scales, offsets, 32, torch.float32)
    assert torch.equal(quantized.codes(), codes.int())
    expected = codes.float() * scales.repeat_interleave(32, 1) + offsets.repeat_interleave(32, 1)
    torch.testing.assert_close(quantized.dequantize(), expected, rtol=0, atol=1e-5)
    assert quantized.nbytes < codes.numel()  # two codes a byte, plus the group tables


def test_int4_error_is_at_most_half_a_step() -> None:
    weight = torch.randn(16, 128, generator=torch.Generator().manual_seed(1))
    quantized = Int4Weight.quantize(weight, 32)
    scales = quantized.tables()[0].t().repeat_interleave(32, 1)  # [N, K]
    assert ((quantized.dequantize() - weight).abs() <= scales / 2 + 1e-5).all()


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_fused_shards_quantize_as_one_layer(method) -> None:
    generator = torch.Generator().manual_seed(2)
    parts = [torch.randn(size, 64, generator=generator) for size in (32, 16, 16)]
    bias = [torch.randn(size, generator=generator) for size in (32, 16, 16)]
    layer = MergedLinear(64, (32, 16, 16), bias=True)
    for index, (weight, part_bias) in enumerate(zip(parts, bias, strict=True)):
        layer.load_shard(index, "weight", weight)
        layer.load_shard(index, "bias", part_bias)
    layer.quantize(method, 32)
    layer.release_weight()
    x = torch.randn(3, 64, generator=generator)
    output = layer(x)  # [3, 64]
    dequantized = layer.quantized.dequantize()
    for index, start in enumerate(layer.slice_offsets[:-1]):
        end = layer.slice_offsets[index + 1]
        expected = reference(x, dequantized[start:end]) + bias[index]
        assert_close(output[:, start:end], expected, torch.float32)
        assert (dequantized[start:end] - parts[index]).abs().max() < 0.5  # its own part


def test_bad_quantization_settings_are_refused_with_the_fix() -> None:
    layer = Linear(96, 8, bias=False)
    with pytest.raises(ValueError, match="multiple of it; this layer has 96 inputs"):
        layer.quantize("int4", 64)
    with pytest.raises(ValueError, match="group size must be one of"):
        quantize_weight(torch.zeros(8, 96), "int4", 48)
    with pytest.raises(ValueError, match="multiple of 16 outputs; this layer has 8"):
        Int4Weight.quantize(torch.zeros(8, 96), 32, kernel="cpu")  # torch's CPU kernel's tile
    with pytest.raises(ValueError, match="unknown quantization"):
        quantize_weight(torch.zeros(8, 96), "int3", 32)
    with pytest.raises(ValueError, match="only copy"):
        layer.release_weight()
    assert layer.weight is not None and layer.quantized is None  # nothing half-done


def test_packed_layer_keeps_one_copy_and_the_same_output() -> None:
    layer = Linear(64, 32, bias=True)
    x = torch.randn(4, 64)
    expected = layer(x)
    if not layer.pack():
        pytest.skip("oneDNN is not available")
    layer.release_weight()
    assert layer.weight is None and layer.weight_bytes == 64 * 32 * 4
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def dequantized_copy(engine: Engine, quantized: Engine) -> None:
    """Give `engine`'s decoder linears and token embedding the full-precision weights
    `quantized` serves."""
    model, served_model = engine.loaded.model, quantized.loaded.model
    # the lookups read the rows served; the LM head keeps the full table where it is served
    # full, and gets its dequantized weight where it is quantized too (int4 on CPU panels)
    rows = served_model.model.embed_tokens(torch.arange(served_model.config.vocab_size))
    model.model.embed_tokens = nn.Embedding.from_pretrained(rows, freeze=True)
    head = served_model.lm_head.quantized is not None
    plain_linears = [m for m in model.modules()
                     if isinstance(m, Linear) and (m is not model.lm_head or head)]
    served_linears = [m for m in served_model.modules()
                      if isinstance(m, Linear) and (m is not served_model.lm_head or head)]
    for plain, served in zip(plain_linears, served_linears, strict=True):
        if served.quantized is not None:
            plain.register_parameter("weight", nn.Parameter(served.quantized.dequantize(),
                                                            requires_grad=False))
            plain.packed_weight = None
            plain.pack()


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_quantized_model_with_adapters_equals_its_dequantized_weights(method, tmp_path: Path
                                                                      ) -> None:
    config = dict(block_size=4, max_model_len=64, max_num_seqs=8, device_slots=4,
                  max_lora_rank=16, cache_dir=str(tmp_path / "cache"))
    quantized = Engine(tiny_llama_config(quantize=method, **config))
    plain = Engine(tiny_llama_config(**config))
    dequantized_copy(plain, quantized)
    assert quantized.loaded.weight_bytes < plain.loaded.weight_bytes
    target = LoraTargetShapes.from_hf_config(plain.loaded.hf_config)
    adapters = {f"r{rank}": write_random_adapter(tmp_path / f"r{rank}", target, rank,
                                                 seed=rank, strength=4.0) for rank in (4, 16)}
    results = []
    try:
        for engine in (quantized, plain):
            for name, folder in adapters.items():
                engine.adapters.register(name, str(folder))
            requests = [GenerationRequest(f"q{index}", [(11 * index + 5 * i) % 400 + 3
                                                        for i in range(3 + index)],
                                          SamplingParams(max_new_tokens=8, ignore_eos=True),
                                          adapter=adapter)
                        for index, adapter in enumerate([None, "r4", "r16", "r4", None])]
            results.append(engine.generate(requests))
    finally:
        quantized.close()
        plain.close()
    for request_id, events in results[0].items():
        expected = results[1][request_id]
        assert [e.token_id for e in events] == [e.token_id for e in expected], request_id
        for got, want in zip(events, expected, strict=True):
            assert abs(got.logprob - want.logprob) < 1e-3
