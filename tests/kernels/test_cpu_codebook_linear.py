"""The compiled codebook int4 linear (`cpu_quantized_linear.codebook4_product`, NF4's) against
an fp64 product of the weight its codes, scales and codebook describe.

Row counts cover the in-register path (1, 5, 12), the scratch path (13, 40, 300) and the
dense bf16 blocks of many rows; output widths a whole panel, a partial last panel and the
model's shapes; groups of 32-128 inputs; fp32 and bf16 rows read at a stride.
"""

from __future__ import annotations

import pytest
import torch

from loraplex.runtime.kernels import cpu_linear
from loraplex.runtime.kernels import cpu_quantized_linear as panels
from loraplex.runtime.layers.codebook import NF4

pytestmark = pytest.mark.skipif(not cpu_linear.available(),
                                reason="no C compiler or no 512-bit vectors")

ROWS = (1, 5, 12, 13, 40, 300)
SHAPES = ((32, 64), (45, 256), (960, 576), (70, 1536))  # (out, in)
CODEBOOK = torch.tensor(NF4)


def problem(rows: int, out_features: int, in_features: int, group: int):
    """Codes [N, K], scales [K / g, N] and rows read at a stride."""
    generator = torch.Generator().manual_seed(rows * 7 + out_features + group)
    codes = torch.randint(0, 16, (out_features, in_features), generator=generator)
    scales = torch.rand(in_features // group, out_features, generator=generator) / 20 + 1e-3
    x = torch.randn(rows, in_features + 3, generator=generator)[:, 2:2 + in_features]
    return codes, scales, x


def weight_of(codes, scales, group: int) -> torch.Tensor:  # [N, K] in fp64
    return CODEBOOK.double()[codes] * scales.double().t().repeat_interleave(group, dim=1)


@pytest.mark.parametrize(("out_features", "in_features"), SHAPES)
@pytest.mark.parametrize("rows", ROWS)
def test_kernel_matches_fp64(rows, out_features, in_features):
    group = 32 if in_features % 64 else 64
    codes, scales, x = problem(rows, out_features, in_features, group)
    packed, panel_scales = panels.pack_codebook4(codes, scales)
    product = panels.codebook4_product(packed, panel_scales, CODEBOOK, out_features)
    expected = x.double() @ weight_of(codes, scales, group).t()
    torch.testing.assert_close(product(x).double(), expected, rtol=1e-5, atol=1e-5)
    rounded = x.bfloat16()  # bf16 rows: the fp32 sums of their values, rounded once
    expected_bf16 = (rounded.double() @ weight_of(codes, scales, group).t()).bfloat16()
    got = product(rounded)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), expected_bf16.double(), rtol=8e-3, atol=1e-4)


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("rows", [3, 64])  # the panels, and the dense bf16 blocks
def test_every_group_reads_its_own_scales(group, rows):
    codes, scales, x = problem(rows, 96, 512, group)
    packed, panel_scales = panels.pack_codebook4(codes, scales)
    expected = x.double() @ weight_of(codes, scales, group).t()
    got = panels.dense_codebook4_product(x, packed, panel_scales, CODEBOOK, 96) if rows > 48 \
        else panels.codebook4_product(packed, panel_scales, CODEBOOK, 96)(x)
    tolerance = 2e-2 if rows > 48 else 1e-5  # dense products run in bf16
    torch.testing.assert_close(got.double(), expected, rtol=tolerance, atol=tolerance)


def test_packing_round_trips_and_pads_with_zeros():
    codes, scales, _ = problem(1, 45, 128, 64)
    packed, panel_scales = panels.pack_codebook4(codes, scales)
    assert packed.shape == (2, 128, 16) and panel_scales.shape == (2, 2, 32)
    assert not panel_scales[1, :, 13:].any()  # the last panel's 19 padding columns
    back_codes, back_scales = panels.unpack_codebook4(packed, panel_scales, 45)
    assert torch.equal(back_codes, codes.int()) and torch.equal(back_scales, scales)


def test_bad_inputs_are_refused_by_name():
    codes, scales, x = problem(2, 64, 128, 64)
    packed, panel_scales = panels.pack_codebook4(codes, scales)
    with pytest.raises(ValueError, match="codes \\[N, K\\] and scales \\[K / g, N\\]"):
        panels.pack_codebook4(codes, scales[:, :10])
    with pytest.raises(ValueError, match="16 fp32 codebook values"):
        panels.codebook4_product(packed, panel_scales, CODEBOOK[:8], 64)
    with pytest.raises(ValueError, match="16 fp32 codebook values"):
        panels.codebook4_product(packed, panel_scales.bfloat16(), CODEBOOK, 64)
    product = panels.codebook4_product(packed, panel_scales, CODEBOOK, 64)
    with pytest.raises(ValueError, match="rows of 128 values"):
        product(x[:, :100])
