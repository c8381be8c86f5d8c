"""GPTQ checkpoint tensors of one linear -> `LinearCodes` (4-bit only).

The layout, as AutoGPTQ and GPTQModel write it (K inputs, N outputs, G groups):
- `qweight` [K / 8, N] int32: word (i, n) holds the codes of inputs 8i..8i+7 of output n,
  input 8i in the lowest 4 bits;
- `qzeros` [G, N / 8] int32: word (g, j) holds the zero points of outputs 8j..8j+7 of
  group g, lowest bits first. Format "gptq" (v1) stores each zero point minus one (read
  back as stored + 1, so a zero point of 0 reads as 16: what every v1 kernel computes);
  "gptq_v2" stores it as it is;
- `scales` [G, N] (fp16): w = (q - zero) * scale;
- `g_idx` [K] int32: the group of each input, k // group_size unless quantized with
  `desc_act` (groups in activation order); absent means k // group_size.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from loraplex.runtime.models.int4_codes import (
    NIBBLES_PER_WORD,
    LinearCodes,
    packed_tensors,
    unpack_nibbles,
)

ZERO_OFFSET = {"gptq": 1, "gptq_v2": 0}  # checkpoint_format -> added to the stored zero


def _shape_error(name: str, leaf: str, tensor: torch.Tensor, expected: tuple[int, ...],
                 why: str) -> ValueError:
    return ValueError(f"{name}.{leaf}: shape {tuple(tensor.shape)}, expected {expected} "
                      f"({why})")


def read_gptq(name: str, tensors: Mapping[str, torch.Tensor], group_size: int,
              checkpoint_format: str) -> LinearCodes:
    """The codes of linear `name` from its `qweight`, `qzeros`, `scales` (and `g_idx`)."""
    qweight, qzeros, scales = packed_tensors("GPTQ", name, tensors)
    in_features, out_features = qweight.shape[0] * NIBBLES_PER_WORD, qweight.shape[1]
    group = in_features if group_size == -1 else group_size
    count = -(-in_features // group)
    layout = f"K={in_features} inputs, N={out_features} outputs, groups of {group}"
    if tuple(scales.shape) != (count, out_features):
        raise _shape_error(name, "scales", scales, (count, out_features), layout)
    if out_features % NIBBLES_PER_WORD or tuple(qzeros.shape) != (
            count, out_features // NIBBLES_PER_WORD):
        raise _shape_error(name, "qzeros", qzeros, (count, out_features // NIBBLES_PER_WORD),
                           layout)
    groups = tensors.get("g_idx")
    if groups is None:
        groups = torch.arange(in_features, device=qweight.device) // group
    elif tuple(groups.shape) != (in_features,):
        raise _shape_error(name, "g_idx", groups, (in_features,), layout)
    codes = unpack_nibbles(qweight, dim=0).t().contiguous()  # [N, K]
    zeros = unpack_nibbles(qzeros, dim=1) + ZERO_OFFSET[checkpoint_format]  # [G, N]
    return LinearCodes(name=name, codes=codes, scales=scales.float().t().contiguous(),
                       zeros=zeros.float().t().contiguous(), groups=groups.to(torch.int64))
