"""The token embedding of a model whose tied LM head is packed in `cpu_linear`'s panels.

A tied LM head multiplies by the embedding table. Packed for the CPU it holds its own copy
of the table, and the plain table stayed beside it only for the lookups: 113 MB of the
builtin model in fp32. Row n of the table is column n % 32 of panel n // 32, so lookups
gather their rows from the panels and the plain table is released; the rows are the
table's own values, bit for bit (`PanelEmbedding`). A quantized model's int8 LM head serves
them the same way (`Int8PanelEmbedding`): a row is its codes times its scale, the weight the
head multiplies by, and the model holds the table once, in 8 bits.
"""

from __future__ import annotations

import torch
from torch import nn

from loraplex.runtime.kernels.cpu_linear import PANEL
from loraplex.runtime.layers.quantized import Int8Weight


class PanelLookups(nn.Module):
    """Lookups that gather rows from a tied LM head's panels: no bytes of their own (the
    panels are counted with the LM head); ids outside the table are refused (a gather from
    panels would read padding or another panel's columns, not fail)."""

    num_embeddings: int
    embedding_dim: int

    @property
    def nbytes(self) -> int:
        return 0

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # [...] -> [..., d]
        ids = input_ids.reshape(-1)  # [T]
        if ids.numel():
            low, high = torch.aminmax(ids)
            if int(low) < 0 or int(high) >= self.num_embeddings:
                raise IndexError(f"token ids {int(low)}..{int(high)} outside the "
                                 f"embedding's {self.num_embeddings} rows")
        return self.rows(ids).view(*input_ids.shape, self.embedding_dim)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:  # [T] -> [T, d]
        raise NotImplementedError


class PanelEmbedding(PanelLookups):
    def __init__(self, panels: torch.Tensor, num_embeddings: int) -> None:
        """panels [ceil(V / 32), d, 32]: the packed LM head, shared, not copied."""
        super().__init__()
        if panels.dim() != 3 or panels.shape[2] != PANEL or panels.shape[0] * PANEL < \
                num_embeddings:
            raise ValueError(f"panels of shape {tuple(panels.shape)} do not hold "
                             f"{num_embeddings} rows")
        self.panels = panels  # read only; the LM head owns it (not a buffer: not saved twice)
        self.num_embeddings, self.embedding_dim = num_embeddings, panels.shape[1]

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.panels[ids // PANEL, :, ids % PANEL]  # [T, d]


class Int8PanelEmbedding(PanelLookups):
    def __init__(self, head: Int8Weight, dtype: torch.dtype) -> None:
        """head: the tied LM head's int8 weight on `cpu_linear`'s panels, shared, not copied;
        rows come out in `dtype`."""
        super().__init__()
        if head.kernel != "panels":
            raise ValueError(f"an int8 LM head on the {head.kernel!r} kernel has no panels "
                             f"to look tokens up in")
        self.head, self.dtype = head, dtype  # read only; the LM head owns it
        self.num_embeddings, self.embedding_dim = head.out_features, head.in_features

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        codes = self.head.packed[ids // PANEL, :, ids % PANEL]  # [T, d] int8
        return (codes.float() * self.head.panel_scales[ids][:, None]).to(self.dtype)
