"""The decode step as captured CUDA graphs, one per batch-size bucket, captured at start-up.

A decode-only step (every row one new token) of B sequences is padded to a batch bucket
(1, 2, 4, 8, 16, 24, 32, 48, 64, 96, ... up to max_num_seqs, or the bound set by
`cuda_graph_max_batch`), and the model runs on persistent buffers that one host->device
copy refills each step:

    input_ids, positions, slot_mapping, seq_lens  int64 [Bb] each  } one flat int64 buffer
    block_tables                                  int64 [Bb, Wmax] }
    LoRA kernel tiles                             int32, per projection group (`lora_static`)

Attention reads each row's keys through its table up to its length, both on the device
(`kernels.paged_attention`), so one graph per batch size serves every mix of contexts:
no width bucket, nothing gathered. A step writes only the table entries its rows use;
entries past a row's length keep stale values that nothing reads. Padding rows read
token 0 at position 0, write their K/V into the KV cache's scratch block (which no
sequence owns) and attend to that one key; every op of the model is row-wise except
attention, which reads only the row's own table, so padding rows change neither real
rows' results nor any sequence's KV blocks.

On CUDA `capture_all` captures every bucket at start-up, largest first (warmed up and
captured on padding rows only, so capturing writes nothing but the scratch block), with a
progress line and the memory the graphs took; steps with adapters use graphs of their own,
captured when the first adapter step of a bucket comes. All graphs share one memory pool:
they are replayed one at a time, so each capture reuses the memory the others freed, and
only each graph's output stays allocated. The LM head and sampling stay outside the
graphs. On the CPU the same path runs uncaptured (how it is tested without a GPU). A step
this path does not cover (prefill or mixed, more rows than the largest bucket, adapters on
a backend other than Triton) runs eagerly.
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
from loraplex.runtime.layers.forward_batch import DecodeRows, ForwardBatch
from loraplex.runtime.layers.lora_static import StaticLoraBatch, StaticLoraTiles
from loraplex.runtime.layers.static_buffer import StaticBuffer
from loraplex.runtime.models.llama import LlamaForCausalLM

logger = logging.getLogger(__name__)


def batch_buckets(max_num_seqs: int) -> tuple[int, ...]:
    """1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, ... below max_num_seqs, then max_num_seqs."""
    sizes = [1, 2, 4, 8, 16, 24]
    while sizes[-1] < max_num_seqs:
        sizes.append(2 * sizes[-2])
    return (*(size for size in sizes if size < max_num_seqs), max_num_seqs)


def bucket_of(value: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket that holds `value` (value <= buckets[-1])."""
    return buckets[bisect.bisect_left(buckets, value)]


@dataclass(slots=True)
class DecodeBucket:
    """One bucket's views of the persistent buffers, and its graph once captured."""

    size: int  # rows, Bb
    input_ids: torch.Tensor  # int64 [Bb]
    positions: torch.Tensor  # int64 [Bb]
    slot_mapping: torch.Tensor  # int64 [Bb]
    seq_lens: torch.Tensor  # int64 [Bb]
    block_tables: torch.Tensor  # int64 [Bb, Wmax]
    lora: StaticLoraBatch | None
    graph: Any = None  # torch.cuda.CUDAGraph
    output: torch.Tensor | None = None  # [Bb, d], rewritten by every replay


class DecodeGraphRunner:
    def __init__(self, model: LlamaForCausalLM, kv_cache: PagedKVCache, max_num_seqs: int,
                 max_model_len: int, *, capture: bool, max_batch: int = 0) -> None:
        """max_batch: the largest bucket (0: max_num_seqs); larger steps run eagerly."""
        if capture and kv_cache.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.model = model
        self.kv_cache = kv_cache
        self.device = kv_cache.device
        self.block_size = kv_cache.layout.block_size
        self.scratch_block = kv_cache.scratch_block
        self.capture = capture
        self.batch_sizes = batch_buckets(min(max_batch or max_num_seqs, max_num_seqs))
        self.max_blocks = -(-max_model_len // self.block_size)
        self._rows = self.batch_sizes[-1]
        self._meta = StaticBuffer(self._rows * (4 + self.max_blocks), torch.int64, self.device)
        self._lora: StaticLoraTiles | None = None  # built with the first adapter step
        self._buckets: dict[tuple[int, bool], DecodeBucket] = {}
        self._pool = torch.cuda.graph_pool_handle() if capture else None
        self._lengths: list[int] = []  # the last filled step's lengths, padding rows' included
        self.num_graphs = 0

    def capture_all(self) -> None:
        """Captures the base model's step for every bucket, largest first."""
        free_before = torch.cuda.mem_get_info(self.device)[0] if self.capture else 0
        started = time.perf_counter()
        for index, size in enumerate(reversed(self.batch_sizes)):
            logger.info("capturing decode graphs: %d/%d (batch %d)", index + 1,
                        len(self.batch_sizes), size)
            self._bucket(size, None)
        if self.capture:
            taken = free_before - torch.cuda.mem_get_info(self.device)[0]
            logger.info("captured %d decode graphs (batch 1..%d) in %.1f s, using %.0f MiB",
                        len(self.batch_sizes), self._rows, time.perf_counter() - started,
                        taken / 2**20)

    def forward(self, ordered: list[ScheduledSequence], lora_pool: DeviceSlotPool | None,
                lora_backend: str) -> torch.Tensor | None:
        """Hidden states [B, d] of a decode-only step, row i for ordered[i]; None where the
        step must run eagerly. The rows stay valid until the next call."""
        if (not ordered or len(ordered) > self._rows
                or any(item.num_new_tokens != 1 for item in ordered)):
            return None
        row_slots = [item.seq.lora_slot for item in ordered]
        with_lora = lora_pool is not None and any(slot != NO_ADAPTER for slot in row_slots)
        if with_lora and lora_backend != "triton":
            return None
        size = bucket_of(len(ordered), self.batch_sizes)
        bucket = self._bucket(size, lora_pool if with_lora else None)
        self._fill(ordered, size)
        if with_lora and self._lora is not None:
            self._lora.fill(row_slots, size)
        if bucket.graph is None:
            hidden = self._forward(bucket)
        else:
            bucket.graph.replay()
            hidden = bucket.output
        return hidden[:len(ordered)]

    def _bucket(self, size: int, lora_pool: DeviceSlotPool | None) -> DecodeBucket:
        key = (size, lora_pool is not None)
        bucket = self._buckets.get(key)
        if bucket is not None:
            return bucket
        lora = None
        if lora_pool is not None:
            if self._lora is None:
                self._lora = StaticLoraTiles(lora_pool, self._rows)
            elif self._lora.pool is not lora_pool:  # graphs hold the first pool's addresses
                raise RuntimeError("the adapter slot pool was replaced")
            lora = self._lora.batch(size)
        data, rows = self._meta.data, self._rows
        tables = data[4 * rows:4 * rows + size * self.max_blocks]
        bucket = DecodeBucket(
            size, input_ids=data[:size], positions=data[rows:rows + size],
            slot_mapping=data[2 * rows:2 * rows + size], seq_lens=data[3 * rows:3 * rows + size],
            block_tables=tables.view(size, self.max_blocks), lora=lora)
        if self.capture:
            self._capture(bucket)
        self._buckets[key] = bucket
        return bucket

    def _fill(self, ordered: list[ScheduledSequence], size: int) -> None:
        """Writes the step's rows (then padding rows) into the persistent buffer."""
        block_size, scratch, rows = self.block_size, self.scratch_block, self._rows
        padding = size - len(ordered)
        positions = [item.seq.num_computed_tokens for item in ordered]
        tables = [item.seq.block_table[:position // block_size + 1]
                  for item, position in zip(ordered, positions, strict=True)]
        width = max((len(table) for table in tables), default=1)
        padded = torch.full((size, width), scratch, dtype=torch.int64)
        for row, table in enumerate(tables):
            padded[row, :len(table)] = torch.tensor(table)
        ids = [item.seq.token_ids[position] for item, position in zip(ordered, positions,
                                                                      strict=True)]
        slots = [table[-1] * block_size + position % block_size
                 for table, position in zip(tables, positions, strict=True)]
        columns = (ids + [0] * padding, positions + [0] * padding,
                   slots + [scratch * block_size] * padding, [p + 1 for p in positions]
                   + [1] * padding)
        self._lengths = columns[3]
        pieces = [(index * rows, torch.tensor(column)) for index, column in enumerate(columns)]
        pieces.append((4 * rows, padded))
        self._meta.fill_pieces(pieces, 4 * rows + size * self.max_blocks,
                               row_stride=self.max_blocks)

    def _forward(self, bucket: DecodeBucket) -> torch.Tensor:
        batch = ForwardBatch(input_ids=bucket.input_ids, positions=bucket.positions,
                             slot_mapping=bucket.slot_mapping,
                             decode=DecodeRows(bucket.block_tables, bucket.seq_lens,
                                               self._lengths),
                             prefill=None, lora=bucket.lora)
        return self.model(batch, self.kv_cache.layers)  # [Bb, d]

    def _capture(self, bucket: DecodeBucket) -> None:
        started = time.perf_counter()
        self._fill([], bucket.size)  # padding only
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
        logger.debug("captured the decode step for %d rows%s in %.0f ms", bucket.size,
                     " with LoRA" if bucket.lora else "", 1000 * (time.perf_counter() - started))
