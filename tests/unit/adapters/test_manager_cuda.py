"""The CUDA path: pinned host weights, copies on a side stream, slots handed out only after
their copy's event completed (skipped without CUDA)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from loraplex.runtime.adapters.manager import AdapterManager
from loraplex.runtime.adapters.peft_format import load_peft_adapter
from loraplex.runtime.adapters.synthetic import write_random_adapter
from loraplex.runtime.config import EngineConfig
from tests.unit.adapters.helpers import wait_on_device


@pytest.mark.gpu
@pytest.mark.timeout(120)
def test_cuda_slots_hold_the_adapters(tmp_path: Path, smol_target) -> None:
    config = EngineConfig(cache_dir=str(tmp_path / "cache"), device_slots=2, max_lora_rank=16)
    manager = AdapterManager(config, smol_target, device="cuda", dtype=torch.bfloat16)
    try:
        folders = {name: write_random_adapter(tmp_path / name, smol_target, rank=rank, seed=rank)
                   for name, rank in (("a", 8), ("b", 16), ("c", 4))}
        for name, folder in folders.items():
            manager.register(name, str(folder))
        for name, folder in folders.items():  # three adapters through two slots
            slot = wait_on_device(manager, name)
            lease = manager.acquire(name)
            expected = load_peft_adapter(folder, smol_target, max_rank=16)
            lora_a, lora_b = manager.pool.group(1, "gate_up")
            torch.cuda.current_stream().synchronize()
            packed = expected.groups["gate_up"]
            rank = packed.rank
            torch.testing.assert_close(lora_a[slot, :, :rank].float().cpu(),
                                       packed.a[1].to(torch.bfloat16).float())
            torch.testing.assert_close(lora_b[slot, :, :rank].float().cpu(),
                                       packed.b[1].to(torch.bfloat16).float())
            assert int(manager.pool.ranks[slot]) == expected.rank
            manager.release(lease)
        assert manager.stats().evictions["device"] == 1
    finally:
        manager.close()
