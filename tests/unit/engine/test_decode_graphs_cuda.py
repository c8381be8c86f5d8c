"""Captured decode graphs on a GPU: replays equal eager steps, and see adapters loaded later.

Skipped without CUDA (`bench/gpu_check.sh` runs them on a GPU machine). fp32, so that
the eager engine (`enforce_eager`) is a token-for-token reference.
"""

from __future__ import annotations

import pytest

from loraplex.runtime.adapters.synthetic import write_random_adapter
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.engine.engine import Engine
from loraplex.runtime.engine.request import GenerationRequest, SamplingParams
from loraplex.runtime.models.shapes import shape_config
from tests.helpers import tiny_llama_config
from tests.unit.engine.test_decode_graphs import assert_same_output, run, tiny_requests

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(300)]


def cuda_engine(**overrides: object) -> Engine:
    return Engine(tiny_llama_config(device="cuda", dtype="float32", block_size=4,
                                    max_model_len=80, max_num_seqs=16, **overrides))


def test_replayed_graphs_equal_eager_steps():
    eager_engine = cuda_engine(enforce_eager=True)
    assert eager_engine.runner.decode_graphs is None
    eager = run(eager_engine, tiny_requests())
    engine = cuda_engine()
    graphs = engine.runner.decode_graphs
    assert graphs is not None and graphs.num_graphs == len(graphs.batch_sizes)  # at start-up

    assert_same_output(run(engine, tiny_requests()), eager)
    captured = graphs.num_graphs
    assert_same_output(run(engine, tiny_requests()), eager)  # replays only, same output
    assert graphs.num_graphs == captured


def test_replay_sees_an_adapter_loaded_into_the_slot_later(tmp_path):
    target = LoraTargetShapes.from_hf_config(shape_config("tiny-llama"))
    folders = {name: str(write_random_adapter(tmp_path / name, target, rank, seed=seed,
                                              strength=2.0))
               for name, rank, seed in (("first", 8, 1), ("second", 16, 2))}

    def request(adapter: str) -> list[GenerationRequest]:
        return [GenerationRequest(adapter, list(range(5, 12)), SamplingParams(
            max_new_tokens=10, ignore_eos=True), adapter=adapter)]

    def outputs(engine: Engine) -> list[dict[str, list]]:
        for name, folder in folders.items():
            engine.adapters.register(name, folder)
        try:
            return [run(engine, request("first")), run(engine, request("second"))]
        finally:
            engine.close()

    eager = outputs(cuda_engine(enforce_eager=True, device_slots=1, max_lora_rank=16))
    engine = cuda_engine(device_slots=1, max_lora_rank=16)  # "second" replaces "first"
    graphs = engine.runner.decode_graphs
    captured: list[int] = []
    engine.adapters.register("first", folders["first"])
    first = run(engine, request("first"))
    captured.append(graphs.num_graphs)
    engine.adapters.register("second", folders["second"])
    second = run(engine, request("second"))  # same buckets: the graphs are replayed
    captured.append(graphs.num_graphs)
    engine.close()

    assert captured[0] > 0 and captured[1] == captured[0]
    assert eager[0]["first"] != eager[1]["second"]
    assert_same_output(first, eager[0])
    assert_same_output(second, eager[1])
