"""Prefix caching in the block manager and the scheduler (no model).

Block names chain over the adapter identity and the tokens; shared blocks are counted by
reference; freed cached blocks are evicted least recently used first, tail blocks of a
prompt before its head; a failed step forgets what it published; the scheduler starts a
prefill after the cached blocks, never caches a whole prompt, and recomputes for prompt
logprobs. Every test ends with all blocks free.
"""

from __future__ import annotations

import pytest

from loraplex.runtime.engine.block_manager import BlockManager
from loraplex.runtime.engine.prefix_cache import (
    BASE_MODEL_IDENTITY,
    adapter_identity,
    extend_block_hashes,
)
from loraplex.runtime.engine.request import GenerationRequest, SamplingParams
from loraplex.runtime.engine.scheduler import ScheduledSequence, Scheduler
from loraplex.runtime.engine.sequence import Sequence, SequenceStatus


def hashes_of(tokens: list[int], block_size: int, identity: bytes = BASE_MODEL_IDENTITY
              ) -> list[bytes]:
    hashes: list[bytes] = []
    extend_block_hashes(hashes, identity, tokens, block_size, len(tokens) // block_size)
    return hashes


def assert_all_free(manager: BlockManager) -> None:
    assert manager.num_free_blocks == manager.num_blocks
    assert not any(manager._refs)


def test_block_names_depend_on_adapter_tokens_and_everything_before():
    tokens = list(range(12))
    base = hashes_of(tokens, 4)
    assert len(base) == 3 and len(set(base)) == 3
    assert hashes_of(tokens, 4) == base  # deterministic
    lora_a = hashes_of(tokens, 4, adapter_identity("a", "sha256:1"))
    assert not set(lora_a) & set(base)
    assert not set(lora_a) & set(hashes_of(tokens, 4, adapter_identity("a", "sha256:2")))
    assert not set(lora_a) & set(hashes_of(tokens, 4, adapter_identity("b", "sha256:1")))
    changed_first = hashes_of([99, *tokens[1:]], 4)
    assert not set(changed_first) & set(base)  # a later block's name covers its parents
    assert hashes_of([*tokens[:8], 99, 98, 97, 96], 4)[:2] == base[:2]


def test_shared_blocks_are_counted_by_reference_and_stay_cached_when_freed():
    manager = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=True)
    hashes = hashes_of(list(range(12)), 4)
    first: list[int] = []
    manager.grow(first, 12)
    manager.publish(first, hashes, 0, 3)
    manager.commit()
    second: list[int] = []
    shared = manager.match_prefix(hashes[:2])
    assert shared == first[:2]
    assert manager.can_grow(second, 10, shared)
    manager.share(second, shared)
    manager.grow(second, 10)
    assert second[:2] == first[:2] and second[2] not in first
    assert manager.num_free_blocks == 4
    manager.release(first)
    assert manager.num_free_blocks == 5  # block 3 of first is free (and still cached)
    assert manager.match_prefix(hashes) == first_blocks(hashes, manager)
    manager.release(second)
    assert_all_free(manager)
    assert manager.num_cached_blocks == 3


def first_blocks(hashes: list[bytes], manager: BlockManager) -> list[int]:
    return [manager._block_of_hash[h] for h in hashes]


def test_reviving_a_free_cached_block_takes_it_out_of_the_free_count():
    manager = BlockManager(num_blocks=3, block_size=2, enable_prefix_caching=True)
    hashes = hashes_of([1, 2, 3, 4], 2)
    table: list[int] = []
    manager.grow(table, 4)
    manager.publish(table, hashes, 0, 2)
    manager.commit()
    manager.release(table)
    shared = manager.match_prefix(hashes)
    assert len(shared) == 2 and manager.num_free_blocks == 3
    assert manager.can_grow([], 6, shared)  # 2 revived + 1 new = 3 free blocks
    assert not manager.can_grow([], 8, shared)
    manager.share(table, shared)
    assert manager.num_free_blocks == 1
    manager.release(table)
    assert_all_free(manager)


def test_eviction_takes_uncached_then_never_used_then_least_recently_used_blocks():
    manager = BlockManager(num_blocks=6, block_size=2, enable_prefix_caching=True)
    old_hashes, new_hashes = hashes_of([1, 2, 3, 4], 2), hashes_of([5, 6, 7, 8], 2)
    old: list[int] = []
    new: list[int] = []
    manager.grow(old, 4)
    manager.publish(old, old_hashes, 0, 2)
    manager.grow(new, 4)
    manager.publish(new, new_hashes, 0, 2)
    manager.commit()
    manager.release(old)
    manager.release(new)  # LRU: old's tail, old's head, new's tail, new's head
    taken: list[int] = []
    manager.grow(taken, 4)  # the two never-used blocks first
    assert manager.num_evictions == 0 and manager.num_cached_blocks == 4
    manager.grow(taken, 6)
    assert manager.num_evictions == 1
    assert len(manager.match_prefix(old_hashes)) == 1  # the tail went first
    assert len(manager.match_prefix(new_hashes)) == 2
    manager.grow(taken, 10)
    assert manager.num_evictions == 3 and manager.match_prefix(old_hashes) == []
    assert len(manager.match_prefix(new_hashes)) == 1
    manager.release(taken)
    assert_all_free(manager)


def test_a_failed_step_forgets_the_blocks_it_published():
    manager = BlockManager(num_blocks=4, block_size=2, enable_prefix_caching=True)
    hashes = hashes_of([1, 2, 3, 4], 2)
    table: list[int] = []
    manager.grow(table, 2)
    manager.publish(table, hashes, 0, 1)
    manager.commit()  # block 0 was computed
    manager.grow(table, 4)
    manager.publish(table, hashes, 1, 2)
    manager.discard_uncommitted()  # the step that was to fill block 1 failed
    assert manager.match_prefix(hashes) == table[:1]
    manager.release(table)
    assert_all_free(manager)
    assert manager.num_cached_blocks == 1


def test_without_prefix_caching_nothing_is_published():
    manager = BlockManager(num_blocks=4, block_size=2)
    table: list[int] = []
    manager.grow(table, 4)
    manager.publish(table, hashes_of([1, 2, 3, 4], 2), 0, 2)
    assert manager.num_cached_blocks == 0
    manager.release(table)
    assert_all_free(manager)


def make_seq(name: str, prompt: list[int], prompt_logprobs: bool = False) -> Sequence:
    params = SamplingParams(max_new_tokens=4, prompt_logprobs=prompt_logprobs)
    return Sequence(GenerationRequest(name, prompt, params), detokenizer=None)


def run_step(scheduler: Scheduler) -> list[ScheduledSequence]:
    """Schedule, then do what the engine does after the model ran."""
    scheduled = scheduler.schedule().scheduled
    scheduler.block_manager.commit()
    for item in scheduled:
        samples = item.samples
        item.seq.num_computed_tokens += item.num_new_tokens
        if samples:
            item.seq.token_ids.append(7)
    return scheduled


@pytest.fixture
def scheduler() -> Scheduler:
    return Scheduler(BlockManager(32, 4, enable_prefix_caching=True), max_num_seqs=8,
                     max_num_batched_tokens=64)


def test_a_prompt_starts_after_its_cached_blocks_and_always_computes_its_last_token(
        scheduler):
    prompt = list(range(100, 116))  # exactly 4 blocks
    first = make_seq("first", prompt)
    scheduler.add(first)
    assert [item.num_new_tokens for item in run_step(scheduler)] == [16]
    again, longer = make_seq("again", prompt), make_seq("longer", [*prompt, 1, 2, 3])
    scheduler.add(again)
    scheduler.add(longer)
    plan = {item.seq.request_id: item.num_new_tokens for item in run_step(scheduler)}
    assert plan == {"first": 1, "again": 4, "longer": 3}  # 3 and 4 cached blocks
    assert again.block_table[:3] == first.block_table[:3]
    assert longer.block_table[:4] == first.block_table[:4]
    stats = scheduler.prefix_cache_stats
    assert stats.queries[None] == 16 + 16 + 19 and stats.hits[None] == 12 + 16
    for seq in (first, again, longer):
        scheduler.finish(seq)
    assert_all_free(scheduler.block_manager)


def plan_of(scheduled: list[ScheduledSequence]) -> dict[str, int]:
    return {item.seq.request_id: item.num_new_tokens for item in scheduled}


def test_requests_sharing_a_prefix_submitted_together_compute_it_once(scheduler):
    prompt = list(range(200, 221))  # 5 full blocks and one token
    siblings = [make_seq(f"n{i}", prompt) for i in range(3)]
    for seq in siblings:
        scheduler.add(seq)
    assert plan_of(run_step(scheduler)) == {"n0": 21}  # the others wait for its blocks
    assert plan_of(run_step(scheduler)) == {"n0": 1, "n1": 1, "n2": 1}
    assert siblings[1].block_table[:5] == siblings[2].block_table[:5] == \
        siblings[0].block_table[:5]
    stats = scheduler.prefix_cache_stats
    assert stats.queries[None] == 3 * 21 and stats.hits[None] == 2 * 20
    for seq in siblings:
        scheduler.finish(seq)
    assert_all_free(scheduler.block_manager)


def test_no_wait_for_blocks_another_adapter_computes(scheduler):
    """Fails if the wait ignores the adapter: "b" would wait for "a"'s blocks."""
    prompt = list(range(400, 421))
    first_a, only_b, second_a = (make_seq(name, prompt) for name in ("a1", "b", "a2"))
    first_a.cache_identity = second_a.cache_identity = adapter_identity("a", "sha256:1")
    only_b.cache_identity = adapter_identity("b", "sha256:1")
    for seq in (first_a, only_b, second_a):
        scheduler.add(seq)
    assert plan_of(run_step(scheduler)) == {"a1": 21, "b": 21}
    assert plan_of(run_step(scheduler)) == {"a1": 1, "b": 1, "a2": 1}
    assert second_a.block_table[:5] == first_a.block_table[:5]
    assert not set(only_b.block_table) & set(first_a.block_table)
    for seq in (first_a, only_b, second_a):
        scheduler.finish(seq)
    assert_all_free(scheduler.block_manager)


def test_a_waiting_request_follows_a_chunked_prefill_of_its_prefix():
    scheduler = Scheduler(BlockManager(32, 4, enable_prefix_caching=True), max_num_seqs=8,
                          max_num_batched_tokens=16)
    prompt = list(range(500, 540))  # 10 full blocks
    leader, follower = make_seq("leader", prompt), make_seq("follower", prompt)
    scheduler.add(leader)
    scheduler.add(follower)
    plans = [plan_of(run_step(scheduler)) for _ in range(4)]
    # the leader's chunks take the whole budget; its last one leaves room, but fills the
    # blocks the follower needs: it waits one step and shares 9 blocks
    assert plans == [{"leader": 16}, {"leader": 16}, {"leader": 8},
                     {"leader": 1, "follower": 4}]
    assert follower.num_prefix_waits == 1
    assert follower.block_table[:9] == leader.block_table[:9]
    for seq in (leader, follower):
        scheduler.finish(seq)
    assert_all_free(scheduler.block_manager)


def test_after_a_failed_step_the_next_request_computes_and_the_rest_wait_for_it(
        scheduler):
    prompt = list(range(600, 621))
    leader, second, third = (make_seq(name, prompt) for name in ("leader", "second", "third"))
    for seq in (leader, second, third):
        scheduler.add(seq)
    assert plan_of(scheduler.schedule().scheduled) == {"leader": 21}
    scheduler.block_manager.discard_uncommitted()  # the step failed, the leader with it
    scheduler.finish(leader)
    assert plan_of(run_step(scheduler)) == {"second": 21}
    assert plan_of(run_step(scheduler)) == {"second": 1, "third": 1}
    for seq in (second, third):
        scheduler.finish(seq)
    assert_all_free(scheduler.block_manager)


def test_a_request_waits_at_most_once_per_full_block_of_its_prompt(scheduler):
    prompt = list(range(700, 709))  # 2 full blocks before its last token
    follower = make_seq("follower", prompt)
    scheduler.add(follower)
    for attempt in range(2):  # a request ahead of it computes the prefix and fails
        leader = make_seq(f"leader{attempt}", prompt)
        scheduler.waiting.appendleft(leader)
        assert plan_of(scheduler.schedule().scheduled) == {leader.request_id: 9}
        scheduler.block_manager.discard_uncommitted()
        scheduler.finish(leader)
    leader = make_seq("leader2", prompt)
    scheduler.waiting.appendleft(leader)
    assert plan_of(run_step(scheduler)) == {"leader2": 9, "follower": 9}
    assert follower.num_prefix_waits == 2
    for seq in (leader, follower):
        scheduler.finish(seq)
    assert_all_free(scheduler.block_manager)


def test_an_uncommitted_block_is_not_matched():
    manager = BlockManager(num_blocks=4, block_size=2, enable_prefix_caching=True)
    hashes = hashes_of([1, 2, 3, 4], 2)
    table: list[int] = []
    manager.grow(table, 4)
    manager.publish(table, hashes, 0, 2)
    assert manager.match_prefix(hashes) == []  # its step has not run yet
    manager.commit()
    assert manager.match_prefix(hashes) == table
    manager.release(table)
    assert_all_free(manager)


def test_a_request_for_prompt_logprobs_computes_its_whole_prompt(scheduler):
    prompt = list(range(300, 313))
    scheduler.add(make_seq("plain", prompt))
    run_step(scheduler)
    logprobs = make_seq("logprobs", prompt, prompt_logprobs=True)
    scheduler.add(logprobs)
    plan = {item.seq.request_id: item.num_new_tokens for item in run_step(scheduler)}
    assert plan["logprobs"] == 13
    assert scheduler.prefix_cache_stats.queries[None] == 13  # it did not look


def test_a_preempted_sequence_recomputes_from_its_cached_blocks():
    manager = BlockManager(num_blocks=6, block_size=2, enable_prefix_caching=True)
    scheduler = Scheduler(manager, max_num_seqs=8, max_num_batched_tokens=100)
    old, new = make_seq("old", [1, 2, 3, 4, 5, 6]), make_seq("new", [9, 8, 7, 6, 5])
    scheduler.add(old)
    scheduler.add(new)
    run_step(scheduler)  # old: 3 blocks, new: 3 blocks, pool empty
    while new.status is not SequenceStatus.WAITING:
        run_step(scheduler)  # old grows into a 4th block: new is preempted
    assert new.num_preemptions == 1 and new.block_table == []
    scheduler.finish(old)
    plan = {item.seq.request_id: item.num_new_tokens for item in run_step(scheduler)}
    assert plan == {"new": 2}  # its two full blocks were still cached: only the tail
    assert scheduler.prefix_cache_stats.queries[None] == 6 + 5  # a recompute is no query
    scheduler.finish(new)
    assert_all_free(manager)
