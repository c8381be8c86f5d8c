"""The fused Triton layer kernels (under the interpreter) equal the torch layers they stand
in for: rotary and the KV write bit for bit, RMSNorm and the SiLU gate to within one
rounding of the dtype (their fp32 reductions and exp may differ from torch's in the last
bit before rounding), in fp32, fp16 and bf16, on odd row counts and strided views.

The interpreter narrows fp32 to bf16 by truncation where the GPU rounds to nearest, so
bf16 results are checked to within two roundings here, not bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from loraplex.runtime.layers.rms_norm import RMSNorm
from loraplex.runtime.layers.rotary import apply_rotary
from tests.kernels import interpreter_worker
from tests.kernels.backends import WORKER_TIMEOUT_S

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ONE_ROUNDING = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 2**-6}


def fused(executor, name: str, *args) -> tuple[torch.Tensor, ...]:
    return executor.submit(interpreter_worker.fused_layer, name, *args).result(WORKER_TIMEOUT_S)


def assert_within_one_rounding(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    relative = ((got.double() - want.double()).abs() / want.double().abs().clamp_min(1))
    assert relative.max().item() <= ONE_ROUNDING[want.dtype]
    if want.dtype == torch.float16:  # after rounding to 16 bits, nearly all bit-equal
        assert (got == want).double().mean().item() > 0.99


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_equals_the_torch_layer(interpreter_executor, dtype):
    layer = RMSNorm(96, eps=1e-5)
    with torch.no_grad():
        layer.weight.normal_()
    layer = layer.to(dtype)
    x = (torch.randn(7, 96) * 3).to(dtype)
    (got,) = fused(interpreter_executor, "rms_norm", x, layer.weight.detach(), 1e-5)
    with torch.no_grad():
        assert_within_one_rounding(got, layer(x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_equals_the_torch_layer_in_place(interpreter_executor, dtype):
    tokens, heads, kv_heads, head_dim = 5, 4, 2, 32
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim).to(dtype)
    query = qkv[:, :heads * head_dim].view(tokens, heads, head_dim)  # strided views
    key = qkv[:, heads * head_dim:(heads + kv_heads) * head_dim].view(tokens, kv_heads,
                                                                      head_dim)
    angles = torch.rand(tokens, 1, head_dim // 2) * 6
    cos = torch.cat((angles.cos(), angles.cos()), dim=-1).to(dtype)  # [T, 1, D]
    sin = torch.cat((angles.sin(), angles.sin()), dim=-1).to(dtype)
    want_q, want_k = apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)
    got_q, got_k, *_ = fused(interpreter_executor, "rotary_qk_", query, key, cos, sin)
    if dtype == torch.bfloat16:  # the interpreter truncates (see above)
        assert_within_one_rounding(got_q, want_q)
        assert_within_one_rounding(got_k, want_k)
    else:
        assert torch.equal(got_q, want_q) and torch.equal(got_k, want_k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul_equals_torch(interpreter_executor, dtype):
    gate_up = (torch.randn(3, 2 * 1500) * 4).to(dtype)  # a row wider than one block
    gate, up = gate_up.split(1500, dim=-1)
    (got,) = fused(interpreter_executor, "silu_and_mul", gate_up)
    assert_within_one_rounding(got, F.silu(gate) * up)


def test_write_kv_writes_only_the_given_slots(interpreter_executor):
    tokens, kv_heads, head_dim, blocks, block_size = 6, 2, 16, 5, 4
    kv = torch.randn(tokens, 2 * kv_heads * head_dim, dtype=torch.float16)
    key = kv[:, :kv_heads * head_dim].view(tokens, kv_heads, head_dim)
    value = kv[:, kv_heads * head_dim:].view(tokens, kv_heads, head_dim)
    key_cache = torch.randn(blocks, block_size, kv_heads, head_dim, dtype=torch.float16)
    value_cache = torch.randn_like(key_cache)
    slots = torch.randperm(blocks * block_size)[:tokens]
    want_k, want_v = key_cache.clone(), value_cache.clone()
    want_k.view(-1, kv_heads, head_dim).index_copy_(0, slots, key)
    want_v.view(-1, kv_heads, head_dim).index_copy_(0, slots, value)
    _, _, got_k, got_v, _ = fused(interpreter_executor, "write_kv", key, value, key_cache,
                                  value_cache, slots)
    assert torch.equal(got_k, want_k) and torch.equal(got_v, want_v)


def test_bad_shapes_are_refused():
    from loraplex.runtime.kernels import fused_layers

    query = torch.randn(3, 4, 32)
    with pytest.raises(ValueError, match="head dims"):
        fused_layers.rotary_qk_(query, torch.randn(3, 2, 16), torch.randn(3, 1, 32),
                                torch.randn(3, 1, 32))
    with pytest.raises(ValueError, match="contiguous last"):
        fused_layers.rms_norm(torch.randn(8, 4).t(), torch.ones(8), 1e-5)
    with pytest.raises(ValueError, match="do not fit"):
        fused_layers.write_kv(torch.randn(3, 2, 16), torch.randn(3, 2, 16),
                              torch.randn(4, 4, 2, 8), torch.randn(4, 4, 2, 8),
                              torch.arange(3))
