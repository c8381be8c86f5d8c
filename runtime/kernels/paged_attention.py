"""Triton attention over the paged KV cache: K/V read in place through the block table.

Two kernels, both reading keys and values of a sequence straight from the cache pages
(`[num_blocks, block_size, num_kv_heads, head_dim]` per layer) by looking up each key's
block in the sequence's table, so nothing is gathered into new tensors:

- `paged_decode`: one query token per sequence. A program owns one (sequence, KV head,
  split): the query heads that share that KV head are the rows of its tiles (GQA: each
  K/V tile is loaded once for the whole group, never repeated per head). Context lengths
  come from a device tensor, so one launch serves any mix of lengths and its grid depends
  on the batch size only (CUDA-graph safe). With split-KV (flash-decoding) each sequence's
  keys are cut into `num_splits` ranges whose partial results a second, small kernel
  merges; it keeps the GPU busy when a few long sequences are all there is.
- `paged_prefill`: a chunk of new tokens per sequence, causal over the cached prefix and
  the chunk itself (the chunk's own K/V are written to the cache first). A program owns
  BLOCK_Q query tokens x the query heads of one KV head; scores live only as
  [rows, BLOCK_N] tiles, never as a [Q, C] matrix.

Softmax is online, in fp32 (exp2 with the scale folded in). Caches may be fp32, fp16 or
bf16; dots run on tensor cores in the cache dtype with fp32 accumulation (fp32 caches use
exact fp32 dots). The Triton interpreter has no bf16 dot, so there (only) bf16 tiles are
widened to fp32 first. Each launch reports its bytes and FLOPs to `launch_costs`.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .attention_checks import check_decode_args, check_prefill_args
from .configs import num_sms
from .kernel_costs import report_decode, report_prefill
from .launch_costs import recording

INTERPRETER_ENV = "TRITON_INTERPRET"
MAX_SPLITS = 16


@triton.jit
def _attend_tile(q, acc, m_i, l_i, k_cache_ptr, v_cache_ptr, table_ptr, offs_n, key_limit,
                 causal_pos, kv_head, offs_d, mask_d, block_size, stride_cb, stride_ct,
                 stride_ch, qk_scale, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One [BLOCK_N] tile of keys folded into the online softmax of rows q [M, D]."""
    mask_n = offs_n < key_limit
    blocks = tl.load(table_ptr + offs_n // block_size, mask=mask_n, other=0).to(tl.int64)
    kv_offs = (blocks * stride_cb + (offs_n % block_size).to(tl.int64) * stride_ct
               + kv_head * stride_ch)
    kv_mask = mask_n[:, None] & mask_d[None, :]
    k = tl.load(k_cache_ptr + kv_offs[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_cache_ptr + kv_offs[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [M, N]
    visible = mask_n[None, :] & (offs_n[None, :] <= causal_pos[:, None])
    scores = tl.where(visible, scores, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(scores, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing seen yet
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(scores - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, m_new, l_i


@triton.jit
def _decode_kernel(q_ptr, k_cache_ptr, v_cache_ptr, tables_ptr, seq_lens_ptr, out_ptr,
                   part_acc_ptr, part_ml_ptr, head_dim, group, block_size, qk_scale,
                   stride_qb, stride_qh, stride_cb, stride_ct, stride_ch, stride_tb,
                   stride_ob, stride_oh, ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_D: tl.constexpr, NUM_SPLITS: tl.constexpr, UPCAST: tl.constexpr,
                   DOT_PRECISION: tl.constexpr):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    # keys [start, stop) of this split, whole tiles each
    per_split = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * per_split
    stop = tl.minimum(start + per_split, seq_len)

    offs_m = tl.arange(0, ROWS)  # query heads of this KV head
    mask_m = offs_m < group
    heads = kv_head * group + offs_m
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < head_dim
    q = tl.load(q_ptr + seq.to(tl.int64) * stride_qb + heads[:, None] * stride_qh
                + offs_d[None, :], mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    causal_pos = tl.full((ROWS,), 0, tl.int32) + seq_len - 1  # the new token sees all keys
    acc = tl.zeros((ROWS, BLOCK_D), dtype=tl.float32)
    m_i = tl.full((ROWS,), float("-inf"), tl.float32)
    l_i = tl.zeros((ROWS,), dtype=tl.float32)
    table_ptr = tables_ptr + seq.to(tl.int64) * stride_tb
    for tile_start in range(start, stop, BLOCK_N):
        acc, m_i, l_i = _attend_tile(
            q, acc, m_i, l_i, k_cache_ptr, v_cache_ptr, table_ptr,
            tile_start + tl.arange(0, BLOCK_N), stop, causal_pos, kv_head, offs_d, mask_d,
            block_size, stride_cb, stride_ct, stride_ch, qk_scale, UPCAST, DOT_PRECISION)
    out_mask = mask_m[:, None] & mask_d[None, :]
    if NUM_SPLITS == 1:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(out_ptr + seq.to(tl.int64) * stride_ob + heads[:, None] * stride_oh
                 + offs_d[None, :], out.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        # partials: acc [B, H, S, BLOCK_D] and (max, sum) [B, H, S, 2], all fp32
        row = (seq.to(tl.int64) * tl.num_programs(1) * group + heads) * NUM_SPLITS + split
        tl.store(part_acc_ptr + row[:, None] * BLOCK_D + offs_d[None, :], acc,
                 mask=out_mask)
        tl.store(part_ml_ptr + row * 2, m_i, mask=mask_m)
        tl.store(part_ml_ptr + row * 2 + 1, l_i, mask=mask_m)


@triton.jit
def _merge_splits_kernel(part_acc_ptr, part_ml_ptr, out_ptr, num_heads, head_dim,
                         stride_ob, stride_oh, NUM_SPLITS: tl.constexpr,
                         BLOCK_D: tl.constexpr):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    row = (seq.to(tl.int64) * num_heads + head) * NUM_SPLITS + tl.arange(0, NUM_SPLITS)
    m = tl.load(part_ml_ptr + row * 2)  # [S]
    l_split = tl.load(part_ml_ptr + row * 2 + 1)
    m_max = tl.max(m, axis=0)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)
    weights = tl.exp2(m - m_max)  # empty splits: exp2(-inf) = 0
    total = tl.sum(weights * l_split, axis=0)
    offs_d = tl.arange(0, BLOCK_D)
    acc = tl.load(part_acc_ptr + row[:, None] * BLOCK_D + offs_d[None, :])  # [S, BLOCK_D]
    out = tl.sum(acc * weights[:, None], axis=0) / tl.where(total == 0.0, 1.0, total)
    tl.store(out_ptr + seq.to(tl.int64) * stride_ob + head * stride_oh + offs_d,
             out.to(out_ptr.dtype.element_ty), mask=offs_d < head_dim)


@triton.jit
def _prefill_kernel(q_ptr, k_cache_ptr, v_cache_ptr, tables_ptr, q_starts_ptr, q_lens_ptr,
                    ctx_lens_ptr, out_ptr, head_dim, group, block_size, qk_scale,
                    stride_qt, stride_qh, stride_cb, stride_ct, stride_ch, stride_tb,
                    stride_ot, stride_oh, BLOCK_Q: tl.constexpr, GROUP_ROWS: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
                    DOT_PRECISION: tl.constexpr):
    span = tl.program_id(0)
    q_block = tl.program_id(1)
    kv_head = tl.program_id(2)
    q_len = tl.load(q_lens_ptr + span)
    if q_block * BLOCK_Q >= q_len:
        return
    q_start = tl.load(q_starts_ptr + span)
    ctx_len = tl.load(ctx_lens_ptr + span)
    prefix = ctx_len - q_len  # cached tokens before the chunk

    # rows: BLOCK_Q tokens x GROUP_ROWS query heads (the heads of this KV head)
    offs_m = tl.arange(0, BLOCK_Q * GROUP_ROWS)
    token = q_block * BLOCK_Q + offs_m // GROUP_ROWS
    head_in_group = offs_m % GROUP_ROWS
    mask_m = (token < q_len) & (head_in_group < group)
    heads = kv_head * group + head_in_group
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < head_dim
    rows = (q_start + token).to(tl.int64)
    q = tl.load(q_ptr + rows[:, None] * stride_qt + heads[:, None] * stride_qh
                + offs_d[None, :], mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    causal_pos = prefix + token  # row sees keys 0..its own position
    key_limit = tl.minimum(ctx_len, prefix + (q_block + 1) * BLOCK_Q)
    acc = tl.zeros((BLOCK_Q * GROUP_ROWS, BLOCK_D), dtype=tl.float32)
    m_i = tl.full((BLOCK_Q * GROUP_ROWS,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_Q * GROUP_ROWS,), dtype=tl.float32)
    table_ptr = tables_ptr + span.to(tl.int64) * stride_tb
    for tile_start in range(0, key_limit, BLOCK_N):
        acc, m_i, l_i = _attend_tile(
            q, acc, m_i, l_i, k_cache_ptr, v_cache_ptr, table_ptr,
            tile_start + tl.arange(0, BLOCK_N), key_limit, causal_pos, kv_head, offs_d,
            mask_d, block_size, stride_cb, stride_ct, stride_ch, qk_scale, UPCAST,
            DOT_PRECISION)
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(out_ptr + rows[:, None] * stride_ot + heads[:, None] * stride_oh
             + offs_d[None, :], out.to(out_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_d[None, :])


def decode_splits(num_seqs: int, num_kv_heads: int, device: torch.device) -> int:
    """Splits per sequence so that about two programs per SM run (a power of two <= 16).

    Depends on the batch shape only, never on lengths: a captured graph keeps it."""
    programs = num_seqs * num_kv_heads
    wanted = triton.next_power_of_2(triton.cdiv(2 * num_sms(device), programs))
    return max(1, min(MAX_SPLITS, wanted))


def paged_decode(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                 block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                 num_splits: int | None = None, out: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """out[b, h] = softmax(q[b, h] . K[b, :seq_len].T * scale) V over the cached keys.

    query [B, H, D]; key_cache/value_cache [num_blocks, block_size, Hkv, D] (same dtype as
    query); block_tables int32/int64 [B, W] with W * block_size >= every seq_len; seq_lens
    int32 [B] (keys per sequence, the new token's included, >= 1). -> out [B, H, D].
    num_splits: split-KV ranges per sequence (None: `decode_splits`; 1: off).
    """
    check_decode_args(query, key_cache, value_cache, block_tables, seq_lens)
    _check_device(query)
    if num_splits is not None and (num_splits < 1 or num_splits > MAX_SPLITS
                                   or num_splits & (num_splits - 1)):
        raise ValueError(f"num_splits must be a power of two in 1..{MAX_SPLITS}, "
                         f"got {num_splits}")
    num_seqs, num_heads, head_dim = query.shape
    block_size, num_kv_heads = key_cache.shape[1], key_cache.shape[2]
    group = num_heads // num_kv_heads
    splits = num_splits or decode_splits(num_seqs, num_kv_heads, query.device)
    if out is None:
        out = torch.empty_like(query)
    block_d = triton.next_power_of_2(head_dim)
    rows = max(16, triton.next_power_of_2(group))  # a dot tile has 16 rows at least
    part_acc = part_ml = out  # unused when splits == 1
    if splits > 1:
        part_acc = torch.empty(num_seqs, num_heads, splits, block_d, dtype=torch.float32,
                               device=query.device)
        part_ml = torch.empty(num_seqs, num_heads, splits, 2, dtype=torch.float32,
                              device=query.device)
    if recording():
        report_decode(query, key_cache, block_tables, splits)
    if query.device.type == "meta":  # costed, not run (bench.step_model)
        return out
    upcast, precision = _dot_mode(query.dtype)
    block_n = 16 if block_d > 128 else 32
    _decode_kernel[(num_seqs, num_kv_heads, splits)](
        query, key_cache, value_cache, block_tables, seq_lens, out, part_acc, part_ml,
        head_dim, group, block_size, scale * 1.4426950408889634, query.stride(0),
        query.stride(1), key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1), ROWS=rows, BLOCK_N=block_n,
        BLOCK_D=block_d, NUM_SPLITS=splits, UPCAST=upcast, DOT_PRECISION=precision,
        num_warps=4, num_stages=2)
    if splits > 1:
        _merge_splits_kernel[(num_seqs, num_heads)](
            part_acc, part_ml, out, num_heads, head_dim, out.stride(0), out.stride(1),
            NUM_SPLITS=splits, BLOCK_D=block_d, num_warps=4)
    return out


def paged_prefill(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                  block_tables: torch.Tensor, query_starts: torch.Tensor,
                  query_lens: torch.Tensor, context_lens: torch.Tensor, max_query_len: int,
                  scale: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention of prefill chunks over their cached prefix and themselves.

    query [T, H, D] (chunk rows of all spans); span s owns rows
    query_starts[s]:query_starts[s] + query_lens[s], whose K/V are already in the cache at
    positions context_lens[s] - query_lens[s] .. context_lens[s] - 1; block_tables [S, W];
    query_starts/query_lens/context_lens int32 [S]; max_query_len: max of query_lens (host
    int, sizes the grid). -> out [T, H, D] (rows of no span left untouched).
    """
    check_prefill_args(query, key_cache, value_cache, block_tables, query_starts, query_lens,
                       context_lens)
    _check_device(query)
    num_heads, head_dim = query.shape[1], query.shape[2]
    block_size, num_kv_heads = key_cache.shape[1], key_cache.shape[2]
    group = num_heads // num_kv_heads
    if out is None:
        out = torch.empty_like(query)
    block_d = triton.next_power_of_2(head_dim)
    group_rows = triton.next_power_of_2(group)
    block_q = max(1, 64 // group_rows)  # 64 rows of tokens x heads per program
    if recording():
        report_prefill(query, key_cache, block_tables)
    if query.device.type == "meta":  # costed, not run (bench.step_model)
        return out
    upcast, precision = _dot_mode(query.dtype)
    grid = (block_tables.shape[0], triton.cdiv(max(max_query_len, 1), block_q), num_kv_heads)
    _prefill_kernel[grid](
        query, key_cache, value_cache, block_tables, query_starts, query_lens, context_lens,
        out, head_dim, group, block_size, scale * 1.4426950408889634, query.stride(0),
        query.stride(1), key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1), BLOCK_Q=block_q,
        GROUP_ROWS=group_rows, BLOCK_N=32 if block_d > 64 else 64, BLOCK_D=block_d,
        UPCAST=upcast, DOT_PRECISION=precision, num_warps=4, num_stages=2)
    return out


def _dot_mode(dtype: torch.dtype) -> tuple[bool, str]:
    """(widen tiles to fp32, dot precision): exact fp32 dots for fp32 caches."""
    interpreted = os.environ.get(INTERPRETER_ENV) == "1"
    if dtype == torch.float32:
        return False, "ieee"
    return interpreted and dtype == torch.bfloat16, "ieee" if interpreted else "tf32"


def _check_device(tensor: torch.Tensor) -> None:
    if tensor.device.type not in ("cuda", "meta") and os.environ.get(INTERPRETER_ENV) != "1":
        raise ValueError(f"the triton attention needs CUDA tensors, got {tensor.device} "
                         f"(or run under {INTERPRETER_ENV}=1)")
