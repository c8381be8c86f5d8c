"""Fixtures of the kernel tests: the backends under test and a fixed seed.

Both paths run the same suite: `torch` (the CPU path) in this process, and `triton`
through the Triton interpreter in a spawned worker process (see `interpreter_worker`).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch

from tests.kernels import interpreter_worker
from tests.kernels.backends import InterpretedTritonBackend, TorchBackend


@pytest.fixture(scope="session")
def interpreter_executor() -> Iterator[ProcessPoolExecutor]:
    executor = ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=interpreter_worker.init,
    )
    yield executor
    executor.shutdown(cancel_futures=True)


@pytest.fixture(params=["torch", "triton"])
def backend(request: pytest.FixtureRequest):
    if request.param == "torch":
        return TorchBackend()
    return InterpretedTritonBackend(request.getfixturevalue("interpreter_executor"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(42)
