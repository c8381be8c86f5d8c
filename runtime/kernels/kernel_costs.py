"""What each Triton launch reads, writes and computes, from its arguments' shapes.

Reported through `launch_costs` by the launchers (only while someone records), so that
the step cost model and the kernel benchmarks count the kernels the way a `TorchDispatch
Mode` counts torch ops. Only shapes and host-side lists are read (never a device value):
where a count depends on device-held lengths or ranks, the bound the shapes give is used
and named below.
"""

from __future__ import annotations

import torch

from .launch_costs import report_launch
from .segments import NO_ADAPTER, LoraSegments


def report_decode(query: torch.Tensor, key_cache: torch.Tensor, block_tables: torch.Tensor,
                  splits: int) -> None:
    """Paged decode: every table entry's keys counted as read (the lengths live on the
    device; tables sized to the batch's longest context make this exact for equal ones)."""
    num_seqs, num_heads, head_dim = query.shape
    keys = num_seqs * block_tables.shape[1] * key_cache.shape[1]
    kv_bytes = 2 * keys * key_cache.shape[2] * head_dim * key_cache.element_size()
    io_bytes = query.numel() * query.element_size()  # query in, output out
    table_bytes = block_tables.numel() * block_tables.element_size()
    report_launch("attention", read=kv_bytes + io_bytes + table_bytes, written=io_bytes,
                  flops=4 * keys * num_heads * head_dim, launches=1 if splits == 1 else 2)


def report_prefill(query: torch.Tensor, key_cache: torch.Tensor,
                   block_tables: torch.Tensor) -> None:
    """Paged prefill: each chunk taken as T / S rows at the end of a context that fills
    its table, its K/V read once (the kernel rereads them once per query block from L2)."""
    num_tokens, num_heads, head_dim = query.shape
    num_chunks, width = block_tables.shape
    context = width * key_cache.shape[1]
    chunk = min(context, num_tokens // max(num_chunks, 1))
    pairs = num_chunks * (chunk * (context - chunk) + chunk * (chunk + 1) // 2)
    kv_row = 2 * key_cache.shape[2] * head_dim * key_cache.element_size()
    io_bytes = query.numel() * query.element_size()
    report_launch("attention", read=num_chunks * context * kv_row + io_bytes,
                  written=io_bytes, flops=4 * pairs * num_heads * head_dim, launches=1)


def lora_rows_and_slots(segments: LoraSegments) -> tuple[int, int]:
    """(rows that have an adapter, distinct adapters) of a batch."""
    rows = sum(end - start for start, end, slot in zip(
        segments.indptr_list, segments.indptr_list[1:], segments.slot_list, strict=False)
        if slot != NO_ADAPTER)
    return rows, len(set(segments.slot_list) - {NO_ADAPTER})


def report_shrink(x: torch.Tensor, lora_a: torch.Tensor, segments: LoraSegments) -> None:
    """v = x @ A.T: each adapter's A read once at the pool's rank R (device-held ranks
    may be lower: a pool sized to the adapters' rank makes this exact)."""
    _, num_slices, max_rank, d_in = lora_a.shape
    rows, slots = lora_rows_and_slots(segments)
    element = x.element_size()
    report_launch("lora", read=rows * d_in * element + slots * num_slices * max_rank * d_in
                  * element, written=rows * num_slices * max_rank * 4,
                  flops=2 * rows * num_slices * max_rank * d_in, launches=1)


def report_expand(y: torch.Tensor, v: torch.Tensor, lora_b: torch.Tensor,
                  segments: LoraSegments) -> None:
    """y += v @ B.T: each adapter's B read once, y read and written on adapter rows."""
    max_rank, d_out = v.shape[2], y.shape[1]
    rows, slots = lora_rows_and_slots(segments)
    element = y.element_size()
    report_launch("lora", read=rows * v.shape[1] * max_rank * 4 + slots * d_out * max_rank
                  * element + rows * d_out * element, written=rows * d_out * element,
                  flops=2 * rows * max_rank * d_out, launches=1)


def report_int4_matmul(x: torch.Tensor, packed: torch.Tensor, scales_and_zeros: torch.Tensor,
                       split_k: int) -> None:
    """y = x @ W.T from 4-bit codes: the codes and group tables read once (half a byte per
    weight), x read and y written once; with split-K, each split's fp32 partial is written
    and read back once by the tile's last split, in the same launch."""
    num_rows, d_in = x.shape
    d_out, element = packed.shape[0], x.element_size()
    partials = num_rows * d_out * 4 * split_k if split_k > 1 else 0
    read = num_rows * d_in * element + packed.nbytes + scales_and_zeros.nbytes + partials
    written = num_rows * d_out * element + partials
    report_launch("linears", read=read, written=written, flops=2 * num_rows * d_out * d_in,
                  launches=1)
