"""Hands out fixed-size KV cache blocks to sequences, shares cached ones, takes them back.

A sequence's blocks are listed in its block table (a plain list of block ids). Blocks are
appended as the sequence grows and all given back at once when it finishes, is aborted or
is preempted. Each block has a reference count: with prefix caching on, a full block is
published under its hash (see `prefix_cache`) as soon as the step that fills it is
scheduled, and a sequence whose prompt starts with published blocks takes them into its
table by reference instead of computing them. Only full blocks are shared and nothing
writes to a full block again, so no copy-on-write is needed.

A block whose last reference goes stays cached: it joins an LRU list of free cached
blocks and is evicted (its hash forgotten) only when a new block is needed and no other
is free. New blocks come from returned uncached blocks first (last returned, first out),
then never-used ones (ids from 0 up), then the least recently used cached block, so the
cache knows which blocks are fresh: exactly ids `>= num_blocks_ever_used`.

Blocks are published as the step that fills them is scheduled, but matched only once that
step has run (`commit()`): a failed step is retried in parts (`step_isolation`), and a
part must never read blocks another part has yet to fill (`is_being_filled` lets the
scheduler hold a request that needs one for a step). `discard_uncommitted()` after a step
that failed, so that no half-computed block stays named.
"""

from __future__ import annotations

from collections import OrderedDict


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int,
                 enable_prefix_caching: bool = False) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError(f"need positive num_blocks and block_size, got {num_blocks}, "
                             f"{block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.num_blocks_ever_used = 0
        self._refs = [0] * num_blocks
        self._returned: list[int] = []  # free, holding nothing cached (reused first)
        self._evictable: OrderedDict[int, None] = OrderedDict()  # free cached, LRU first
        self._block_of_hash: dict[bytes, int] = {}
        self._hash_of_block: dict[int, bytes] = {}
        self._uncommitted: set[int] = set()  # published since the last commit: not matched
        self.num_evictions = 0

    @property
    def num_free_blocks(self) -> int:
        """Blocks no sequence holds (cached ones included: they are evicted on demand)."""
        never_used = self.num_blocks - self.num_blocks_ever_used
        return len(self._returned) + len(self._evictable) + never_used

    @property
    def num_cached_blocks(self) -> int:
        return len(self._block_of_hash)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def match_prefix(self, hashes: list[bytes]) -> list[int]:
        """The cached blocks of the longest prefix of `hashes` (nothing is referenced yet)."""
        blocks: list[int] = []
        for block_hash in hashes:
            block = self._block_of_hash.get(block_hash)
            if block is None or block in self._uncommitted:
                break
            blocks.append(block)
        return blocks

    def is_being_filled(self, block_hash: bytes) -> bool:
        """Whether the block named `block_hash` is filled by the step being scheduled."""
        block = self._block_of_hash.get(block_hash)
        return block is not None and block in self._uncommitted

    def can_grow(self, block_table: list[int], num_tokens: int,
                 shared: list[int] | None = None) -> bool:
        """Whether the table, after taking `shared` by reference, can cover `num_tokens`."""
        shared = shared or []
        new = self.blocks_for(num_tokens) - len(block_table) - len(shared)
        revived = sum(1 for block in shared if self._refs[block] == 0)  # leave the free list
        return max(new, 0) + revived <= self.num_free_blocks

    def share(self, block_table: list[int], shared: list[int]) -> None:
        """Append cached blocks (from `match_prefix`) to the table by reference."""
        for block in shared:
            if self._refs[block] == 0:
                del self._evictable[block]
            self._refs[block] += 1
            block_table.append(block)

    def grow(self, block_table: list[int], num_tokens: int) -> None:
        """Append new blocks to `block_table` until it covers `num_tokens` tokens."""
        missing = self.blocks_for(num_tokens) - len(block_table)
        if missing > self.num_free_blocks:
            raise RuntimeError(f"out of KV blocks: need {missing}, "
                               f"{self.num_free_blocks} free")
        for _ in range(missing):
            block = self._take_free_block()
            self._refs[block] = 1
            block_table.append(block)

    def publish(self, block_table: list[int], hashes: list[bytes], start: int,
                end: int) -> None:
        """Name the table's full blocks `start..end - 1` by their hashes.

        A hash already naming another block keeps that block (this one stays unnamed).
        """
        if not self.enable_prefix_caching:
            return
        for index in range(start, end):
            block_hash, block = hashes[index], block_table[index]
            if block_hash in self._block_of_hash or block in self._hash_of_block:
                continue
            self._block_of_hash[block_hash] = block
            self._hash_of_block[block] = block_hash
            self._uncommitted.add(block)

    def commit(self) -> None:
        """The step that fills the blocks published since the last commit has run."""
        self._uncommitted.clear()

    def discard_uncommitted(self) -> None:
        """The step failed: forget the names of blocks it was to fill."""
        for block in self._uncommitted:
            if self._hash_of_block.get(block) is not None:
                self._forget(block)
                if block in self._evictable:
                    del self._evictable[block]
                    self._returned.append(block)
        self._uncommitted.clear()

    def release(self, block_table: list[int]) -> None:
        """Drop the table's references; the table is left empty.

        Freed cached blocks join the LRU list tail first, so a prompt's last blocks are
        evicted before the first ones that more prompts share.
        """
        for block in reversed(block_table):
            self._refs[block] -= 1
            if self._refs[block]:
                continue
            if block in self._hash_of_block:
                self._evictable[block] = None
            else:
                self._returned.append(block)
        block_table.clear()

    def _take_free_block(self) -> int:
        if self._returned:
            return self._returned.pop()
        if self.num_blocks_ever_used < self.num_blocks:
            self.num_blocks_ever_used += 1
            return self.num_blocks_ever_used - 1
        block, _ = self._evictable.popitem(last=False)
        self._forget(block)
        self.num_evictions += 1
        return block

    def _forget(self, block: int) -> None:
        del self._block_of_hash[self._hash_of_block.pop(block)]
