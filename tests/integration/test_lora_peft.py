"""Greedy output with LoRA adapters equals PEFT's, token for token (fp32, CPU).

Eight random adapters of ranks 8 to 64 with mixed targets (q+v only, all seven modules,
o+down, the MLP only, rsLoRA, a rank_pattern, an alpha_pattern, a subset of layers), strong
enough to change the builtin SmolLM2's output. The oracle is `PeftModel.from_pretrained`
on transformers' own model from the builtin folder, the same adapter folders, greedy
decoding by hand (so EOS handling cannot differ) in PEFT's mixed-adapter batches. Each
adapter runs alone, then all of them in one continuously-batched run together with
base-model requests.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from loraplex.runtime.adapters.synthetic import write_random_adapter
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.engine.engine import Engine
from loraplex.runtime.engine.request import GenerationRequest, SamplingParams
from tests.helpers import (
    CHAT_PROMPTS,
    builtin_config,
    builtin_loaded,
    chat_prompt_ids,
    hf_builtin_model,
    peft_greedy,
)

pytestmark = [pytest.mark.model, pytest.mark.timeout(600)]

NEW_TOKENS = 16
PROMPTS = (CHAT_PROMPTS[0], CHAT_PROMPTS[3])
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class AdapterSpec:
    rank: int
    modules: list[str]
    extra: dict = field(default_factory=dict)


SPECS: dict[str, AdapterSpec] = {
    "qv-r8": AdapterSpec(8, ["q_proj", "v_proj"], {"strength": 2.0}),
    "all-r16": AdapterSpec(16, ALL),
    "o-down-r32": AdapterSpec(32, ["o_proj", "down_proj"]),
    "rslora-r64": AdapterSpec(64, ALL, {"use_rslora": True}),
    "pattern-r16": AdapterSpec(16, ALL, {"rank_pattern": {"q_proj": 8, "down_proj": 32}}),
    "mlp-r8": AdapterSpec(8, ["gate_proj", "up_proj", "down_proj"]),
    "kvo-alpha-r32": AdapterSpec(32, ["k_proj", "v_proj", "o_proj"],
                                 {"alpha_pattern": {"o_proj": 8.0}, "strength": 1.5}),
    "layers-r64": AdapterSpec(64, ["q_proj", "k_proj", "up_proj"],
                              {"layers": list(range(0, 30, 2)), "strength": 1.5}),
}


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    return [chat_prompt_ids(messages) for messages in PROMPTS]


@pytest.fixture(scope="module")
def adapter_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    target = LoraTargetShapes.from_hf_config(builtin_loaded().hf_config)
    root = tmp_path_factory.mktemp("lora-peft")
    return {name: write_random_adapter(root / name, target, spec.rank, spec.modules,
                                       seed=index + 11, **spec.extra)
            for index, (name, spec) in enumerate(SPECS.items())}


@pytest.fixture(scope="module")
def references(adapter_folders, prompts) -> dict[str | None, list[tuple[int, ...]]]:
    """PEFT's greedy tokens per adapter (None: the base model), one entry per prompt."""
    from peft import PeftModel

    names = list(adapter_folders)
    peft_model = PeftModel.from_pretrained(hf_builtin_model(), adapter_folders[names[0]],
                                           adapter_name=names[0])
    try:
        for name in names[1:]:
            peft_model.load_adapter(adapter_folders[name], adapter_name=name)
        rows = [*names, "__base__"]
        per_prompt = [peft_greedy(peft_model, [prompt] * len(rows), rows, NEW_TOKENS)
                      for prompt in prompts]
    finally:
        peft_model.unload()  # give the shared transformers model back without LoRA layers
    return {(None if row == "__base__" else row): [outputs[index] for outputs in per_prompt]
            for index, row in enumerate(rows)}


@pytest.fixture(scope="module")
def engine(adapter_folders) -> Iterator[Engine]:
    engine = Engine(builtin_config(device_slots=len(SPECS), max_lora_rank=64),
                    builtin_loaded())
    for name, folder in adapter_folders.items():
        engine.adapters.register(name, str(folder))
    yield engine
    engine.close()


def request(request_id: str, prompt: list[int], adapter: str | None) -> GenerationRequest:
    params = SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True)
    return GenerationRequest(request_id, prompt, params, adapter=adapter)


def tokens(events) -> tuple[int, ...]:
    return tuple(event.token_id for event in events)


def test_adapters_change_the_output(references):
    changed = [name for name in SPECS if references[name] != references[None]]
    assert len(changed) >= len(SPECS) - 1, f"only {changed} differ from the base model"


@pytest.mark.parametrize("name", list(SPECS))
def test_each_adapter_alone_equals_peft(engine, prompts, references, name):
    results = engine.generate([request(f"{name}-{i}", prompt, name)
                               for i, prompt in enumerate(prompts)])
    for index, reference in enumerate(references[name]):
        events = results[f"{name}-{index}"]
        assert tokens(events) == reference, (name, index)
        assert events[-1].finished and events[-1].error is None
    assert engine.stats().num_free_blocks == engine.stats().num_total_blocks


def test_all_adapters_mixed_with_base_requests_equal_peft(engine, prompts, references):
    requests = [request(f"base-{i}", prompt, None) for i, prompt in enumerate(prompts)]
    for name in SPECS:  # interleaved: every step mixes all adapters and the base model
        requests += [request(f"{name}-{i}", prompt, name) for i, prompt in enumerate(prompts)]
    # every adapter on the device first (whichever tests ran before), so the run is one batch
    engine.generate([GenerationRequest(f"warm-{name}", prompts[0],
                                       SamplingParams(max_new_tokens=1), adapter=name)
                     for name in SPECS])
    steps_before = engine.stats().num_steps
    results = engine.generate(requests)
    for name in [None, *SPECS]:
        for index, reference in enumerate(references[name]):
            assert tokens(results[f"{name or 'base'}-{index}"]) == reference, (name, index)
    assert engine.stats().num_steps - steps_before <= NEW_TOKENS + 2  # really one batch
    assert all(info.in_use == 0 for info in engine.adapters.list())  # every lease released
