"""The LoRA of decode rows on a CPU as one compiled call per projection group.

The torch path spends its time in the overhead of many small matmuls (two rows per adapter
at batch 16 with 8 adapters: matrix-vector work) and, in bf16, in kernels this CPU runs
several times slower than fp32. `cpu_lora.c` does the whole group in one call: per slot,
its few rows are shrunk and expanded reading A and B once at the slot's own rank (two rows
and four rank rows per pass, the next rows prefetched), in fp32 arithmetic, spread over
torch's OpenMP threads. The model binds each group once per step (`bind`): the plan, the
checks and the pools' addresses then serve every layer, whose LoRA costs one kernel call
and a few shape comparisons.

The C file is compiled on first use (`cpu_native`). Where no compiler works, `available()`
is False and the engine keeps the torch path (`resolve_backend`).

A slot's rows are split into items of at most `ITEM_ROWS`, so one adapter shared by a
whole decode batch still spreads over the threads and keeps the step compiled (a batch of
16 on one adapter: 50.7 -> 35.0 ms a step, where its 16 rows had taken torch's matmuls).
Slots with more than `KERNEL_ROWS` rows (prefill) still go through torch's matmuls, which
are compute-bound and as fast at that size; so does what the kernel does not take (fp16,
a B pool that is not rank-major, more than `MAX_SLICES` slices).
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from . import cpu_native, torch_ops
from .checks import check_lora_args, check_rank_values, is_rank_major
from .segments import LoraSegments
from .torch_plan import DirectSlot, row_spec

MAX_SLICES = 4  # as in cpu_lora.c
ITEM_ROWS = 8  # rows of one slot per work item (cpu_lora.c takes up to 16)
KERNEL_ROWS = 64  # a slot with more rows (a prefill) takes torch's matmuls
ENTRY_POINTS = {torch.float32: "lora_items_f32", torch.bfloat16: "lora_items_bf16"}


class _Shape(ctypes.Structure):
    _fields_ = [
        ("d_in", ctypes.c_int64), ("d_out", ctypes.c_int64), ("n_slices", ctypes.c_int64),
        ("slice_offsets", ctypes.POINTER(ctypes.c_int64)),
        ("x_row", ctypes.c_int64), ("y_row", ctypes.c_int64),
        ("a_slot", ctypes.c_int64), ("a_slice", ctypes.c_int64), ("a_rank", ctypes.c_int64),
        ("b_slot", ctypes.c_int64), ("b_rank", ctypes.c_int64),
    ]  # fmt: skip


class _Items(ctypes.Structure):
    _fields_ = [
        ("num_items", ctypes.c_int64),
        ("item_slot", ctypes.c_void_p), ("item_rank", ctypes.c_void_p),
        ("item_start", ctypes.c_void_p), ("item_count", ctypes.c_void_p),
        ("rows", ctypes.c_void_p), ("num_threads", ctypes.c_int64),
    ]  # fmt: skip


@dataclass(frozen=True)
class NativePlan:
    """One step's split: slots with many rows for torch, the rest as the kernel's items."""

    direct: tuple[DirectSlot, ...]
    num_items: int
    items: torch.Tensor  # int64 [4, num_items]: slot, rank, start in `rows`, row count
    rows: torch.Tensor  # int64 [rows of all items], batch rows grouped by item

    def work(self, num_threads: int) -> _Items:
        """The kernel's item argument (it points into `items` and `rows`)."""
        return _Items(self.num_items, *(field.data_ptr() for field in self.items),
                      self.rows.data_ptr(), num_threads)


class BoundLora:
    """One projection group's LoRA for one step, checked and planned once, then applied to
    every layer at the cost of one kernel call (the model's decode path).

    lora_a: [L, S, n_slices, R, d_in] and lora_b: [L, S, d_out_total, R] (rank-major: a
    transposed view of a contiguous [L, S, R, d_out_total]), the per-layer pools stacked.
    """

    def __init__(self, lora_a: torch.Tensor, lora_b: torch.Tensor,
                 slice_offsets: Sequence[int], segments: LoraSegments,
                 rank_list: Sequence[int], function: Callable[..., int]) -> None:
        self.lora_a, self.lora_b = lora_a, lora_b
        self.plan = native_plan(segments, rank_list, lora_a.shape[3])
        self.bounds = torch_ops.slice_bounds(slice_offsets)
        self.num_rows = segments.num_rows
        self.d_in, self.d_out = lora_a.shape[4], lora_b.shape[2]
        self.dtype = lora_a.dtype
        self._function = function
        self._offsets = tuple(slice_offsets)
        self._work = self.plan.work(torch.get_num_threads())
        self._a = (lora_a.data_ptr(), lora_a.stride(0) * lora_a.element_size())
        self._b = (lora_b.data_ptr(), lora_b.stride(0) * lora_b.element_size())
        self._shapes: dict[tuple[int, int], _Shape] = {}

    def apply(self, y: torch.Tensor, x: torch.Tensor, layer: int) -> None:
        """y [T, d_out_total] += the LoRA delta of layer `layer` for x [T, d_in]."""
        if not 0 <= layer < self.lora_a.shape[0]:
            raise IndexError(f"layer {layer} is not in the pool's {self.lora_a.shape[0]} layers")
        if (x.shape != (self.num_rows, self.d_in) or y.shape != (self.num_rows, self.d_out)
                or x.dtype != self.dtype or y.dtype != self.dtype or not x.is_cpu
                or not y.is_cpu or x.stride(1) != 1 or y.stride(1) != 1):
            raise ValueError(
                f"x {tuple(x.shape)} {x.dtype} {x.device} and y {tuple(y.shape)} {y.dtype} "
                f"{y.device} must be [{self.num_rows}, {self.d_in}] and "
                f"[{self.num_rows}, {self.d_out}] in {self.dtype} on the CPU, rows contiguous")
        for item in self.plan.direct:
            torch_ops.apply_direct(y, x, self.lora_a[layer], self.lora_b[layer], self.bounds,
                                   item)
        if self.plan.num_items == 0:
            return
        status = self._function(y.data_ptr(), x.data_ptr(), self._a[0] + layer * self._a[1],
                                self._b[0] + layer * self._b[1],
                                self._shape_for(x.stride(0), y.stride(0)), self._work)
        if status != 0:  # the checks above make this unreachable; never ignore it
            raise RuntimeError(f"cpu_lora kernel refused its arguments (status {status})")

    def kernel_arguments(self) -> tuple[int, int, int, int, _Shape, _Items] | None:
        """What a compiled caller (`cpu_decoder`) passes the kernel for contiguous rows x
        [T, d_in] and y [T, d_out]: layer 0's A and B addresses, the bytes from one layer's
        pools to the next, the shape and the step's items (both kept alive here); None where
        some slot's rows take torch's matmuls this step."""
        if self.plan.direct:
            return None
        return (self._a[0], self._a[1], self._b[0], self._b[1],
                self._shape_for(self.d_in, self.d_out), self._work)

    def _shape_for(self, x_row: int, y_row: int) -> _Shape:
        shape = self._shapes.get((x_row, y_row))
        if shape is None:
            shape = self._shapes.setdefault((x_row, y_row), _shape(
                self.d_in, self.d_out, self._offsets, x_row, y_row, self.lora_a.stride()[1:4],
                self.lora_b.stride(1), self.lora_b.stride(3)))
        return shape


def available() -> bool:
    """Whether the kernel is built (or builds now) and loads on this machine."""
    return _library() is not None


def supports(x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor) -> bool:
    """Whether the kernel takes these operands (else the torch path runs)."""
    return (x.device.type == "cpu" and x.dtype in ENTRY_POINTS and is_rank_major(lora_b)
            and lora_a.shape[1] <= MAX_SLICES)


def bind(lora_a: torch.Tensor, lora_b: torch.Tensor, slice_offsets: Sequence[int],
         segments: LoraSegments, ranks: torch.Tensor, host_ranks: Sequence[int]
         ) -> BoundLora | None:
    """`BoundLora` over stacked pools ([L, ...] as there; `ranks` and `host_ranks` as in
    `kernels.lora_apply`), or None where the kernel does not apply (not built here, or
    operands it does not take: the torch path then runs)."""
    library = _library()
    if (library is None or lora_a.dim() != 5 or lora_b.dim() != 4
            or not supports(lora_a[0, 0, 0], lora_a[0], lora_b[0])):
        return None
    # the shared checks, on a y and an x of the shapes `BoundLora.apply` then insists on
    check_lora_args(lora_a.new_empty(segments.num_rows, lora_b.shape[2]),
                    lora_a.new_empty(segments.num_rows, lora_a.shape[4]), lora_a[0], lora_b[0],
                    slice_offsets, segments, ranks)
    return BoundLora(lora_a, lora_b, slice_offsets, segments, host_ranks,
                     getattr(library, ENTRY_POINTS[lora_a.dtype]))


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
    if _library() is None or not supports(x, lora_a, lora_b):
        torch_ops.lora_apply(y, x, lora_a, lora_b, slice_offsets, segments, ranks,
                             zero_padded, host_ranks)
        return
    check_lora_args(y, x, lora_a, lora_b, slice_offsets, segments, ranks)
    if not segments.has_lora:
        return
    # checked above: the binding itself, without `bind`'s second round of checks
    BoundLora(lora_a[None], lora_b[None], slice_offsets, segments,
              host_ranks if host_ranks is not None else ranks.tolist(),
              getattr(_library(), ENTRY_POINTS[x.dtype])).apply(y, x, 0)


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
        if len(slot_rows) > KERNEL_ROWS:
            direct.append(DirectSlot(slot, rank, row_spec(slot_rows, device)))
            continue
        for first in range(0, len(slot_rows), ITEM_ROWS):
            item_rows = slot_rows[first:first + ITEM_ROWS]
            for field, value in zip(fields, (slot, rank, len(rows), len(item_rows)),
                                    strict=True):
                field.append(value)
            rows += item_rows
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
    pointer = ctypes.c_void_p
    for name in ENTRY_POINTS.values():
        function = getattr(library, name)
        function.argtypes = [pointer, pointer, pointer, pointer, ctypes.POINTER(_Shape),
                             ctypes.POINTER(_Items)]
        function.restype = ctypes.c_int
    return library
