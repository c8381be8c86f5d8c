"""The CPU's compiled RMSNorm and rotary against their torch forms (Hugging Face's rounding).

Rotary and the residual add are the same arithmetic and must be equal bit for bit; RMSNorm
sums its squares in another order, so fp32 may differ in the last bits (bf16 rounds that
away). Layouts are the ones the decoder hands over: rows of a fused q|k|v output (a row
stride wider than the heads), key's heads right after query's, one row or many.
"""

from __future__ import annotations

import pytest
import torch

from loraplex.runtime.kernels import cpu_layer_ops
from loraplex.runtime.layers.rms_norm import RMSNorm
from loraplex.runtime.layers.rotary import apply_rotary, apply_rotary_qk

pytestmark = pytest.mark.skipif(not cpu_layer_ops.supports(torch.zeros(1)),
                                reason="no C compiler for the CPU kernels")
DTYPES = [torch.float32, torch.bfloat16]
ULP = {torch.float32: 2.0**-23, torch.bfloat16: 2.0**-8}


def torch_norm(norm: RMSNorm, hidden: torch.Tensor) -> torch.Tensor:
    """RMSNorm's torch form, exactly as Hugging Face Llama writes it."""
    full = hidden.to(torch.float32)
    full = full * torch.rsqrt(full.pow(2).mean(-1, keepdim=True) + norm.eps)
    return norm.weight * full.to(hidden.dtype)


def assert_within_ulps(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    bound = expected.float().abs() * 4 * ULP[expected.dtype] + 1e-30
    assert torch.all((actual.float() - expected.float()).abs() <= bound)


def norm_of(width: int, dtype: torch.dtype) -> RMSNorm:
    norm = RMSNorm(width, 1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.2, generator=torch.Generator().manual_seed(width))
    return norm


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("rows", "width"), [(1, 64), (16, 576), (37, 200), (3, 4096)])
def test_rms_norm_and_its_residual_add_equal_the_torch_form(dtype, rows, width) -> None:
    generator = torch.Generator().manual_seed(rows * width)
    norm = norm_of(width, dtype)
    wide = torch.randn(rows, width + 96, generator=generator).to(dtype)
    hidden = wide[:, 16:16 + width]  # rows at a stride wider than the row, as in q|k|v
    residual = (torch.randn(rows, width, generator=generator) * 8).to(dtype)
    assert_within_ulps(norm(hidden), torch_norm(norm, hidden))
    normed, summed = norm.add_and_norm(hidden, residual)
    assert torch.equal(summed, residual + hidden)
    assert_within_ulps(normed, torch_norm(norm, residual + hidden))
    if dtype == torch.bfloat16:
        assert torch.equal(normed, torch_norm(norm, residual + hidden))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("rows", "heads", "kv_heads", "head_dim"),
                         [(1, 9, 3, 64), (16, 9, 3, 64), (5, 32, 8, 128), (40, 4, 4, 16)])
def test_rotary_of_query_and_key_in_place_equals_the_torch_form(dtype, rows, heads, kv_heads,
                                                                 head_dim) -> None:
    generator = torch.Generator().manual_seed(rows + heads)
    q_size, kv_size = heads * head_dim, kv_heads * head_dim
    qkv = torch.randn(rows, q_size + 2 * kv_size, generator=generator).to(dtype)
    value_before = qkv[:, q_size + kv_size:].clone()
    query = qkv[:, :q_size].view(rows, heads, head_dim)
    key = qkv[:, q_size:q_size + kv_size].view(rows, kv_heads, head_dim)
    angles = torch.rand(rows, head_dim // 2, generator=generator) * 3000
    table = torch.cat((angles, angles), dim=-1)
    cos, sin = table.cos().to(dtype)[:, None, :], table.sin().to(dtype)[:, None, :]
    expected = apply_rotary(query.clone(), cos, sin), apply_rotary(key.clone(), cos, sin)
    rotated = apply_rotary_qk(query, key, cos, sin)
    assert rotated[0].data_ptr() == query.data_ptr()  # in place, through the kernel
    assert torch.equal(rotated[0], expected[0]) and torch.equal(rotated[1], expected[1])
    assert torch.equal(qkv[:, q_size + kv_size:], value_before)  # value untouched


def test_key_apart_from_query_and_other_dtypes_take_the_torch_ops() -> None:
    query, key = torch.randn(2, 4, 8), torch.randn(2, 2, 8)  # separate tensors
    cos, sin = torch.rand(2, 1, 8), torch.rand(2, 1, 8)
    rotated = apply_rotary_qk(query, key, cos, sin)
    assert rotated[0].data_ptr() != query.data_ptr()
    assert torch.equal(rotated[1], apply_rotary(key, cos, sin))
    half = norm_of(32, torch.float16)
    hidden = torch.randn(3, 32).to(torch.float16)
    assert not cpu_layer_ops.supports(hidden, half.weight)
    assert torch.equal(half(hidden), torch_norm(half, hidden))


def test_layouts_the_kernels_cannot_read_are_refused() -> None:
    weight = torch.ones(8)
    with pytest.raises(ValueError, match="unit stride"):
        cpu_layer_ops.rms_norm(torch.randn(8, 4).t(), weight, 1e-5)
    with pytest.raises(ValueError, match="even size"):
        cpu_layer_ops.rotary_(torch.randn(2, 3, 7), torch.rand(2, 1, 7), torch.rand(2, 1, 7))
