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
        count = len(values)
        source = torch.tensor(values, dtype=self.data.dtype)
        if self._host is None:
            self.data[:count].copy_(source)
            return
        if self._copied is not None:
            self._copied.synchronize()
        self._host[:count].copy_(source)
        self.data[:count].copy_(self._host[:count], non_blocking=True)
        self._copied = torch.cuda.Event()
        self._copied.record()
