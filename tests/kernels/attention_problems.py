"""Random paged-attention problems: caches, block tables and lengths.

Blocks are handed out shuffled (a sequence's blocks are out of order in the cache and no
two sequences share one), unused cache blocks hold NaN (a kernel that reads outside its
table fails loudly), and lengths are ragged: 1, ends mid-block and on a block boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PagedProblem:
    query: torch.Tensor  # decode [B, H, D]; prefill [T, H, D]
    key_cache: torch.Tensor  # [num_blocks, block_size, Hkv, D]
    value_cache: torch.Tensor
    block_tables: torch.Tensor  # int32 [S, W]
    seq_lens: torch.Tensor  # int32 [S]: keys per sequence
    query_starts: torch.Tensor  # int32 [S] (prefill)
    query_lens: torch.Tensor  # int32 [S] (prefill)
    scale: float

    def cast(self, dtype: torch.dtype) -> PagedProblem:
        return PagedProblem(self.query.to(dtype), self.key_cache.to(dtype),
                            self.value_cache.to(dtype), self.block_tables, self.seq_lens,
                            self.query_starts, self.query_lens, self.scale)


def paged_problem(seq_lens: list[int], query_lens: list[int] | None, num_heads: int,
                  num_kv_heads: int, head_dim: int, block_size: int,
                  generator: torch.Generator) -> PagedProblem:
    """fp64 problem; query_lens None: decode (one query per sequence)."""
    widths = [-(-length // block_size) for length in seq_lens]
    num_blocks = sum(widths) + 3  # spare blocks nobody owns
    order = torch.randperm(num_blocks, generator=generator).tolist()
    width = max(widths)
    tables = torch.zeros(len(seq_lens), width, dtype=torch.int32)
    taken = 0
    for seq, blocks in enumerate(widths):
        tables[seq, :blocks] = torch.tensor(order[taken:taken + blocks])
        tables[seq, blocks:] = order[-1]  # padding: a spare block
        taken += blocks
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    key_cache = torch.full(shape, float("nan"), dtype=torch.float64)
    value_cache = torch.full(shape, float("nan"), dtype=torch.float64)
    for seq, length in enumerate(seq_lens):
        positions = torch.arange(length)
        blocks = tables[seq, positions // block_size].long()
        key_cache[blocks, positions % block_size] = torch.randn(
            length, num_kv_heads, head_dim, generator=generator, dtype=torch.float64)
        value_cache[blocks, positions % block_size] = torch.randn(
            length, num_kv_heads, head_dim, generator=generator, dtype=torch.float64)
    lens = query_lens or [1] * len(seq_lens)
    starts = [sum(lens[:index]) for index in range(len(lens))]
    query = torch.randn(sum(lens), num_heads, head_dim, generator=generator,
                        dtype=torch.float64)
    return PagedProblem(query, key_cache, value_cache, tables,
                        torch.tensor(seq_lens, dtype=torch.int32),
                        torch.tensor(starts, dtype=torch.int32),
                        torch.tensor(lens, dtype=torch.int32), head_dim**-0.5)
