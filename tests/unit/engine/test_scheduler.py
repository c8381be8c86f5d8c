"""Scheduling: token budget and chunked prefill, sequence cap, preemption of the newest."""

from __future__ import annotations

from loraplex.runtime.engine.block_manager import BlockManager
from loraplex.runtime.engine.detokenizer import IncrementalDetokenizer
from loraplex.runtime.engine.request import GenerationRequest, SamplingParams
from loraplex.runtime.engine.scheduler import ScheduledSequence, Scheduler
from loraplex.runtime.engine.sequence import Sequence, SequenceStatus
from tests.helpers import builtin_tokenizer


def make_seq(name: str, prompt_len: int, max_new_tokens: int = 8) -> Sequence:
    tokenizer = builtin_tokenizer()
    request = GenerationRequest(name, list(range(10, 10 + prompt_len)),
                                SamplingParams(max_new_tokens=max_new_tokens))
    return Sequence(request, IncrementalDetokenizer(tokenizer, [], len(tokenizer)))


def advance(scheduled: list[ScheduledSequence]) -> None:
    """What the engine does after a step: count computed tokens, append sampled ones."""
    for item in scheduled:
        samples = item.samples
        item.seq.num_computed_tokens += item.num_new_tokens
        if samples:
            item.seq.token_ids.append(7)


def plan(scheduled: list[ScheduledSequence]) -> list[tuple[str, int]]:
    return [(item.seq.request_id, item.num_new_tokens) for item in scheduled]


def test_long_prompts_are_chunked_to_the_token_budget_and_mixed_with_decodes():
    scheduler = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=8)
    scheduler.add(make_seq("a", 3))
    scheduler.add(make_seq("b", 20))
    steps = []
    for _ in range(4):
        scheduled = scheduler.schedule().scheduled
        steps.append(plan(scheduled))
        assert sum(n for _, n in steps[-1]) <= 8
        advance(scheduled)
    assert steps == [
        [("a", 3), ("b", 5)],  # b starts with the budget a left
        [("a", 1), ("b", 7)],  # a decodes, b's prefill continues
        [("a", 1), ("b", 7)],
        [("a", 1), ("b", 1)],  # b finished its prompt last step: now both decode
    ]


def test_only_the_chunk_that_completes_the_prompt_samples():
    scheduler = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=6)
    seq = make_seq("a", 10)
    scheduler.add(seq)
    first = scheduler.schedule().scheduled
    assert not first[0].samples
    advance(first)
    second = scheduler.schedule().scheduled
    assert second[0].num_new_tokens == 4 and second[0].samples


def test_max_num_seqs_caps_the_running_set():
    scheduler = Scheduler(BlockManager(64, 4), max_num_seqs=2, max_num_batched_tokens=100)
    for name in "abc":
        scheduler.add(make_seq(name, 2))
    assert [name for name, _ in plan(scheduler.schedule().scheduled)] == ["a", "b"]
    assert len(scheduler.waiting) == 1


def test_running_out_of_blocks_preempts_the_newest_sequence():
    manager = BlockManager(num_blocks=4, block_size=2)
    scheduler = Scheduler(manager, max_num_seqs=8, max_num_batched_tokens=100)
    old, new = make_seq("old", 4), make_seq("new", 4)
    scheduler.add(old)
    scheduler.add(new)
    advance(scheduler.schedule().scheduled)  # both prefilled: 2 blocks each, pool empty
    assert manager.num_free_blocks == 0
    scheduled = scheduler.schedule().scheduled  # old needs a third block for its 5th token
    assert plan(scheduled) == [("old", 1)]
    assert new.status is SequenceStatus.WAITING and new.num_computed_tokens == 0
    assert list(scheduler.waiting) == [new] and scheduler.num_preemptions == 1
    assert new.block_table == []
    advance(scheduled)
    scheduler.finish(old)
    assert manager.num_free_blocks == 4
    recompute = scheduler.schedule().scheduled
    assert plan(recompute) == [("new", 5)]  # prompt + its generated token, again
    assert recompute[0].samples


def test_a_sequence_preempts_itself_when_it_is_the_newest():
    manager = BlockManager(num_blocks=3, block_size=2)
    scheduler = Scheduler(manager, max_num_seqs=8, max_num_batched_tokens=100)
    first, second = make_seq("first", 3), make_seq("second", 2)
    scheduler.add(first)
    scheduler.add(second)
    advance(scheduler.schedule().scheduled)
    scheduled = scheduler.schedule().scheduled
    assert plan(scheduled) == [("first", 1)]
    assert second.status is SequenceStatus.WAITING


def test_finish_frees_blocks_of_waiting_and_running_sequences():
    manager = BlockManager(num_blocks=8, block_size=4)
    scheduler = Scheduler(manager, max_num_seqs=1, max_num_batched_tokens=100)
    running, waiting = make_seq("r", 5), make_seq("w", 5)
    scheduler.add(running)
    scheduler.add(waiting)
    scheduler.schedule()
    scheduler.finish(waiting)
    scheduler.finish(running)
    assert manager.num_free_blocks == 8 and not scheduler.has_unfinished()
    assert running.status is SequenceStatus.FINISHED
