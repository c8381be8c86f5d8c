"""A checkpoint's 4-bit codes of one linear, and the weight that serves them.

GPTQ and AWQ store the same thing for each linear: 4-bit codes q [N, K], and per group of
inputs a scale s and a zero point z, w = (q - z) * s. They differ in how codes and zero
points are packed into int32 words and in which inputs form a group (gptq.py and awq.py
read each); both unpack to `LinearCodes`, and `serve_codes` turns those into an
`Int4Weight` on torch's int4 kernel, so LoRA on top and fused shards work as for every
other quantized weight here.

- Groups that are not contiguous (GPTQ `desc_act`, where g_idx[k] names the group of input
  k): the input columns are sorted by group (stably) and the product reads the input in
  that order (`PermutedInputs`). The shards of a fused layer share one input: they are one
  GEMM when their orders agree (GPTQ derives them from the same inputs, so they normally
  do) and separate products side by side when not (`SideBySide`).
- Group sizes the kernel lacks: a group of any multiple of a kernel group size (GPTQ's -1,
  one group per row, or 512) is served as kernel groups with its scale and zero repeated,
  which is exact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from loraplex.runtime.layers.quantized import INT4_GROUP_SIZES, Int4Weight, QuantizedWeight
from loraplex.runtime.layers.quantized_parts import PermutedInputs, SideBySide

NIBBLES_PER_WORD = 8  # 4-bit values in one int32


@dataclass(frozen=True)
class LinearCodes:
    name: str  # the checkpoint's linear, for messages
    codes: torch.Tensor  # [N, K] int32 in 0..15
    scales: torch.Tensor  # [N, G] float32
    zeros: torch.Tensor  # [N, G] float32: w = (q - zero) * scale
    groups: torch.Tensor  # [K] int64: the group of each input


def packed_tensors(method: str, name: str, tensors: Mapping[str, torch.Tensor]
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(qweight, qzeros, scales) of linear `name`, refused by name when one is missing or
    qweight is not a matrix."""
    for leaf in ("qweight", "qzeros", "scales"):
        if leaf not in tensors:
            raise ValueError(f"{method} linear {name} has no {leaf} (it has "
                             f"{', '.join(sorted(tensors))})")
    qweight = tensors["qweight"]
    if qweight.dim() != 2:
        raise ValueError(f"{name}.qweight: expected 2 dimensions, got {tuple(qweight.shape)}")
    return qweight, tensors["qzeros"], tensors["scales"]


def unpack_nibbles(words: torch.Tensor, dim: int) -> torch.Tensor:
    """int32 words -> their 4-bit values, `dim` 8x longer: word j gives j*8 + 0..7, low first."""
    if words.dtype != torch.int32:
        raise ValueError(f"packed 4-bit tensors are int32, got {words.dtype}")
    dim = dim % words.dim()
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=words.device)
    shape = [1] * (words.dim() + 1)
    shape[dim + 1] = NIBBLES_PER_WORD
    nibbles = (words.unsqueeze(dim + 1) >> shifts.view(shape)) & 15
    return nibbles.flatten(dim, dim + 1)


def contiguous_order(codes: LinearCodes, group_size: int) -> torch.Tensor | None:
    """The input order that makes each group contiguous (None: the inputs already are)."""
    groups = codes.groups
    in_features = groups.numel()
    count = in_features // group_size
    if torch.equal(groups, torch.arange(in_features, device=groups.device) // group_size):
        return None
    if int(groups.min()) < 0 or int(groups.max()) >= count:
        raise ValueError(f"{codes.name}: g_idx names groups outside 0..{count - 1}")
    sizes = torch.bincount(groups, minlength=count)
    if (sizes != group_size).any():
        raise ValueError(f"{codes.name}: g_idx does not put {group_size} inputs in each of "
                         f"its {count} groups (sizes {sorted(set(sizes.tolist()))})")
    return torch.argsort(groups, stable=True)


def kernel_group_size(group_size: int, name: str) -> int:
    """The largest int4 kernel group size that divides `group_size`."""
    for size in sorted(INT4_GROUP_SIZES, reverse=True):
        if group_size % size == 0:
            return size
    raise ValueError(f"{name}: groups of {group_size} inputs cannot be served; the int4 "
                     f"kernel groups a multiple of {min(INT4_GROUP_SIZES)} inputs")


@dataclass(frozen=True)
class _KernelCodes:
    order: torch.Tensor | None  # [K] or None (index order)
    codes: torch.Tensor  # [N, K] in stored column order
    scales: torch.Tensor  # [N, K / kernel group]
    offsets: torch.Tensor  # [N, K / kernel group]: w = q * scale + offset


def _kernel_codes(codes: LinearCodes, group_size: int, kernel_group: int) -> _KernelCodes:
    order = contiguous_order(codes, group_size)
    stored = codes.codes if order is None else codes.codes.index_select(1, order)
    repeat = group_size // kernel_group
    scales = codes.scales.repeat_interleave(repeat, dim=1)
    offsets = (-codes.zeros * codes.scales).repeat_interleave(repeat, dim=1)
    return _KernelCodes(order, stored, scales, offsets)


def _int4(parts: Sequence[_KernelCodes], kernel_group: int,
          dtype: torch.dtype) -> QuantizedWeight:
    """One GEMM over parts that share an input order."""
    weight = Int4Weight.from_codes(torch.cat([p.codes for p in parts]),
                                   torch.cat([p.scales for p in parts]),
                                   torch.cat([p.offsets for p in parts]), kernel_group, dtype)
    order = parts[0].order
    return weight if order is None else PermutedInputs(weight, order)


def serve_codes(parts: Sequence[LinearCodes], group_size: int,
                dtype: torch.dtype) -> QuantizedWeight:
    """The weight of `parts` side by side on outputs (one part: a plain linear); scales
    and zeros in the activation `dtype`, as the kernel reads them."""
    in_features = {part.codes.shape[1] for part in parts}
    if len(in_features) != 1:
        raise ValueError(f"fused parts {[p.name for p in parts]} differ in input width")
    in_features_value = in_features.pop()
    group_size = in_features_value if group_size == -1 else group_size
    if in_features_value % group_size:
        raise ValueError(f"{parts[0].name}: {in_features_value} inputs are not a whole "
                         f"number of groups of {group_size}")
    kernel_group = kernel_group_size(group_size, parts[0].name)
    prepared = [_kernel_codes(part, group_size, kernel_group) for part in parts]
    orders = [p.order for p in prepared]
    same_order = all(
        (order is None and orders[0] is None)
        or (order is not None and orders[0] is not None and torch.equal(order, orders[0]))
        for order in orders)
    if same_order:
        return _int4(prepared, kernel_group, dtype)
    return SideBySide([_int4([p], kernel_group, dtype) for p in prepared])
