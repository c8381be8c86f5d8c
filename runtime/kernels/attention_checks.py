"""Argument checks of the paged attention ops (Triton launchers and torch path alike).

A wrong shape that reaches the kernel reads out of bounds, so every public op checks
shapes and dtypes first and raises a `ValueError` naming the argument. Only shapes are
read: the checks never synchronise with the device.
"""

from __future__ import annotations

import torch

from .checks import FLOAT_DTYPES

INDEX_DTYPES = (torch.int32, torch.int64)


def check_decode_args(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                      block_tables: torch.Tensor, seq_lens: torch.Tensor) -> None:
    _check_query_and_caches(query, key_cache, value_cache)
    _check_index("block_tables", block_tables, 2, query.device)
    _check_index("seq_lens", seq_lens, 1, query.device)
    num_seqs = query.shape[0]
    if block_tables.shape[0] != num_seqs or seq_lens.shape[0] != num_seqs:
        raise ValueError(f"query has {num_seqs} sequences but block_tables has "
                         f"{block_tables.shape[0]} rows and seq_lens {seq_lens.shape[0]}")


def check_prefill_args(query: torch.Tensor, key_cache: torch.Tensor,
                       value_cache: torch.Tensor, block_tables: torch.Tensor,
                       query_starts: torch.Tensor, query_lens: torch.Tensor,
                       context_lens: torch.Tensor) -> None:
    _check_query_and_caches(query, key_cache, value_cache)
    _check_index("block_tables", block_tables, 2, query.device)
    for name, tensor in (("query_starts", query_starts), ("query_lens", query_lens),
                         ("context_lens", context_lens)):
        _check_index(name, tensor, 1, query.device)
        if tensor.shape[0] != block_tables.shape[0]:
            raise ValueError(f"{name} has {tensor.shape[0]} spans but block_tables has "
                             f"{block_tables.shape[0]}")


def _check_query_and_caches(query: torch.Tensor, key_cache: torch.Tensor,
                            value_cache: torch.Tensor) -> None:
    if query.dim() != 3:
        raise ValueError(f"query must be [rows, heads, head_dim], got {tuple(query.shape)}")
    if query.dtype not in FLOAT_DTYPES:
        raise ValueError(f"query dtype {query.dtype} is not one of {FLOAT_DTYPES}")
    if query.stride(2) != 1:
        raise ValueError("query's last dimension must be contiguous")
    for name, cache in (("key_cache", key_cache), ("value_cache", value_cache)):
        if cache.dim() != 4:
            raise ValueError(f"{name} must be [num_blocks, block_size, kv_heads, head_dim], "
                             f"got {tuple(cache.shape)}")
        if cache.dtype != query.dtype or cache.device != query.device:
            raise ValueError(f"{name} is {cache.dtype} on {cache.device}, query is "
                             f"{query.dtype} on {query.device}")
        if cache.stride(3) != 1:
            raise ValueError(f"{name}'s last dimension must be contiguous")
    if key_cache.shape != value_cache.shape or key_cache.stride() != value_cache.stride():
        raise ValueError(f"key_cache {tuple(key_cache.shape)} and value_cache "
                         f"{tuple(value_cache.shape)} differ in layout")
    num_heads, head_dim = query.shape[1], query.shape[2]
    num_kv_heads = key_cache.shape[2]
    if key_cache.shape[3] != head_dim:
        raise ValueError(f"caches have head_dim {key_cache.shape[3]}, query {head_dim}")
    if num_heads % num_kv_heads:
        raise ValueError(f"query heads {num_heads} are not a multiple of the caches' "
                         f"{num_kv_heads} KV heads")


def _check_index(name: str, tensor: torch.Tensor, dims: int, device: torch.device) -> None:
    if tensor.dim() != dims or tensor.dtype not in INDEX_DTYPES:
        raise ValueError(f"{name} must be an int32/int64 tensor of {dims} dims, got "
                         f"{tensor.dtype} {tuple(tensor.shape)}")
    if tensor.device != device:
        raise ValueError(f"{name} is on {tensor.device}, query on {device}")
    if dims == 2 and tensor.stride(1) != 1:
        raise ValueError(f"{name}'s rows must be contiguous")
