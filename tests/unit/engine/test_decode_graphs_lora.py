"""With adapters, the static decode path (Triton kernels on fixed tile buffers) equals eager.

Random PEFT adapters of different ranks and targets (so some projection groups get only
unused tiles for some rows) are mixed with base-model rows in one continuously-batched
run of the dummy tiny-llama. The static path runs its LoRA through the Triton kernels,
here under the interpreter in a spawned worker; the reference is the eager engine on the
torch path. Tokens must be equal and logprobs close.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest

from loraplex.runtime.adapters.synthetic import write_random_adapter
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.models.shapes import shape_config
from tests.kernels import interpreter_worker
from tests.unit.engine import adapter_engine_worker
from tests.unit.engine.test_decode_graphs import assert_same_output

ADAPTERS = {  # name: (rank, target modules)
    "all-r8": (8, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                   "down_proj"]),
    "qv-r4": (4, ["q_proj", "v_proj"]),
    "mlp-r16": (16, ["gate_proj", "up_proj", "down_proj"]),
}


@pytest.mark.timeout(600)
def test_static_decode_with_adapters_equals_eager(tmp_path):
    target = LoraTargetShapes.from_hf_config(shape_config("tiny-llama"))
    folders = {name: str(write_random_adapter(tmp_path / name, target, rank, modules,
                                              seed=index + 1, strength=2.0))
               for index, (name, (rank, modules)) in enumerate(ADAPTERS.items())}
    executor = ProcessPoolExecutor(max_workers=1,
                                   mp_context=multiprocessing.get_context("spawn"),
                                   initializer=interpreter_worker.init)
    try:
        static = executor.submit(adapter_engine_worker.generate, folders, "triton", True)
        eager, _ = adapter_engine_worker.generate(folders, "torch", static=False)
        base, _ = adapter_engine_worker.generate({}, "torch", static=False)
        outputs, ran = static.result(timeout=540)
    finally:
        executor.shutdown(cancel_futures=True)

    assert ran and all(ran)  # every decode step ran the static path, with LoRA
    assert_same_output(outputs, eager)
    with_adapter = [f"r{index}" for index, (adapter, *_) in
                    enumerate(adapter_engine_worker.REQUESTS) if adapter]
    assert all(eager[request_id] != base[request_id] for request_id in with_adapter)
