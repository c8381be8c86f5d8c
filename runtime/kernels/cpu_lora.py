"""The LoRA of decode rows on a CPU as one compiled call per projection group.

The torch path spends its time in the overhead of many small matmuls (two rows per adapter
at batch 16 with 8 adapters: matrix-vector work) and, in bf16, in kernels this CPU runs
several times slower than fp32. `cpu_lora.c` does the whole group in one call: per slot,
its few rows are shrunk and expanded reading A and B once at the slot's own rank (two rows
per pass, the next rows prefetched), in fp32 arithmetic, spread over torch's OpenMP threads.

The C file is compiled on first use (`cpu_native`). Where no compiler works, `available()`
is False and the engine keeps the torch path (`resolve_backend`).

Slots with more than `torch_plan.SMALL_ROWS` rows (prefill) still go through torch's
matmuls, which are compute-bound and fast at that size; so does what the kernel does not
take (fp16, a B pool that is not rank-major, more than `MAX_SLICES` slices).
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import cpu_native, torch_ops
from .checks import check_lora_args, check_rank_values, is_rank_major
from .segments import LoraSegments
from .torch_plan import SMALL_ROWS, DirectSlot, row_spec

MAX_SLICES = 4  # as in cpu_lora.c
ENTRY_POINTS = {torch.float32: "lora_items_f32", torch.bfloat16: "lora_items_bf16"}


class _Shape(ctypes.Structure):
    _fields_ = [
        ("d_in", ctypes.c_int64), ("d_out", ctypes.c_int64), ("n_slices", ctypes.c_int64),
        ("slice_offsets", ctypes.POINTER(ctypes.c_int64)),
        ("x_row", ctypes.c_int64), ("y_row", ctypes.c_int64),
        ("a_slot", ctypes.c_int64), ("a_slice", ctypes.c_int64), ("a_rank", ctypes.c_int64),
        ("b_slot", ctypes.c_int64), ("b_rank", ctypes.c_int64),
    ]  # fmt: skip


@dataclass(frozen=True)
class NativePlan:
    """One step's split: slots with many rows for torch, the rest as the kernel's items."""

    direct: tuple[DirectSlot, ...]
    num_items: int
    items: torch.Tensor  # int64 [4, num_items]: slot, rank, start in `rows`, row count
    rows: torch.Tensor  # int64 [rows of all items], batch rows grouped by item

    @functools.cached_property
    def pointers(self) -> tuple[int, ...]:
        """The kernel's item arguments: slot, rank, start, count and rows, as addresses."""
        return (*(field.data_ptr() for field in self.items), self.rows.data_ptr())


def available() -> bool:
    """Whether the kernel is built (or builds now) and loads on this machine."""
    return _library() is not None


def supports(x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor) -> bool:
    """Whether the kernel takes these operands (else the torch path runs)."""
    return (x.device.type == "cpu" and x.dtype in ENTRY_POINTS and is_rank_major(lora_b)
            and lora_a.shape[1] <= MAX_SLICES)


def lora_apply(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    slice_offsets: Sequence[int],
    segments: LoraSegments,
    ranks: torch.Tensor,
    zero_padded: bool = False,
    host_ranks: Sequence[int] | None = None,
) -> None:
    """`kernels.lora_apply`'s contract; the torch path where the kernel does not apply."""
    library = _library()
    if library is None or not supports(x, lora_a, lora_b):
        torch_ops.lora_apply(y, x, lora_a, lora_b, slice_offsets, segments, ranks,
                             zero_padded, host_ranks)
        return
    check_lora_args(y, x, lora_a, lora_b, slice_offsets, segments, ranks)
    if not segments.has_lora:
        return
    plan = native_plan(segments, host_ranks if host_ranks is not None else ranks.tolist(),
                       lora_a.shape[2])
    if plan.direct:
        bounds = torch_ops.slice_bounds(slice_offsets)
        for item in plan.direct:
            torch_ops.apply_direct(y, x, lora_a, lora_b, bounds, item)
    if plan.num_items == 0:
        return
    shape = _shape(x.shape[1], y.shape[1], tuple(slice_offsets), x.stride(0), y.stride(0),
                   lora_a.stride()[:3], lora_b.stride(0), lora_b.stride(2))
    status = getattr(library, ENTRY_POINTS[x.dtype])(
        y.data_ptr(), x.data_ptr(), lora_a.data_ptr(), lora_b.data_ptr(), ctypes.byref(shape),
        plan.num_items, *plan.pointers, torch.get_num_threads())
    if status != 0:  # the checks above make this unreachable; never ignore it
        raise RuntimeError(f"cpu_lora kernel refused its arguments (status {status})")


def native_plan(segments: LoraSegments, rank_list: Sequence[int], max_rank: int) -> NativePlan:
    """The plan for these segments and slot ranks, their ranks checked against the pool's
    `max_rank`: built once per step and rank layout, shared by every layer and group."""
    ranks = tuple(rank_list[slot] for slot in segments.slot_runs())
    return segments.memo(("native_plan", max_rank, ranks),
                         lambda: _build_plan(segments, rank_list, ranks, max_rank))


def _build_plan(segments: LoraSegments, rank_list: Sequence[int], ranks: tuple[int, ...],
                max_rank: int) -> NativePlan:
    check_rank_values(ranks, max_rank)
    device = segments.indptr.device
    direct: list[DirectSlot] = []
    fields: list[list[int]] = [[], [], [], []]
    rows: list[int] = []
    for slot, slot_rows in segments.slot_rows().items():
        rank = rank_list[slot]
        if rank == 0:
            continue
        if len(slot_rows) > SMALL_ROWS:
            direct.append(DirectSlot(slot, rank, row_spec(slot_rows, device)))
            continue
        for field, value in zip(fields, (slot, rank, len(rows), len(slot_rows)), strict=True):
            field.append(value)
        rows += slot_rows
    # largest items first: the threads' dynamic schedule then ends evenly
    order = sorted(range(len(fields[0])), key=lambda i: -fields[1][i] * fields[3][i])
    items = torch.tensor([[field[i] for i in order] for field in fields], dtype=torch.int64)
    return NativePlan(tuple(direct), len(order), items, torch.tensor(rows, dtype=torch.int64))


@functools.lru_cache(maxsize=64)
def _shape(d_in: int, d_out: int, slice_offsets: tuple[int, ...], x_row: int, y_row: int,
           a_strides: tuple[int, int, int], b_slot: int, b_rank: int) -> _Shape:
    """The kernel's shape argument; one per projection group's layout, not one per call."""
    offsets = (ctypes.c_int64 * len(slice_offsets))(*slice_offsets)
    shape = _Shape(d_in, d_out, len(slice_offsets) - 1, offsets, x_row, y_row, *a_strides,
                   b_slot, b_rank)
    shape.offsets_storage = offsets  # the struct points into it: kept alive with the struct
    return shape


@functools.cache
def _library() -> ctypes.CDLL | None:
    library = cpu_native.load("cpu_lora")
    if library is None:
        return None
    pointer, int64 = ctypes.c_void_p, ctypes.c_int64
    for name in ENTRY_POINTS.values():
        function = getattr(library, name)
        function.argtypes = [pointer, pointer, pointer, pointer, ctypes.POINTER(_Shape), int64,
                             pointer, pointer, pointer, pointer, pointer, ctypes.c_int]
        function.restype = ctypes.c_int
    return library
