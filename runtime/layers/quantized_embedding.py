"""The token embedding of a quantized model: int8 codes with one scale per 32 values.

Under `--quantize` the decoder's linears hold 4 or 8 bits, but the embedding table stayed
in the model's dtype: 57 MB of the builtin model's 123 MB served int4, where its LM head
(tied to it) reads its own packed copy anyway. A step looks up a few rows of the table, so
they are dequantized as they are gathered: w = q * scale, q in -127..127, one scale per
group of 32 values of a row. That is GGUF's Q8_0, the type the builtin GGUF stores its own
token embedding in, so `--quantize gguf` serves those blocks exactly as the file holds them.
"""

from __future__ import annotations

import torch
from torch import nn

GROUP = 32  # values of a row per scale (GGUF Q8_0's block)


class QuantizedEmbedding(nn.Module):
    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> None:
        """codes [V, d] in -127..127, scales [V, d / GROUP]; rows come out in `dtype`."""
        super().__init__()
        rows, width = codes.shape
        if width % GROUP or tuple(scales.shape) != (rows, width // GROUP):
            raise ValueError(f"a quantized embedding of {rows}x{width} needs the width to be "
                             f"a multiple of {GROUP} and scales of {rows}x{width // GROUP}, "
                             f"got {tuple(scales.shape)}")
        self.num_embeddings, self.embedding_dim = rows, width
        self.dtype = dtype
        self.register_buffer("codes", codes.to(torch.int8).contiguous())  # [V, d]
        self.register_buffer("scales", scales.float().contiguous())  # [V, d / GROUP]

    @classmethod
    def quantize(cls, weight: torch.Tensor) -> QuantizedEmbedding:
        """Round to nearest: scale = max |w| / 127 per group of a row."""
        rows, width = weight.shape
        if width % GROUP:
            raise ValueError(f"a quantized embedding needs a width that is a multiple of "
                             f"{GROUP}; this one is {width} wide")
        groups = weight.detach().float().view(rows, -1, GROUP)  # [V, d / GROUP, GROUP]
        scales = (groups.abs().amax(dim=-1) / 127.0).clamp(min=torch.finfo(torch.float32).tiny)
        codes = torch.round(groups / scales[..., None]).clamp(-127, 127)
        return cls(codes.view(rows, width), scales, weight.dtype)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # [...] -> [..., d]
        ids = input_ids.reshape(-1)  # [T]
        codes = self.codes[ids].view(-1, self.embedding_dim // GROUP, GROUP)
        rows = codes.float() * self.scales[ids][..., None]  # [T, d / GROUP, GROUP]
        return rows.view(*input_ids.shape, self.embedding_dim).to(self.dtype)

    def dequantize(self) -> torch.Tensor:  # [V, d] in fp32
        groups = self.codes.view(self.num_embeddings, -1, GROUP).float()
        return (groups * self.scales[..., None]).view(self.num_embeddings, self.embedding_dim)

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.scales.nbytes
