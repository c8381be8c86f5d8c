"""The token embedding of a model whose tied LM head is packed in `cpu_linear`'s panels.

A tied LM head multiplies by the embedding table. Packed for the CPU it holds its own copy
of the table, and the plain table stayed beside it only for the lookups: 113 MB of the
builtin model in fp32. Row n of the table is column n % 32 of panel n // 32, so lookups
gather their rows from the panels and the plain table is released; the rows are the
table's own values, bit for bit.
"""

from __future__ import annotations

import torch
from torch import nn

from loraplex.runtime.kernels.cpu_linear import PANEL


class PanelEmbedding(nn.Module):
    def __init__(self, panels: torch.Tensor, num_embeddings: int) -> None:
        """panels [ceil(V / 32), d, 32]: the packed LM head, shared, not copied."""
        super().__init__()
        if panels.dim() != 3 or panels.shape[2] != PANEL or panels.shape[0] * PANEL < \
                num_embeddings:
            raise ValueError(f"panels of shape {tuple(panels.shape)} do not hold "
                             f"{num_embeddings} rows")
        self.panels = panels  # read only; the LM head owns it (not a buffer: not saved twice)
        self.num_embeddings, self.embedding_dim = num_embeddings, panels.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes of its own: none (the LM head's panels are counted with the LM head)."""
        return 0

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # [...] -> [..., d]
        ids = input_ids.reshape(-1)  # [T]
        if ids.numel():
            low, high = torch.aminmax(ids)
            if int(low) < 0 or int(high) >= self.num_embeddings:
                raise IndexError(f"token ids {int(low)}..{int(high)} outside the "
                                 f"embedding's {self.num_embeddings} rows")
        rows = self.panels[ids // PANEL, :, ids % PANEL]  # [T, d]
        return rows.view(*input_ids.shape, self.embedding_dim)
