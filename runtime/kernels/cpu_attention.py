"""Decode attention on a CPU as one compiled call per layer (`cpu_attention.c`).

The torch path gathers each sequence's blocks into a padded copy, zeroes the stale tail,
builds masks and runs `scaled_dot_product_attention` per group of rows: a dozen small ops
per group and layer, and two copies of every key and value read. The kernel reads keys and
values in place through the block tables, never past a sequence's length. fp32 and bf16
caches; fp16 and machines without a C compiler keep the torch path (`attention_torch`).
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import cpu_native

ENTRY_POINTS = {torch.float32: "paged_decode_f32", torch.bfloat16: "paged_decode_bf16"}


class _Shape(ctypes.Structure):
    _fields_ = [
        ("num_seqs", ctypes.c_int64), ("num_heads", ctypes.c_int64),
        ("num_kv_heads", ctypes.c_int64), ("head_dim", ctypes.c_int64),
        ("block_size", ctypes.c_int64), ("table_width", ctypes.c_int64),
        ("q_row", ctypes.c_int64), ("out_row", ctypes.c_int64), ("scale", ctypes.c_float),
    ]  # fmt: skip


@dataclass(frozen=True)
class NativeDecode:
    """One step's tables and lengths as the kernel reads them, checked once per step."""

    tables: torch.Tensor  # int64 [B, W], contiguous
    lengths: torch.Tensor  # int64 [B]


def supports(query: torch.Tensor, key_cache: torch.Tensor) -> bool:
    """Whether the kernel takes this query [T, H, D] and cache (else the torch ops run)."""
    return (query.device.type == "cpu" and query.dtype in ENTRY_POINTS
            and key_cache.dtype == query.dtype and key_cache.is_contiguous()
            and query.stride(2) == 1 and query.stride(1) == query.shape[2]
            and _library() is not None)


def native_decode(block_tables: torch.Tensor, lengths: Sequence[int], block_size: int,
                  num_blocks: int) -> NativeDecode:
    """The step's inputs, refused with a ValueError if the kernel would read out of bounds."""
    width = block_tables.shape[1]
    for row, length in enumerate(lengths):
        if not 1 <= length <= width * block_size:
            raise ValueError(f"decode row {row} has length {length}; its table holds "
                             f"{width * block_size} positions")
    tables = block_tables.to(torch.int64).contiguous()
    used = [tables[row, :-(-length // block_size)] for row, length in enumerate(lengths)]
    if used:
        entries = torch.cat(used)
        if int(entries.min()) < 0 or int(entries.max()) >= num_blocks:
            raise ValueError(f"a block table names a block outside the cache's {num_blocks}")
    return NativeDecode(tables, torch.tensor(list(lengths), dtype=torch.int64))


def paged_decode(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                 inputs: NativeDecode, scale: float, out: torch.Tensor) -> None:
    """out [B, H, D] = attention of query [B, H, D] over each row's cached keys and values."""
    num_seqs, num_heads, head_dim = query.shape
    if (query.stride(2) != 1 or out.stride(2) != 1 or query.stride(1) != head_dim
            or out.stride(1) != head_dim or not key_cache.is_contiguous()
            or not value_cache.is_contiguous() or value_cache.shape != key_cache.shape
            or out.dtype != query.dtype):
        raise ValueError("cpu paged_decode needs contiguous heads, contiguous caches of one "
                         "shape and an output of the query's dtype")
    shape = _Shape(num_seqs, num_heads, key_cache.shape[2], head_dim, key_cache.shape[1],
                   inputs.tables.shape[1], query.stride(0), out.stride(0), scale)
    status = getattr(_library(), ENTRY_POINTS[query.dtype])(
        out.data_ptr(), query.data_ptr(), key_cache.data_ptr(), value_cache.data_ptr(),
        inputs.tables.data_ptr(), inputs.lengths.data_ptr(), ctypes.byref(shape),
        torch.get_num_threads())
    raise_for_status(status, num_heads, key_cache.shape[2])


def raise_for_status(status: int, num_heads: int, num_kv_heads: int) -> None:
    """The kernel's status (also passed on by `cpu_decoder`) as the error it means; 0 is
    none."""
    if status == -2:
        raise MemoryError("cpu paged_decode could not allocate a sequence's scores")
    if status != 0:
        raise ValueError(f"{num_heads} query heads do not share {num_kv_heads} KV heads")


@functools.cache
def _library() -> ctypes.CDLL | None:
    library = cpu_native.load("cpu_attention")
    if library is None:
        return None
    pointer = ctypes.c_void_p
    for name in ENTRY_POINTS.values():
        function = getattr(library, name)
        function.argtypes = [pointer] * 6 + [ctypes.POINTER(_Shape), ctypes.c_int]
        function.restype = ctypes.c_int
    return library
