"""Per-sequence token counts on the device, for repetition, frequency and presence penalties.

A penalized sequence owns one row of two device tables: how often each token was
generated (`counts`, for frequency and presence penalties) and whether it occurs in the
prompt or the output (`seen`, for the repetition penalty). The row is filled once, from
the sequence's tokens, when it first samples; after that each step adds the tokens it
sampled on the device (`record`), so no step copies a context to the device or reads a
count back. Rows of finished sequences are reused; the tables grow by doubling.
"""

from __future__ import annotations

import torch

from loraplex.runtime.engine.sequence import Sequence
from loraplex.runtime.layers.sampler import PenaltyBatch


def is_penalized(seq: Sequence) -> bool:
    params = seq.params
    return (params.repetition_penalty != 1.0 or params.frequency_penalty != 0.0
            or params.presence_penalty != 0.0)


class PenaltyCounts:
    def __init__(self, vocab_size: int, device: torch.device, initial_rows: int = 8) -> None:
        self.vocab_size = vocab_size
        self.device = device
        self.counts = torch.zeros(initial_rows, vocab_size, dtype=torch.int32, device=device)
        self.seen = torch.zeros(initial_rows, vocab_size, dtype=torch.bool, device=device)
        self._rows: dict[Sequence, int] = {}
        self._free = list(range(initial_rows))

    def batch(self, seqs: list[Sequence]) -> tuple[PenaltyBatch | None, list[int]]:
        """The step's PenaltyBatch (None if no row is penalized) and its table rows."""
        self._release_finished()
        batch_rows = [row for row, seq in enumerate(seqs) if is_penalized(seq)]
        if not batch_rows:
            return None, []
        table_rows = [self._row_of(seqs[row]) for row in batch_rows]
        params = [seqs[row].params for row in batch_rows]
        index = self._tensor(table_rows, torch.int64)
        return PenaltyBatch(
            rows=self._tensor(batch_rows, torch.int64),
            counts=self.counts.index_select(0, index), seen=self.seen.index_select(0, index),
            repetition=self._tensor([p.repetition_penalty for p in params], torch.float32),
            frequency=self._tensor([p.frequency_penalty for p in params], torch.float32),
            presence=self._tensor([p.presence_penalty for p in params], torch.float32),
        ), table_rows

    def record(self, batch: PenaltyBatch, table_rows: list[int],
               token_ids: torch.Tensor) -> None:
        """Count the tokens just sampled (int64 [N], on the device) into their rows."""
        sampled = token_ids.index_select(0, batch.rows)  # [P]
        index = (self._tensor(table_rows, torch.int64), sampled)
        self.counts.index_put_(index, torch.ones_like(sampled, dtype=torch.int32),
                               accumulate=True)
        self.seen.index_put_(index, torch.ones_like(sampled, dtype=torch.bool))

    def _row_of(self, seq: Sequence) -> int:
        row = self._rows.get(seq)
        if row is not None:
            return row
        if not self._free:
            self._grow()
        row = self._rows[seq] = self._free.pop()
        tokens = self._tensor(seq.token_ids, torch.int64)
        generated = tokens[seq.num_prompt_tokens:]
        self.seen[row].zero_().index_fill_(0, tokens, True)
        self.counts[row].zero_().index_add_(
            0, generated, torch.ones_like(generated, dtype=torch.int32))
        return row

    def _grow(self) -> None:
        old = self.counts.shape[0]
        self.counts = torch.cat([self.counts, torch.zeros_like(self.counts)])
        self.seen = torch.cat([self.seen, torch.zeros_like(self.seen)])
        self._free.extend(range(old, 2 * old))

    def _release_finished(self) -> None:
        for seq in [seq for seq in self._rows if seq.is_finished]:
            self._free.append(self._rows.pop(seq))

    def _tensor(self, values: list[int] | list[float], dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype).to(self.device, non_blocking=True)
