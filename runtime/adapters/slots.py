"""Device-resident LoRA weights: a fixed pool of slots the kernels index by slot id.

Per projection group, one buffer holds every layer and every slot:

    lora_a[group]  [L, S, n_slices, R, d_in]
    lora_b[group]  [L, S, R, d_out_total]        rank-major; scaling already folded into B
    ranks          [S] int32                      rank of the adapter in each slot (0: empty)
    groups_host    [S] frozenset                  projection groups each slot's adapter targets

`group(layer, name)` hands the kernels the per-layer views `[S, n_slices, R, d_in]`
(contiguous) and `[S, d_out_total, R]` (a transposed view of the rank-major buffer: a
slot's `[:rank]` of B is one contiguous block, which the CPU path reads several times
faster; both kernel backends accept the view). Rows past a module's rank are zero, so a
kernel may read up to the slot's rank and still compute each module exactly. Buffers are
allocated once: loading an adapter never allocates device memory, so it cannot fragment
the KV cache.

On the CPU the buffers are anonymous memory maps, zero by definition, whose pages the
operating system commits only when first written (in 4 KiB pages: huge pages are turned
off for them): the pool costs memory for the ranks adapters really use, not for
`num_slots` x `max_rank` (2.5 GB for 32 slots of rank 64 on SmolLM2-135M). A slot is
only ever zeroed up to the rank it held before, so the pages past the largest rank a slot
has held stay uncommitted.

On CUDA, `write` copies from pinned host memory on a side stream and records an event;
the slot may be used once `SlotCopy.done()`. The copy first waits on a fence recorded on
the engine's stream when the slot was handed out, so it never overwrites weights a kernel
already queued is still reading.
"""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass
from typing import Any

import torch

from loraplex.runtime.adapters.target import GROUP_NAMES, LoraTargetShapes
from loraplex.runtime.adapters.weights import AdapterWeights


@dataclass(slots=True)
class SlotCopy:
    """A copy into a slot that may still be running on a side stream."""

    event: Any = None  # torch.cuda.Event on CUDA, None when the copy already finished
    source: AdapterWeights | None = None  # kept alive until the copy is done

    def done(self) -> bool:
        if self.event is None or self.event.query():
            self.source = None
            return True
        return False


class DeviceSlotPool:
    def __init__(self, target: LoraTargetShapes, num_slots: int, max_rank: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> None:
        if num_slots <= 0 or max_rank <= 0:
            raise ValueError(f"num_slots and max_rank must be positive, got {num_slots}, "
                             f"{max_rank}")
        self.target = target
        self.num_slots = num_slots
        self.max_rank = max_rank
        self.dtype = dtype
        self.device = torch.device(device)
        layers = target.num_layers
        self.lora_a: dict[str, torch.Tensor] = {}
        self.lora_b: dict[str, torch.Tensor] = {}
        for name in GROUP_NAMES:
            group = target.group(name)
            self.lora_a[name] = _zeros((layers, num_slots, group.num_slices, max_rank,
                                        group.d_in), dtype, self.device)
            self.lora_b[name] = _zeros((layers, num_slots, max_rank, group.d_out), dtype,
                                       self.device)
        self.ranks = torch.zeros(num_slots, dtype=torch.int32, device=self.device)
        self.ranks_host = [0] * num_slots  # same values, for building batch metadata on the CPU
        self.groups_host: list[frozenset[str]] = [frozenset()] * num_slots
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    @staticmethod
    def bytes_needed(target: LoraTargetShapes, num_slots: int, max_rank: int,
                     dtype: torch.dtype) -> int:
        element = torch.empty(0, dtype=dtype).element_size()
        per_layer = sum(g.num_slices * g.d_in + g.d_out for g in target.groups.values())
        return target.num_layers * num_slots * max_rank * per_layer * element

    @property
    def size_bytes(self) -> int:
        return self.bytes_needed(self.target, self.num_slots, self.max_rank, self.dtype)

    def group(self, layer: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(lora_a [S, n_slices, R, d_in], lora_b [S, d_out_total, R]) of one layer."""
        return self.lora_a[name][layer], self.lora_b[name][layer].transpose(1, 2)

    def fence(self) -> Any:
        """An event on the calling thread's stream; `write(after=...)` waits for it."""
        if self._stream is None:
            return None
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        return event

    def write(self, slot: int, weights: AdapterWeights, after: Any = None) -> SlotCopy:
        """Replace the slot's content with `weights` (zero where the adapter has nothing)."""
        self._check_slot(slot)
        if weights.target != self.target:
            raise ValueError(f"adapter shapes {weights.target} do not match the pool's "
                             f"{self.target}")
        if weights.rank > self.max_rank:
            raise ValueError(f"adapter rank {weights.rank} exceeds the pool's max rank "
                             f"{self.max_rank}")
        if self._stream is None:
            self._copy(slot, weights)
            return SlotCopy()
        with torch.cuda.stream(self._stream):
            if after is not None:
                self._stream.wait_event(after)
            self._copy(slot, weights)
            event = torch.cuda.Event()
            event.record(self._stream)
        return SlotCopy(event, weights)

    def clear(self, slot: int) -> None:
        self._check_slot(slot)
        held = self.ranks_host[slot]  # nothing past it was ever written
        for name in GROUP_NAMES:
            self.lora_a[name][:, slot, :, :held].zero_()
            self.lora_b[name][:, slot, :held].zero_()
        self.ranks[slot] = 0
        self.ranks_host[slot] = 0
        self.groups_host[slot] = frozenset()

    def _copy(self, slot: int, weights: AdapterWeights) -> None:
        non_blocking = self._stream is not None
        held = self.ranks_host[slot]  # the previous adapter wrote nothing past its rank
        for name in GROUP_NAMES:
            slot_a = self.lora_a[name][:, slot]  # [L, n_slices, R, d_in]
            slot_b = self.lora_b[name][:, slot]  # [L, R, d_out_total]
            slot_a[:, :, :held].zero_()
            slot_b[:, :held].zero_()
            packed = weights.groups.get(name)
            if packed is None:
                continue
            rank = packed.rank
            slot_a[:, :, :rank].copy_(packed.a, non_blocking=non_blocking)
            slot_b[:, :rank].copy_(packed.b.transpose(1, 2), non_blocking=non_blocking)
        self.ranks[slot] = weights.rank
        self.ranks_host[slot] = weights.rank
        self.groups_host[slot] = frozenset(weights.groups)

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.num_slots:
            raise ValueError(f"slot {slot} is outside 0..{self.num_slots - 1}")


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Zeros; on the CPU in pages committed only when written (see the module docstring)."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
    memory = mmap.mmap(-1, max(nbytes, 1))  # the tensor keeps it alive
    if hasattr(mmap, "MADV_NOHUGEPAGE"):  # a 2 MiB page per written slot row would be wasted
        memory.madvise(mmap.MADV_NOHUGEPAGE)
    return torch.frombuffer(memory, dtype=torch.uint8)[:nbytes].view(dtype).view(shape)
