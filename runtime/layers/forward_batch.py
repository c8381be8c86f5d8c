"""Everything one forward pass needs to know about the batch, passed explicitly.

The engine flattens every scheduled sequence's new tokens into one row list: decode
sequences (one new token each) come first, then prefill chunks. Attention reads the KV
cache through the block tables here, with the lengths in device tensors: the kernels
never need a host-side length, so a decode step replayed as a CUDA graph is the same
launch for any mix of contexts (see `engine.decode_graphs`). The model reads the metadata
from here, never from a module global, so several engines (or tests) can share one
process. LoRA metadata rides along in `lora` (`lora.LoraBatch`, or
`lora_static.StaticLoraBatch` in a captured step; None when no row uses an adapter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


class LoraDelta(Protocol):
    def apply(self, y: torch.Tensor, x: torch.Tensor, layer: int, group: str) -> None:
        """y [T, d_out_total] += each row's adapter delta of `group` for x [T, d_in]."""


@dataclass(slots=True)
class DecodeRows:
    """The decode sequences, rows 0:num_seqs of the batch, one new token each."""

    block_tables: torch.Tensor  # int32/int64 [num_seqs, W]; entries past a row's length unread
    seq_lens: torch.Tensor  # int32/int64 [num_seqs]: keys each row sees, its new token's included
    seq_lens_host: list[int]  # the same lengths on the host (for the CPU path: no device read)
    # the CPU path's plan of these rows (attention_torch.DecodePlan), built by the first
    # layer, read by the rest
    cpu_plan: object | None = None

    @property
    def num_seqs(self) -> int:
        return int(self.block_tables.shape[0])


@dataclass(slots=True)
class PrefillChunks:
    """Prefill chunks: chunk s is rows query_starts[s]:query_starts[s] + query_lens[s]."""

    block_tables: torch.Tensor  # int32 [num_chunks, W]
    query_starts: torch.Tensor  # int32 [num_chunks]
    query_lens: torch.Tensor  # int32 [num_chunks]
    context_lens: torch.Tensor  # int32 [num_chunks]: tokens cached after this step
    max_query_len: int
    spans_host: list[tuple[int, int, int]]  # (start, query len, context len) of each chunk


@dataclass(slots=True)
class ForwardBatch:
    input_ids: torch.Tensor  # int64 [T]
    positions: torch.Tensor  # int64 [T]
    slot_mapping: torch.Tensor  # int64 [T]: KV cache slot written by each row
    decode: DecodeRows | None
    prefill: PrefillChunks | None
    lora: LoraDelta | None = None  # per-row adapter slots and the pool they index

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_decode_tokens(self) -> int:
        return 0 if self.decode is None else self.decode.num_seqs
