"""AWQ checkpoint tensors of one linear (GEMM layout, 4-bit) -> `LinearCodes`.

The layout, as AutoAWQ writes its GEMM version (K inputs, N outputs, groups of g):
- `qweight` [K, N / 8] int32 and `qzeros` [K / g, N / 8] int32: each word holds 8
  consecutive outputs, but not in order: its 4-bit slots 0..7 (lowest bits first) hold
  outputs 0, 2, 4, 6, 1, 3, 5, 7 of the eight;
- `scales` [K / g, N] (fp16): w = (q - zero) * scale, zero points stored as they are;
- groups are contiguous in K (AWQ has no activation order).
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

SLOT_OUTPUTS = (0, 2, 4, 6, 1, 3, 5, 7)  # the output each 4-bit slot of a word holds


def _in_output_order(unpacked: torch.Tensor) -> torch.Tensor:
    """[R, N] in slot order -> [R, N] in output order."""
    rows, columns = unpacked.shape
    slots = torch.tensor(SLOT_OUTPUTS, device=unpacked.device)
    by_output = torch.argsort(slots)  # the slot of output 0..7
    index = (torch.arange(0, columns, NIBBLES_PER_WORD, device=unpacked.device)[:, None]
             + by_output[None, :]).flatten()
    return unpacked.index_select(1, index)


def read_awq(name: str, tensors: Mapping[str, torch.Tensor], group_size: int) -> LinearCodes:
    """The codes of linear `name` from its `qweight`, `qzeros` and `scales`."""
    qweight, qzeros, scales = packed_tensors("AWQ", name, tensors)
    in_features, out_features = qweight.shape[0], qweight.shape[1] * NIBBLES_PER_WORD
    if group_size <= 0 or in_features % group_size:
        raise ValueError(f"{name}: {in_features} inputs are not a whole number of AWQ groups "
                         f"of {group_size}")
    count = in_features // group_size
    layout = f"K={in_features} inputs, N={out_features} outputs, groups of {group_size}"
    for leaf, tensor, expected in (
            ("qzeros", qzeros, (count, out_features // NIBBLES_PER_WORD)),
            ("scales", scales, (count, out_features))):
        if tuple(tensor.shape) != expected:
            raise ValueError(f"{name}.{leaf}: shape {tuple(tensor.shape)}, expected "
                             f"{expected} ({layout})")
    codes = _in_output_order(unpack_nibbles(qweight, dim=1)).t().contiguous()  # [N, K]
    zeros = _in_output_order(unpack_nibbles(qzeros, dim=1))  # [G, N]
    groups = torch.arange(in_features, device=qweight.device) // group_size
    return LinearCodes(name=name, codes=codes, scales=scales.float().t().contiguous(),
                       zeros=zeros.float().t().contiguous(), groups=groups)
