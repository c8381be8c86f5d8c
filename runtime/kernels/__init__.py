"""LoRA kernels: apply many adapters to one batch, each row with its own (or no) adapter.

`lora_apply` is what the model's LoRA layers call: shrink + expand on stacked per-slot
pools, dispatched to the Triton SGMV kernels on CUDA, to a compiled kernel on a CPU
(`cpu_lora`) and to the torch ops where neither applies.
`lora_apply_tiles` is the Triton path over fixed-size tile buffers, for decode steps
captured in CUDA graphs.
Triton is imported only when the Triton path runs, so this package imports on machines
without CUDA or without Triton.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from loraplex.runtime.config import LORA_BACKENDS as BACKENDS

from . import cpu_lora, torch_ops
from .configs import KernelConfig
from .segments import NO_ADAPTER, KernelTiles, LoraSegments

__all__ = ["BACKENDS", "NO_ADAPTER", "LoraSegments", "lora_apply", "lora_apply_tiles",
           "resolve_backend"]


def resolve_backend(backend: str, device: torch.device) -> str:
    """`auto` -> `triton` on CUDA; on a CPU `cpu` where its kernel builds, else `torch`."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type == "cuda":
            return "triton"
        return "cpu" if device.type == "cpu" and cpu_lora.available() else "torch"
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"the cpu LoRA backend runs on a CPU, not on {device}")
    return backend


def lora_apply(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    slice_offsets: Sequence[int],
    segments: LoraSegments,
    ranks: torch.Tensor,
    backend: str = "auto",
    zero_padded: bool = False,
    host_ranks: Sequence[int] | None = None,
) -> None:
    """y[t, slice s] += x[t] @ A[slot, s, :rank].T @ B[slot, slice s, :rank].T, in place.

    y: [T, d_out_total] (the base layer's output); x: [T, d_in];
    lora_a: [S, n_slices, R, d_in]; lora_b: [S, d_out_total, R] (scaling folded in),
    contiguous or a transposed view of a contiguous [S, R, d_out_total] ("rank-major":
    each slot's `[:rank]` of B is then one contiguous block, which the CPU path reads
    several times faster); slice_offsets: n_slices + 1 column offsets of the slices in y;
    ranks: int32 [S]. Rows whose segment has slot -1 are left untouched. Past each slot's
    rank the pools may hold anything, unless `zero_padded` promises zeros there and finite
    values everywhere (as `DeviceSlotPool` does), which the torch path turns into fewer,
    larger reads. `host_ranks`: the same values as `ranks`, known on the host, which spares
    the torch path a read of `ranks` back from the device.
    """
    resolved = resolve_backend(backend, x.device)
    if resolved != "triton":
        path = cpu_lora if resolved == "cpu" else torch_ops
        path.lora_apply(y, x, lora_a, lora_b, slice_offsets, segments, ranks, zero_padded,
                        host_ranks)
        return
    from . import sgmv  # imports triton

    v = sgmv.sgmv_shrink(x, lora_a, segments, ranks)  # fp32 [T, n_slices, R]
    sgmv.sgmv_expand(y, v, lora_b, slice_offsets, segments, ranks)


def lora_apply_tiles(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    slice_offsets: Sequence[int],
    tiles: KernelTiles,
    ranks: torch.Tensor,
    configs: tuple[KernelConfig, KernelConfig],
) -> None:
    """`lora_apply` (Triton) over a fixed-size tile list: unused tiles carry slot -1.

    configs: (shrink, expand), both with the block_m the tiles were cut with. Launches
    nothing whose size depends on the tiles' values, so it can be captured in a CUDA graph.
    """
    from . import sgmv  # imports triton

    shrink, expand = configs
    v = sgmv.sgmv_shrink_tiles(x, lora_a, tiles, ranks, shrink)  # fp32 [T, n_slices, R]
    sgmv.sgmv_expand_tiles(y, v, lora_b, slice_offsets, tiles, ranks, expand)
