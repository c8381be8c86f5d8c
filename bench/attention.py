"""Paged attention kernels on a GPU: achieved GB/s against the copy bandwidth.

Decode (one query per sequence, Llama-3-8B heads: 32 query / 8 KV heads of 128, bf16,
blocks of 16, shuffled tables) at batch 1/16/64 x context 512/2k/8k, and prefill chunks
over a cached prefix; the bytes of each launch are those the kernels report to
`launch_costs` (K/V read once), the copy bandwidth that of `torch.Tensor.copy_` on a
buffer of 1 GiB. Needs CUDA.

    python -m bench.attention
"""

from __future__ import annotations

import torch

from bench.report import cuda_seconds
from loraplex.runtime.kernels.launch_costs import recorded_launches
from loraplex.runtime.kernels.paged_attention import paged_decode, paged_prefill

HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16
DTYPE = torch.bfloat16


def copy_bandwidth() -> float:
    source = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    return 2 * source.numel() / cuda_seconds(lambda: target.copy_(source))


def paged_inputs(num_seqs: int, context: int):
    width = -(-context // BLOCK_SIZE)
    cache_shape = (num_seqs * width, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
    key_cache = torch.randn(cache_shape, dtype=DTYPE, device="cuda")
    value_cache = torch.randn(cache_shape, dtype=DTYPE, device="cuda")
    tables = torch.randperm(num_seqs * width, device="cuda").view(num_seqs, width).int()
    lengths = torch.full((num_seqs,), context, dtype=torch.int32, device="cuda")
    return key_cache, value_cache, tables, lengths


def launch_bytes(launch) -> int:
    with recorded_launches() as costs:
        launch()
    return sum(cost.read + cost.written for cost in costs)


def main() -> None:
    copy = copy_bandwidth()
    print(f"copy bandwidth {copy / 1e9:.0f} GB/s")
    print(f"{'kernel':<9}{'batch':>6}{'context':>9}{'chunk':>7}{'us':>10}{'GB/s':>8}"
          f"{'of copy':>9}")
    for num_seqs in (1, 16, 64):
        for context in (512, 2048, 8192):
            key_cache, value_cache, tables, lengths = paged_inputs(num_seqs, context)
            query = torch.randn(num_seqs, HEADS, HEAD_DIM, dtype=DTYPE, device="cuda")

            def decode(q=query, k=key_cache, v=value_cache, t=tables, n=lengths):
                paged_decode(q, k, v, t, n, HEAD_DIM**-0.5)

            report("decode", num_seqs, context, 1, launch_bytes(decode), cuda_seconds(decode), copy)
    for context, chunk in ((2048, 2048), (8192, 2048)):
        key_cache, value_cache, tables, lengths = paged_inputs(1, context)
        query = torch.randn(chunk, HEADS, HEAD_DIM, dtype=DTYPE, device="cuda")
        starts = torch.zeros(1, dtype=torch.int32, device="cuda")
        chunks = torch.full((1,), chunk, dtype=torch.int32, device="cuda")

        def prefill(q=query, k=key_cache, v=value_cache, t=tables, n=lengths, s=starts,
                    c=chunks, size=chunk):
            paged_prefill(q, k, v, t, s, c, n, size, HEAD_DIM**-0.5)

        report("prefill", 1, context, chunk, launch_bytes(prefill), cuda_seconds(prefill), copy)


def report(kernel: str, num_seqs: int, context: int, chunk: int, moved: int, took: float,
           copy: float) -> None:
    rate = moved / took
    print(f"{kernel:<9}{num_seqs:>6}{context:>9}{chunk:>7}{took * 1e6:>10.1f}"
          f"{rate / 1e9:>8.0f}{rate / copy:>9.2f}")


if __name__ == "__main__":
    main()
