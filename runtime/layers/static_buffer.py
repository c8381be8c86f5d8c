"""A persistent device buffer, refilled from the host with one copy per step.

A captured CUDA graph reads its inputs from the addresses it was captured with, so a
step's metadata must be written into the same memory every time. On CUDA the values go
through a pinned host twin and an asynchronous copy on the current stream (ordered
before the kernels that read them); the next fill first waits until that copy has read
the twin, since a step need not end in a synchronisation. On the CPU the values are
written straight into the buffer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class StaticBuffer:
    def __init__(self, numel: int, dtype: torch.dtype, device: torch.device) -> None:
        self.data = torch.zeros(numel, dtype=dtype, device=device)  # [numel], never replaced
        self._host = (torch.zeros(numel, dtype=dtype, pin_memory=True)
                      if device.type == "cuda" else None)
        self._copied: torch.cuda.Event | None = None

    def fill(self, values: Sequence[int]) -> None:
        """data[:len(values)] = values, before any kernel queued after this call runs."""
        self.fill_pieces([(0, torch.tensor(values, dtype=self.data.dtype))], len(values))

    def fill_pieces(self, pieces: Sequence[tuple[int, torch.Tensor]], count: int,
                    row_stride: int = 0) -> None:
        """Writes each piece at its offset in one copy of data[:count] (the gaps keep what
        they held), before any later kernel runs. A 1-D piece is written contiguously; a
        2-D piece [n, w] as n rows of w, `row_stride` elements apart."""
        target = self.data if self._host is None else self._host
        if self._host is not None and self._copied is not None:
            self._copied.synchronize()
        for offset, piece in pieces:
            shape = piece.shape if piece.dim() == 2 else (1, piece.numel())
            target.as_strided(shape, (row_stride, 1), offset).copy_(piece.view(shape))
        if self._host is None:
            return
        self.data[:count].copy_(self._host[:count], non_blocking=True)
        self._copied = torch.cuda.Event()
        self._copied.record()
