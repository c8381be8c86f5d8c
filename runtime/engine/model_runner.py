"""Runs one scheduled step on the device: batch tensors in, sampled tokens out.

Lays the step's tokens out as one flat batch (decode rows first, then prefill chunks; each
part ordered by adapter slot, so rows of one adapter form one segment), builds the
`ForwardBatch` metadata once (with the step's `LoraBatch` when any row has an adapter),
runs the model under `inference_mode`, computes logits only for the rows that sample
(and, in slices, for prompt logprobs), and samples every sequence in one call. All
per-token host work happens here, in bulk. Decode-only steps go to `decode_graphs` when
the engine set one (CUDA graphs, see `decode_graphs.py`), which returns the same rows.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from loraplex.runtime.adapters.slots import DeviceSlotPool
from loraplex.runtime.engine.decode_graphs import DecodeGraphRunner
from loraplex.runtime.engine.kv_cache import PagedKVCache
from loraplex.runtime.engine.prompt_logprobs import PromptTokenScore, score_prompt_chunk
from loraplex.runtime.engine.scheduler import ScheduledSequence
from loraplex.runtime.engine.sequence import Sequence
from loraplex.runtime.engine.step_sampling import SampledToken, StepSampling
from loraplex.runtime.layers.forward_batch import DecodeRows, ForwardBatch, PrefillChunks
from loraplex.runtime.layers.lora import LoraBatch
from loraplex.runtime.layers.sampler import Sampler, token_bias_processor
from loraplex.runtime.models.llama import LlamaForCausalLM


@dataclass(slots=True)
class StepOutput:
    sampled: dict[Sequence, SampledToken] = field(default_factory=dict)
    # per sequence: scores of the prompt tokens this step covered
    prompt_logprobs: dict[Sequence, list[PromptTokenScore]] = field(default_factory=dict)


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, kv_cache: PagedKVCache, device: torch.device,
                 end_token_ids: Iterable[int] = (), lora_pool: DeviceSlotPool | None = None,
                 lora_backend: str = "torch", decode_graphs: DecodeGraphRunner | None = None
                 ) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.device = device
        self.block_size = kv_cache.layout.block_size
        self.dtype = kv_cache.layout.dtype
        self.sampler = Sampler([token_bias_processor])
        self.step_sampling = StepSampling(model.config.vocab_size, device, end_token_ids)
        self.lora_pool = lora_pool  # None: the base model only
        self.lora_backend = lora_backend
        self.decode_graphs = decode_graphs  # CUDA graphs of decode steps, when captured

    @torch.inference_mode()
    def execute(self, scheduled: list[ScheduledSequence]) -> StepOutput:
        ordered = step_order(scheduled)
        starts = list(itertools.accumulate((item.num_new_tokens for item in ordered),
                                           initial=0))  # first row of each sequence
        hidden = None
        if self.decode_graphs is not None:
            hidden = self.decode_graphs.forward(ordered, self.lora_pool, self.lora_backend)
        if hidden is None:
            hidden = self.model(self.prepare(ordered), self.kv_cache.layers)  # [T, d]
        output = StepOutput()
        sampling = [(item, start) for item, start in zip(ordered, starts, strict=False)
                    if item.samples]
        if sampling:
            rows = self._tensor([start + item.num_new_tokens - 1 for item, start in sampling])
            logits = self.model.compute_logits(hidden[rows])  # [N, vocab]
            seqs = [item.seq for item, _ in sampling]
            tensors = self.step_sampling.tensors(seqs)
            sampled = self.step_sampling.finish(tensors, self.sampler(logits, tensors))
            output.sampled = dict(zip(seqs, sampled, strict=True))
        for item, start in zip(ordered, starts, strict=False):
            if item.seq.needs_prompt_logprobs:
                output.prompt_logprobs[item.seq] = score_prompt_chunk(self.model, item,
                                                                      hidden, start)
        return output

    def prepare(self, ordered: list[ScheduledSequence]) -> ForwardBatch:
        """The step's ForwardBatch (rows in the order of `ordered`)."""
        block_size = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        decode_tables: list[list[int]] = []
        chunk_tables: list[list[int]] = []
        chunks: list[tuple[int, int, int]] = []  # (first row, new tokens, context after)
        for item in ordered:
            seq, first = item.seq, item.seq.num_computed_tokens
            last = first + item.num_new_tokens
            table = seq.block_table[: -(-last // block_size)]
            start = len(input_ids)
            input_ids.extend(seq.token_ids[first:last])
            positions.extend(range(first, last))
            slots.extend(table[p // block_size] * block_size + p % block_size
                         for p in range(first, last))
            if item.num_new_tokens == 1:
                decode_tables.append(table)
            else:
                chunk_tables.append(table)
                chunks.append((start, item.num_new_tokens, last))
        lora = None
        if self.lora_pool is not None:
            row_slots = [item.seq.lora_slot for item in ordered
                         for _ in range(item.num_new_tokens)]
            lora = LoraBatch.build(self.lora_pool, row_slots, self.lora_backend, self.device)
        decode = None
        if decode_tables:  # decode row i sees positions 0..positions[i]
            lengths = [p + 1 for p in positions[:len(decode_tables)]]
            decode = DecodeRows(self._tables(decode_tables), self._int32(lengths), lengths)
        prefill = None
        if chunks:
            starts, lens, contexts = zip(*chunks, strict=True)
            prefill = PrefillChunks(self._tables(chunk_tables), self._int32(starts),
                                    self._int32(lens), self._int32(contexts), max(lens), chunks)
        return ForwardBatch(
            input_ids=self._tensor(input_ids), positions=self._tensor(positions),
            slot_mapping=self._tensor(slots), decode=decode, prefill=prefill, lora=lora)

    def _tensor(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64).to(self.device, non_blocking=True)

    def _int32(self, values: Iterable[int]) -> torch.Tensor:
        return torch.tensor(list(values), dtype=torch.int32).to(self.device, non_blocking=True)

    def _tables(self, tables: list[list[int]]) -> torch.Tensor:
        """int32 [n, longest]; short tables padded with block 0 (never read: see lengths)."""
        width = max(len(table) for table in tables)
        padded = torch.zeros(len(tables), width, dtype=torch.int32)
        for row, table in enumerate(tables):
            padded[row, :len(table)] = torch.tensor(table, dtype=torch.int32)
        return padded.to(self.device, non_blocking=True)


def step_order(scheduled: list[ScheduledSequence]) -> list[ScheduledSequence]:
    """The step's rows: decode rows first, by adapter slot then shortest context (the
    torch attention path pads groups of neighbours), then prefill chunks by adapter slot."""
    return (sorted((s for s in scheduled if s.num_new_tokens == 1),
                   key=lambda s: (s.seq.lora_slot, s.seq.num_computed_tokens))
            + sorted((s for s in scheduled if s.num_new_tokens > 1),
                     key=lambda s: s.seq.lora_slot))

