"""What every torch benchmark records about the machine, and how it writes its JSON.

Figures from a shared machine mean little without the load it was under, so each result
carries the same machine block; one writer keeps the files' shape alike.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch


def machine_info(device: str = "cpu") -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "load_average": os.getloadavg(),
            "cuda": torch.cuda.get_device_name() if device == "cuda" else None}


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def cuda_seconds(launch, repeats: int = 20) -> float:
    """Mean seconds of `launch()` on the current CUDA stream (one warm-up call first)."""
    launch()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        launch()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / repeats
