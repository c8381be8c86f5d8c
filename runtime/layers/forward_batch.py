"""Everything one forward pass needs to know about the batch, passed explicitly.

The engine flattens every scheduled sequence's new tokens into one row list: decode
sequences (one new token each) come first, sorted by context length and cut into small
groups (so each group's keys are padded only to its own longest sequence), then prefill
chunks. A decode step replayed as a CUDA graph has one group over persistent buffers
instead (see `engine.decode_graphs`). The model reads the metadata from here, never from a
module global, so several engines (or tests) can share one process. LoRA metadata rides
along in `lora` (`lora.LoraBatch`, or `lora_static.StaticLoraBatch` in a captured step;
None when no row of the step uses an adapter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


class LoraDelta(Protocol):
    def apply(self, y: torch.Tensor, x: torch.Tensor, layer: int, group: str) -> None:
        """y [T, d_out_total] += each row's adapter delta of `group` for x [T, d_in]."""


@dataclass(slots=True)
class PrefillSpan:
    """One sequence's chunk of new tokens, rows `start:start + query_len` of the batch."""

    start: int
    query_len: int
    context_len: int  # tokens in the KV cache after this step (cached + new)
    block_table: torch.Tensor  # int64 [num_blocks_of_seq]
    causal_mask: torch.Tensor | None  # bool [query_len, context_len]; None: no cached prefix

    @property
    def has_cached_prefix(self) -> bool:
        return self.context_len > self.query_len


@dataclass(slots=True)
class DecodeGroup:
    """Decode sequences attended together, rows `start:start + num_seqs` of the batch."""

    start: int
    num_seqs: int
    block_tables: torch.Tensor  # int64 [num_seqs, max_blocks], padded with block 0
    key_mask: torch.Tensor  # float [num_seqs, 1, 1, max_blocks * block_size]: 0 or -inf


@dataclass(slots=True)
class ForwardBatch:
    input_ids: torch.Tensor  # int64 [T]
    positions: torch.Tensor  # int64 [T]
    slot_mapping: torch.Tensor  # int64 [T]: KV cache slot written by each row
    decode_groups: list[DecodeGroup]  # together rows 0:num_decode_tokens, one per sequence
    prefills: list[PrefillSpan]
    lora: LoraDelta | None = None  # per-row adapter slots and the pool they index

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_decode_tokens(self) -> int:
        return sum(group.num_seqs for group in self.decode_groups)
