"""Triton-only code paths: split-K, many tiles per slot, and how the kernels are isolated.

The default tile heuristics pick split_k = 1 and one tile per slot at these small shapes,
so the configurations the GPU uses for small batches (split-K with fp32 atomics) and for
long prefill segments (several tiles of one slot) are forced here explicitly.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from loraplex.runtime.kernels.configs import KernelConfig
from tests.kernels import interpreter_worker
from tests.kernels.backends import InterpretedTritonBackend
from tests.kernels.reference import expand_ref, shrink_ref
from tests.kernels.test_lora_ops import MAX_RANK, Case, assert_close, build

FORCED = {  # name: KernelConfig fields
    "split_k_3_small_blocks": dict(block_m=16, block_n=16, block_k=16, split_k=3),
    "split_k_2_wide_blocks": dict(block_m=32, block_n=32, block_k=64, split_k=2),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("layout", ["long_segment", "decode_shuffled"])
@pytest.mark.parametrize("config_name", FORCED)
def test_forced_configs_match_reference(interpreter_executor, layout: str, config_name) -> None:
    config = KernelConfig(**FORCED[config_name])
    case = Case(layout, "o", torch.float32)  # d_in 129: splits end mid-block
    problem = build(case, seed=3)
    backend = InterpretedTritonBackend(interpreter_executor)
    segments = problem.segments()

    v = backend.shrink(problem.x, problem.lora_a, segments, problem.ranks, config=config)
    expected_v = shrink_ref(problem.x, problem.lora_a, problem.token_slots, problem.rank_list)
    assert_close(v, expected_v, case.dtype)

    y = problem.y.clone()
    backend.expand(
        y, v, problem.lora_b, problem.slice_offsets, segments, problem.ranks, config=config
    )
    expected_y = expand_ref(
        problem.y, expected_v, problem.lora_b, problem.slice_offsets,
        problem.token_slots, problem.rank_list,
    )  # fmt: skip
    assert_close(y, expected_y, case.dtype)


@pytest.mark.timeout(120)
def test_rank_above_pool_is_clamped_not_read_past(interpreter_executor) -> None:
    """The GPU path cannot check rank values without a sync: it clamps them to R."""
    problem = build(Case("one_adapter", "qkv_gqa", torch.float32))
    slot = problem.token_slots[0]
    problem.lora_a[slot] = torch.randn_like(problem.lora_a[slot])  # full rank is valid here
    problem.lora_b[slot] = torch.randn_like(problem.lora_b[slot])
    ranks = problem.ranks.clone()
    ranks[slot] = MAX_RANK + 7
    backend = InterpretedTritonBackend(interpreter_executor)

    v = backend.shrink(problem.x, problem.lora_a, problem.segments(), ranks)

    clamped = [min(rank, MAX_RANK) for rank in ranks.tolist()]
    expected = shrink_ref(problem.x, problem.lora_a, problem.token_slots, clamped)
    assert_close(v, expected, torch.float32)


def test_interpreter_setting_stays_in_its_worker(interpreter_executor) -> None:
    worker_env = interpreter_executor.submit(interpreter_worker.interpreter_env).result(60)
    assert worker_env == "1"
    assert os.environ.get("TRITON_INTERPRET") is None


def test_triton_backend_refuses_cpu_tensors_outside_the_interpreter() -> None:
    pytest.importorskip("triton")
    from loraplex.runtime.kernels import lora_apply

    problem = build(Case("one_adapter", "o", torch.float32))
    y = problem.y.clone()
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        lora_apply(
            y, problem.x, problem.lora_a, problem.lora_b, problem.slice_offsets,
            problem.segments(), problem.ranks, backend="triton",
        )  # fmt: skip
    assert torch.equal(y, problem.y)


@pytest.mark.timeout(120)
def test_package_imports_without_triton(tmp_path) -> None:
    """A CPU pod without Triton can import and use the kernels package."""
    program = (
        "import sys; sys.modules['triton'] = None\n"  # any import of triton now fails
        "import torch\n"
        "from loraplex.runtime.kernels import LoraSegments, lora_apply\n"
        "seg = LoraSegments.from_token_slots([0, -1])\n"
        "y = torch.zeros(2, 3)\n"
        "lora_apply(y, torch.ones(2, 4), torch.ones(1, 1, 2, 4), torch.ones(1, 3, 2),\n"
        "           [0, 3], seg, torch.tensor([2], dtype=torch.int32))\n"
        "assert y[0].tolist() == [8.0, 8.0, 8.0] and y[1].tolist() == [0.0] * 3, y\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=100,
    )
    assert result.returncode == 0, result.stderr
