"""Runs a tiny-llama engine with adapters, for the interpreter worker process and the test.

The static decode path's LoRA runs the Triton kernels only, so on the CPU it runs under
the Triton interpreter, in a spawned process (see `tests.kernels.interpreter_worker` for
why the interpreter never runs in the test process). The eager reference runs the same
function in the test process, on the torch path.
"""

from __future__ import annotations

from loraplex.runtime.engine.decode_graphs import DecodeGraphRunner
from loraplex.runtime.engine.engine import Engine
from loraplex.runtime.engine.request import GenerationRequest, SamplingParams
from tests.helpers import tiny_llama_config

# (adapter or None, prompt length, new tokens): the batch shrinks from 7 rows to 1
REQUESTS = [("all-r8", 3, 14), (None, 6, 12), ("qv-r4", 2, 10), ("mlp-r16", 9, 8),
            ("all-r8", 1, 6), (None, 4, 5), ("mlp-r16", 5, 3)]


def generate(adapter_folders: dict[str, str], lora_backend: str, static: bool
             ) -> tuple[dict[str, list[tuple[int, float]]], list[bool]]:
    """Every request's (token, logprob)s, and for each decode step if the static path ran.

    Requests name adapters missing from `adapter_folders` run on the base model.
    """
    engine = Engine(tiny_llama_config(block_size=4, max_model_len=64, max_num_seqs=8,
                                      device_slots=4, max_lora_rank=16,
                                      lora_backend=lora_backend))
    ran: list[bool] = []
    if static:
        graphs = DecodeGraphRunner(engine.loaded.model, engine.kv_cache, 8,
                                   engine.max_model_len, capture=False)
        engine.runner.decode_graphs = graphs
        forward = graphs.forward

        def recording_forward(ordered, lora_pool, backend):
            hidden = forward(ordered, lora_pool, backend)
            if all(item.num_new_tokens == 1 for item in ordered):
                ran.append(hidden is not None)
            return hidden

        graphs.forward = recording_forward
    try:
        for name, folder in adapter_folders.items():
            engine.adapters.register(name, folder)
        results = engine.generate([
            GenerationRequest(f"r{index}", [(7 * index + 3 * i) % 500 for i in range(length)],
                              SamplingParams(max_new_tokens=new_tokens, ignore_eos=True),
                              adapter=adapter if adapter in adapter_folders else None)
            for index, (adapter, length, new_tokens) in enumerate(REQUESTS)])
    finally:
        engine.close()
    return ({request_id: [(event.token_id, event.logprob) for event in events]
             for request_id, events in results.items()}, ran)
