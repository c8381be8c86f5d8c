"""The compiled int4 and int8 linears (`cpu_quantized_linear`) against an fp64 product of
the weight their codes and tables describe, and `Int4Weight` / `Int8Weight` on them.

Row counts cover the in-register path (1, 5, 12: one tile) and the scratch path (13, 16,
40, 300: split tiles, more than one pass of 256 rows); output widths a whole panel, a
partial last panel and the model's shapes; group sizes 32-256; fp32 and bf16 tables and
activations; inputs whose rows are a slice of a wider tensor.
"""

from __future__ import annotations

import gc

import pytest
import torch

from loraplex.runtime.kernels import cpu_linear
from loraplex.runtime.kernels import cpu_quantized_linear as panels
from loraplex.runtime.layers.quantized import PANELS_DENSE_ROWS, Int4Weight, Int8Weight

pytestmark = pytest.mark.skipif(not cpu_linear.available(),
                                reason="no C compiler or no 512-bit vectors")

ROWS = (1, 5, 12, 13, 16, 40, 300)
SHAPES = ((32, 64), (45, 256), (960, 576), (70, 1536))  # (out, in)


def problem(rows: int, out_features: int, in_features: int, group: int, seed: int = 0):
    """Codes, tables [K / g, N] and rows read at a stride."""
    generator = torch.Generator().manual_seed(seed + rows * 7 + out_features + group)
    codes = torch.randint(0, 16, (out_features, in_features), generator=generator)
    scales = torch.rand(in_features // group, out_features, generator=generator) / 50 + 1e-3
    zeros = torch.randn(in_features // group, out_features, generator=generator) / 20
    x = torch.randn(rows, in_features + 3, generator=generator)[:, 2:2 + in_features]
    return codes, scales, zeros, x


def weight_of(codes, scales, zeros, group: int) -> torch.Tensor:  # [N, K] in fp64
    expand = lambda table: table.double().t().repeat_interleave(group, dim=1)
    return (codes.double() - 8) * expand(scales) + expand(zeros)


@pytest.mark.parametrize("table_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("out_features", "in_features"), SHAPES)
@pytest.mark.parametrize("rows", ROWS)
def test_kernel_matches_fp64(rows, out_features, in_features, table_dtype):
    group = 32 if in_features % 64 else 64
    codes, scales, zeros, x = problem(rows, out_features, in_features, group)
    scales, zeros = scales.to(table_dtype), zeros.to(table_dtype)  # as the kernel reads them
    packed, tables = panels.pack_int4(codes, scales, zeros, table_dtype)
    assert x.stride(0) == in_features + 3  # rows read in place at their own stride
    got = panels.linear_int4(x, packed, tables, out_features)
    assert got.shape == (rows, out_features) and got.dtype == torch.float32
    expected = x.double() @ weight_of(codes, scales, zeros, group).t()
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("group", [32, 64, 128, 256])
def test_every_group_size_reads_its_own_table_row(group):
    codes, scales, zeros, x = problem(16, 64, 512, group)
    packed, tables = panels.pack_int4(codes, scales, zeros, torch.float32)
    for rows in (x[:3], x):  # in registers, and through the scratch
        expected = rows.double() @ weight_of(codes, scales, zeros, group).t()
        torch.testing.assert_close(panels.linear_int4(rows, packed, tables, 64).double(),
                                   expected, rtol=1e-5, atol=1e-5)


def test_packing_round_trips_and_pads_with_zeros():
    codes, scales, zeros, _ = problem(1, 45, 64, 32)
    packed, tables = panels.pack_int4(codes, scales, zeros, torch.float32)
    assert packed.shape == (2, 64, 16) and tables.shape == (2, 2, 2, 32)
    assert packed[0, 5, 3] == codes[3, 5] | codes[19, 5] << 4  # columns j and j + 16
    unpacked = panels.unpack_int4(packed, tables, 45)
    for got, want in zip(unpacked, (codes, scales, zeros), strict=True):
        assert torch.equal(got, want.to(got.dtype))
    assert not packed[1, :, 13:].any() and not tables[1, ..., 13:].any()


@pytest.mark.parametrize("rows", [12, 40])  # in registers, and through the scratch
def test_bf16_rows_give_the_fp32_product_rounded_once(rows):
    codes, scales, zeros, x = problem(rows, 45, 256, 32)
    packed, tables = panels.pack_int4(codes, scales, zeros, torch.float32)
    bf16 = torch.cat([x, x[:, :3]], dim=1).bfloat16()[:, :256]  # read at its own stride
    assert bf16.stride(0) == 259
    got = panels.linear_int4(bf16, packed, tables, 45)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, panels.linear_int4(bf16.float(), packed, tables, 45).bfloat16())
    batched = panels.linear_int4(bf16.contiguous().view(2, rows // 2, 256), packed, tables, 45)
    assert torch.equal(batched.view(rows, 45), got)
    assert panels.linear_int4(x[:0], packed, tables, 45).shape == (0, 45)
    fp16 = panels.linear_int4(x.half(), packed, tables, 45)  # read as fp32, fp32 out
    assert torch.equal(fp16, panels.linear_int4(x.half().float(), packed, tables, 45))


def test_bad_inputs_are_refused_by_name():
    codes, scales, zeros, x = problem(4, 45, 64, 32)
    packed, tables = panels.pack_int4(codes, scales, zeros, torch.float32)
    for bad in (x[:, :32], x.to(torch.float64), x.to(torch.int32)):
        with pytest.raises(ValueError, match="(linear_int4|int4 kernels) take"):
            panels.linear_int4(bad, packed, tables, 45)
    with pytest.raises(ValueError, match="(linear_int4|int4 kernels) take"):
        panels.linear_int4(x, packed, tables, 65)  # wider than the panels hold
    with pytest.raises(ValueError, match="(linear_int4|int4 kernels) take"):
        panels.linear_int4(x, packed, tables.half(), 45)
    with pytest.raises(ValueError, match="int4 panels need codes"):
        panels.pack_int4(codes, scales[:, :40], zeros, torch.float32)
    with pytest.raises(ValueError, match="fp32 or bf16"):
        panels.pack_int4(codes, scales, zeros, torch.float16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int4_weight_on_panels_equals_its_dequantized_product(dtype):
    """The layer's weight: the panels' product is the product of `dequantize()`, and the
    codes and tables read back are the ones torch's own CPU kernel holds."""
    weight = torch.randn(96, 256, generator=torch.Generator().manual_seed(3)).to(dtype)
    ours = Int4Weight.quantize(weight, 64, kernel="panels")
    torchs = Int4Weight.quantize(weight, 64, kernel="cpu")
    assert torch.equal(ours.codes(), torchs.codes())
    assert torch.equal(ours.dequantize(), torchs.dequantize())
    assert ours.nbytes == torchs.nbytes
    x = torch.randn(20, 256, generator=torch.Generator().manual_seed(4)).to(dtype)
    got = ours.linear(x)
    assert got.dtype == dtype
    expected = x.double() @ ours.dequantize().double().t()
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2  # the output rounded to bf16
    torch.testing.assert_close(got.double(), expected, rtol=tolerance, atol=tolerance)


def int8_problem(rows: int, out_features: int, in_features: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed + rows * 7 + out_features)
    codes = torch.randint(-127, 128, (out_features, in_features), generator=generator)
    scales = torch.rand(out_features, generator=generator) / 500 + 1e-4
    x = torch.randn(rows, in_features + 3, generator=generator)[:, 2:2 + in_features]
    return codes, scales, x


@pytest.mark.parametrize(("out_features", "in_features"), SHAPES)
@pytest.mark.parametrize("rows", ROWS)
def test_int8_kernel_matches_fp64(rows, out_features, in_features):
    codes, scales, x = int8_problem(rows, out_features, in_features)
    packed, padded = panels.pack_int8(codes, scales)
    got = panels.linear_int8(x, packed, padded, out_features)
    assert got.shape == (rows, out_features) and got.dtype == torch.float32
    expected = x.double() @ (codes.double() * scales.double()[:, None]).t()
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_int8_packing_round_trips_and_pads_with_zeros():
    codes, scales, x = int8_problem(3, 45, 64)
    packed, padded = panels.pack_int8(codes, scales)
    assert packed.shape == (2, 64, 32) and packed.dtype == torch.int8
    assert padded.shape == (64,) and not padded[45:].any() and not packed[1, :, 13:].any()
    assert torch.equal(panels.unpack_int8(packed, 45), codes.to(torch.int8))
    rows = x.bfloat16()  # bf16 rows: the fp32 product of their values, rounded once
    assert torch.equal(panels.linear_int8(rows, packed, padded, 45),
                       panels.linear_int8(rows.float(), packed, padded, 45).bfloat16())


def test_int8_bad_inputs_are_refused_by_name():
    codes, scales, x = int8_problem(4, 45, 64)
    packed, padded = panels.pack_int8(codes, scales)
    with pytest.raises(ValueError, match="linear_int8 takes fp32, bf16 or fp16 CPU rows of 64"):
        panels.linear_int8(x.double(), packed, padded, 45)
    with pytest.raises(ValueError, match="int8 kernels take contiguous int8 panels"):
        panels.linear_int8(x, packed, padded[:45], 45)
    with pytest.raises(ValueError, match="int8 kernels take contiguous int8 panels"):
        panels.linear_int8(x, packed, padded, 65)
    with pytest.raises(ValueError, match="int8 panels need codes"):
        panels.pack_int8(codes, scales[:40])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_weight_on_panels_equals_torchs(dtype):
    """`Int8Weight` on panels: the codes, scales and dequantized weight of torch's path, and
    the product of that weight."""
    weight = torch.randn(70, 256, generator=torch.Generator().manual_seed(5)).to(dtype)
    ours, torchs = (Int8Weight.quantize(weight, kernel=k) for k in ("panels", "torch"))
    assert torch.equal(ours.codes(), torchs.codes())
    assert torch.equal(ours.dequantize(), torchs.dequantize())
    assert ours.nbytes == 96 * 256 + 96 * 4  # codes and fp32 scales, padded to a panel
    for rows in (1, 20):
        x = torch.randn(rows, 256, generator=torch.Generator().manual_seed(rows)).to(dtype)
        got = ours.linear(x)
        assert got.dtype == dtype
        expected = x.double() @ ours.dequantize().double().t()
        tolerance = 1e-5 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(got.double(), expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("table_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("out_features", "in_features"), SHAPES)
def test_dense_dequantization_is_the_weight_transposed_in_bf16(out_features, in_features,
                                                               table_dtype):
    """What a prefill chunk multiplies by: int4 W^T [K, N], each weight rounded once to bf16;
    int8 codes^T [K, N], exact in bf16 (the scales multiply the product)."""
    group = 32 if in_features % 64 else 64
    codes, scales, zeros, _ = problem(1, out_features, in_features, group)
    scales, zeros = scales.to(table_dtype), zeros.to(table_dtype)
    packed, tables = panels.pack_int4(codes, scales, zeros, table_dtype)
    expected = weight_of(codes, scales, zeros, group).float().t().bfloat16()
    got = panels.dense_int4(packed, tables, out_features)
    assert got.shape == (in_features, out_features) and got.dtype == torch.bfloat16
    assert (got.float() - expected.float()).abs().max() <= expected.float().abs().max() / 128
    int8_codes, int8_scales, _ = int8_problem(1, out_features, in_features)
    packed, padded = panels.pack_int8(int8_codes, int8_scales)
    assert torch.equal(panels.dense_int8(packed, out_features), int8_codes.t().bfloat16())


@pytest.mark.parametrize("rows", [PANELS_DENSE_ROWS - 1, PANELS_DENSE_ROWS, 300])
def test_weights_on_panels_take_one_dense_product_for_many_rows(rows):
    """From PANELS_DENSE_ROWS rows on the product is one bf16 GEMM over the dequantized
    weight: the same product within bf16's rounding, on either side of the switch."""
    weight = torch.randn(96, 256, generator=torch.Generator().manual_seed(6))
    x = torch.randn(rows, 256, generator=torch.Generator().manual_seed(7))
    int4 = Int4Weight.quantize(weight, 32, kernel="panels")
    int8 = Int8Weight.quantize(weight, kernel="panels")
    paths = [  # (quantized, its panel product, its dense product)
        (int4, lambda: panels.linear_int4(x, int4.packed, int4.scales_and_zeros, 96),
         lambda: panels.dense_int4_product(x, int4.packed, int4.scales_and_zeros, 96)),
        (int8, lambda: panels.linear_int8(x, int8.packed, int8.panel_scales, 96),
         lambda: panels.dense_int8_product(x, int8.packed, int8.panel_scales, 96))]
    for quantized, panel_product, dense_product in paths:
        expected = x.double() @ quantized.dequantize().double().t()
        got = quantized.linear(x)
        assert got.dtype == torch.float32
        error = (got.double() - expected).abs().max() / expected.abs().max()
        assert error <= (2e-2 if rows >= PANELS_DENSE_ROWS else 1e-6)
        taken = dense_product() if rows >= PANELS_DENSE_ROWS else panel_product()
        assert torch.equal(got, taken.float())  # the path the row count picks


def test_dense_products_of_wide_weights_go_block_by_block(monkeypatch):
    """Outputs wider than a block (here 2 panels, with a partial last panel) land in their
    own columns."""
    monkeypatch.setattr(panels, "DENSE_BLOCK_PANELS", 2)
    codes, scales, zeros, x = problem(5, 150, 64, 32)
    packed, tables = panels.pack_int4(codes, scales, zeros, torch.bfloat16)
    expected = panels.dense_int4(packed, tables, 150)  # one block: [64, 150]
    got = panels.dense_int4_product(x, packed, tables, 150)
    assert torch.equal(got, torch.mm(x.bfloat16(), expected))
    int8_codes, int8_scales, _ = int8_problem(5, 150, 64)
    packed, padded = panels.pack_int8(int8_codes, int8_scales)
    got = panels.dense_int8_product(x, packed, padded, 150)
    expected = torch.mm(x.bfloat16(), int8_codes.t().bfloat16()).mul_(int8_scales)
    assert torch.equal(got, expected)


def test_a_product_keeps_its_panels_alive():
    """A layer's product holds its panels: dropping every other reference frees nothing
    under it (the kernel gets the pointers at each call)."""
    codes, scales, zeros, x = problem(3, 64, 64, 32)
    packed, tables = panels.pack_int4(codes, scales, zeros, torch.float32)
    int8_codes, int8_scales, _ = int8_problem(3, 64, 64)
    int8_packed, padded = panels.pack_int8(int8_codes, int8_scales)
    products = [panels.int4_product(packed, tables, 64),
                panels.int8_product(int8_packed, padded, 64)]
    expected = [product(x).clone() for product in products]
    del packed, tables, int8_packed, padded
    gc.collect()
    reuse = [torch.full((64, 64, 32), 7, dtype=torch.uint8) for _ in range(20)]  # noqa: F841
    for product, want in zip(products, expected, strict=True):
        assert torch.equal(product(x), want)
