"""What a quantized checkpoint's test compares: our engine's greedy tokens against
transformers' own model holding the checkpoint's weights dequantized.

The engine runs in fp32 on the CPU from the checkpoint folder; the oracle is transformers'
`AutoModelForCausalLM` built from the same config.json without its quantization_config,
given the dequantized weights by the checkpoint's test.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from loraplex.runtime.adapters.synthetic import write_random_adapter
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.config import EngineConfig
from loraplex.runtime.engine.engine import Engine
from loraplex.runtime.engine.request import GenerationRequest, SamplingParams
from tests.helpers import peft_greedy

NEW_TOKENS = 12
PROMPTS = [[5, 17, 301, 42, 9, 77], [1200, 3, 3, 88, 460, 12], [7, 7000, 15, 250, 31, 64]]


def engine_config(folder: Path, **overrides: object) -> EngineConfig:
    values: dict[str, object] = dict(model=str(folder), device="cpu", dtype="float32",
                                     kv_cache_bytes=16 << 20, max_model_len=128,
                                     max_num_seqs=8, block_size=4, device_slots=4,
                                     max_lora_rank=16, cache_dir=str(folder.parent / "cache"))
    values.update(overrides)
    return EngineConfig(**values)


def hf_model(folder: Path, dequantized: dict[str, torch.Tensor]) -> PreTrainedModel:
    """transformers' own model holding the dequantized weights in fp32 (no quantization)."""
    config = AutoConfig.from_pretrained(folder)
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    missing, unexpected = model.load_state_dict(dequantized, strict=False)
    assert unexpected == [] and set(missing) <= {"lm_head.weight"}  # tied to the embedding
    head = dequantized.get("lm_head.weight", dequantized["model.embed_tokens.weight"])
    assert torch.equal(model.lm_head.weight, head)
    return model


def hf_greedy(model: PreTrainedModel, prompts: list[list[int]]) -> list[tuple[int, ...]]:
    with torch.inference_mode():
        output = model.generate(torch.tensor(prompts), max_new_tokens=NEW_TOKENS,
                                min_new_tokens=NEW_TOKENS, do_sample=False,
                                attention_mask=torch.ones(len(prompts), len(prompts[0]),
                                                          dtype=torch.long))
    return [tuple(row) for row in output[:, len(prompts[0]):].tolist()]


def engine_greedy(engine: Engine, adapters: list[str | None]) -> list[tuple[int, ...]]:
    requests = [GenerationRequest(f"r{index}-{adapter}", prompt,
                                  SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True),
                                  adapter=adapter)
                for adapter in adapters for index, prompt in enumerate(PROMPTS)]
    results = engine.generate(requests)
    return [tuple(event.token_id for event in results[r.request_id]) for r in requests]


def greedy_with_adapters(folder: Path, dequantized: dict[str, torch.Tensor],
                         adapter_root: Path) -> tuple[list, dict[str, list]]:
    """Greedy tokens of the engine serving `folder` with random adapters of ranks 4 and 16
    (then none) on every prompt, and PEFT's on transformers' model of the dequantized
    weights, by row ("r4", "r16", "__base__")."""
    from peft import PeftModel

    engine = Engine(engine_config(folder))
    target = LoraTargetShapes.from_hf_config(engine.loaded.hf_config)
    adapters = {f"r{rank}": write_random_adapter(adapter_root / f"adapter-r{rank}", target,
                                                 rank, seed=rank, strength=4.0)
                for rank in (4, 16)}
    try:
        for name, adapter_folder in adapters.items():
            engine.adapters.register(name, str(adapter_folder))
        served = engine_greedy(engine, [*adapters, None])
    finally:
        engine.close()
    peft_model = PeftModel.from_pretrained(hf_model(folder, dequantized), adapters["r4"],
                                           adapter_name="r4")
    peft_model.load_adapter(adapters["r16"], adapter_name="r16")
    rows = ["r4", "r16", "__base__"]
    expected: dict[str, list] = {row: [] for row in rows}
    for prompt in PROMPTS:
        for row, tokens in zip(rows, peft_greedy(peft_model, [prompt] * 3, rows, NEW_TOKENS),
                               strict=True):
            expected[row].append(tokens)
    return served, expected
