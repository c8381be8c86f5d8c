"""Decides, every step, which sequences run and how many of their tokens.

One token budget (`max_num_batched_tokens`) per step, spent first on running sequences
in arrival order (a decode costs one token, an unfinished prefill continues with a
chunk), then on waiting sequences (FIFO) while sequence slots and blocks last. Prefills
are chunked to the budget left, so prefill and decode mix in one step. When a running
sequence needs a block and none is free, the newest running sequence is preempted: its
blocks are freed and it waits at the front of the queue to be recomputed (keeping its
adapter lease, so its adapter stays resident).

With adapters (an `admission`), a waiting sequence is admitted only once its adapter is
on the device; one whose adapter is still loading is skipped, not waited for, so the
requests behind it go ahead (no head-of-line blocking). A sequence whose adapter failed
leaves the queue and is returned in the step's `failed` (with the reason) for the engine
to end.

With prefix caching on, an admitted sequence first takes the cached blocks its tokens
start with (named by its adapter's identity, see `prefix_cache`) and its prefill starts
after them; at least its last token is always computed (it yields the first logits). A
request for prompt logprobs computes its whole prompt. Every block a step fills is
published for later sequences as the step is scheduled.

Blocks become matchable only once their step ran, so requests that arrive together with
one prefix would all compute it. Instead a waiting sequence whose next uncached full block
is being filled in this step by another sequence (same adapter identity, same tokens)
waits for the next step, where it is a cache hit (in-batch prefix de-duplication, as in
SGLang). Each wait normally gains it at least one cached block; whatever happens (the
step fails, the blocks are evicted), a sequence waits at most once per full block of its
prompt, so nothing starves, and a request whose blocks nobody else computes never waits.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from loraplex.runtime.adapters.errors import AdapterError
from loraplex.runtime.engine.adapter_admission import AdapterAdmission
from loraplex.runtime.engine.block_manager import BlockManager
from loraplex.runtime.engine.prefix_cache import (
    BASE_MODEL_IDENTITY,
    PrefixCacheStats,
    adapter_identity,
    extend_block_hashes,
)
from loraplex.runtime.engine.sequence import Sequence, SequenceStatus


@dataclass(slots=True)
class ScheduledSequence:
    seq: Sequence
    num_new_tokens: int  # tokens computed this step, from seq.num_computed_tokens on

    @property
    def samples(self) -> bool:
        """Whether this step reaches the sequence's last token (so a token is sampled)."""
        return self.seq.num_computed_tokens + self.num_new_tokens == self.seq.num_tokens


@dataclass(slots=True)
class SchedulerOutput:
    scheduled: list[ScheduledSequence]
    failed: list[tuple[Sequence, str]]  # left the queue this step: adapter failed, why


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int,
                 max_num_batched_tokens: int, admission: AdapterAdmission | None = None
                 ) -> None:
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.admission = admission
        self.prefix_cache_stats = PrefixCacheStats()

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        scheduled: list[ScheduledSequence] = []
        failed: list[tuple[Sequence, str]] = []
        budget, preempted = self._schedule_running(scheduled)
        admission = self.admission
        if admission is not None:
            admission.begin_step()
        blocked: set[str] = set()  # adapters not admissible this step
        for seq in list(self.waiting):
            if budget <= 0 or preempted or len(self.running) >= self.max_num_seqs:
                break
            if not self._adapter_ready(seq, blocked, failed):
                continue
            looked_up = self._cached_prefix(seq)
            cached = looked_up or []
            if looked_up is not None and self._waits_for_block_in_flight(seq, len(cached)):
                continue
            num_cached = len(cached) * self.block_manager.block_size
            num_new = min(seq.num_tokens - num_cached, budget)
            if not self.block_manager.can_grow(seq.block_table, num_cached + num_new, cached):
                break
            if looked_up is not None and not seq.num_preemptions:
                self.prefix_cache_stats.record(seq.adapter, seq.num_tokens, num_cached)
            self.waiting.remove(seq)
            self.block_manager.share(seq.block_table, cached)
            seq.num_computed_tokens = num_cached
            self.block_manager.grow(seq.block_table, num_cached + num_new)
            self._publish(seq, num_cached + num_new)
            seq.status = SequenceStatus.RUNNING
            if seq.queued_s is None:
                seq.queued_s = time.monotonic() - seq.arrived_at
            self.running.append(seq)
            scheduled.append(ScheduledSequence(seq, num_new))
            budget -= num_new
        return SchedulerOutput(scheduled, failed)

    def _schedule_running(self, scheduled: list[ScheduledSequence]) -> tuple[int, bool]:
        """Running sequences first, in arrival order, preempting the newest for blocks;
        return the token budget left and whether anything was preempted."""
        budget = self.max_num_batched_tokens
        preempted = False
        index = 0
        while index < len(self.running) and budget > 0:
            seq = self.running[index]
            num_new = min(seq.num_uncomputed_tokens, budget)
            num_tokens = seq.num_computed_tokens + num_new
            while not self.block_manager.can_grow(seq.block_table, num_tokens):
                victim = self.running.pop()  # the newest; never one scheduled before seq
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            if seq.status is not SequenceStatus.RUNNING:
                break
            self.block_manager.grow(seq.block_table, num_tokens)
            self._publish(seq, num_tokens)
            scheduled.append(ScheduledSequence(seq, num_new))
            budget -= num_new
            index += 1
        return budget, preempted

    def _cached_prefix(self, seq: Sequence) -> list[int] | None:
        """Cached blocks a waiting sequence may start from; None: it may not look."""
        manager = self.block_manager
        if not manager.enable_prefix_caching or seq.needs_prompt_logprobs:
            return None
        num_full = (seq.num_tokens - 1) // manager.block_size  # the last token is computed
        if not self._hash_blocks(seq, num_full):
            return None
        return manager.match_prefix(seq.block_hashes[:num_full])

    def _waits_for_block_in_flight(self, seq: Sequence, num_cached: int) -> bool:
        """Whether `seq` waits a step for its next block, which this step computes anyway."""
        num_full = (seq.num_tokens - 1) // self.block_manager.block_size
        if num_cached >= num_full or seq.num_prefix_waits >= num_full:
            return False  # nothing left to share, or it has waited enough
        if not self.block_manager.is_being_filled(seq.block_hashes[num_cached]):
            return False
        seq.num_prefix_waits += 1
        return True

    def _publish(self, seq: Sequence, num_tokens: int) -> None:
        """Publish the blocks the first `num_tokens` tokens fill (computed by this step)."""
        manager = self.block_manager
        num_full = num_tokens // manager.block_size
        if (not manager.enable_prefix_caching or num_full <= seq.num_published_blocks
                or not self._hash_blocks(seq, num_full)):
            return
        manager.publish(seq.block_table, seq.block_hashes, seq.num_published_blocks, num_full)
        seq.num_published_blocks = num_full

    def _hash_blocks(self, seq: Sequence, num_full: int) -> bool:
        """Extend `seq.block_hashes` to `num_full` blocks; False if its K/V have no name."""
        if seq.cache_identity is None:
            if seq.adapter is None:
                seq.cache_identity = BASE_MODEL_IDENTITY
            elif seq.adapter_lease is not None and seq.adapter_lease.record.digest:
                seq.cache_identity = adapter_identity(seq.adapter_lease.name,
                                                      seq.adapter_lease.record.digest)
            else:  # an adapter outside the manager's leases: never shared
                return False
        extend_block_hashes(seq.block_hashes, seq.cache_identity, seq.token_ids,
                            self.block_manager.block_size, num_full)
        return True

    def _adapter_ready(self, seq: Sequence, blocked: set[str],
                       failed: list[tuple[Sequence, str]]) -> bool:
        """Whether the sequence's adapter lets it run now (a failed one leaves the queue)."""
        if self.admission is None or seq.adapter is None or seq.adapter_lease is not None:
            return True
        if seq.adapter in blocked:
            return False
        try:
            if self.admission.admit(seq):
                return True
        except AdapterError as error:
            self.waiting.remove(seq)
            self.finish(seq)
            failed.append((seq, str(error)))
            return False
        blocked.add(seq.adapter)
        return False

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.release(seq.block_table)
        seq.reset_for_recompute()
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def finish(self, seq: Sequence) -> None:
        """Remove a finished or aborted sequence and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.release(seq.block_table)
        if self.admission is not None:
            self.admission.release(seq)
        seq.status = SequenceStatus.FINISHED
