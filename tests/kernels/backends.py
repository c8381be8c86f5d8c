"""The two paths under test behind one interface: the torch ops, called here, and the
Triton launchers, run by the Triton interpreter in a worker process (see
`interpreter_worker` for why a separate process).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from typing import Any

import torch

from loraplex.runtime.kernels import lora_apply, torch_ops
from loraplex.runtime.kernels.segments import LoraSegments
from tests.kernels import interpreter_worker

WORKER_TIMEOUT_S = 120


class TorchBackend:
    name = "torch"

    def shrink(self, x, lora_a, segments, ranks, config=None) -> torch.Tensor:
        return torch_ops.sgmv_shrink(x, lora_a, segments, ranks)

    def expand(self, y, v, lora_b, slice_offsets, segments, ranks, config=None) -> None:
        torch_ops.sgmv_expand(y, v, lora_b, slice_offsets, segments, ranks)

    def lora_apply(self, y, x, lora_a, lora_b, slice_offsets, segments, ranks) -> None:
        lora_apply(y, x, lora_a, lora_b, slice_offsets, segments, ranks, backend="torch")


class InterpretedTritonBackend:
    """The Triton launchers and kernels, run by the interpreter in the worker process."""

    name = "triton"

    def __init__(self, executor: ProcessPoolExecutor) -> None:
        self.executor = executor

    def shrink(self, x, lora_a, segments, ranks, config=None) -> torch.Tensor:
        return self._call(
            interpreter_worker.shrink, x, lora_a, _lists(segments), ranks, _fields(config)
        )

    def expand(self, y, v, lora_b, slice_offsets, segments, ranks, config=None) -> None:
        result = self._call(
            interpreter_worker.expand,
            y,
            v,
            lora_b,
            list(slice_offsets),
            _lists(segments),
            ranks,
            _fields(config),
        )
        y.copy_(result)

    def lora_apply(self, y, x, lora_a, lora_b, slice_offsets, segments, ranks) -> None:
        result = self._call(
            interpreter_worker.lora_apply,
            y,
            x,
            lora_a,
            lora_b,
            list(slice_offsets),
            _lists(segments),
            ranks,
        )
        y.copy_(result)

    def _call(self, function, *args: Any) -> Any:
        return self.executor.submit(function, *args).result(timeout=WORKER_TIMEOUT_S)


def _lists(segments: LoraSegments) -> tuple[Sequence[int], Sequence[int]]:
    return segments.indptr_list, segments.slot_list


def _fields(config: Any) -> dict | None:
    return asdict(config) if config is not None else None
