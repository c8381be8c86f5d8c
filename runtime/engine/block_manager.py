"""Hands out fixed-size KV cache blocks to sequences and takes them back.

A sequence's blocks are listed in its block table (a plain list of block ids). Blocks
are appended as the sequence grows and all returned at once when it finishes, is
aborted or is preempted; nothing is shared between sequences (no prefix caching).
Returned blocks are handed out again before never-used ones (ids from 0 up), so the
memory a long-running server touches stays what its peak load needed, and the cache
knows which blocks are fresh: exactly ids `>= num_blocks_ever_used`.
"""

from __future__ import annotations


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError(f"need positive num_blocks and block_size, got {num_blocks}, "
                             f"{block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._returned: list[int] = []  # reused first (last returned, first out)
        self.num_blocks_ever_used = 0

    @property
    def num_free_blocks(self) -> int:
        return len(self._returned) + self.num_blocks - self.num_blocks_ever_used

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def can_grow(self, block_table: list[int], num_tokens: int) -> bool:
        """Whether the table can cover `num_tokens` tokens with the blocks still free."""
        return self.blocks_for(num_tokens) - len(block_table) <= self.num_free_blocks

    def grow(self, block_table: list[int], num_tokens: int) -> None:
        """Append blocks to `block_table` until it covers `num_tokens` tokens."""
        missing = self.blocks_for(num_tokens) - len(block_table)
        if missing > self.num_free_blocks:
            raise RuntimeError(f"out of KV blocks: need {missing}, "
                               f"{self.num_free_blocks} free")
        for _ in range(missing):
            if self._returned:
                block_table.append(self._returned.pop())
            else:
                block_table.append(self.num_blocks_ever_used)
                self.num_blocks_ever_used += 1

    def release(self, block_table: list[int]) -> None:
        """Return every block of the table; the table is left empty."""
        self._returned.extend(block_table)
        block_table.clear()
