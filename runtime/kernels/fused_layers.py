"""Triton kernels that fuse a layer's small ops, each one launch instead of several.

In torch, RMSNorm is six kernels (cast, square, mean, add, rsqrt, two multiplies),
rotary five per tensor, the SiLU gate two and the KV cache write two: at decode batch
sizes those launches cost more than their bytes. These kernels do each in one launch and
round where torch rounds, so their results equal the torch layers' (the layers use them
on CUDA and keep torch on the CPU, see `layers/`):

- `rms_norm`: fp32 mean of squares, normalised row cast to the input dtype, then the
  weight product rounded to it (as Hugging Face's LlamaRMSNorm);
- `rotary_qk_`: query and key rotated in place in one launch, `x * cos` and
  `rotate_half(x) * sin` each rounded to the dtype before their sum (as torch computes
  them in the model's dtype);
- `silu_and_mul`: `silu(gate)` rounded, then times `up`;
- `write_kv`: a step's keys and values into their cache slots, both in one launch.

Each launcher reports its bytes to `launch_costs` and runs nothing on meta tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch_costs import recording, report_launch


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, d, eps, stride_x, stride_out,
                     BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < d
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    variance = tl.sum(x * x, axis=0) / d
    normed = (x * tl.rsqrt(variance + eps)).to(out_ptr.dtype.element_ty)
    weight = tl.load(w_ptr + offs, mask=mask, other=0.0)
    out = weight.to(tl.float32) * normed.to(tl.float32)
    tl.store(out_ptr + row * stride_out + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(q_ptr, k_ptr, cos_ptr, sin_ptr, num_q_heads, stride_qt, stride_qh,
                   stride_kt, stride_kh, stride_cos, HALF: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    if head < num_q_heads:
        x_ptr = q_ptr + token * stride_qt + head * stride_qh
    else:
        x_ptr = k_ptr + token * stride_kt + (head - num_q_heads) * stride_kh
    offs = tl.arange(0, HALF)
    first = tl.load(x_ptr + offs)
    second = tl.load(x_ptr + HALF + offs)
    dtype = first.dtype
    cos_first = tl.load(cos_ptr + token * stride_cos + offs).to(tl.float32)
    cos_second = tl.load(cos_ptr + token * stride_cos + HALF + offs).to(tl.float32)
    sin_first = tl.load(sin_ptr + token * stride_cos + offs).to(tl.float32)
    sin_second = tl.load(sin_ptr + token * stride_cos + HALF + offs).to(tl.float32)
    first32, second32 = first.to(tl.float32), second.to(tl.float32)
    # x * cos + rotate_half(x) * sin, rotate_half(x) = (-second, first); rounded as torch
    out_first = ((first32 * cos_first).to(dtype).to(tl.float32)
                 + (-second32 * sin_first).to(dtype).to(tl.float32))
    out_second = ((second32 * cos_second).to(dtype).to(tl.float32)
                  + (first32 * sin_second).to(dtype).to(tl.float32))
    tl.store(x_ptr + offs, out_first.to(dtype))
    tl.store(x_ptr + HALF + offs, out_second.to(dtype))


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, width, stride_x, stride_out, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < width
    gate = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * stride_x + width + offs, mask=mask, other=0.0)
    gate32 = gate.to(tl.float32)
    activated = (gate32 / (1.0 + tl.exp(-gate32))).to(gate.dtype)
    out = activated.to(tl.float32) * up.to(tl.float32)
    tl.store(out_ptr + row * stride_out + offs, out.to(gate.dtype), mask=mask)


@triton.jit
def _write_kv_kernel(k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slots_ptr, row_width,
                     stride_kt, stride_vt, BLOCK: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < row_width
    slot = tl.load(slots_ptr + token).to(tl.int64)
    key = tl.load(k_ptr + token * stride_kt + offs, mask=mask)
    value = tl.load(v_ptr + token * stride_vt + offs, mask=mask)
    tl.store(k_cache_ptr + slot * row_width + offs, key, mask=mask)
    tl.store(v_cache_ptr + slot * row_width + offs, value, mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [T, d] (rows contiguous), weight [d] -> [T, d] in x's dtype."""
    _check_rows("x", x, 2)
    out = torch.empty_like(x)
    _report("norms/rotary", read=x.nbytes + weight.nbytes, written=out.nbytes)
    if x.device.type == "meta" or x.shape[0] == 0:
        return out
    _rms_norm_kernel[(x.shape[0],)](x, weight, out, x.shape[1], eps, x.stride(0),
                                    out.stride(0), BLOCK=triton.next_power_of_2(x.shape[1]),
                                    num_warps=8)
    return out


def rotary_qk_(query: torch.Tensor, key: torch.Tensor, cos: torch.Tensor,
               sin: torch.Tensor) -> None:
    """Rotates query [T, H, D] and key [T, Hkv, D] in place; cos/sin [T, 1, D] (or [T, D])."""
    _check_rows("query", query, 3)
    _check_rows("key", key, 3)
    cos, sin = cos.reshape(cos.shape[0], -1), sin.reshape(sin.shape[0], -1)
    if cos.stride() != sin.stride() or cos.stride(1) != 1:
        raise ValueError("cos and sin must share one layout with contiguous rows")
    head_dim = query.shape[2]
    if key.shape[2] != head_dim or cos.shape[1] != head_dim or head_dim % 2:
        raise ValueError(f"head dims differ or are odd: query {head_dim}, key {key.shape[2]},"
                         f" cos {cos.shape[1]}")
    moved = 2 * (query.numel() * query.element_size() + key.numel() * key.element_size())
    _report("norms/rotary", read=moved // 2 + cos.nbytes + sin.nbytes, written=moved // 2)
    if query.device.type == "meta" or query.shape[0] == 0:
        return
    grid = (query.shape[0], query.shape[1] + key.shape[1])
    _rotary_kernel[grid](query, key, cos, sin, query.shape[1], query.stride(0),
                         query.stride(1), key.stride(0), key.stride(1), cos.stride(0),
                         HALF=head_dim // 2, num_warps=1)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [T, 2I] -> silu(gate) * up [T, I]."""
    _check_rows("gate_up", gate_up, 2)
    width = gate_up.shape[1] // 2
    out = torch.empty(gate_up.shape[0], width, dtype=gate_up.dtype, device=gate_up.device)
    _report("other", read=gate_up.nbytes, written=out.nbytes)
    if gate_up.device.type == "meta" or gate_up.shape[0] == 0:
        return out
    block = 1024
    _silu_and_mul_kernel[(gate_up.shape[0], triton.cdiv(width, block))](
        gate_up, out, width, gate_up.stride(0), out.stride(0), BLOCK=block, num_warps=4)
    return out


def write_kv(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
             value_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """key/value [T, Hkv, D] into row slot_mapping[t] of the caches viewed as [-1, Hkv, D]."""
    _check_rows("key", key, 3)
    _check_rows("value", value, 3)
    row_width = key.shape[1] * key.shape[2]
    if not (key_cache.is_contiguous() and value_cache.is_contiguous()):
        raise ValueError("the KV caches must be contiguous")
    if (key_cache[0, 0].numel() != row_width or value.shape != key.shape
            or key.stride(1) != key.shape[2] or value.stride(1) != value.shape[2]):
        raise ValueError(f"keys of {tuple(key.shape[1:])} do not fit cache slots of "
                         f"{tuple(key_cache.shape[2:])}")
    _report("attention", read=2 * key.numel() * key.element_size() + slot_mapping.nbytes,
            written=2 * key.numel() * key.element_size())
    if key.device.type == "meta" or key.shape[0] == 0:
        return
    block = triton.next_power_of_2(min(row_width, 4096))
    _write_kv_kernel[(key.shape[0], triton.cdiv(row_width, block))](
        key, value, key_cache, value_cache, slot_mapping, row_width, key.stride(0),
        value.stride(0), BLOCK=block, num_warps=4)


def _check_rows(name: str, tensor: torch.Tensor, dims: int) -> None:
    if tensor.dim() != dims or tensor.stride(-1) != 1:
        raise ValueError(f"{name} must have {dims} dims and a contiguous last one, got shape "
                         f"{tuple(tensor.shape)} strides {tensor.stride()}")


def _report(kind: str, read: int, written: int) -> None:
    if recording():
        report_launch(kind, read=read, written=written, flops=0, launches=1)
