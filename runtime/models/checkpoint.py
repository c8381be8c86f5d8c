"""Weights into a built model: from safetensors files, or random for dummy loads."""

from __future__ import annotations

from collections.abc import Container, Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from tqdm.auto import tqdm

from loraplex.runtime.layers.rms_norm import RMSNorm


def safetensors_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in folder.glob("*.bin")) + sorted(
            p.name for p in folder.glob("*.pt"))
        hint = (f" (found pickle files {pickled}; they are never loaded, convert them to "
                "safetensors)") if pickled else ""
        raise ValueError(f"no .safetensors weights in {folder}{hint}")
    return files


def iter_checkpoint(folder: Path, device: torch.device, skip: Container[str] = ()
                    ) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every tensor in the folder's safetensors files but those in
    `skip` (already loaded another way), with a progress bar."""
    files = safetensors_files(folder)
    handles = [safe_open(str(path), framework="pt", device=str(device)) for path in files]
    names = [[name for name in handle.keys() if name not in skip]  # noqa: SIM118
             for handle in handles]
    with tqdm(total=sum(map(len, names)), desc="Loading weights", unit="tensor",
              leave=False) as progress:
        for handle, handle_names in zip(handles, names, strict=True):
            for name in handle_names:
                yield name, handle.get_tensor(name)
                progress.update()


@torch.no_grad()
def init_dummy_weights(model: nn.Module, seed: int, std: float) -> None:
    """Random weights of realistic scale: N(0, std) matrices, zero biases, unit norms."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for module in model.modules():
        if isinstance(module, RMSNorm):
            module.weight.fill_(1.0)
        elif isinstance(module, nn.Linear | nn.Embedding):
            module.weight.normal_(0.0, std, generator=generator)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
