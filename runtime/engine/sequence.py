"""The engine's state of one request: its tokens, KV blocks and output position.

`token_ids` holds the prompt followed by every generated token; `num_computed_tokens`
counts those whose K/V are in the cache. A prefill is simply a sequence with many
uncomputed tokens, a decode one with a single one, and a preempted sequence recomputes
everything (its generated tokens become part of what it prefills again), or starts after
the blocks the prefix cache still holds.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from loraplex.runtime.adapters.records import AdapterLease
from loraplex.runtime.engine.detokenizer import IncrementalDetokenizer
from loraplex.runtime.engine.request import (
    FinishReason,
    GenerationRequest,
    SamplingParams,
    TokenLogprob,
)
from loraplex.runtime.engine.stop_strings import StopStringMatcher

if TYPE_CHECKING:
    import xgrammar


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request: GenerationRequest
    detokenizer: IncrementalDetokenizer
    seed: int | None = None  # None for greedy requests; with the token index, the noise
    token_ids: list[int] = field(init=False)
    num_prompt_tokens: int = field(init=False)
    num_computed_tokens: int = 0
    block_table: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: FinishReason | None = None
    stop_matcher: StopStringMatcher = field(init=False)
    prompt_logprobs: list[TokenLogprob] | None = None  # filled while prefilling when asked
    prompt_logprobs_sent: bool = False
    adapter_lease: AdapterLease | None = None  # held while admitted (keeps the slot resident)
    lora_slot: int = -1  # device slot of the adapter while admitted; -1: base model
    grammar: xgrammar.GrammarMatcher | None = None  # state of a constrained output
    arrived_at: float = field(default_factory=time.monotonic)
    queued_s: float | None = None  # waiting time before its first step; set when scheduled
    cache_identity: bytes | None = None  # the model or adapter weights its K/V come from
    block_hashes: list[bytes] = field(default_factory=list)  # of full blocks, see prefix_cache
    num_published_blocks: int = 0  # leading blocks of the table published under their hash
    num_preemptions: int = 0
    num_prefix_waits: int = 0  # steps it waited for a prefix block another one computed

    def __post_init__(self) -> None:
        self.token_ids = list(self.request.prompt_token_ids)
        self.num_prompt_tokens = len(self.token_ids)
        self.stop_matcher = StopStringMatcher(self.params.stop)
        if self.params.prompt_logprobs:
            self.prompt_logprobs = []

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def adapter(self) -> str | None:
        return self.request.adapter

    @property
    def params(self) -> SamplingParams:
        return self.request.params

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_generated_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def needs_prompt_logprobs(self) -> bool:
        return (self.prompt_logprobs is not None
                and len(self.prompt_logprobs) < self.num_prompt_tokens)

    def reset_for_recompute(self) -> None:
        """After preemption: the KV cache is gone, every token is prefilled again."""
        self.num_computed_tokens = 0
        self.num_published_blocks = 0
        self.num_preemptions += 1
        self.status = SequenceStatus.WAITING
        if self.needs_prompt_logprobs:
            self.prompt_logprobs = []
