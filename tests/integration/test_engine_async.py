"""AsyncEngine: concurrent streams, abort on close/cancel, refusals, stop, a free event loop.

Real engines throughout: the builtin model (checked against transformers) for what the
streams carry, `tiny-llama` (random weights, starts in a moment) for the mechanics.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from loraplex.runtime.engine.async_engine import AsyncEngine
from loraplex.runtime.engine.engine import Engine
from loraplex.runtime.engine.request import FinishReason, GenerationRequest, SamplingParams
from tests.helpers import (
    CHAT_PROMPTS,
    builtin_config,
    builtin_loaded,
    chat_prompt_ids,
    hf_greedy,
    tiny_llama_config,
)

pytestmark = pytest.mark.timeout(300)

ENDLESS = SamplingParams(max_new_tokens=1000, ignore_eos=True)


async def collect(engine: AsyncEngine, request: GenerationRequest) -> list:
    return [event async for event in engine.generate(request)]


async def wait_until_idle(engine: AsyncEngine, timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        stats = engine.stats()
        if stats.num_running == stats.num_waiting == 0 and (
                stats.num_free_blocks == stats.num_total_blocks):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the engine did not become idle: {engine.stats()}")


@pytest.fixture
async def tiny_engine():
    engine = AsyncEngine.from_config(tiny_llama_config())
    await engine.start()
    yield engine
    await engine.stop()


@pytest.mark.model
async def test_concurrent_streams_equal_transformers():
    engine = AsyncEngine(Engine(builtin_config(), builtin_loaded()))
    await engine.start()
    try:
        prompts = [chat_prompt_ids(messages) for messages in CHAT_PROMPTS[:4]]
        requests = [GenerationRequest(f"r{i}", p, SamplingParams(max_new_tokens=16))
                    for i, p in enumerate(prompts)]
        results = await asyncio.gather(*(collect(engine, r) for r in requests))
        for prompt, events in zip(prompts, results, strict=True):
            assert tuple(e.token_id for e in events) == hf_greedy(tuple(prompt), 16)
            assert events[-1].finished and not any(e.finished for e in events[:-1])
        assert engine.model_id == "builtin:smollm2-135m-instruct"
        assert engine.max_model_len == 8192 and engine.tokenizer.eos_token_id == 2
    finally:
        await engine.stop()


async def test_closing_the_stream_aborts_the_request_and_frees_its_blocks(tiny_engine):
    stream = tiny_engine.generate(GenerationRequest("closed", [5, 6, 7], ENDLESS))
    async for event in stream:
        if event.num_generated_tokens == 3:
            break
    assert tiny_engine.stats().num_running == 1
    await stream.aclose()
    await wait_until_idle(tiny_engine)


async def test_cancelling_the_consumer_aborts_the_request(tiny_engine):
    first_token = asyncio.Event()

    async def consume() -> None:
        async for _ in tiny_engine.generate(GenerationRequest("cancelled", [5, 6], ENDLESS)):
            first_token.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_token.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until_idle(tiny_engine)


async def test_requests_that_cannot_run_raise_and_others_continue(tiny_engine):
    survivor = asyncio.create_task(collect(tiny_engine, GenerationRequest(
        "ok", [5, 6, 7], SamplingParams(max_new_tokens=12, ignore_eos=True))))
    with pytest.raises(ValueError, match="context"):
        await collect(tiny_engine, GenerationRequest("too-long", [5] * 5000))
    with pytest.raises(ValueError, match="adapter"):
        await collect(tiny_engine, GenerationRequest("lora", [5], adapter="some-adapter"))
    events = await survivor
    assert len(events) == 12 and events[-1].finish_reason is FinishReason.LENGTH
    with pytest.raises(ValueError, match="context"):
        tiny_engine.validate(GenerationRequest("too-long", [5] * 5000))


async def test_duplicate_request_ids_are_refused(tiny_engine):
    stream = tiny_engine.generate(GenerationRequest("same", [5, 6], ENDLESS))
    await anext(stream)
    with pytest.raises(ValueError, match="already running"):
        await collect(tiny_engine, GenerationRequest("same", [5, 6]))
    await stream.aclose()
    await wait_until_idle(tiny_engine)


async def test_steps_run_off_the_event_loop_and_are_timed(tiny_engine):
    loop_thread = threading.get_ident()
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    beat = asyncio.create_task(heartbeat())
    events = await collect(tiny_engine, GenerationRequest(
        "timed", [5, 6, 7], SamplingParams(max_new_tokens=20, ignore_eos=True)))
    beat.cancel()
    assert len(events) == 20
    assert ticks > len(events)  # the loop kept running between tokens
    assert len(tiny_engine.step_durations) == tiny_engine.stats().num_steps >= 20
    assert all(d > 0 for d in tiny_engine.step_durations)
    assert tiny_engine._thread.ident != loop_thread


async def test_stop_ends_open_streams_with_abort():
    engine = AsyncEngine.from_config(tiny_llama_config())
    with pytest.raises(RuntimeError, match="not started"):
        await collect(engine, GenerationRequest("early", [5]))
    await engine.start()
    stream = engine.generate(GenerationRequest("open", [5, 6], ENDLESS))
    await anext(stream)
    await engine.stop()
    rest = [event async for event in stream]
    assert rest[-1].finished and rest[-1].finish_reason is FinishReason.ABORT
    assert engine.stats().num_free_blocks == engine.stats().num_total_blocks
    assert not engine.is_running


async def test_a_device_preload_reaches_the_device_with_no_request(tmp_path):
    """Nothing but the idle loop moves a `preload: device` adapter on (no step runs)."""
    from loraplex.contracts.adapters import AdapterState
    from loraplex.runtime.adapters.synthetic import write_random_adapter
    from loraplex.runtime.adapters.target import LoraTargetShapes

    engine = AsyncEngine.from_config(tiny_llama_config(device_slots=2, max_lora_rank=8))
    await engine.start()
    try:
        target = LoraTargetShapes.from_hf_config(engine.engine.loaded.hf_config)
        folder = write_random_adapter(tmp_path / "hot", target, rank=4)
        engine.adapters.register("hot", str(folder), preload="device")
        deadline = asyncio.get_running_loop().time() + 30
        while engine.adapters.get("hot").state is not AdapterState.DEVICE:
            assert asyncio.get_running_loop().time() < deadline, engine.adapters.get("hot")
            await asyncio.sleep(0.05)
        assert engine.stats().num_steps == 0
    finally:
        await engine.stop()
