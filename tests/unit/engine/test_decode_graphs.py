"""The static decode path (what CUDA captures and replays as graphs) equals the eager one.

On the CPU the path runs uncaptured on the same persistent buffers, bucket views, scratch
KV slot and device-held lengths as on CUDA, so everything but the capture is checked
here: greedy tokens and logprobs equal the eager engine's for the dummy tiny-llama and
the builtin SmolLM2 while the batch shrinks through sizes that are not buckets (padding
rows) and contexts grow over many blocks within one bucket (graphs are keyed by batch
size only); and padding rows change neither real rows nor any KV block but the scratch
one. With adapters see `test_decode_graphs_lora.py`.
"""

from __future__ import annotations

import pytest
import torch

from loraplex.runtime.engine.decode_graphs import (
    DecodeGraphRunner,
    batch_buckets,
    bucket_of,
)
from loraplex.runtime.engine.engine import Engine
from loraplex.runtime.engine.model_runner import step_order
from loraplex.runtime.engine.request import GenerationRequest, SamplingParams
from tests.helpers import (
    CHAT_PROMPTS,
    builtin_config,
    builtin_loaded,
    chat_prompt_ids,
    tiny_llama_config,
)

# (prompt length, new tokens): finishing one by one, the batch runs 7, 6, ... 1 rows,
# while the longest context grows from 3 blocks of 4 tokens to 11
TINY_REQUESTS = [(2, 40), (1, 30), (3, 25), (5, 20), (2, 14), (10, 9), (1, 5)]


def test_buckets():
    assert batch_buckets(256) == (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
    assert batch_buckets(100) == (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 100)
    assert batch_buckets(1) == (1,)
    assert [bucket_of(n, batch_buckets(40)) for n in (1, 3, 17, 33, 40)] == [1, 4, 24, 40, 40]


class RecordingGraphs(DecodeGraphRunner):
    """Records, for every step offered, its rows and deepest context, and if it ran."""

    def __init__(self, engine: Engine, **options: object) -> None:
        super().__init__(engine.loaded.model, engine.kv_cache, engine.config.max_num_seqs,
                         engine.max_model_len, capture=False, **options)
        self.steps: list[tuple[int, int, bool]] = []  # (rows, blocks of the longest, ran)

    def forward(self, ordered, lora_pool, lora_backend):
        hidden = super().forward(ordered, lora_pool, lora_backend)
        deepest = max(item.seq.num_computed_tokens for item in ordered)
        self.steps.append((len(ordered), deepest // self.block_size + 1, hidden is not None))
        return hidden


def with_static_decode(engine: Engine, **options: object) -> RecordingGraphs:
    graphs = RecordingGraphs(engine, **options)
    engine.runner.decode_graphs = graphs
    return graphs


def run(engine: Engine, requests: list[GenerationRequest]) -> dict[str, list]:
    results = engine.generate(requests)
    stats = engine.stats()
    assert stats.num_free_blocks == stats.num_total_blocks
    return {request_id: [(event.token_id, event.logprob) for event in events]
            for request_id, events in results.items()}


def assert_same_output(static: dict[str, list], eager: dict[str, list]) -> None:
    assert static.keys() == eager.keys()
    for request_id, events in eager.items():
        assert [token for token, _ in static[request_id]] == [token for token, _ in events]
        torch.testing.assert_close(torch.tensor([lp for _, lp in static[request_id]]),
                                   torch.tensor([lp for _, lp in events]),
                                   atol=1e-4, rtol=1e-4)


def assert_padded_and_grown(graphs: RecordingGraphs, min_widths: int) -> None:
    """Padding rows ran, and one bucket served steps of several context widths."""
    ran = [(rows, blocks) for rows, blocks, used in graphs.steps if used]
    assert ran and not graphs.steps[0][2]  # the first step prefills: eager
    assert {rows for rows, _ in ran} - set(graphs.batch_sizes)  # padding rows
    widths_per_bucket: dict[int, set[int]] = {}
    for rows, blocks in ran:
        widths_per_bucket.setdefault(bucket_of(rows, graphs.batch_sizes), set()).add(blocks)
    assert max(len(widths) for widths in widths_per_bucket.values()) >= min_widths


def tiny_requests() -> list[GenerationRequest]:
    generator = torch.Generator().manual_seed(0)
    return [GenerationRequest(f"r{index}",
                              torch.randint(0, 2000, (length,), generator=generator).tolist(),
                              SamplingParams(max_new_tokens=new_tokens, ignore_eos=True))
            for index, (length, new_tokens) in enumerate(TINY_REQUESTS)]


def tiny_engine() -> Engine:
    return Engine(tiny_llama_config(block_size=4, max_model_len=80, max_num_seqs=16))


@pytest.mark.timeout(120)
def test_tiny_llama_static_decode_equals_eager():
    eager = run(tiny_engine(), tiny_requests())
    engine = tiny_engine()
    graphs = with_static_decode(engine)

    assert_same_output(run(engine, tiny_requests()), eager)
    assert_padded_and_grown(graphs, min_widths=3)


@pytest.mark.timeout(120)
def test_steps_above_the_largest_bucket_run_eagerly():
    eager = run(tiny_engine(), tiny_requests())
    engine = tiny_engine()
    graphs = with_static_decode(engine, max_batch=4)

    assert graphs.batch_sizes == (1, 2, 4)
    assert_same_output(run(engine, tiny_requests()), eager)
    ran = {rows: used for rows, _, used in graphs.steps[1:]}
    assert ran[7] is False and ran[5] is False and ran[4] is True and ran[1] is True


@pytest.mark.model
@pytest.mark.timeout(600)
def test_builtin_static_decode_equals_eager():
    prompts = [chat_prompt_ids(messages) for messages in CHAT_PROMPTS[:5]]

    def requests() -> list[GenerationRequest]:
        return [GenerationRequest(f"chat-{index}", prompt, SamplingParams(
            max_new_tokens=6 + 4 * index, ignore_eos=True))
            for index, prompt in enumerate(prompts)]

    def engine() -> Engine:
        return Engine(builtin_config(block_size=4, max_num_seqs=8), builtin_loaded())

    eager = run(engine(), requests())
    static_engine = engine()
    graphs = with_static_decode(static_engine)

    assert_same_output(run(static_engine, requests()), eager)
    assert_padded_and_grown(graphs, min_widths=2)


def kv_snapshot(engine: Engine) -> list[torch.Tensor]:
    return [cache.clone() for layer in engine.kv_cache.layers for cache in layer]


def restore(engine: Engine, snapshot: list[torch.Tensor]) -> None:
    caches = [cache for layer in engine.kv_cache.layers for cache in layer]
    for cache, saved in zip(caches, snapshot, strict=True):
        cache.copy_(saved)


@pytest.mark.timeout(120)
def test_padding_rows_change_no_real_row_and_no_sequence_block():
    engine = tiny_engine()
    graphs = with_static_decode(engine)
    generator = torch.Generator().manual_seed(3)
    for index, length in enumerate((5, 9, 2)):
        prompt = torch.randint(0, 2000, (length,), generator=generator).tolist()
        engine.add_request(GenerationRequest(f"r{index}", prompt,
                                             SamplingParams(max_new_tokens=4, ignore_eos=True)))
    engine.step()  # the prefill
    scheduled = engine.scheduler.schedule().scheduled
    engine.kv_cache.zero_fresh_blocks(engine.block_manager.num_blocks_ever_used)
    ordered = step_order(scheduled)
    assert len(ordered) == 3 and all(item.num_new_tokens == 1 for item in ordered)
    scratch = engine.kv_cache.scratch_block
    for key_cache, value_cache in engine.kv_cache.layers:  # finite garbage: must not matter
        key_cache[scratch].normal_()
        value_cache[scratch].normal_()
    before = kv_snapshot(engine)

    with torch.inference_mode():
        static = graphs.forward(ordered, None, "torch").clone()  # 3 rows of a 4-row bucket
        after_static = kv_snapshot(engine)
        restore(engine, before)
        eager = engine.loaded.model(engine.runner.prepare(ordered), engine.kv_cache.layers)
        after_eager = kv_snapshot(engine)

    torch.testing.assert_close(static, eager, atol=1e-5, rtol=1e-5)
    block_size = engine.config.block_size
    written = {item.seq.block_table[p // block_size] * block_size + p % block_size
               for item in ordered for p in [item.seq.num_computed_tokens]}
    for old, new_static, new_eager in zip(before, after_static, after_eager, strict=True):
        real = slice(0, scratch)  # every block a sequence can own (unused ones: raw memory)
        torch.testing.assert_close(new_static[real], new_eager[real], atol=1e-6, rtol=1e-6,
                                   equal_nan=True)
        same = (new_static[real] == old[real]) | (new_static[real].isnan() & old[real].isnan())
        changed = ~same.flatten(0, 1).flatten(1).all(dim=1)  # per KV slot
        assert set(changed.nonzero().flatten().tolist()) == written
        assert not torch.equal(new_static[scratch], old[scratch])  # padding wrote there
