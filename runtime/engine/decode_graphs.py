"""The decode step as captured CUDA graphs, one per (batch size, context width) bucket.

A decode-only step (every row one new token) of B sequences is padded to a batch bucket
(1, 2, 4, 8, 16, 24, 32, 48, 64, 96, ... up to max_num_seqs) and a width bucket W (KV
blocks per sequence: powers of two up to max_model_len / block_size), and the model runs
on persistent buffers that one host->device copy refills each step:

    input_ids, positions, slot_mapping  int64 [Bb] each   } one flat int64 buffer
    block_tables                        int64 [Bb, W]     }
    LoRA kernel tiles                   int32, per projection group (see `lora_static`)

The key mask [Bb, 1, 1, W * block_size] is made on the device from the positions, inside
the graph. Padding rows read token 0 at position 0, write their K/V into the KV cache's
scratch block (which no sequence owns) and attend to it alone; real rows' block tables
are padded with it too, behind the mask. Every op of the model is row-wise except
attention, which reads only the row's own table, so padding rows change neither real
rows' results nor any sequence's KV blocks.

On CUDA each bucket is captured on first use (warmed up and captured on padding rows
only, so capturing writes nothing but the scratch block) and replayed afterwards: a step
then costs one graph launch, however many layers and adapters it has. All graphs share
one memory pool: they are replayed one at a time, so each capture reuses the memory the
others freed, and only each graph's output stays allocated. The LM head and sampling
stay outside the graphs. On the CPU the same path runs uncaptured (how it is tested
without a GPU). A step this path does not cover (prefill or mixed, more rows than the
largest bucket, more padded keys than `max_gather_bytes` allows, adapters on a backend
other than Triton, a new bucket once `max_graphs` are captured) runs eagerly.
"""

from __future__ import annotations

import bisect
import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from loraplex.runtime.adapters.slots import DeviceSlotPool
from loraplex.runtime.engine.kv_cache import PagedKVCache
from loraplex.runtime.engine.scheduler import ScheduledSequence
from loraplex.runtime.kernels import NO_ADAPTER
from loraplex.runtime.layers.forward_batch import DecodeGroup, ForwardBatch
from loraplex.runtime.layers.lora_static import StaticLoraBatch, StaticLoraTiles
from loraplex.runtime.layers.static_buffer import StaticBuffer
from loraplex.runtime.models.llama import LlamaForCausalLM

logger = logging.getLogger(__name__)

MAX_GRAPHS = 128  # captured buckets at most; later new buckets run eagerly


def batch_buckets(max_num_seqs: int) -> tuple[int, ...]:
    """1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, ... below max_num_seqs, then max_num_seqs."""
    sizes = [1, 2, 4, 8, 16, 24]
    while sizes[-1] < max_num_seqs:
        sizes.append(2 * sizes[-2])
    return (*(size for size in sizes if size < max_num_seqs), max_num_seqs)


def width_buckets(max_blocks: int) -> tuple[int, ...]:
    """Powers of two below max_blocks, then max_blocks."""
    widths = [1]
    while widths[-1] * 2 < max_blocks:
        widths.append(widths[-1] * 2)
    return (*(width for width in widths if width < max_blocks), max_blocks)


def bucket_of(value: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket that holds `value` (value <= buckets[-1])."""
    return buckets[bisect.bisect_left(buckets, value)]


@dataclass(slots=True)
class DecodeBucket:
    """One bucket's views of the persistent buffers, and its graph once captured."""

    size: int  # rows, Bb
    width: int  # KV blocks per row, W
    input_ids: torch.Tensor  # int64 [Bb]
    positions: torch.Tensor  # int64 [Bb]
    slot_mapping: torch.Tensor  # int64 [Bb]
    block_tables: torch.Tensor  # int64 [Bb, W]
    lora: StaticLoraBatch | None
    graph: Any = None  # torch.cuda.CUDAGraph
    output: torch.Tensor | None = None  # [Bb, d], rewritten by every replay


class DecodeGraphRunner:
    def __init__(self, model: LlamaForCausalLM, kv_cache: PagedKVCache, max_num_seqs: int,
                 max_model_len: int, *, capture: bool, max_graphs: int = MAX_GRAPHS,
                 max_gather_bytes: int | None = None) -> None:
        """max_gather_bytes: most bytes of K/V one layer's attention may gather, for every
        padded key (Bb * W * block_size) at once; larger steps run eagerly (None: any)."""
        if capture and kv_cache.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        layout = kv_cache.layout
        self.model = model
        self.kv_cache = kv_cache
        self.device = kv_cache.device
        self.dtype = layout.dtype
        self.block_size = layout.block_size
        self.scratch_block = kv_cache.scratch_block
        self.capture = capture
        self.max_graphs = max_graphs
        key_bytes = 2 * layout.num_kv_heads * layout.head_dim * layout.dtype.itemsize
        self.max_keys = None if max_gather_bytes is None else max_gather_bytes // key_bytes
        self.batch_sizes = batch_buckets(max_num_seqs)
        self.widths = width_buckets(-(-max_model_len // self.block_size))
        max_rows, max_width = self.batch_sizes[-1], self.widths[-1]
        self._meta = StaticBuffer(max_rows * (3 + max_width), torch.int64, self.device)
        self._lora: StaticLoraTiles | None = None  # built with the first adapter step
        self._buckets: dict[tuple[int, int, bool], DecodeBucket] = {}
        self._pool = torch.cuda.graph_pool_handle() if capture else None
        self.num_graphs = 0

    def forward(self, ordered: list[ScheduledSequence], lora_pool: DeviceSlotPool | None,
                lora_backend: str) -> torch.Tensor | None:
        """Hidden states [B, d] of a decode-only step, row i for ordered[i]; None where the
        step must run eagerly. The rows stay valid until the next call."""
        if (not ordered or len(ordered) > self.batch_sizes[-1]
                or any(item.num_new_tokens != 1 for item in ordered)):
            return None
        row_slots = [item.seq.lora_slot for item in ordered]
        with_lora = lora_pool is not None and any(slot != NO_ADAPTER for slot in row_slots)
        if with_lora and lora_backend != "triton":
            return None
        positions = [item.seq.num_computed_tokens for item in ordered]
        size = bucket_of(len(ordered), self.batch_sizes)
        width = bucket_of(max(positions) // self.block_size + 1, self.widths)
        if self.max_keys is not None and size * width * self.block_size > self.max_keys:
            return None
        bucket = self._bucket(size, width, lora_pool if with_lora else None)
        if bucket is None:
            return None
        self._meta.fill(self._metadata(ordered, positions, size, width))
        if with_lora and self._lora is not None:
            self._lora.fill(row_slots, size)
        if bucket.graph is None:
            hidden = self._forward(bucket)
        else:
            bucket.graph.replay()
            hidden = bucket.output
        return hidden[:len(ordered)]

    def _bucket(self, size: int, width: int,
                lora_pool: DeviceSlotPool | None) -> DecodeBucket | None:
        key = (size, width, lora_pool is not None)
        bucket = self._buckets.get(key)
        if bucket is not None:
            return bucket
        if self.capture and self.num_graphs >= self.max_graphs:
            return None
        lora = None
        if lora_pool is not None:
            if self._lora is None:
                self._lora = StaticLoraTiles(lora_pool, self.batch_sizes[-1])
            elif self._lora.pool is not lora_pool:  # graphs hold the first pool's addresses
                raise RuntimeError("the adapter slot pool was replaced")
            lora = self._lora.batch(size)
        data = self._meta.data
        bucket = DecodeBucket(
            size, width, input_ids=data[:size], positions=data[size:2 * size],
            slot_mapping=data[2 * size:3 * size],
            block_tables=data[3 * size:3 * size + size * width].view(size, width), lora=lora)
        if self.capture:
            self._capture(bucket)
        self._buckets[key] = bucket
        return bucket

    def _metadata(self, ordered: list[ScheduledSequence], positions: list[int], size: int,
                  width: int) -> list[int]:
        """The flat buffer's content: ids, positions, KV slots [size] each, tables [size, W]."""
        block_size, scratch = self.block_size, self.scratch_block
        padding = size - len(ordered)
        ids: list[int] = []
        slots: list[int] = []
        tables: list[int] = []
        for item, position in zip(ordered, positions, strict=True):
            table = item.seq.block_table[:position // block_size + 1]
            ids.append(item.seq.token_ids[position])
            slots.append(table[-1] * block_size + position % block_size)
            tables += table
            tables += [scratch] * (width - len(table))
        return [*ids, *[0] * padding, *positions, *[0] * padding,
                *slots, *[scratch * block_size] * padding, *tables, *[scratch] * (width * padding)]

    def _forward(self, bucket: DecodeBucket) -> torch.Tensor:
        # row i sees keys 0..positions[i]: the mask [Bb, L] is made here, on the device
        key_positions = torch.arange(bucket.width * self.block_size, device=self.device)
        outside = key_positions[None, :] > bucket.positions[:, None]
        key_mask = torch.zeros(outside.shape, dtype=self.dtype, device=self.device)
        key_mask.masked_fill_(outside, float("-inf"))
        group = DecodeGroup(0, bucket.size, bucket.block_tables, key_mask[:, None, None, :])
        batch = ForwardBatch(input_ids=bucket.input_ids, positions=bucket.positions,
                             slot_mapping=bucket.slot_mapping, decode_groups=[group],
                             prefills=[], lora=bucket.lora)
        return self.model(batch, self.kv_cache.layers)  # [Bb, d]

    def _capture(self, bucket: DecodeBucket) -> None:
        started = time.perf_counter()
        self._meta.fill(self._metadata([], [], bucket.size, bucket.width))  # padding only
        if bucket.lora is not None and self._lora is not None:
            self._lora.fill([], bucket.size)
        current = torch.cuda.current_stream(self.device)
        warmup = torch.cuda.Stream(self.device)
        warmup.wait_stream(current)
        with torch.cuda.stream(warmup):
            self._forward(bucket)  # compiles the kernels, sets up cuBLAS, fills caches
        current.wait_stream(warmup)
        graph = torch.cuda.CUDAGraph()
        # thread_local: adapter loads on other threads keep using CUDA during the capture
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            bucket.output = self._forward(bucket)
        bucket.graph = graph
        self.num_graphs += 1
        logger.info("captured the decode step for %d rows x %d blocks%s in %.0f ms",
                    bucket.size, bucket.width, " with LoRA" if bucket.lora else "",
                    1000 * (time.perf_counter() - started))
