"""Token masks of the step's constrained rows, for the batched sampler.

A constrained sequence carries its own xgrammar `GrammarMatcher` (the grammar's state
after the tokens it has generated). Before sampling, each constrained row's matcher
writes which tokens may come next into its row of one preallocated bitmask (32 tokens
per int32 word); the sampler then masks only those rows, so one batch mixes constrained
and free sequences of any adapters, and free rows are never touched. The rows are filled
together by xgrammar's `BatchGrammarMatcher`, on several threads. xgrammar is imported
with the first constrained row (the sampler builds this class then), so a server that
never sees one never holds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    import xgrammar


@dataclass(slots=True)
class TokenMask:
    bitmask: torch.Tensor  # int32 [N, ceil(vocab / 32)]: bit t of row i set = token t allowed
    rows: list[int]  # the rows that are constrained (others are left as they are)

    def apply(self, logits: torch.Tensor) -> None:
        """Set the logits of every disallowed token of the constrained rows to -inf."""
        # logits float32 [N, vocab], changed in place
        import xgrammar

        xgrammar.apply_token_bitmask_inplace(logits, self.bitmask, indices=self.rows)


class GrammarBitmask:
    def __init__(self, vocab_size: int, max_rows: int, device: torch.device) -> None:
        import xgrammar

        self.device = device
        self._buffer = xgrammar.allocate_token_bitmask(max_rows, vocab_size)  # int32, host
        self._batch = xgrammar.BatchGrammarMatcher()

    def build(self, matchers: list[xgrammar.GrammarMatcher | None]) -> TokenMask | None:
        """The step's mask for rows in `matchers` order (None: a free row), or None."""
        import xgrammar

        rows = [row for row, matcher in enumerate(matchers)
                if matcher is not None and not matcher.is_terminated()]
        if not rows:
            return None
        if len(matchers) > self._buffer.shape[0]:  # more sampled rows than planned
            self._buffer = xgrammar.allocate_token_bitmask(len(matchers),
                                                           self._buffer.shape[1] * 32)
        self._batch.batch_fill_next_token_bitmask([matchers[row] for row in rows],
                                                  self._buffer, indices=rows)
        bitmask = self._buffer[:len(matchers)].to(self.device, non_blocking=True)
        return TokenMask(bitmask, rows)
