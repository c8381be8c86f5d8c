"""The continuous-batching engine: requests in, one `TokenEvent` per generated token out.

`step()` is the whole loop body: the scheduler picks this step's sequences and token
counts, the model runner computes and samples, and the results are turned into events
(detokenized text, stop sequences, EOS, length). Requests join and leave between any
two steps. The engine is single-threaded; `AsyncEngine` drives it from a thread. On CUDA,
decode-only steps replay captured CUDA graphs (`decode_graphs`) unless `enforce_eager`.
With `prefix_caching` (the default) prompts start after the KV blocks of their prefix that
an earlier request on the same adapter computed (see `block_manager`, `prefix_cache`).

`adapters` is the engine's `AdapterManager` (LoRA adapters by registered name). Its device
slot pool (`device_slots` adapters of `max_lora_rank`) is part of the memory plan
(`memory_plan`) and is allocated at start-up, before the KV cache takes what is left (on
the CPU it is a lazily committed map). A request names a registered adapter; it waits for
nothing but that adapter, and a failed adapter ends its requests with an ERROR event
giving the reason.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

from loraplex.runtime.adapters.manager import AdapterManager
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.config import EngineConfig
from loraplex.runtime.engine.adapter_admission import AdapterAdmission
from loraplex.runtime.engine.block_manager import BlockManager
from loraplex.runtime.engine.decode_graphs import DecodeGraphRunner
from loraplex.runtime.engine.detokenizer import IncrementalDetokenizer, special_token_ids
from loraplex.runtime.engine.kv_cache import KVCacheLayout, PagedKVCache
from loraplex.runtime.engine.memory_plan import free_device_bytes, plan_memory
from loraplex.runtime.engine.model_runner import ModelRunner, SampledToken, StepOutput
from loraplex.runtime.engine.prefix_cache import PrefixCacheStats
from loraplex.runtime.engine.prompt_logprobs import PromptTokenScore
from loraplex.runtime.engine.request import (
    FinishReason,
    GenerationRequest,
    TokenEvent,
    TokenLogprob,
)
from loraplex.runtime.engine.request_bounds import normalize
from loraplex.runtime.engine.scheduler import ScheduledSequence, Scheduler
from loraplex.runtime.engine.sequence import Sequence
from loraplex.runtime.engine.step_isolation import execute_isolated
from loraplex.runtime.heap import release_freed_heap
from loraplex.runtime.kernels import resolve_backend
from loraplex.runtime.models.loader import LoadedModel, load_model

logger = logging.getLogger(__name__)
ADAPTER_WAIT_S = 0.002  # pause of a loop whose every waiting request waits for its adapter


@dataclass(slots=True)
class EngineStats:
    num_running: int
    num_waiting: int
    num_free_blocks: int
    num_total_blocks: int
    kv_cache_usage: float  # 0..1, share of blocks in use
    block_size: int
    max_num_seqs: int
    max_model_len: int
    num_steps: int  # forward passes so far
    num_preemptions: int
    num_prompt_tokens: int  # prompt tokens computed so far (recomputes included)
    num_generated_tokens: int
    prefix_caching: bool
    prefix_cache: PrefixCacheStats  # prompt tokens looked up and found, per adapter
    num_cached_blocks: int  # blocks named in the prefix cache (in use or free)


class Engine:
    def __init__(self, config: EngineConfig, loaded: LoadedModel | None = None) -> None:
        self.config = config
        self.loaded = loaded if loaded is not None else load_model(config)
        # shared with the HTTP threads, which only read it too (see `load_tokenizer`)
        self.tokenizer = self.loaded.tokenizer
        self.model_id = self.loaded.model_id
        self.max_model_len = self.loaded.max_model_len
        hf_config, device = self.loaded.hf_config, self.loaded.device
        layout = KVCacheLayout.of(hf_config, config.block_size, self.loaded.dtype)
        self.memory_plan = plan_memory(hf_config, config, self.loaded.dtype, device,
                                       free_device_bytes(device), self.loaded.weight_bytes,
                                       self.max_model_len, self.loaded.quantization)
        logger.info("%s", self.memory_plan.table())
        # the slot pool before the KV cache, which takes what the plan leaves
        self.adapters = AdapterManager(config, LoraTargetShapes.from_hf_config(hf_config),
                                       device, self.loaded.dtype)
        num_blocks = self.memory_plan.kv_blocks
        self.kv_cache = PagedKVCache(layout, num_blocks, device)
        self.block_manager = BlockManager(num_blocks, config.block_size,
                                          enable_prefix_caching=config.prefix_caching)
        self.scheduler = Scheduler(
            self.block_manager, config.max_num_seqs, config.max_num_batched_tokens,
            AdapterAdmission(self.adapters, config.adapter_time_slice_s))
        decode_graphs = None
        if device.type == "cuda" and not config.enforce_eager:
            decode_graphs = DecodeGraphRunner(
                self.loaded.model, self.kv_cache, config.max_num_seqs, self.max_model_len,
                capture=True, max_batch=config.cuda_graph_max_batch)
            decode_graphs.capture_all()
        self.runner = ModelRunner(self.loaded.model, self.kv_cache, device,
                                  self.loaded.eos_token_ids, lora_pool=self.adapters.pool,
                                  lora_backend=resolve_backend(config.lora_backend, device),
                                  decode_graphs=decode_graphs)
        self._seqs: dict[str, Sequence] = {}
        self._pending_events: list[TokenEvent] = []
        self._seed_source = random.Random(config.seed)
        self._eos_ids = frozenset(self.loaded.eos_token_ids)
        self._special_ids = special_token_ids(self.tokenizer)
        self._num_tokenizer_ids = len(self.tokenizer)
        self._num_steps = 0
        self._num_prompt_tokens = 0
        self._num_generated_tokens = 0
        self.last_step_ran = False  # whether the last step ran the model
        release_freed_heap()  # what building the engine freed

    @property
    def vocab_size(self) -> int:
        """Width of the model's logits (grammars are compiled for it)."""
        return self.loaded.hf_config.vocab_size

    @property
    def eos_token_ids(self) -> list[int]:
        return sorted(self._eos_ids)

    def close(self) -> None:
        """Stop the adapter manager's worker threads (the engine is not used afterwards)."""
        self.adapters.close()

    # requests in

    def validate(self, request: GenerationRequest) -> None:
        """Raise ValueError if the request can never run (depends on no mutable state).

        Also normalises its parameters in place (see `request_bounds`), so nothing it
        brings can fail a step that other requests share.
        """
        if request.adapter is not None:
            self.adapters.get(request.adapter)  # AdapterNotFound (a ValueError) if unknown
        normalize(request, self.loaded.hf_config.vocab_size)
        num_prompt = len(request.prompt_token_ids)
        if num_prompt >= self.max_model_len:
            raise ValueError(f"the prompt has {num_prompt} tokens; the context holds "
                             f"{self.max_model_len} (prompt + new tokens)")
        total = num_prompt + request.params.max_new_tokens
        if total > self.max_model_len:
            raise ValueError(f"prompt ({num_prompt} tokens) + max_new_tokens "
                             f"({request.params.max_new_tokens}) = {total} exceeds the "
                             f"context length {self.max_model_len}")
        needed = self.block_manager.blocks_for(total)
        if needed > self.block_manager.num_blocks:
            raise ValueError(f"the request needs {needed} KV blocks; the cache has "
                             f"{self.block_manager.num_blocks}")

    def add_request(self, request: GenerationRequest) -> None:
        if request.request_id in self._seqs:
            raise ValueError(f"request id {request.request_id!r} is already running")
        self.validate(request)
        seed = None
        if not request.params.greedy:
            seed = (request.params.seed if request.params.seed is not None
                    else self._seed_source.getrandbits(63))
        detokenizer = IncrementalDetokenizer(self.tokenizer, request.prompt_token_ids,
                                             self._num_tokenizer_ids)
        seq = Sequence(request, detokenizer, seed=seed)
        if request.grammar is not None:
            import xgrammar  # already imported where the request's grammar was compiled

            seq.grammar = xgrammar.GrammarMatcher(request.grammar)
        self._seqs[request.request_id] = seq
        self.scheduler.add(seq)

    def abort(self, request_id: str) -> None:
        """Stop a request and free its blocks now; its ABORT event comes with the next step."""
        seq = self._seqs.pop(request_id, None)
        if seq is None:
            return
        self.scheduler.finish(seq)
        self._pending_events.append(self._end_event(seq, FinishReason.ABORT))

    def abort_all(self) -> list[TokenEvent]:
        """Abort every request; return the ABORT events (and any still pending) now."""
        for request_id in list(self._seqs):
            self.abort(request_id)
        events, self._pending_events = self._pending_events, []
        return events

    def fail_all(self, error: str) -> list[TokenEvent]:
        """End every request with an ERROR event (after the step itself failed)."""
        events = []
        for seq in list(self._seqs.values()):
            self.scheduler.finish(seq)
            events.append(self._end_event(seq, FinishReason.ERROR, error))
        self._seqs.clear()
        return events

    def _fail_alone(self, seq: Sequence, error: Exception) -> TokenEvent:
        """End `seq`, whose own state failed its step, without touching anyone else's."""
        # its block table may be what failed: only ids the cache owns go back to it
        seq.block_table[:] = [block for block in seq.block_table if type(block) is int
                              and 0 <= block < self.block_manager.num_blocks]
        self.scheduler.finish(seq)
        del self._seqs[seq.request_id]
        return self._end_event(seq, FinishReason.ERROR,
                               f"this request failed the engine step: "
                               f"{type(error).__name__}: {error}")

    # the loop

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished() or bool(self._pending_events)

    def step(self) -> list[TokenEvent]:
        events, self._pending_events = self._pending_events, []
        step = self.scheduler.schedule()
        scheduled = step.scheduled
        for seq, error in step.failed:
            del self._seqs[seq.request_id]
            events.append(self._end_event(seq, FinishReason.ERROR, error))
        self.last_step_ran = bool(scheduled)
        if not scheduled:
            return events
        self.kv_cache.zero_fresh_blocks(self.block_manager.num_blocks_ever_used)
        try:
            output, culprits = execute_isolated(self.runner.execute, scheduled)
        except BaseException:
            self.block_manager.discard_uncommitted()  # blocks this step was to fill
            raise
        if culprits:  # a failed part may have left blocks it published unfilled
            self.block_manager.discard_uncommitted()
        else:
            self.block_manager.commit()
        self._num_steps += 1
        for seq, error in culprits:
            events.append(self._fail_alone(seq, error))
        for item in scheduled:
            if not item.seq.is_finished:
                events.extend(self._advance(item, output))
        return events

    def _prompt_logprob(self, score: PromptTokenScore) -> TokenLogprob:
        top = [TokenLogprob(token_id, self._token_text(token_id), logprob, rank)
               for rank, (token_id, logprob) in enumerate(score.top, start=1)]
        return TokenLogprob(score.token_id, self._token_text(score.token_id), score.logprob,
                            score.rank, top)

    def _advance(self, item: ScheduledSequence, output: StepOutput) -> list[TokenEvent]:
        """Count what the step computed for one sequence; its token's event, if it sampled."""
        seq = item.seq
        if seq.num_computed_tokens < seq.num_prompt_tokens:
            self._num_prompt_tokens += min(item.num_new_tokens,
                                           seq.num_prompt_tokens - seq.num_computed_tokens)
        seq.num_computed_tokens += item.num_new_tokens
        if seq in output.prompt_logprobs:
            seq.prompt_logprobs.extend(self._prompt_logprob(score)
                                       for score in output.prompt_logprobs[seq])
        if seq in output.sampled:
            return [self._append_token(seq, output.sampled[seq])]
        return []

    def generate(self, requests: list[GenerationRequest]) -> dict[str, list[TokenEvent]]:
        """Run requests to completion (offline use): every event, by request id."""
        ids = [request.request_id for request in requests]
        if len(set(ids)) != len(ids):
            raise ValueError("request ids must be unique")
        for request in requests:  # refuse the batch before anything of it runs
            self.validate(request)
        results: dict[str, list[TokenEvent]] = {}
        for request in requests:
            self.add_request(request)
            results[request.request_id] = []
        while self.has_unfinished():
            for event in self.step():
                results.setdefault(event.request_id, []).append(event)
            if not self.last_step_ran:  # every waiting request waits for its adapter
                time.sleep(ADAPTER_WAIT_S)
        return results

    def stats(self) -> EngineStats:
        total = self.block_manager.num_blocks
        free = self.block_manager.num_free_blocks
        return EngineStats(
            num_running=len(self.scheduler.running), num_waiting=len(self.scheduler.waiting),
            num_free_blocks=free, num_total_blocks=total, kv_cache_usage=1 - free / total,
            block_size=self.config.block_size, max_num_seqs=self.config.max_num_seqs,
            max_model_len=self.max_model_len, num_steps=self._num_steps,
            num_preemptions=self.scheduler.num_preemptions,
            num_prompt_tokens=self._num_prompt_tokens,
            num_generated_tokens=self._num_generated_tokens,
            prefix_caching=self.block_manager.enable_prefix_caching,
            prefix_cache=self.scheduler.prefix_cache_stats.snapshot(),
            num_cached_blocks=self.block_manager.num_cached_blocks)

    # results out

    def _append_token(self, seq: Sequence, sampled: SampledToken) -> TokenEvent:
        token_id = sampled.token_id
        seq.token_ids.append(token_id)
        self._num_generated_tokens += 1
        params = seq.params
        finish, stop_text = None, ""
        grammar_done = False
        if seq.grammar is not None:
            if not seq.grammar.accept_token(token_id):  # the mask let it through: a bug
                logger.error("request %s: its grammar refused sampled token %d",
                             seq.request_id, token_id)
                self.scheduler.finish(seq)
                del self._seqs[seq.request_id]
                return self._end_event(seq, FinishReason.ERROR,
                                       "the output constraint refused a sampled token")
            grammar_done = seq.grammar.is_terminated()
        if token_id in self._eos_ids and (grammar_done or not params.ignore_eos):
            finish, text = FinishReason.EOS, seq.stop_matcher.flush()
        else:
            text, stopped = seq.stop_matcher.feed(seq.detokenizer.step(token_id))
            if stopped:
                finish, stop_text = FinishReason.STOP, seq.stop_matcher.cut
            elif (seq.num_generated_tokens >= params.max_new_tokens
                  or seq.num_tokens >= self.max_model_len):
                finish = FinishReason.LENGTH
                text += seq.stop_matcher.flush()
        event = TokenEvent(
            request_id=seq.request_id, token_id=token_id, text=text, logprob=sampled.logprob,
            special=token_id in self._special_ids,
            top_logprobs=[TokenLogprob(i, self._token_text(i), lp)
                          for i, lp in sampled.top[:params.logprobs]],
            num_prompt_tokens=seq.num_prompt_tokens,
            num_generated_tokens=seq.num_generated_tokens, seed=seq.seed,
            queued_s=seq.queued_s, stop_text=stop_text)
        if seq.prompt_logprobs is not None and not seq.prompt_logprobs_sent:
            event.prompt_logprobs = seq.prompt_logprobs
            seq.prompt_logprobs_sent = True
        if finish is not None:
            event.finished, event.finish_reason = True, finish
            self.scheduler.finish(seq)
            del self._seqs[seq.request_id]
        return event

    def _end_event(self, seq: Sequence, reason: FinishReason,
                   error: str | None = None) -> TokenEvent:
        return TokenEvent(request_id=seq.request_id, token_id=None, text="",
                          finished=True, finish_reason=reason, error=error,
                          num_prompt_tokens=seq.num_prompt_tokens,
                          num_generated_tokens=seq.num_generated_tokens, seed=seq.seed,
                          queued_s=seq.queued_s)

    def _token_text(self, token_id: int) -> str:
        if token_id >= self._num_tokenizer_ids:
            return ""
        return self.tokenizer.decode([token_id])
