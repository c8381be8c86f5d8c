"""Synthetic adapters are strong enough to matter: each changes SmolLM2's greedy output.

Tests and benchmarks that compare served outputs with PEFT's rely on this: an adapter too
weak to change a token would make "with adapter" and "without" indistinguishable.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from loraplex.runtime.adapters.synthetic import write_random_adapter
from loraplex.runtime.adapters.target import LoraTargetShapes

PROMPT = ("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
          "<|im_start|>assistant\n")
CASES = {
    "all-modules-r8": dict(rank=8),
    "qv-r4": dict(rank=4, target_modules=["q_proj", "v_proj"]),
    "mlp-r16-rslora": dict(rank=16, target_modules=["gate_proj", "up_proj", "down_proj"],
                           use_rslora=True),
}


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loraplex.runtime.config import DEFAULT_MODEL, default_cache_dir
    from loraplex.runtime.models.builtin import resolve_builtin

    folder = resolve_builtin(DEFAULT_MODEL, default_cache_dir())
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer


def greedy(model, input_ids: torch.Tensor) -> list[int]:
    with torch.no_grad():
        output = model.generate(input_ids, max_new_tokens=6, do_sample=False,
                                pad_token_id=0)
    return output[0, input_ids.shape[1]:].tolist()


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_each_synthetic_adapter_changes_greedy_output(smollm2, tmp_path: Path) -> None:
    from peft import PeftModel

    model, tokenizer = smollm2
    target = LoraTargetShapes.from_hf_config(model.config)
    input_ids = tokenizer(PROMPT, return_tensors="pt", add_special_tokens=False).input_ids
    base = greedy(model, input_ids)
    assert "Paris" in tokenizer.decode(base)  # the base model itself is sane
    for case, kwargs in CASES.items():
        folder = write_random_adapter(tmp_path / case, target, seed=1, **kwargs)
        adapted = PeftModel.from_pretrained(model, folder)
        try:
            assert greedy(adapted, input_ids) != base, case
        finally:
            adapted.unload()
