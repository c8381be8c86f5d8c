"""GPTQ and AWQ linears, read from tensors packed here by the formats' descriptions, serve
the product of the weight those describe: w = (q - zero) * scale per group.

The packers (tests/helpers/quantized_checkpoints.py) and the reference weight are the
test's own; what is checked is the loader's reading (nibble order, zero point offsets,
g_idx) and the int4 kernel's product with it, per group size, symmetric and asymmetric,
with `desc_act`, in fused shards, in fp32 and bf16. Bad tensors are refused by name.
"""

from __future__ import annotations

import pytest
import torch

from loraplex.runtime.layers.linear import MergedLinear
from loraplex.runtime.layers.quantized import Int4Weight
from loraplex.runtime.layers.quantized_parts import PermutedInputs, SideBySide
from loraplex.runtime.models.awq import read_awq
from loraplex.runtime.models.gptq import read_gptq
from loraplex.runtime.models.int4_codes import serve_codes
from tests.helpers.quantized_checkpoints import (
    pack_awq,
    pack_gptq,
    random_codes,
    random_groups,
)
from tests.helpers.quantized_products import assert_close, reference


def assert_product(weight, x: torch.Tensor, reference_weight: torch.Tensor,
                   dtype: torch.dtype) -> None:
    """The served product equals the exact product of the activations as the kernel reads
    them (bf16 on the CPU) and the reference weight, within the kernel dtype's rounding."""
    x = x.to(dtype)
    actual = weight.linear(x)
    assert actual.dtype == dtype
    assert_close(actual, reference(x, reference_weight), dtype)


def gptq_case(group_size: int, sym: bool, desc_act: bool, checkpoint_format: str, seed: int,
              out_features: int = 48, in_features: int = 256):
    generator = torch.Generator().manual_seed(seed)
    groups = random_groups(in_features, group_size, desc_act, generator)
    zero_range = (1, 16) if checkpoint_format == "gptq" else (0, 15)
    return random_codes(out_features, groups, sym, zero_range, generator)


@pytest.mark.parametrize("checkpoint_format", ["gptq", "gptq_v2"])
@pytest.mark.parametrize(("sym", "desc_act"), [(True, False), (False, False), (False, True),
                                               (True, True)])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
def test_gptq_linear_serves_its_weight(group_size, sym, desc_act, checkpoint_format) -> None:
    codes = gptq_case(group_size, sym, desc_act, checkpoint_format, seed=group_size + 7)
    read = read_gptq("layer", pack_gptq(codes, checkpoint_format), group_size,
                     checkpoint_format)
    weight = serve_codes([read], group_size, torch.float32)
    assert isinstance(weight, PermutedInputs if desc_act and group_size != -1 else Int4Weight)
    reference = codes.weight()
    torch.testing.assert_close(weight.dequantize(), reference, rtol=0, atol=1e-6)
    x = torch.randn(5, 256, generator=torch.Generator().manual_seed(1))
    assert_product(weight, x, reference, torch.float32)


@pytest.mark.parametrize("desc_act", [False, True])
def test_gptq_linear_in_bf16(desc_act) -> None:
    codes = gptq_case(64, False, desc_act, "gptq", seed=3)
    read = read_gptq("layer", pack_gptq(codes), 64, "gptq")
    x = torch.randn(9, 256, generator=torch.Generator().manual_seed(2))
    assert_product(serve_codes([read], 64, torch.bfloat16), x, codes.weight(), torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_awq_linear_serves_its_weight(group_size, dtype) -> None:
    generator = torch.Generator().manual_seed(group_size)
    codes = random_codes(64, random_groups(256, group_size, False, generator), False, (0, 15),
                         generator)
    read = read_awq("layer", pack_awq(codes), group_size)
    weight = serve_codes([read], group_size, dtype)
    reference = codes.weight()
    if dtype == torch.float32:
        torch.testing.assert_close(weight.dequantize(), reference, rtol=0, atol=1e-6)
    assert_product(weight, torch.randn(3, 256, generator=generator), reference, dtype)


@pytest.mark.parametrize("shared_order", [True, False])
def test_fused_shards_with_desc_act(shared_order) -> None:
    """q|k|v from one g_idx are one GEMM on permuted inputs; from different ones, three
    products side by side. Either way each shard's columns are its own product, plus bias."""
    generator = torch.Generator().manual_seed(5)
    shared = random_groups(128, 32, True, generator)
    parts, references = [], []
    for size in (64, 32, 32):
        groups = shared if shared_order else random_groups(128, 32, True, generator)
        codes = random_codes(size, groups, False, (1, 16), generator)
        parts.append(read_gptq(f"part{size}", pack_gptq(codes), 32, "gptq"))
        references.append(codes.weight())
    layer = MergedLinear(128, (64, 32, 32), bias=True)
    torch.nn.init.normal_(layer.bias)
    layer.use_quantized(serve_codes(parts, 32, torch.float32))
    layer.release_weight()
    assert isinstance(layer.quantized, PermutedInputs if shared_order else SideBySide)
    x = torch.randn(4, 128, generator=generator)
    assert_product(layer.quantized, x, torch.cat(references), torch.float32)  # every shard
    torch.testing.assert_close(layer(x), layer.quantized.linear(x) + layer.bias)
    torch.testing.assert_close(layer.quantized.dequantize(), torch.cat(references), rtol=0,
                               atol=1e-6)


def test_large_groups_are_served_as_repeated_kernel_groups() -> None:
    generator = torch.Generator().manual_seed(9)
    codes = random_codes(32, random_groups(1024, 512, False, generator), False, (0, 15),
                         generator)
    weight = serve_codes([read_gptq("wide", pack_gptq(codes, "gptq_v2"), 512, "gptq_v2")],
                         512, torch.float32)
    assert weight.group_size == 256
    assert_product(weight, torch.randn(2, 1024, generator=generator), codes.weight(),
                   torch.float32)


def test_bad_tensors_are_refused_by_name() -> None:
    codes = gptq_case(32, False, True, "gptq", seed=11)
    good = pack_gptq(codes)
    missing = {leaf: tensor for leaf, tensor in good.items() if leaf != "qzeros"}
    with pytest.raises(ValueError, match="GPTQ linear layer has no qzeros"):
        read_gptq("layer", missing, 32, "gptq")
    with pytest.raises(ValueError, match=r"layer.scales: shape \(8, 40\), expected \(8, 48\)"):
        read_gptq("layer", {**good, "scales": good["scales"][:, :40]}, 32, "gptq")
    with pytest.raises(ValueError, match=r"layer.qzeros: shape \(4, 6\), expected \(8, 6\)"):
        read_gptq("layer", {**good, "qzeros": good["qzeros"][:4]}, 32, "gptq")
    with pytest.raises(ValueError, match="packed 4-bit tensors are int32"):
        read_gptq("layer", {**good, "qweight": good["qweight"].to(torch.int64)}, 32, "gptq")
    uneven = good["g_idx"].clone()
    uneven[uneven == 1] = 0  # group 0 twice as large, group 1 empty
    with pytest.raises(ValueError, match="does not put 32 inputs in each of its 8 groups"):
        serve_codes([read_gptq("layer", {**good, "g_idx": uneven}, 32, "gptq")], 32,
                    torch.float32)
    with pytest.raises(ValueError, match="groups of 16 inputs cannot be served"):
        serve_codes([read_gptq("layer", pack_gptq(gptq_case(16, True, False, "gptq", 1)),
                               16, "gptq")], 16, torch.float32)
    awq = pack_awq(random_codes(64, random_groups(256, 64, False, torch.Generator()), False,
                                (0, 15), torch.Generator()))
    with pytest.raises(ValueError, match=r"layer.qzeros: shape \(4, 8\), expected \(2, 8\)"):
        read_awq("layer", awq, 128)
