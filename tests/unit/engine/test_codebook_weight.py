"""`--quantize nf4`: QLoRA's 4-bit normal float at load, as bitsandbytes makes it.

bitsandbytes (its CPU backend) is the oracle: for the same weight our codes, block scales,
codebook and dequantized weight equal its `quantize_4bit(quant_type="nf4", blocksize=64)`
bit for bit, so a QLoRA adapter gets the very base it was trained on. The layer's product on
the panels equals its dequantized weight's; other kernels dequantize and agree; LoRA goes on
top of its output as for every quantized weight; bad shapes are refused by name.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from loraplex.runtime.kernels import cpu_linear
from loraplex.runtime.layers.codebook import NF4, NF4_BLOCK, CodebookWeight
from loraplex.runtime.layers.linear import Linear, MergedLinear

bitsandbytes = pytest.importorskip("bitsandbytes.functional")


def nf4_by_bitsandbytes(weight: torch.Tensor):
    packed, state = bitsandbytes.quantize_4bit(weight, blocksize=NF4_BLOCK, quant_type="nf4")
    flat = packed.view(-1)  # two codes a byte, the first in the high nibble
    codes = torch.stack([flat >> 4, flat & 15], dim=-1).view(weight.shape).int()
    dequantized = bitsandbytes.dequantize_4bit(packed, state)
    return codes, state.absmax.view(weight.shape[0], -1), state.code, dequantized


@pytest.mark.parametrize("kernel", ["panels", "dequantize"])
def test_nf4_is_bitsandbytes_nf4_bit_for_bit(kernel):
    if kernel == "panels" and not cpu_linear.available():
        pytest.skip("no C compiler or no 512-bit vectors")
    weight = torch.randn(96, 320) * 0.05
    weight[3, :64] = 0.0  # a block of zeros
    weight[5, 70] = 4.0  # a block with one large weight
    ours = CodebookWeight.quantize_nf4(weight, kernel=kernel)
    codes, absmax, codebook, dequantized = nf4_by_bitsandbytes(weight)
    assert torch.equal(torch.tensor(NF4), codebook.float())
    assert torch.equal(ours.codes(), codes)
    assert torch.equal(ours.group_scales()[torch.arange(96) != 3], absmax[torch.arange(96) != 3])
    assert torch.equal(ours.dequantize(), dequantized.float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_product_is_the_dequantized_weights(dtype):
    weight = torch.randn(200, 256) * 0.05
    quantized = CodebookWeight.quantize_nf4(weight)
    for rows in (1, 13, 64):  # registers, scratch, dense blocks
        x = torch.randn(rows, 256).to(dtype)
        expected = F.linear(x.float(), quantized.dequantize())
        tolerance = 1e-5 if dtype == torch.float32 and rows < 48 else 3e-2
        torch.testing.assert_close(quantized.linear(x).float(), expected, rtol=tolerance,
                                   atol=tolerance)
        assert quantized.linear(x).dtype == dtype
    plain = CodebookWeight.quantize_nf4(weight, kernel="dequantize")
    x = torch.randn(3, 256)
    torch.testing.assert_close(plain.linear(x), quantized.linear(x), rtol=1e-5, atol=1e-5)
    assert quantized.nbytes == 224 * 256 // 2 + 224 * 4 * 4 + 16 * 4  # 7 panels of 32 outputs


def test_fused_shards_and_lora_on_top():
    torch.manual_seed(0)
    layer = MergedLinear(256, (64, 96), bias=False)
    full = layer.weight.detach().clone()
    layer.quantize("nf4", 32)  # the group size is int4's: nf4 keeps its blocks of 64
    layer.release_weight()
    x = torch.randn(5, 256)
    torch.testing.assert_close(layer(x), F.linear(x, layer.quantized.dequantize()), rtol=1e-5,
                               atol=1e-5)
    assert (layer(x) - F.linear(x, full)).abs().max() < 0.1 * F.linear(x, full).abs().max()
    assert layer.quantized.group_size == NF4_BLOCK


def test_bad_shapes_are_refused_by_name():
    with pytest.raises(ValueError, match="nf4 takes blocks of 64 inputs; this layer has 96"):
        Linear(96, 32, bias=False).quantize("nf4", 32)
    with pytest.raises(ValueError, match="16 values and a scale per 64 inputs"):
        CodebookWeight(torch.zeros(4, 128, dtype=torch.int64), torch.ones(4, 2),
                       torch.zeros(8), 64)
    with pytest.raises(ValueError, match="codebook kernel must be one of"):
        CodebookWeight.quantize_nf4(torch.zeros(4, 64), kernel="tinygemm")
