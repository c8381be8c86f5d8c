"""Shapes of the projections a LoRA adapter may touch in a Llama-family base model.

Adapters are validated against these shapes, and the device slot pool allocates its
buffers from them. Projections that read the same input are stacked into one group, so
that one shrink kernel serves q, k and v (and one serves gate and up):

    group     d_in                  slices (d_out each)
    qkv       hidden                q: heads*head_dim, k: kv_heads*head_dim, v: same as k
    o         heads*head_dim        o: hidden
    gate_up   hidden                gate: intermediate, up: intermediate
    down      intermediate          down: hidden
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# PEFT module name → (parent module inside a decoder layer, group, slice index in the group)
MODULE_PLACES: dict[str, tuple[str, str, int]] = {
    "q_proj": ("self_attn", "qkv", 0),
    "k_proj": ("self_attn", "qkv", 1),
    "v_proj": ("self_attn", "qkv", 2),
    "o_proj": ("self_attn", "o", 0),
    "gate_proj": ("mlp", "gate_up", 0),
    "up_proj": ("mlp", "gate_up", 1),
    "down_proj": ("mlp", "down", 0),
}
MODULE_NAMES: tuple[str, ...] = tuple(MODULE_PLACES)
GROUP_NAMES: tuple[str, ...] = ("qkv", "o", "gate_up", "down")


@dataclass(frozen=True, slots=True)
class ProjectionGroup:
    """Projections that share an input: one stacked LoRA buffer per layer."""

    name: str
    d_in: int
    modules: tuple[str, ...]
    widths: tuple[int, ...]  # d_out of each module, in `modules` order

    @property
    def num_slices(self) -> int:
        return len(self.modules)

    @property
    def d_out(self) -> int:
        return sum(self.widths)

    @property
    def offsets(self) -> tuple[int, ...]:
        """Column where each slice starts in the group's output, plus the total at the end."""
        starts = [0]
        for width in self.widths:
            starts.append(starts[-1] + width)
        return tuple(starts)


@dataclass(frozen=True, slots=True)
class LoraTargetShapes:
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
                     "intermediate_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of "
                             f"num_kv_heads ({self.num_kv_heads})")

    @classmethod
    def from_hf_config(cls, hf_config: Any) -> LoraTargetShapes:
        """From a transformers config of the Llama family (Llama, Mistral, Qwen2, SmolLM)."""
        num_heads = hf_config.num_attention_heads
        head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // num_heads
        return cls(
            num_layers=hf_config.num_hidden_layers,
            hidden_size=hf_config.hidden_size,
            num_heads=num_heads,
            num_kv_heads=getattr(hf_config, "num_key_value_heads", None) or num_heads,
            head_dim=head_dim,
            intermediate_size=hf_config.intermediate_size,
        )

    @property
    def q_out(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_out(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def groups(self) -> dict[str, ProjectionGroup]:
        hidden, inter = self.hidden_size, self.intermediate_size
        return {
            "qkv": ProjectionGroup("qkv", hidden, ("q_proj", "k_proj", "v_proj"),
                                   (self.q_out, self.kv_out, self.kv_out)),
            "o": ProjectionGroup("o", self.q_out, ("o_proj",), (hidden,)),
            "gate_up": ProjectionGroup("gate_up", hidden, ("gate_proj", "up_proj"),
                                       (inter, inter)),
            "down": ProjectionGroup("down", inter, ("down_proj",), (hidden,)),
        }

    def group(self, name: str) -> ProjectionGroup:
        groups = self.groups
        if name not in groups:
            raise ValueError(f"unknown projection group {name!r}; groups are {GROUP_NAMES}")
        return groups[name]

    def slice_offsets(self, group: str) -> tuple[int, ...]:
        return self.group(group).offsets

    def module_shape(self, module: str) -> tuple[int, int]:
        """(d_in, d_out) of one projection, e.g. `module_shape("k_proj")`."""
        if module not in MODULE_PLACES:
            raise ValueError(f"unknown module {module!r}; LoRA modules are {MODULE_NAMES}")
        _, group_name, index = MODULE_PLACES[module]
        group = self.group(group_name)
        return group.d_in, group.widths[index]

    def module_key(self, layer: int, module: str) -> str:
        """The module's name inside the transformers model, as PEFT matches it."""
        parent = MODULE_PLACES[module][0]
        return f"model.layers.{layer}.{parent}.{module}"
