"""Parsed LoRA weights of one adapter, laid out the way the device slots want them.

Each projection group (qkv, o, gate_up, down, see `target.py`) is one packed pair:

    a  [L, n_slices, r_group, d_in]      lora_A of every module, stacked per slice
    b  [L, d_out_total, r_group]         lora_B * scaling, the slices' rows concatenated

where r_group is the largest rank among the group's modules. Modules (or layers) the
adapter does not touch are zero, and so are the rank rows a smaller-rank module lacks, so
`x @ a[l, s].T @ b[l, rows(s)].T` is exactly that module's LoRA delta. Copying an adapter
into a device slot is then one strided copy per group instead of one per module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from loraplex.runtime.adapters.target import MODULE_PLACES, LoraTargetShapes


@dataclass(frozen=True, slots=True)
class GroupWeights:
    a: torch.Tensor  # [L, n_slices, r_group, d_in]
    b: torch.Tensor  # [L, d_out_total, r_group], scaling folded in (view of [L, r, d_out])

    @property
    def rank(self) -> int:
        return self.a.shape[2]

    @property
    def size_bytes(self) -> int:
        return self.a.numel() * self.a.element_size() + self.b.numel() * self.b.element_size()


@dataclass(frozen=True)
class AdapterWeights:
    target: LoraTargetShapes
    groups: dict[str, GroupWeights]  # only the groups the adapter touches
    module_ranks: dict[tuple[int, str], int]  # (layer, module) → rank, for touched modules
    module_scalings: dict[tuple[int, str], float]
    digest: str = ""
    extra: dict[str, str] = field(default_factory=dict)  # e.g. base_model_name_or_path

    @property
    def rank(self) -> int:
        """Largest rank over all modules: the rank a device slot must hold."""
        return max(self.module_ranks.values(), default=0)

    @property
    def size_bytes(self) -> int:
        return sum(group.size_bytes for group in self.groups.values())

    @property
    def modules(self) -> tuple[str, ...]:
        """Module names the adapter touches in at least one layer."""
        return tuple(sorted({name for _, name in self.module_ranks},
                            key=list(MODULE_PLACES).index))

    def module(self, layer: int, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(A [r, d_in], B-scaled [d_out, r]) of one module, views into the packed group."""
        rank = self.module_ranks.get((layer, name))
        if rank is None:
            return None
        _, group_name, index = MODULE_PLACES[name]
        group = self.groups[group_name]
        offsets = self.target.group(group_name).offsets
        lora_a = group.a[layer, index, :rank]  # [r, d_in]
        lora_b = group.b[layer, offsets[index]:offsets[index + 1], :rank]  # [d_out, r]
        return lora_a, lora_b
