"""Names of full KV blocks, so that a prompt prefix computed once is found again.

A full block's K/V depend on every token before it and on the adapter that computed
them (LoRA changes the k/v projections), so a block is named by a chained hash over
(adapter identity, parent block's hash, the block's token ids), as vLLM names its blocks.
The adapter identity is its registered name and the digest of its content: an adapter
replaced under the same name by different weights stops matching, one re-registered with
the same files matches again. SHA-256 keeps one tenant from forging another's block names.

`PrefixCacheStats` counts, per adapter, the prompt tokens looked up and those found
(vLLM's `prefix_cache_queries` / `prefix_cache_hits`, in tokens).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import Counter
from dataclasses import dataclass, field

ROOT_HASH = bytes(32)  # parent of a sequence's first block
BASE_MODEL_IDENTITY = hashlib.sha256(b"base-model").digest()


def adapter_identity(name: str, digest: str) -> bytes:
    """32 bytes naming one adapter's weights: its registered name and its content digest."""
    return hashlib.sha256(b"adapter\0" + name.encode() + b"\0" + digest.encode()).digest()


def extend_block_hashes(hashes: list[bytes], identity: bytes, token_ids: list[int],
                        block_size: int, num_full_blocks: int) -> None:
    """Append the hashes of blocks `len(hashes)..num_full_blocks - 1` of `token_ids`."""
    for index in range(len(hashes), num_full_blocks):
        parent = hashes[-1] if hashes else ROOT_HASH
        tokens = array("q", token_ids[index * block_size:(index + 1) * block_size])
        hashes.append(hashlib.sha256(identity + parent + tokens.tobytes()).digest())


@dataclass(slots=True)
class PrefixCacheStats:
    """Prompt tokens looked up in the cache and found there, per adapter (None: base)."""

    queries: Counter[str | None] = field(default_factory=Counter)
    hits: Counter[str | None] = field(default_factory=Counter)

    def record(self, adapter: str | None, num_queried: int, num_hit: int) -> None:
        self.queries[adapter] += num_queried
        self.hits[adapter] += num_hit

    def snapshot(self) -> PrefixCacheStats:
        return PrefixCacheStats(Counter(self.queries), Counter(self.hits))

    @property
    def total_queries(self) -> int:
        return sum(self.queries.values())

    @property
    def total_hits(self) -> int:
        return sum(self.hits.values())
