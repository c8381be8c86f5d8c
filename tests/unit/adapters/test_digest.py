"""Adapter digests: stable, independent of where the files sit, sensitive to every byte."""

from __future__ import annotations

import shutil
from pathlib import Path

from loraplex.runtime.adapters.peft_format import load_peft_adapter
from loraplex.runtime.adapters.synthetic import write_random_adapter


def test_digest_follows_content_only(tmp_path: Path, smol_target) -> None:
    original = write_random_adapter(tmp_path / "a", smol_target, rank=4, seed=1)
    digest = load_peft_adapter(original, smol_target, max_rank=16).digest
    assert digest == load_peft_adapter(original, smol_target, max_rank=16).digest

    copy = tmp_path / "elsewhere" / "b"
    shutil.copytree(original, copy)
    (copy / "README.md").write_text("notes\n")
    (copy / "checkpoint-100").mkdir()
    assert load_peft_adapter(copy, smol_target, max_rank=16).digest == digest

    weights = copy / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    assert load_peft_adapter(copy, smol_target, max_rank=16).digest != digest

    other_seed = write_random_adapter(tmp_path / "c", smol_target, rank=4, seed=2)
    assert load_peft_adapter(other_seed, smol_target, max_rank=16).digest != digest
