"""Shapes and managers for the adapter tests.

`smol_target` has the builtin SmolLM2-135M's widths (hidden 576, 9 heads, 3 KV heads,
intermediate 1536) with 2 layers instead of 30, so that adapters are small and fast to
write, parse and copy; no model weights are needed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from transformers import LlamaConfig

from loraplex.runtime.adapters.manager import AdapterManager
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.config import EngineConfig

SMOL_WIDTHS = dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9,
                   num_key_value_heads=3)


def smol_llama_config(num_layers: int = 2) -> LlamaConfig:
    return LlamaConfig(num_hidden_layers=num_layers, vocab_size=64, **SMOL_WIDTHS)


@pytest.fixture(scope="session")
def smol_target() -> LoraTargetShapes:
    return LoraTargetShapes.from_hf_config(smol_llama_config())


@pytest.fixture
def make_manager(tmp_path: Path) -> Iterator[Callable[..., AdapterManager]]:
    """Build managers with a private cache folder; every one is closed after the test."""
    managers: list[AdapterManager] = []

    def build(target: LoraTargetShapes, **settings) -> AdapterManager:
        settings.setdefault("cache_dir", str(tmp_path / "cache"))
        settings.setdefault("device_slots", 4)
        settings.setdefault("max_lora_rank", 16)
        manager = AdapterManager(EngineConfig(**settings), target)
        managers.append(manager)
        return manager

    yield build
    for manager in managers:
        manager.close()
