"""Counter-based Gumbel noise: the same noise for the same (seed, token index), on any batch.

A `torch.Generator` per request would need a launch per row; one generator for the batch
would make a row's draw depend on its neighbours. Instead each noise value is a hash of
(row seed, the row's token index, vocabulary id), computed for the whole `[N, vocab]` batch
in a few integer operations on the device: a seeded request draws the same tokens alone
or batched, after a preemption, on any step. The hash is the "lowbias32" integer mixer
(two multiply-xorshift rounds) in int64 lanes holding 32-bit values, so no product
overflows.
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
MULTIPLIER = 0x45D9F3B  # < 2**27: a 32-bit value times it stays below 2**63


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijection of 32-bit values (int64 tensors holding 0 .. 2**32 - 1)."""
    x = x ^ (x >> 16)
    x = (x * MULTIPLIER) & MASK32
    x = x ^ (x >> 16)
    x = (x * MULTIPLIER) & MASK32
    return x ^ (x >> 16)


def uniform_hash(seeds: torch.Tensor, token_indices: torch.Tensor,
                 vocab_size: int) -> torch.Tensor:
    """Uniform in (0, 1), float32 [N, vocab], a function of (seed, index, token) only."""
    # seeds, token_indices int64 [N]
    low, high = seeds & MASK32, (seeds >> 32) & MASK32
    row_keys = mix32(mix32(mix32(low) ^ high) ^ (token_indices & MASK32))  # [N]
    token_keys = mix32(torch.arange(vocab_size, device=seeds.device))  # [vocab]
    bits = mix32(mix32(row_keys[:, None] ^ token_keys[None, :]) ^ row_keys[:, None])
    return ((bits >> 8).float() + 0.5) * 2.0**-24  # 24 bits: exact in float32, never 0 or 1


def gumbel_noise(seeds: torch.Tensor, token_indices: torch.Tensor,
                 vocab_size: int) -> torch.Tensor:
    """Standard Gumbel noise, float32 [N, vocab]: argmax(logits + noise) samples softmax."""
    return -torch.log(-torch.log(uniform_hash(seeds, token_indices, vocab_size)))
